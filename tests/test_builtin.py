"""The built-in model: procedural dataset, shipped weights, evaluator metrics and the eval/grid commands."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from linegen.workers.builtin import shapes
from linegen.workers.builtin.classifier import classify, frechet_distance, load_classifier
from linegen.workers.models.registry import DEFAULT_MODEL, get_spec

SPEC = get_spec("linegen-shapes-c2i")
CLASSIFIER = str(__import__("linegen.quality.evaluate", fromlist=["x"]).default_classifier())


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_dataset_is_deterministic_and_balanced():
    a, la = shapes.dataset(5, 30)
    b, lb = shapes.dataset(5, 30)
    assert a.shape == (30, 96, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert np.array_equal(la, np.arange(30) % shapes.NUM_CLASSES)  # classes in turn
    c, _ = shapes.dataset(6, 30)
    assert not np.array_equal(a, c)  # another seed, other images
    # image i does not depend on how many images are rendered with it
    tail, _ = shapes.dataset(5, 10, start=20)
    assert np.array_equal(tail, a[20:])
    assert shapes.NUM_CLASSES >= 10 and len(set(shapes.CLASS_NAMES)) == shapes.NUM_CLASSES


def test_photo_patches_are_deterministic_balanced_and_distinct():
    from linegen.workers.builtin import photos

    a, la = photos.dataset(5, 30)
    assert a.shape == (30, 64, 64, 3) and a.dtype == np.uint8
    b, lb = photos.dataset(5, 30)
    assert np.array_equal(a, b) and np.array_equal(la, np.arange(30) % photos.NUM_CLASSES)
    tail, _ = photos.dataset(5, 10, start=20)
    assert np.array_equal(tail, a[20:])  # patch i does not depend on its neighbours
    c, _ = photos.dataset(6, 30)
    assert not np.array_equal(a, c)
    # ten different photographs: their mean colours differ between classes more than within one
    means = photos.dataset(7, 200)[0].reshape(20, 10, -1, 3).mean(axis=2)  # [repeat, class, rgb]
    between = np.linalg.norm(means.mean(0)[:, None] - means.mean(0)[None], axis=-1)
    assert between[~np.eye(10, dtype=bool)].min() > 1.0 and len(set(photos.CLASS_NAMES)) == 10


def test_objects_repeat_with_the_same_colour():
    """Long-range consistency: the two circles of class 0 (top-left, bottom-right) share a colour."""
    for seed in range(5):
        img = shapes.render(0, seed).astype(int)
        assert np.array_equal(img[24, 24], img[72, 72])  # both centres (jitter is at most 4 px)


def test_builtin_model_is_the_default_with_shipped_weights():
    assert DEFAULT_MODEL == "linegen-shapes-c2i"
    assert SPEC.grid == 24 and SPEC.num_tokens == 576 and SPEC.gpt.vocab_size == SPEC.vq.codebook_size
    total = 0
    for path in SPEC.builtin_weights + (CLASSIFIER,):
        total += __import__("os").path.getsize(path)
    assert total <= 20 * 2**20


BUILTIN = ["linegen-shapes-c2i", "linegen-photos-c2i"]


def test_second_builtin_model_is_registered_and_small():
    from linegen.workers.builtin.datasets import builtin_data

    spec = get_spec("linegen-photos-c2i")
    assert spec.grid == 16 and spec.num_tokens == 256 and spec.gpt.n_head == 6
    data = builtin_data(spec.name)
    files = spec.builtin_weights + (data.classifier, str(data.data.SOURCE))
    assert sum(__import__("os").path.getsize(p) for p in files) <= 10 * 2**20  # a few MB, photographs included
    assert spec.class_names == data.data.CLASS_NAMES


@pytest.mark.parametrize("name", BUILTIN)
def test_shipped_weights_load_and_generate(name):
    from linegen.settings.model_choice import ModelChoice
    from linegen.workers.cache import make_policy
    from linegen.workers.engine import Engine, GenRequest

    spec, gpt, vq, device = ModelChoice(name=name, device="cpu").load()
    engine = Engine(gpt, vq, spec, make_policy("linear", ratio="1/6"), device=device, max_batch=2)
    sp = spec.default_sampling
    res = engine.run_wave([GenRequest(seed=1, class_id=5, sampling=sp), GenRequest(seed=2, class_id=6, sampling=sp)])
    assert res.tokens.shape == (2, spec.num_tokens) and int(res.tokens.max()) < spec.gpt.vocab_size
    images = engine.decode_images(res.tokens)
    assert images.shape == (2, spec.image_size, spec.image_size, 3) and images.dtype == np.uint8
    assert images.std() > 10  # structured images, not a flat colour


@pytest.mark.parametrize("name, bar", [("linegen-shapes-c2i", 0.7), ("linegen-photos-c2i", 0.7)])
def test_shipped_model_draws_recognisable_classes(name, bar):
    """The shipped GPT, sampled with its defaults, draws images its classifier recognises (full
    cache on 500 samples: shapes 90.6 %, photos in benchmarks/RESULTS.md; 20 fixed seeds here, so
    the bar leaves room for noise)."""
    from linegen.quality.evaluate import default_classifier
    from linegen.settings.model_choice import ModelChoice
    from linegen.workers.cache import make_policy
    from linegen.workers.engine import Engine, GenRequest

    spec, gpt, vq, device = ModelChoice(name=name, device="cpu").load()
    sp = spec.sampling()
    requests = [GenRequest(seed=7_000 + i, class_id=i % 10, sampling=sp) for i in range(20)]
    engine = Engine(gpt, vq, spec, make_policy("full"), device=device, max_batch=20)
    images = engine.decode_images(engine.run_wave(requests).tokens)
    pred, _ = classify(load_classifier(default_classifier(name), 10), images)
    assert (pred == np.arange(20) % 10).mean() >= bar


@pytest.mark.parametrize("name", BUILTIN)
def test_classifier_on_real_heldout_images(name):
    from linegen.quality.evaluate import default_classifier, heldout_data

    data = heldout_data(name)
    clf = load_classifier(default_classifier(name))
    imgs, labels = data.dataset(data.HELDOUT_SEED, 100, start=5000)
    pred, feats = classify(clf, imgs)
    assert (pred == labels).mean() >= 0.98
    assert feats.shape == (100, 128)


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    assert abs(frechet_distance(a, a)) < 1e-6
    shifted = frechet_distance(a, a + 3.0)  # same covariance: squared mean shift, 8 * 9
    assert shifted == pytest.approx(72.0, rel=1e-6)
    b = rng.normal(size=(400, 8)) * 2.0  # covariance 4I vs I: tr(I + 4I - 2*2I) = 8 per... ~8
    assert frechet_distance(a, b) == pytest.approx(8.0, rel=0.3)


def test_eval_command_metrics_on_a_small_sample():
    from linegen.cli.main import app

    r = CliRunner().invoke(app, ["eval", "--policies", "full,streaming", "--ratios", "1/8", "--samples", "2",
                                 "--fidelity-samples", "1", "--real-samples", "20", "--max-batch", "2",
                                 "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["reference"]["real_accuracy"] >= 0.9
    rows = {(x["policy"], x["ratio"]): x for x in report["rows"]}
    assert set(rows) == {("full", "1"), ("streaming", "1/8")}
    full, st = rows["full", "1"], rows["streaming", "1/8"]
    assert full["kl_mean"] == 0 and full["token_match"] == 1 and full["fd_full"] == 0
    assert st["budget_tokens"] == 72
    for key in ("class_accuracy", "token_match", "top1_agreement"):
        assert 0 <= st[key] <= 1
    assert st["kl_mean"] >= 0 and np.isfinite(st["fd_real"]) and np.isfinite(st["fd_full"])


def test_eval_takes_the_second_model_with_its_own_data_and_classifier():
    """Also the +heads path: per-head budgets measured on the calibration items first."""
    from linegen.cli.main import app

    r = CliRunner().invoke(app, ["eval", "--model", "linegen-photos-c2i", "--policies", "full,linear+heads",
                                 "--cache-ratio", "1/6", "--samples", "2", "--fidelity-samples", "1",
                                 "--real-samples", "20", "--batch-size", "2", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["model"] == "linegen-photos-c2i" and report["settings"]["tokens"] == 256
    assert report["reference"]["real_accuracy"] >= 0.9  # photo patches, read by the photo classifier
    assert {(x["policy"], x["budget_tokens"]) for x in report["rows"]} == {("full", 256), ("linear+heads", 43)}
    assert "head shares at 1/6" in r.stderr


def test_grid_command_writes_a_png(tmp_path):
    from PIL import Image

    from linegen.cli.main import app

    out = tmp_path / "g.png"
    r = CliRunner().invoke(app, ["grid", "--policies", "full", "--per-class", "1", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    img = Image.open(out)
    assert img.size == (98, 10 * 98 + 18)


def test_eval_rejects_unknown_policy():
    from linegen.cli.main import app

    r = CliRunner().invoke(app, ["eval", "--policies", "full,nope", "--samples", "4"])
    assert r.exit_code != 0 and "unknown cache policy 'nope'" in r.output
