"""`linegen tune`: the config entry it writes (the rest of the file kept), how `run` resolves the
cache from flags, config and the model, and tune -> config -> run end to end."""
from __future__ import annotations

import json
import tomllib

import pytest

import jobs_helpers as H
from cli_runner import invoke
from linegen.settings.config_file import ConfigError, parse_config
from linegen.settings.config_edit import set_model_keys, write_model_keys
from linegen.settings.cache_choice import FALLBACK
from linegen.workers.models.registry import get_spec

VALUES = {"cache": "linear", "cache_ratio": "1/6", "cache_options": {"anchor_lines": 1, "decay": 1.0, "cfg_shared": True}}

CONFIG = """\
# linegen settings
[cluster]
address = "http://head:8265"   # the head node

[models]
c2i-xl = { checkpoint = "s3://b/x#1.pt", vq_checkpoint = "s3://b/vq.pt" }  # XL
plain = "s3://b/plain.pt"

[models.tabled]
checkpoint = "s3://b/t.pt"
cache = "h2o"
cache_options = { recent_share = 0.5 }

# prices from the provider
[prices]
H100 = 3.29
"""


def _untouched(before: str, after: str, changed: str) -> None:
    """Every line of `before` except the entry being changed is still in `after`, in order."""
    kept = [ln for ln in before.splitlines() if not ln.startswith(changed)]
    it = iter(after.splitlines())
    for ln in kept:
        assert any(ln == other for other in it), f"line lost or moved: {ln!r}\n{after}"


@pytest.mark.parametrize("model, prefix", [("c2i-xl", "c2i-xl ="), ("plain", "plain ="), ("tabled", "cache"),
                                           ("new-model", "@none")])
def test_config_write_sets_the_entry_and_keeps_the_rest(model, prefix):
    after = set_model_keys(CONFIG, model, VALUES)
    data = tomllib.loads(after)
    entry = data["models"][model]
    assert {k: entry[k] for k in VALUES} == VALUES
    before = tomllib.loads(CONFIG)
    for name, old in before["models"].items():  # other entries, and the entry's other keys, as they were
        old = {"checkpoint": old} if isinstance(old, str) else old
        for k, v in old.items():
            if name != model or k not in VALUES:
                got = data["models"][name]
                assert (got if isinstance(got, str) else got[k]) == v
    assert data["cluster"] == before["cluster"] and data["prices"] == before["prices"]
    _untouched(CONFIG, after, prefix)
    if model == "c2i-xl":
        assert after.splitlines()[5].endswith("  # XL")  # the entry's own comment survives too
    parse_config(after)
    assert set_model_keys(after, model, VALUES) == after  # writing the same choice again changes nothing


def test_config_write_creates_a_missing_file_and_refuses_broken_ones(tmp_path):
    path = tmp_path / "sub" / "config.toml"
    write_model_keys(path, "linegen-shapes-c2i", VALUES)
    cfg = parse_config(path.read_text(), path)
    m = cfg.models["linegen-shapes-c2i"]
    assert (m.cache, m.cache_ratio, m.cache_options) == ("linear", "1/6", VALUES["cache_options"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[models\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        write_model_keys(bad, "m", VALUES)
    assert bad.read_text() == "[models\n"


@pytest.mark.parametrize("entry, match", [('{ cache = 3 }', "cache must be a non-empty string"),
                                          ('{ cache = "linear", cache_options = 4 }', "cache_options must be a table"),
                                          ('{ cache = "linear", cache_ratio = true }', "cache_ratio")])
def test_config_cache_keys_are_checked(entry, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(f"[models]\nm = {entry}\n")


def test_cache_resolution_order(tmp_path):
    from linegen.settings.config_file import load_config
    from linegen.settings.resolve import Settings

    path = tmp_path / "c.toml"
    path.write_text('[models]\nlinegen-shapes-c2i = { cache = "h2o", cache_ratio = "1/8", '
                    'cache_options = { recent_share = 0.25 } }\n')
    (tmp_path / "empty.toml").write_text("")
    config, empty = load_config(path), load_config(tmp_path / "empty.toml")

    def cache(model="linegen-shapes-c2i", cfg=config, **flags):
        return Settings.from_flags(model=model, config=cfg, **flags).cache

    # flags win over everything
    c = cache(cache="streaming", cache_ratio="1/4")
    assert (c.policy, c.ratio) == ("streaming", "1/4")
    # no cache flag: the config entry (what `tune` wrote)
    c = cache()
    assert (c.policy, c.ratio, c.options) == ("h2o", "1/8", {"recent_share": 0.25})
    # no cache flag and nothing configured: the full cache
    assert cache(cfg=empty).policy == "full"
    # auto: config, else the model's shipped setting, else LineAR's defaults at 1/6
    assert cache(cache="auto").policy == "h2o"
    spec = get_spec("linegen-shapes-c2i")
    shipped = cache(cache="auto", cfg=empty)
    assert (shipped.policy, shipped.ratio) == (spec.recommended_cache.policy, spec.recommended_cache.ratio)
    assert cache(model="test-tiny", cache="auto", cfg=empty) == FALLBACK
    c = cache(model="test-tiny", cache="auto", cfg=empty, cache_options=["anchors=2"])
    assert c.policy == "linear" and c.options == {"anchors": 2}
    assert cache(cache="auto", cache_ratio="1/4").ratio == "1/4"  # a ratio next to auto adjusts it


def test_tune_writes_the_config_and_run_uses_it(tmp_path):
    """On the built-in model at 1/6 (trained weights: its heads differ): tune measures the given
    candidates, per-head budgets included, judges the three lowest-KL on samples, records the choice
    (per-head shares and all) in a fresh config file, and a `run` with no --cache flag decodes with
    exactly that setting, recorded on every image row."""
    config = tmp_path / "config.toml"
    config.write_text("# mine\n[output]\nout = \"/tmp/x\"\n")
    tuned = invoke(["tune", "--model", "linegen-shapes-c2i", "--cache-ratio", "1/6", "--samples", "3",
                    "--batch-size", "3", "--policies", "streaming,h2o,linear/accumulate,linear/accumulate+heads",
                    "--config", str(config), "--json"])  # in-process: tune starts no cluster
    assert tuned.returncode == 0, tuned.stderr
    doc = json.loads(tuned.stdout)
    rows = {r["label"]: r for r in doc["rows"]}
    assert set(rows) == {"streaming", "h2o", "linear/accumulate", "linear/accumulate+heads"}
    assert all(r["kl_mean"] > 0 for r in rows.values())
    # the three lowest-KL distinct settings were judged on their generated samples (with the
    # model's classifier); the choice is the lowest KL unless another's samples are clearly closer
    distinct = sorted({(r["kl_mean"], r["top1_agreement"]) for r in rows.values()}, key=lambda k: (k[0], -k[1]))[:3]
    judged = [r for r in rows.values() if r["sample_distance"] is not None]
    assert doc["finalists"] == 3 and {(r["kl_mean"], r["top1_agreement"]) for r in judged} == set(distinct)
    assert all(r["sample_distance"] > 0 and 0 <= r["sample_accuracy"] <= 1 for r in judged)
    assert doc["best"]["label"] == H.tune_choice(judged)["label"] == "linear/accumulate+heads"
    shares = doc["head_shares"]
    table = [[float(x) for x in layer.split(",")] for layer in shares.split("/")]
    assert len(table) == 4 and all(len(layer) == 4 for layer in table)  # 4 layers x 4 heads
    assert max(map(max, table)) > 1.2 and min(map(min, table)) < 0.8  # not the uniform budget
    assert doc["best"]["options"]["head_shares"] == shares
    text = config.read_text()
    assert text.startswith("# mine\n[output]\nout = \"/tmp/x\"\n")
    entry = tomllib.loads(text)["models"]["linegen-shapes-c2i"]
    assert entry == {"cache": "linear", "cache_ratio": "1/6", "cache_options": doc["best"]["options"]}

    manifest = H.write_manifest(tmp_path / "m.jsonl", [{"class_id": 3, "count": 2}])
    ran = H.run_linegen(["run", str(manifest), "--out", str(tmp_path / "out"), "--job-id", "tuned",
                         "--config", str(config), "--shard-size", "2", "--batch-size", "2", "--json"],
                        timeout=240, cwd=tmp_path, log_dir=tmp_path / "logs")
    assert ran.returncode == 0, ran.describe()
    assert ran.json["cache_policy"] == "linear"
    job = json.loads((tmp_path / "out" / "tuned" / "job.json").read_text())
    assert job["cache"] == {"policy": "linear", "ratio": "1/6", "lines": None, "options": entry["cache_options"]}
    images = H.read_parquet((tmp_path / "out" / "tuned" / "images" / "shard-00000.parquet").read_bytes())
    assert set(images.column("cache_policy").to_pylist()) == {"linear"}
    assert {json.loads(t)["head_shares"] for t in images.column("cache_options").to_pylist()} == {shares}
    stats = H.read_parquet((tmp_path / "out" / "tuned" / "stats" / "shard-00000.parquet").read_bytes()).to_pylist()
    assert {s["cache_policy"] for s in stats} == {"linear"}


def test_sample_judge_scores_the_full_cache_zero_and_a_starved_cache_above_zero():
    """The judge compares a candidate's free-running samples with the full cache's of the same
    seeds: the full cache itself scores exactly 0, a one-line cache does not; the built-in model's
    classifier also gives class accuracy."""
    from linegen.quality.evaluate import EvalOptions, requests_for
    from linegen.quality.sample_check import SampleJudge
    from linegen.settings.model_choice import ModelChoice
    from linegen.workers.cache import make_policy
    from linegen.workers.runner import LoadedModel

    choice = ModelChoice(name="test-tiny", random_weights=True)
    model = LoadedModel.load(choice)
    requests = requests_for(EvalOptions(model=choice), model.spec, 4)
    full = model.engine(make_policy("full"), max_batch=4)
    full_tokens = full.run_wave(requests).tokens
    judge = SampleJudge(full.decode_images, full_tokens, requests)
    same = judge.score(model.engine(make_policy("full"), max_batch=4, images=False))
    starved = judge.score(model.engine(make_policy("streaming", lines=1), max_batch=4, images=False))
    assert same.distance == 0.0 and same.accuracy is None
    assert starved.distance > 0.05, starved
