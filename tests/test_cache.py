"""Cache policies: exactness at ratio 1, the LineAR invariants at 1/6, determinism, bad settings."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from linegen.workers.cache import CacheConfigError, Layout, make_policy, parse_ratio
from linegen.workers.cache.kv import KVCache
from linegen.workers.engine import Engine, GenRequest, SamplingParams
from linegen.quality.fidelity import fidelity
from linegen.workers.engine.packing import PackingError
from linegen.workers.models.config import GPTConfig, ModelSpec
from linegen.workers.models.gpt import GPT
from linegen.workers.models.checkpoint import init_random
from linegen.workers.models.registry import TINY_VQ

POLICIES = ["linear", "streaming", "h2o", "snapkv", "rkv"]
# 24x24 tokens like LlamaGen-384 (N = 576, w = 24), with a tiny GPT so decoding is quick on a CPU
SPEC24 = ModelSpec(name="tiny24", gpt=GPTConfig(dim=64, n_layer=2, n_head=4, vocab_size=256), image_size=96, vq=TINY_VQ)
SPEC8 = ModelSpec(name="tiny8", gpt=GPTConfig(dim=64, n_layer=2, n_head=4, vocab_size=256), image_size=32, vq=TINY_VQ)


def model(spec: ModelSpec, scale: float = 5.0) -> GPT:
    gpt = GPT(spec.gpt)
    init_random(gpt, 0)
    for p in gpt.parameters():
        p.data.mul_(scale)  # sharper attention than the 0.02 init: selections actually differ
    return gpt.eval()


@pytest.fixture(scope="module")
def gpt8():
    return model(SPEC8)


@pytest.fixture(scope="module")
def gpt24():
    return model(SPEC24)


def reqs(n, cfg=3.0, top_k=0, seed0=7):
    return [GenRequest(seed=seed0 + i, class_id=i * 11 % 1000,
                       sampling=SamplingParams(cfg_scale=cfg, top_k=top_k, top_p=1.0)) for i in range(n)]


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("top_k", [1, 0])  # greedy, and sampled with fixed seeds
def test_ratio_one_reproduces_full_cache_exactly(gpt8, name, top_k):
    full = Engine(gpt8, None, SPEC8, make_policy("full"), max_batch=4).run_wave(reqs(4, top_k=top_k)).tokens
    kw = {"recent_share": 0.5} if name == "h2o" else {}
    got = Engine(gpt8, None, SPEC8, make_policy(name, ratio=1.0, **kw), max_batch=4).run_wave(reqs(4, top_k=top_k)).tokens
    assert torch.equal(got, full)


def _drive(gpt, spec, policy, rows_labels, tokens, observe):
    """Teacher-force `tokens` through a KVCache and call observe(cache, step) after every step."""
    layout = Layout(spec.prefix_len, spec.grid)
    c = spec.gpt
    n = tokens.shape[0]
    cache = KVCache(policy, layout, 2 * n, c.n_layer, c.n_head, c.head_dim, torch.float32, torch.device("cpu"), pairs=n)
    with torch.no_grad():
        gpt(gpt.embed_condition(rows_labels), torch.arange(layout.prefix), spec.grid, cache)
        cache.advance(layout.prefix)
        for i in range(spec.num_tokens - 1):
            x = torch.cat([tokens[:, i], tokens[:, i]])[:, None]
            gpt(gpt.embed_tokens(x), torch.tensor([layout.prefix + i]), spec.grid, cache)
            cache.advance(1)
            observe(cache, i)
    return cache


def test_linear_invariants_on_24x24_at_one_sixth(gpt24):
    spec, w = SPEC24, SPEC24.grid
    policy = make_policy("linear", ratio="1/6", preset="paper")
    layout = Layout(spec.prefix_len, spec.grid)
    B = policy.budget(layout)
    assert B == 96 and policy.visual_capacity(layout) == B + w
    n = 2
    labels = torch.tensor([3, 9, 1000, 1000])
    tokens = Engine(gpt24, None, spec, make_policy("full"), max_batch=n).run_wave(reqs(n)).tokens
    # layer-0 keys depend only on (token, position): the full cache's key at position p is the truth
    full_k0 = {}
    _drive(gpt24, spec, make_policy("full"), labels, tokens,
           lambda cache, i: full_k0.__setitem__("k", cache.k[0][:, :, :cache.length].clone()))
    compactions = []

    def observe(cache, i):
        vl = cache.visual_length()
        assert vl <= B + w  # never more than B + one line, any step, layer, head
        consumed = i + 1
        if consumed % w == 0 and consumed > B:  # a compaction just happened
            assert vl == B
            line = consumed // w - 1
            for layer, pos in enumerate(cache.positions):
                p = pos[:, :, :vl].long()
                assert (p[:, :, :4] == torch.arange(4)).all()  # anchors kept, in place
                last = torch.arange(line * w, (line + 1) * w)
                assert (p[:, :, -w:] == last).all()  # the line just finished is kept
                assert (p[:, :, 1:] > p[:, :, :-1]).all()  # raster order, no duplicates
            # kept keys keep their original positions: equal to the full cache's key at that position
            p0 = cache.positions[0][:, :, :vl].long()
            truth = full_k0["k"][:, :, spec.prefix_len:][:, :, :consumed]
            expect = truth.gather(2, p0[..., None].expand(-1, -1, -1, truth.shape[-1]))
            assert torch.allclose(cache.k[0][:, :, spec.prefix_len:spec.prefix_len + vl], expect, atol=1e-6)
            # layer 0 of cond and uncond rows sees identical keys (the class key is zeroed by RoPE),
            # so independent selection shows from layer 1 on
            compactions.append(cache.positions[1][:, :, :vl].clone())

    _drive(gpt24, spec, policy, labels, tokens, observe)
    assert len(compactions) == spec.grid - B // w - 1
    last = compactions[-1]
    assert not torch.equal(last[0], last[n])  # cond and uncond rows select independently
    assert not torch.equal(last[0, 0], last[0, 1])  # and heads differ


def test_shared_cfg_selection_copies_cond_choice(gpt24):
    policy = make_policy("linear", ratio="1/6", cfg_shared=True)
    labels = torch.tensor([3, 9, 1000, 1000])
    tokens = Engine(gpt24, None, SPEC24, make_policy("full"), max_batch=2).run_wave(reqs(2)).tokens
    cache = _drive(gpt24, SPEC24, policy, labels, tokens, lambda c, i: None)
    for pos in cache.positions:
        assert torch.equal(pos[:2], pos[2:])


@pytest.mark.parametrize("name", POLICIES)
def test_policies_keep_budget_and_prefix(gpt24, name):
    policy = make_policy(name, ratio="1/6")
    layout = Layout(SPEC24.prefix_len, SPEC24.grid)
    B, w = policy.budget(layout), layout.width
    labels = torch.tensor([5, 1000])
    tokens = Engine(gpt24, None, SPEC24, make_policy("full"), max_batch=1).run_wave(reqs(1)).tokens
    seen = []
    cache = _drive(gpt24, SPEC24, policy, labels, tokens, lambda c, i: seen.append(c.visual_length()))
    assert max(seen) <= B + w and seen[-1] <= B + w
    # the prefix (class token) is never evicted or moved: entry 0 still holds its value vectors
    full = _drive(gpt24, SPEC24, make_policy("full"), labels, tokens, lambda c, i: None)
    for layer in range(SPEC24.gpt.n_layer):
        assert torch.equal(cache.v[layer][:, :, 0], full.v[layer][:, :, 0])


@pytest.mark.parametrize("name", ["full"] + POLICIES)
def test_item_determinism_under_every_policy(gpt24, name):
    policy = make_policy(name, ratio=None if name == "full" else "1/6")
    eng = Engine(gpt24, None, SPEC24, policy, max_batch=3)
    batch = reqs(3, top_k=20)
    together = eng.run_wave(batch).tokens
    alone = eng.run_wave([batch[2]]).tokens
    assert torch.equal(alone[0], together[2])


def test_compression_changes_tokens_and_fidelity_metric(gpt24):
    full = Engine(gpt24, None, SPEC24, make_policy("full"), max_batch=2)
    same = fidelity(full, Engine(gpt24, None, SPEC24, make_policy("linear", ratio=1.0), max_batch=2), reqs(2))
    assert same.kl_mean == pytest.approx(0.0, abs=1e-6) and same.top1_agreement == 1.0
    small = fidelity(full, Engine(gpt24, None, SPEC24, make_policy("streaming", lines=2), max_batch=2), reqs(2))
    assert small.kl_mean > 1e-4 and small.top1_agreement < 1.0
    assert small.steps == 2 * SPEC24.num_tokens


@pytest.mark.parametrize("bad", ["0", "-1/6", "1.5", "abc", "1/0"])
def test_bad_ratios_are_clear_errors(bad):
    with pytest.raises(CacheConfigError, match="ratio"):
        make_policy("linear", ratio=bad)


def test_budget_smaller_than_protected_set_is_an_error(gpt24):
    policy = make_policy("streaming", lines=1, sinks=30)  # 24 tokens < 30 sinks
    with pytest.raises(CacheConfigError, match="smaller than the 30 tokens"):
        Engine(gpt24, None, SPEC24, policy)
    with pytest.raises(CacheConfigError, match="unknown cache policy"):
        make_policy("lru")


def test_memory_budget_too_small_states_the_minimum(gpt24):
    eng = Engine(gpt24, None, SPEC24, make_policy("linear", ratio="1/6"))
    plan = eng.plan_packing(64 * 2**20)
    assert plan.max_sequences >= 1
    with pytest.raises(PackingError, match=r"too small for one sequence.*minimum"):
        eng.plan_packing(1000)


def test_linear_packs_several_times_more_sequences_than_full(gpt24):
    budget = 256 * 2**20
    full = Engine(gpt24, None, SPEC24, make_policy("full")).plan_packing(budget)
    lin = Engine(gpt24, None, SPEC24, make_policy("linear", ratio="1/6")).plan_packing(budget)
    assert lin.cache_bytes_per_sequence < 0.3 * full.cache_bytes_per_sequence
    assert lin.max_sequences >= 3 * full.max_sequences


def test_parse_ratio_forms():
    assert parse_ratio("1/6") == pytest.approx(1 / 6)
    assert parse_ratio("0.25") == 0.25 and parse_ratio(1) == 1.0
