"""Per-head budgets: exact totals, the same bytes as the uniform budget, attention that matches an
independent per-head mask, the static step, and bad shares refused."""
from __future__ import annotations

import pytest
import torch

from linegen.workers.cache import CacheConfigError, Layout, make_policy
from linegen.workers.cache.head_budgets import allocate, format_shares, groups, parse_shares, quantum
from linegen.workers.cache.kv import KVCache, cache_bytes_per_row
from linegen.workers.engine import Engine, GenRequest, SamplingParams
from linegen.workers.models.checkpoint import init_random
from linegen.workers.models.config import GPTConfig, ModelSpec
from linegen.workers.models.gpt import GPT
from linegen.workers.models.registry import TINY_VQ

SPEC24 = ModelSpec(name="tiny24", gpt=GPTConfig(dim=64, n_layer=2, n_head=4, vocab_size=256), image_size=96, vq=TINY_VQ)
LAYOUT24 = Layout(SPEC24.prefix_len, SPEC24.grid)
# one local head (half the budget), one broad head (2.5x), the rest in between; layer 1 uneven too
SHARES = "0.5,2.5,0.5,0.5/1,1.5,0.75,0.75"
BUDGETED = ["linear", "streaming", "h2o", "snapkv", "rkv"]


@pytest.fixture(scope="module")
def gpt24():
    gpt = GPT(SPEC24.gpt)
    init_random(gpt, 0)
    for p in gpt.parameters():
        p.data.mul_(5)  # sharp attention: selections and greedy tokens are not near-ties
    return gpt.eval()


def reqs(n, cfg=3.0):
    return [GenRequest(seed=7 + i, class_id=i * 11 % 1000, sampling=SamplingParams(cfg_scale=cfg, top_k=1))
            for i in range(n)]


# --------------------------------------------------------------------------- allocation


@pytest.mark.parametrize("budget,width,tokens", [(96, 24, 576), (72, 24, 576), (43, 16, 256), (32, 16, 256),
                                                 (7, 8, 64), (250, 24, 256)])
def test_budgets_sum_exactly_and_follow_the_shares(budget, width, tokens):
    shares = parse_shares(SHARES)
    out = allocate(shares, budget, tokens, width)
    flat = [b for layer in out for b in layer]
    assert sum(flat) == 8 * budget  # the same total as 8 heads at the uniform budget
    assert all(min(width, budget) <= b <= tokens for b in flat)
    if budget % quantum(width) == 0:
        assert all(b % quantum(width) == 0 for b in flat)  # whole half lines: few groups per layer
    if width <= budget <= tokens - 2 * width:
        assert flat[1] == max(flat) and flat[1] > budget  # the broad head gets the most
    if 2 * width <= budget <= tokens // 2:
        assert flat[0] < budget  # and a local head less than the uniform budget
    if budget < width:
        assert flat == [budget] * 8  # no head can go below a line: nothing to share


def test_uniform_shares_give_the_uniform_budget():
    assert allocate(parse_shares("1,1,1,1/1,1,1,1"), 96, 576, 24) == [[96] * 4] * 2
    assert allocate(parse_shares("3,3/3,3"), 50, 576, 24) == [[50, 50], [50, 50]]  # scale does not matter


def test_groups_and_text_round_trip():
    assert groups([48, 144, 48, 96]) == [(144, (1,)), (96, (3,)), (48, (0, 2))]
    assert parse_shares(format_shares(parse_shares(SHARES))) == parse_shares(SHARES)
    assert parse_shares("") == ()


@pytest.mark.parametrize("text,message", [
    ("1,1/1", "same number of heads"),
    ("1,x", "'x' is not a number"),
    ("1,0", "positive"),
    ("1,-2", "positive"),
    ("1,nan", "positive"),
])
def test_bad_shares_are_one_line_errors(text, message):
    with pytest.raises(CacheConfigError, match=message):
        parse_shares(text)
    with pytest.raises(CacheConfigError, match="head_shares"):
        make_policy("linear", ratio="1/6", head_shares=text)


def test_shares_must_fit_the_model():
    policy = make_policy("linear", ratio="1/6", head_shares="1,1,1/1,1,1")
    with pytest.raises(CacheConfigError, match="3 heads; the model has 2 x 4"):
        policy.head_budgets(LAYOUT24, 2, 4)
    with pytest.raises(ValueError, match="the model has 2 x 4"):
        Engine(GPT(SPEC24.gpt), None, SPEC24, policy)


# --------------------------------------------------------------------------- equal bytes


@pytest.mark.parametrize("name", BUDGETED)
@pytest.mark.parametrize("ratio", ["1/4", "1/6", "1/8"])
def test_per_head_cache_has_the_uniform_cache_bytes(name, ratio):
    c = SPEC24.gpt
    uniform = make_policy(name, ratio=ratio)
    per_head = make_policy(name, ratio=ratio, head_shares=SHARES)
    assert per_head.head_budgets(LAYOUT24, 2, 4) != uniform.head_budgets(LAYOUT24, 2, 4)
    want = cache_bytes_per_row(uniform, LAYOUT24, c.n_layer, c.n_head, c.head_dim, 4)
    assert cache_bytes_per_row(per_head, LAYOUT24, c.n_layer, c.n_head, c.head_dim, 4) == want
    caches = [KVCache(p, LAYOUT24, 6, c.n_layer, c.n_head, c.head_dim, torch.float32, torch.device("cpu"))
              for p in (uniform, per_head)]
    assert caches[0].nbytes() == caches[1].nbytes() == 6 * want  # the accounting is the allocation
    assert len(caches[1].segments) > c.n_layer  # the heads really are split into groups


def test_packing_is_unchanged_by_the_shares(gpt24):
    plans = [Engine(gpt24, None, SPEC24, make_policy("linear", ratio="1/6", **kw), max_batch=8)
             .plan_packing(budget_bytes=64 << 20) for kw in ({}, {"head_shares": SHARES})]
    assert plans[0].cache_bytes_per_sequence == plans[1].cache_bytes_per_sequence
    assert plans[0].activation_bytes_per_sequence == plans[1].activation_bytes_per_sequence
    # the line scores' workspace is one group of heads at a time: never more than the uniform one's
    assert plans[1].workspace_bytes <= plans[0].workspace_bytes
    assert plans[1].max_sequences >= plans[0].max_sequences > 0


# --------------------------------------------------------------------------- attention per head


class MaskedReference:
    """The full cache, with each head's attention restricted to what StreamingLLM with that head's
    own budget keeps: the sinks and the most recent tokens as of the last line boundary, plus the
    current line. An oracle written from the policy's definition, not from the cache's code."""

    def __init__(self, budgets, sinks, width, prefix):
        self.budgets, self.sinks, self.w, self.p = budgets, sinks, width, prefix
        self.k, self.v = {}, {}
        self.t = -prefix  # visual index of the next token fed (negative while feeding the prefix)

    def attend(self, layer, q, k, v):
        self.k[layer] = k if layer not in self.k else torch.cat([self.k[layer], k], 2)
        self.v[layer] = v if layer not in self.v else torch.cat([self.v[layer], v], 2)
        s, total = q.shape[2], self.k[layer].shape[2]
        if s > 1:  # the prefix: plain causal attention
            return torch.nn.functional.scaled_dot_product_attention(q, self.k[layer], self.v[layer], is_causal=True)
        t = total - self.p - 1  # visual index of this query
        boundary = self.w * (t // self.w)  # tokens consumed at the last line boundary
        j = torch.arange(total - self.p)
        masks = []
        for b in self.budgets[layer]:
            keep = (j < self.sinks) | (j >= boundary - (b - self.sinks)) if boundary > b else torch.ones_like(j, dtype=torch.bool)
            masks.append(torch.cat([torch.ones(self.p, dtype=torch.bool), keep | (j >= boundary)]))
        mask = torch.stack(masks)[None, :, None, :]  # [1, H, 1, total]
        return torch.nn.functional.scaled_dot_product_attention(q, self.k[layer], self.v[layer], attn_mask=mask)


def test_per_head_streaming_attends_exactly_what_each_head_keeps(gpt24):
    policy = make_policy("streaming", ratio="1/6", head_shares=SHARES)
    budgets = policy.head_budgets(LAYOUT24, 2, 4)
    assert len({b for layer in budgets for b in layer}) >= 3
    labels = torch.tensor([3, 9, 1000, 1000])
    tokens = Engine(gpt24, None, SPEC24, make_policy("full"), max_batch=2).run_wave(reqs(2)).tokens
    c, p = SPEC24.gpt, LAYOUT24.prefix
    cache = KVCache(policy, LAYOUT24, 4, c.n_layer, c.n_head, c.head_dim, torch.float32, torch.device("cpu"), pairs=2)
    ref = MaskedReference(budgets, policy.sinks, LAYOUT24.width, p)
    with torch.no_grad():
        x0 = gpt24.embed_condition(labels)
        gpt24(x0, torch.arange(p), SPEC24.grid, cache)
        gpt24(x0, torch.arange(p), SPEC24.grid, ref)
        cache.advance(p)
        for i in range(SPEC24.num_tokens - 1):
            x = gpt24.embed_tokens(torch.cat([tokens[:, i], tokens[:, i]])[:, None])
            got = gpt24(x, torch.tensor([p + i]), SPEC24.grid, cache)
            want = gpt24(x, torch.tensor([p + i]), SPEC24.grid, ref)
            assert torch.allclose(got, want, atol=1e-4), f"step {i}"
            cache.advance(1)
    for seg, n in zip(cache.segments, cache.lengths_host):  # every group ended at its own budget
        assert n - p <= seg.budget + LAYOUT24.width


@pytest.mark.parametrize("name", ["linear", "h2o"])
def test_static_step_gives_the_eager_tokens_with_per_head_budgets(gpt24, name):
    batch = reqs(3)
    policy = make_policy(name, ratio="1/6", head_shares=SHARES)
    ref = Engine(gpt24, None, SPEC24, policy, max_batch=4).run_wave(batch)
    got = Engine(gpt24, None, SPEC24, policy, max_batch=4, compile="static").run_wave(batch)
    assert torch.equal(got.tokens, ref.tokens)
    uniform = Engine(gpt24, None, SPEC24, make_policy(name, ratio="1/6"), max_batch=4).run_wave(batch)
    assert not torch.equal(uniform.tokens, ref.tokens)  # the shares changed what was kept
    assert ref.stats.kv_cache_bytes == uniform.stats.kv_cache_bytes


def test_a_local_head_keeps_only_recent_lines_and_a_broad_head_anchors_too():
    policy = make_policy("linear", ratio="1/6", head_shares=SHARES)
    budgets = policy.head_budgets(LAYOUT24, 2, 4)
    w = LAYOUT24.width
    local, broad = min(budgets[0]), max(budgets[0])
    assert policy.anchor_tokens(LAYOUT24, local) == 0 and policy.recent_tokens(LAYOUT24, local) == local
    assert policy.anchor_tokens(LAYOUT24, broad) == w and broad - policy.protected_tokens(LAYOUT24) > 2 * w


# --------------------------------------------------------------------------- measuring the shares


def test_budgets_from_profile_give_broad_heads_more_and_keep_the_total():
    from linegen.workers.cache.head_profile import budgets_from_profile, shares_text

    n, w = LAYOUT24.num_tokens, LAYOUT24.width
    k = torch.arange(n + 1, dtype=torch.float64)
    local = 1 - torch.exp(-k / (w / 4))  # nearly all its attention on a few keys
    broad = 1 - torch.exp(-k / (8 * w))  # attention spread over many lines
    medium = 1 - torch.exp(-k / (2 * w))
    curves = torch.stack([torch.stack([local, broad, medium, local]), torch.stack([medium] * 4)])
    budgets = budgets_from_profile(curves, 96, LAYOUT24)
    assert sum(map(sum, budgets)) == 8 * 96
    assert budgets[0][0] == budgets[0][3] == w  # a local head needs no more than the one-line floor
    assert budgets[0][1] > budgets[0][2] > w  # the broad head takes the most
    # the text form gives back the very same budgets at the same uniform budget
    again = make_policy("linear", ratio="1/6", head_shares=shares_text(budgets, 96)).head_budgets(LAYOUT24, 2, 4)
    assert again == budgets


