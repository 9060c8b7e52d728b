"""Janus-Pro in linegen's engine vs transformers' own JanusForConditionalGeneration, on a tiny random
checkpoint built offline (tests/janus_fixtures.py): same prompt ids, same greedy CFG tokens (eager
and compiled, fp32), same pixels, same tokens from DeepSeek's layout; every cache policy runs."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import linegen  # noqa: E402
from linegen.errors import UserError  # noqa: E402
from linegen.settings.model_choice import ModelChoice  # noqa: E402
from linegen.workers.cache import make_policy  # noqa: E402
from linegen.workers.engine import Engine, GenRequest, SamplingParams  # noqa: E402
from linegen.workers.models.janus_checkpoint import load_janus  # noqa: E402
from linegen.workers.models.janus_prompts import JanusPrompts  # noqa: E402
import jobs_helpers as H  # noqa: E402
from janus_fixtures import GRID, build_folder, to_deepseek_folder  # noqa: E402

PROMPTS = ["a red cat on a chair", "two green apples on a wooden table by the sea at night"]
CFG = 5.0
GREEDY = dict(cfg_scale=CFG, top_k=1, temperature=1.0)


@pytest.fixture(scope="module")
def janus(tmp_path_factory):
    """(transformers folder, DeepSeek folder, transformers model, processor, reference tokens per prompt)."""
    from transformers import AutoProcessor

    root = tmp_path_factory.mktemp("janus")
    hf_dir, ds_dir = root / "hf", root / "ds"
    model = build_folder(hf_dir)
    to_deepseek_folder(hf_dir, ds_dir)
    processor = AutoProcessor.from_pretrained(str(hf_dir))
    refs, ids = [], []
    with torch.inference_mode():
        for p in PROMPTS:  # one prompt per call: no padding on transformers' side
            text = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": p}]}],
                                                 add_generation_prompt=True)
            inputs = processor(text=text, generation_mode="image", return_tensors="pt")
            refs.append(model.generate(**inputs, generation_mode="image", do_sample=False, guidance_scale=CFG)[0])
            ids.append(inputs["input_ids"][0].tolist())
    return dict(hf=hf_dir, ds=ds_dir, model=model, processor=processor, refs=torch.stack(refs), ids=ids)


def _generate(folder: Path, compile: str = "off", cache: str = "full", **kw):
    gen = linegen.Generator(model="janus-pro", checkpoint=str(folder), cache=cache, dtype="float32", device="cpu",
                            compile=compile, batch_size=2, **GREEDY, **kw)
    return gen, gen.generate([{"prompt": p} for p in PROMPTS])


def test_prompt_ids_are_transformers_own(janus):
    spec = ModelChoice(name="janus-pro", checkpoint=str(janus["hf"])).spec()
    enc = JanusPrompts.load(janus["hf"], spec).encode(PROMPTS)
    ds = JanusPrompts.load(janus["ds"], spec).encode(PROMPTS)  # no chat template there: DeepSeek's format
    for e, d, ids in zip(enc, ds, janus["ids"]):
        assert e.features[0][e.mask].tolist() == ids == d.features[0][d.mask].tolist()
        assert not e.mask[: spec.prefix_len - len(ids)].any()  # left padding
        bos, boi, pad = ids[0], ids[-1], janus["model"].generation_config.pad_token_id
        uncond = e.features[1][e.mask].tolist()
        assert uncond[0] == bos and uncond[-1] == boi and set(uncond[1:-1]) == {pad}


@pytest.mark.parametrize("compile", ["off", "on"])
def test_greedy_cfg_tokens_equal_transformers_generate(janus, compile):
    gen, images = _generate(janus["hf"], compile=compile)
    assert gen.spec.grid == GRID and (compile == "off") == gen.decode_path.startswith("compile off")
    tokens = torch.tensor(np.stack([g.tokens for g in images]), dtype=torch.long)
    assert torch.equal(tokens, janus["refs"])


def test_pngs_equal_transformers_decode_within_one_level(janus):
    _, images = _generate(janus["hf"])
    with torch.inference_mode():
        pixels = janus["model"].decode_image_tokens(janus["refs"])
    # channels first: a 32x32x3 array is ambiguous to the image processor's format guess
    theirs = janus["processor"].postprocess(list(pixels.permute(0, 3, 1, 2).float()),
                                            return_tensors="PIL.Image.Image")["pixel_values"]
    for ours, ref in zip(images, theirs):
        diff = np.abs(ours.image.astype(int) - np.asarray(ref).astype(int))
        assert ours.image.shape == (32, 32, 3) and diff.max() <= 1


def test_deepseek_layout_gives_the_same_tokens(janus):
    keys = json.loads((janus["ds"] / "config.json").read_text())
    assert "language_config" in keys and not (janus["ds"] / "chat_template.jinja").exists()
    _, images = _generate(janus["ds"])
    assert np.array_equal(np.stack([g.tokens for g in images]), janus["refs"].numpy())


@pytest.fixture(scope="module")
def loaded(janus):
    spec, lm, vq = load_janus("janus-pro", janus["hf"])
    enc = JanusPrompts.load(janus["hf"], spec).encode(PROMPTS)
    requests = [GenRequest(seed=i, caption=e.features, caption_mask=e.mask, sampling=SamplingParams(**GREEDY))
                for i, e in enumerate(enc)]
    return spec, lm, vq, requests


@pytest.mark.parametrize("name", ["linear", "streaming", "h2o", "snapkv", "rkv"])
def test_every_cache_policy_runs_and_changes_tokens(janus, loaded, name):
    spec, lm, vq, requests = loaded
    engine = Engine(lm, vq, spec, make_policy(name, ratio="1/4"), max_batch=2)
    tokens = engine.run_wave(requests).tokens
    assert tokens.shape == janus["refs"].shape and not torch.equal(tokens, janus["refs"])
    # the prompt stays outside the budget (1/4 of the 64 image tokens), and packing counts its 120 entries
    full = Engine(lm, vq, spec, make_policy("full"), max_batch=2)
    per_entry = full.cache_bytes_per_sequence() / (120 + 64)
    assert engine.policy.budget(engine.layout) == 16 and engine.layout.prefix == 120
    kept = 120 + engine.policy.visual_capacity(engine.layout)
    assert kept * per_entry <= engine.cache_bytes_per_sequence() < full.cache_bytes_per_sequence()


def test_run_on_prompt_rows_writes_transformers_tokens_and_flags_cut_prompts(janus, embedded_ray, tmp_path):
    long_prompt = " ".join(["a watercolor painting of a small house by the sea"] * 30)
    rows = [{"prompt": p} for p in PROMPTS] + [{"prompt": long_prompt}]
    result = linegen.run(rows, out=str(tmp_path), model="janus-pro", checkpoint=str(janus["hf"]), cache="full",
                         dtype="float32", compile="off", batch_size=3, job_id="janus", **GREEDY)
    table = result.read_table(columns=["row", "tokens", "prompt_tokens", "prompt_truncated", "image", "width"])
    by_row = {r["row"]: r for r in table.to_pylist()}
    for i in range(2):
        assert by_row[i]["tokens"] == janus["refs"][i].tolist() and not by_row[i]["prompt_truncated"]
        assert by_row[i]["prompt_tokens"] == len(janus["ids"][i]) and by_row[i]["width"] == 32
    assert by_row[2]["prompt_truncated"] and by_row[2]["prompt_tokens"] == 120
    from PIL import Image

    assert Image.open(io.BytesIO(by_row[0]["image"]["bytes"])).size == (32, 32)


def test_rows_and_flags_are_checked(janus, tmp_path):
    with pytest.raises(UserError, match="class_id"):
        linegen.run([{"class_id": 1}], out=str(tmp_path), model="janus-pro", checkpoint=str(janus["hf"]))
    with pytest.raises(UserError, match="needs --checkpoint DIR"):
        ModelChoice(name="janus-pro-1b").check()
    with pytest.raises(UserError, match="--vq-checkpoint is not used"):
        ModelChoice(name="janus-pro", checkpoint=str(janus["hf"]), vq_checkpoint="x.pt").check()
    with pytest.raises(UserError, match="not a folder"):
        ModelChoice(name="janus-pro", checkpoint=str(tmp_path / "nope")).check()
    report = linegen.validate([{"prompt": "a cat"}, {"prompt": "word " * 400}], model="janus-pro",
                              checkpoint=str(janus["hf"]))
    assert len(report.truncated) == 1 and report.truncated[0]["tokens"] > 120


def test_a_checkpoint_that_does_not_fit_names_the_key(janus, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    for f in janus["hf"].iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    state = load_file(bad / "model.safetensors")
    del state["model.generation_head.vision_head.weight"]
    save_file(state, bad / "model.safetensors")
    with pytest.raises(UserError, match="output.vision_head.weight"):
        ModelChoice(name="janus-pro", checkpoint=str(bad)).load()


def test_random_weights_at_the_published_sizes():
    spec = ModelChoice(name="janus-pro-7b", random_weights=True).spec()
    c = spec.gpt
    assert (c.n_layer, c.dim, c.n_head, c.ffn_dim, c.text_vocab_size) == (30, 4096, 32, 11008, 102400)
    assert (spec.image_size, spec.num_tokens, c.vocab_size, spec.prefix_len) == (384, 576, 16384, 120)
    one_b = ModelChoice(name="janus-pro-1b", random_weights=True).spec().gpt
    assert (one_b.n_layer, one_b.dim, one_b.n_head, one_b.ffn_dim) == (24, 2048, 16, 5632)


def test_tune_calibrates_on_prompts_and_run_uses_its_choice(janus, embedded_ray, tmp_path):
    """`linegen tune` on the Janus checkpoint: every candidate measured on prompt items (the shipped
    calibration prompts, then the user's --prompts), the choice recorded with the checkpoint, and
    a `run` with no cache flag decodes with it."""
    from cli_runner import invoke

    config = tmp_path / "config.toml"
    args = ["tune", "--model", "janus-pro", "--checkpoint", str(janus["hf"]), "--cache-ratio", "1/2",
            "--samples", "2", "--batch-size", "2", "--dtype", "float32", "--config", str(config), "--json"]
    r = invoke(args)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    measured = [row for row in doc["rows"] if row["kl_mean"] is not None]
    assert len(measured) >= 10 and all(row["kl_mean"] > 0 for row in measured), doc["rows"]
    judged = [row for row in measured if row["sample_distance"] is not None]
    # candidates that kept the very same tokens (here a +heads one whose shares came out uniform on
    # random weights, and its plain twin) share one judgement: three distinct settings were judged
    distinct = {(row["kl_mean"], row["top1_agreement"]) for row in judged}
    assert doc["calibration"] == "2 shipped prompts in turn" and len(distinct) == doc["finalists"] == 3
    assert doc["best"]["label"] == H.tune_choice(judged)["label"]
    import tomllib

    entry = tomllib.loads(config.read_text())["models"]["janus-pro"]
    assert entry == {"cache": doc["best"]["policy"], "cache_ratio": "1/2", "cache_options": doc["best"]["options"],
                     "checkpoint": str(janus["hf"])}

    # the user's prompts are the items: other prompts, other measurements
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    mine = invoke([*args[:-3], "--prompts", str(prompts), "--no-write", "--json"])
    assert mine.returncode == 0, mine.stderr
    mine = json.loads(mine.stdout)
    assert mine["calibration"] == "2 of your --prompts in turn"
    assert [row["kl_mean"] for row in mine["rows"]] != [row["kl_mean"] for row in doc["rows"]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"class_id": 3}\n')
    refused = invoke([*args[:-3], "--prompts", str(bad), "--no-write"])
    assert refused.returncode != 0 and "bad.jsonl:1" in refused.stderr and "Traceback" not in refused.stderr

    from linegen.settings.config_file import load_config

    result = linegen.run([{"prompt": PROMPTS[0]}], out=str(tmp_path / "out"), model="janus-pro",
                         config=load_config(config), dtype="float32", batch_size=1, job_id="tuned")
    images = result.read_table(columns=["cache_policy", "cache_ratio"]).to_pylist()
    assert images == [{"cache_policy": entry["cache"], "cache_ratio": 0.5}]
