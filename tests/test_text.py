"""Text-to-image: the T5 encoder (left padding, masks, truncation, feature cache), the t2i engine
against a plain masked computation, the cache policies with a 120-token prefix, and `prompt`
manifests through `linegen run` end to end."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from cli_runner import invoke
from text_fixtures import make_t2i_checkpoints, make_t5_folder
from linegen.workers.cache import Layout, make_policy
from linegen.workers.engine import Engine, GenRequest, SamplingParams
from linegen.workers.models.loading import load_model
from linegen.workers.models.registry import get_spec
from linegen.workers.models.text import TextEncoder, TextEncoderError, check_folder, clean_prompt

LINEGEN = str(Path(sys.executable).parent / "linegen")
SPEC = get_spec("test-tiny-t2i")
T = SPEC.gpt.caption_tokens  # 120, as in LlamaGen
LONG_PROMPT = " ".join(["a big red circle on the green grass"] * 20)  # 160 words: over 120 tokens


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory) -> Path:
    return make_t5_folder(tmp_path_factory.mktemp("t5") / "flan-t5-tiny", d_model=SPEC.gpt.caption_dim)


@pytest.fixture(scope="module")
def t2i_ckpts(tmp_path_factory) -> tuple[Path, Path]:
    return make_t2i_checkpoints(tmp_path_factory.mktemp("t2i"))


@pytest.fixture(scope="module")
def encoder(t5_dir) -> TextEncoder:
    return TextEncoder.load(t5_dir, caption_tokens=T, caption_dim=SPEC.gpt.caption_dim)


@pytest.fixture(scope="module")
def t2i_model(t2i_ckpts):
    gpt, vq = load_model(SPEC, t2i_ckpts[0], t2i_ckpts[1], device="cpu", dtype=torch.float32)
    return gpt, vq


# --------------------------------------------------------------------------- the encoder


def test_prompt_is_left_padded_masked_and_matches_t5(encoder, t5_dir):
    from transformers import AutoTokenizer, T5EncoderModel

    (e,) = encoder.encode(["A Red  Circle on the grass"])
    tok = AutoTokenizer.from_pretrained(str(t5_dir))
    ids = tok(["a red circle on the grass"], return_tensors="pt")["input_ids"]  # cleaned: lower case, one space
    n = ids.shape[1]
    assert ids[0, -1].item() == tok.eos_token_id and e.tokens == n and not e.truncated
    assert e.mask.tolist() == [False] * (T - n) + [True] * n  # valid rows last
    assert torch.count_nonzero(e.features[:T - n]) == 0  # padded rows are zero
    with torch.no_grad():
        direct = T5EncoderModel.from_pretrained(str(t5_dir))(input_ids=ids).last_hidden_state[0]
    assert torch.allclose(e.features[T - n:], direct, atol=1e-5)


def test_long_prompt_is_truncated_and_says_so(encoder):
    short, long = encoder.encode(["two cats", LONG_PROMPT])
    assert not short.truncated and long.truncated
    assert long.tokens == T and bool(long.mask.all())  # every one of the 120 rows is a real token


def test_features_are_computed_once_per_prompt(t5_dir):
    enc = TextEncoder.load(t5_dir, caption_tokens=T)
    out = enc.encode(["a cat"] * 5 + ["a dog", "a cat"])
    assert enc.encoded == 2 and enc.hits == 5
    assert torch.equal(out[0].features, out[6].features)
    enc.encode(["a dog", "a red house"])
    assert enc.encoded == 3 and enc.hits == 6
    assert enc.stats()["cached"] == 3


def test_feature_cache_is_bounded(t5_dir):
    enc = TextEncoder.load(t5_dir, caption_tokens=T)
    one = enc.encode(["a"])[0].nbytes
    enc.cache_limit = 2 * one
    enc.encode(["a", "b", "c"])
    assert enc.stats()["cached"] == 2 and enc.stats()["cache_bytes"] <= 2 * one
    enc.encode(["a"])  # evicted (least recently used), so encoded again
    assert enc.encoded == 4


def test_clean_prompt_follows_the_pixart_rules():
    assert clean_prompt("  A  Photo of <b>a</b> CAT  https://x.y/z @someone ") == "a photo of a cat"
    assert clean_prompt("red\u2014blue “quoted” ‘single’") == "red-blue \"quoted\" 'single'"
    assert clean_prompt("hello%20world") == "hello world"


def test_bad_text_encoder_folders(tmp_path, t5_dir):
    with pytest.raises(TextEncoderError, match="not a folder"):
        check_folder(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TextEncoderError, match="missing config.json, weights .*tokenizer"):
        check_folder(empty)
    with pytest.raises(TextEncoderError, match="d_model 32 does not match the model's caption width 2048"):
        TextEncoder.load(t5_dir, caption_dim=2048)


def test_text_encoder_from_an_s3_prefix(s3_env, tmp_bucket, t5_dir, tmp_path):
    from linegen.jobs.storage import fetch_folder_to_local, open_storage

    store = open_storage(f"s3://{tmp_bucket}/models/flan-t5-tiny", endpoint_url=s3_env.endpoint_url)
    for f in sorted(t5_dir.iterdir()):
        store.put(f.name, f.read_bytes())
    folder = fetch_folder_to_local(f"s3://{tmp_bucket}/models/flan-t5-tiny/", endpoint_url=s3_env.endpoint_url,
                                   cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in t5_dir.iterdir())
    enc = TextEncoder.load(folder, caption_tokens=T)
    local = TextEncoder.load(t5_dir, caption_tokens=T)
    assert torch.equal(enc.encode(["a red circle"])[0].features, local.encode(["a red circle"])[0].features)


# --------------------------------------------------------------------------- the engine


def _captions(n: int, valid: list[int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    caps, masks = [], []
    for i in range(n):
        m = torch.zeros(T, dtype=torch.bool)
        if valid[i]:
            m[T - valid[i]:] = True
        caps.append(torch.randn(T, SPEC.gpt.caption_dim, generator=g) * m[:, None])
        masks.append(m)
    return caps, masks


def _masked_logits(gpt, prefix: torch.Tensor, pad: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The straightforward computation: one forward over [caption; tokens] with LlamaGen's mask
    (causal, padded caption columns off, diagonal forced on)."""
    B, N = tokens.shape
    x = torch.cat([gpt.embed_condition(prefix), gpt.embed_tokens(tokens[:, :-1])], dim=1)
    S = x.shape[1]
    mask = torch.tril(torch.ones(S, S, dtype=torch.bool)).expand(B, 1, S, S).clone()
    mask[:, 0, :, :T] &= pad[:, None, :]
    mask |= torch.eye(S, dtype=torch.bool)
    return gpt(x, torch.arange(S), SPEC.grid, mask=mask, last_only=False)[:, T - 1:]


def test_t2i_engine_matches_plain_masked_computation(t2i_model):
    gpt, _ = t2i_model
    N, cfg = SPEC.num_tokens, 3.0
    caps, masks = _captions(3, valid=[7, 120, 0])  # short, full, and an all-padding prompt
    requests = [GenRequest(seed=i, caption=c, caption_mask=m, sampling=SamplingParams(cfg_scale=cfg))
                for i, (c, m) in enumerate(zip(caps, masks))]
    forced = torch.randint(0, SPEC.gpt.vocab_size, (3, N), generator=torch.Generator().manual_seed(1))
    got = torch.zeros(3, N, SPEC.gpt.vocab_size)

    def keep(step, logits):
        got[:, step] = logits

    Engine(gpt, None, SPEC, make_policy("full"), max_batch=3).run_wave(requests, forced=forced, on_logits=keep)
    pad = torch.stack(masks)
    with torch.no_grad():
        cond = _masked_logits(gpt, torch.stack(caps), pad, forced)
        null = gpt.cls_embedding.uncond_embedding.expand(3, -1, -1)
        uncond = _masked_logits(gpt, null, pad, forced)  # the learned null caption, same mask
    expected = uncond + cfg * (cond - uncond)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()
    assert not torch.allclose(got[0], got[1], atol=1e-2)  # the caption matters


@pytest.mark.parametrize("name", ["linear", "streaming", "h2o", "snapkv"])
def test_policies_keep_the_whole_caption_outside_the_budget(t2i_model, name, monkeypatch):
    gpt, _ = t2i_model
    layout = Layout(prefix=T, grid=SPEC.grid)
    policy = make_policy(name, ratio="1/4")
    assert policy.budget(layout) == SPEC.num_tokens // 4  # visual tokens only, whatever the prefix
    c2i_policy = make_policy(name, ratio="1/4")
    assert policy.visual_capacity(layout) == c2i_policy.visual_capacity(Layout(prefix=1, grid=SPEC.grid))
    engine = Engine(gpt, None, SPEC, policy, max_batch=2)
    full = Engine(gpt, None, SPEC, make_policy("full"), max_batch=2)
    c = SPEC.gpt
    per_row = 2 * c.n_layer * c.n_head * c.head_dim * 4 * (T + policy.visual_capacity(layout))
    assert full.cache_bytes_per_sequence() == 2 * 2 * c.n_layer * c.n_head * c.head_dim * 4 * (T + SPEC.num_tokens)
    assert per_row * 2 <= engine.cache_bytes_per_sequence() < 1.2 * per_row * 2  # + positions, query stash

    caps, masks = _captions(2, valid=[5, 0], seed=3)
    requests = [GenRequest(seed=i, caption=cp, caption_mask=m, sampling=SamplingParams(cfg_scale=2.0))
                for i, (cp, m) in enumerate(zip(caps, masks))]
    kept = {True: [], False: []}  # compressing cache / full cache: caption entries after each line
    from linegen.workers.cache import kv as kv_module

    real_end_line = kv_module.KVCache.end_line

    def spy(cache, line):
        real_end_line(cache, line)
        kept[cache.compresses].append([k[:, :, :T].clone() for k in cache.k])

    monkeypatch.setattr(kv_module.KVCache, "end_line", spy)
    res = engine.run_wave(requests)
    full.run_wave(requests, forced=res.tokens)
    assert res.tokens.shape == (2, SPEC.num_tokens)
    assert len(kept[True]) >= SPEC.grid - 1 and kept[False]
    reference = kept[False][0]
    for state in kept[True]:  # compaction never moves or drops a caption entry
        for a, b in zip(reference, state):
            assert torch.allclose(a, b, atol=1e-6)


def test_t2i_tokens_do_not_depend_on_the_batch(t2i_model):
    gpt, _ = t2i_model
    caps, masks = _captions(3, valid=[4, 30, 1], seed=5)
    reqs = [GenRequest(seed=100 + i, caption=c, caption_mask=m, sampling=SamplingParams(cfg_scale=2.0))
            for i, (c, m) in enumerate(zip(caps, masks))]
    engine = Engine(gpt, None, SPEC, make_policy("linear", ratio="1/4"), max_batch=3)
    together = engine.run_wave(reqs).tokens
    alone = engine.run_wave([reqs[1]]).tokens
    assert torch.equal(together[1], alone[0])
    assert not torch.equal(together[0], together[1])


def test_packing_counts_the_caption_prefix(t2i_model):
    gpt, _ = t2i_model
    c2i_spec = get_spec("test-tiny")  # the same GPT sizes with a 1-token class prefix
    c2i_gpt, _ = load_model(c2i_spec, None, None, device="cpu", dtype=torch.float32)
    t2i = Engine(gpt, None, SPEC, make_policy("linear", ratio="1/4"), max_batch=1)
    c2i = Engine(c2i_gpt, None, c2i_spec, make_policy("linear", ratio="1/4"), max_batch=1)
    c = SPEC.gpt
    # a CFG pair (2 rows) x K and V x layers x width x fp32 for the 119 extra prefix entries
    assert t2i.cache_bytes_per_sequence() - c2i.cache_bytes_per_sequence() == 2 * 2 * c.n_layer * c.dim * 4 * (T - 1)
    budget = 64 << 20
    assert t2i.plan_packing(budget).max_sequences < c2i.plan_packing(budget).max_sequences


# --------------------------------------------------------------------------- jobs


def _actor_sink(tmp_path):
    from linegen.jobs.sink import ShardSink
    from linegen.jobs.storage import open_storage

    return ShardSink(open_storage(str(tmp_path / "out")), "job-t", SPEC.name, "full", 1.0)


def test_actor_encodes_each_prompt_once(t5_dir, t2i_ckpts, tmp_path):
    from linegen.settings.cache_choice import CacheChoice
    from linegen.jobs.manifest import Conditioning, parse_manifest
    from linegen.settings.model_choice import ModelChoice
    from linegen.jobs.plan import Plan
    from linegen.workers.models.config import SamplingParams
    from linegen.workers.actor import GenerationActor

    rows = parse_manifest(b'{"prompt": "a red circle", "count": 5}\n{"prompt": "two dogs", "count": 2}\n',
                          "p.jsonl", Conditioning(kind="text"))
    shards = Plan(rows, job_seed=0, sampling=SamplingParams(cfg_scale=2.0), shard_size=100)
    model = ModelChoice(name=SPEC.name, checkpoint=str(t2i_ckpts[0]), vq_checkpoint=str(t2i_ckpts[1]),
                        text_encoder=str(t5_dir), device="cpu")
    actor = GenerationActor(model, CacheChoice(), _actor_sink(tmp_path), batch_size=3)
    try:
        actor.submit(shards[0], 1)
        outcome = actor.next_outcome(timeout=120)
    finally:
        actor.shutdown()
    assert outcome is not None and outcome.status == "committed", outcome
    stats = actor.info()["text_encoder"]
    assert stats["encoded"] == 2 and stats["cache_hits"] == 5  # 7 items, 2 distinct prompts, waves of 3


@pytest.fixture(scope="module")
def t2i_job(tmp_path_factory, t5_dir, t2i_ckpts):
    d = tmp_path_factory.mktemp("t2ijob")
    manifest = d / "prompts.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "a red circle on the grass", "count": 3, "id": "circle"},
        {"prompt": "two dogs and a cat"},
        {"prompt": LONG_PROMPT, "count": 2},
    ]) + "\n")
    proc = subprocess.run([LINEGEN, "run", str(manifest), "--out", str(d / "out"), "--job-id", "t2i",
                           "--model", SPEC.name, "--checkpoint", str(t2i_ckpts[0]), "--vq-checkpoint", str(t2i_ckpts[1]),
                           "--text-encoder", str(t5_dir), "--cache", "linear", "--cache-ratio", "1/4",
                           "--shard-size", "4", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d, json.loads(proc.stdout)


def test_prompt_manifest_end_to_end(t2i_job):
    d, summary = t2i_job
    assert summary["images"]["done"] == 6 and summary["prompts_truncated"] == 2
    tables = [pq.read_table(p) for p in sorted((d / "out" / "t2i" / "images").glob("*.parquet"))]
    rows = [r for t in tables for r in t.to_pylist()]
    assert len(rows) == 6
    by_prompt = {}
    for r in rows:
        by_prompt.setdefault(r["prompt"], []).append(r)
        assert r["class_id"] is None and r["model"] == SPEC.name and r["cache_policy"] == "linear"
        assert len(r["tokens"]) == SPEC.num_tokens and r["image"]["bytes"][:4] == b"\x89PNG"
    assert sorted(by_prompt) == sorted(["a red circle on the grass", "two dogs and a cat", LONG_PROMPT])
    assert [r["id"] for r in by_prompt["a red circle on the grass"]] == ["circle"] * 3
    assert all(r["prompt_truncated"] and r["prompt_tokens"] == T for r in by_prompt[LONG_PROMPT])
    assert not any(r["prompt_truncated"] for r in by_prompt["two dogs and a cat"])
    assert 1 < by_prompt["two dogs and a cat"][0]["prompt_tokens"] < 10
    # replicas of one prompt differ (own seeds); the same prompt+seed is reproducible (below)
    grids = [tuple(r["tokens"]) for r in by_prompt["a red circle on the grass"]]
    assert len(set(grids)) == 3
    stats = [r for p in sorted((d / "out" / "t2i" / "stats").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert sum(r["prompts_truncated"] for r in stats) == 2


@pytest.mark.parametrize("model, rows, extra, message", [
    ("test-tiny-t2i", '{"class_id": 3}\n{"prompt": "ok"}\n{"class_id": 1}\n', "TEXT",
     r"p\.jsonl:1: field 'class_id': .*text-conditional.*\n.*p\.jsonl:3: field 'class_id'"),
    ("test-tiny", '{"prompt": "a cat"}\n', None, r"p\.jsonl:1: field 'prompt': the model has no text conditioning"),
    ("test-tiny-t2i", '{"prompt": "a cat"}\n', None, r"needs --text-encoder"),
    ("test-tiny", '{"class_id": 1}\n', "TEXT", r"--text-encoder is only for text-to-image models"),
    ("test-tiny-t2i", '{"prompt": "a cat"}\n', "EMPTY", r"--text-encoder: text encoder .*missing config.json"),
])
def test_bad_text_input_is_a_clear_error_and_writes_nothing(tmp_path, t5_dir, model, rows, extra, message):
    manifest = tmp_path / "p.jsonl"
    manifest.write_text(rows)
    args = ["run", str(manifest), "--out", str(tmp_path / "out"), "--model", model]
    if extra == "TEXT":
        args += ["--text-encoder", str(t5_dir)]
    elif extra == "EMPTY":
        (tmp_path / "empty").mkdir()
        args += ["--text-encoder", str(tmp_path / "empty")]
    proc = invoke(args)  # in-process: refused before anything runs
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    import re

    assert re.search(message, proc.stderr), proc.stderr
    assert not (tmp_path / "out").exists()


def test_bench_runs_a_t2i_model():
    from linegen.bench.engine_bench import BenchOptions, run_bench

    report = run_bench(BenchOptions(model=SPEC.name, policies=("full", "linear"), ratios=("1/4",), batch=2,
                                    memory_budget="64MiB", cfg_scale=2.0, warmup=False))
    assert report["prefix"] == T and report["tokens"] == SPEC.num_tokens
    full, linear = report["results"]
    # the 120 caption entries stay in every row's cache, so the saving is smaller than 1/4 of the tokens
    kv_ratio = linear["vs_full"]["kv_bytes_per_sequence"]
    assert (T + 16) / (T + 64) < kv_ratio < 1.0
    assert linear["max_sequences"] >= full["max_sequences"] and linear["images_per_s"] > 0


def test_validate_lists_the_prompts_that_will_be_cut(tmp_path, t5_dir):
    manifest = tmp_path / "p.jsonl"
    manifest.write_text(json.dumps({"prompt": "a cat"}) + "\n" + json.dumps({"prompt": LONG_PROMPT, "count": 2}) + "\n")
    proc = invoke(["validate", str(manifest), "--model", SPEC.name, "--text-encoder", str(t5_dir), "--json"])
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["images"]["total"] == 3 and [t["line"] for t in doc["truncated"]] == [2]
    assert doc["truncated"][0]["tokens"] > T == doc["truncated"][0]["limit"]
    proc = invoke(["validate", str(manifest), "--model", "test-tiny", "--text-encoder", str(t5_dir)])
    assert proc.returncode != 0 and "needs --model with a text-to-image model" in proc.stderr
