"""LineAR's switches beyond the paper, the named option sets and R-KV: each does what it claims."""
from __future__ import annotations

import pytest
import torch

from linegen.workers.cache import PRESETS, CacheConfigError, Layout, make_policy
from linegen.workers.cache.context import LineContext
from linegen.workers.engine import Engine

from test_cache import SPEC24, _drive, model, reqs


@pytest.fixture(scope="module")
def gpt24():
    return model(SPEC24)


@pytest.fixture(scope="module")
def forced(gpt24):
    """Two items' full-cache tokens on the 24x24 grid, and the class labels of their 4 cache rows."""
    tokens = Engine(gpt24, None, SPEC24, make_policy("full"), max_batch=2).run_wave(reqs(2)).tokens
    return tokens, torch.tensor([3, 9, 1000, 1000])


def test_paper_preset_is_the_specified_method_and_options_override_it():
    paper = make_policy("linear", ratio="1/6", preset="paper").describe()
    assert {k: paper[k] for k in ("anchors", "anchor_lines", "recent_lines", "aggregate", "decay", "shift_prior",
                                  "cfg_shared", "pool_1d", "pool_2d")} == {
        "anchors": 4, "anchor_lines": 0, "recent_lines": 1, "aggregate": "sum", "decay": 0.0, "shift_prior": 0.0,
        "cfg_shared": False, "pool_1d": 0, "pool_2d": 0}
    assert make_policy("linear", ratio="1/6", preset="paper", anchors=8).describe()["anchors"] == 8
    with pytest.raises(CacheConfigError, match="no preset 'nope'.*paper"):
        make_policy("linear", ratio="1/6", preset="nope")
    with pytest.raises(CacheConfigError, match="no preset"):
        make_policy("h2o", ratio="1/6", preset="paper")


@pytest.mark.parametrize("preset", sorted(PRESETS["linear"]))
def test_every_linear_preset_holds_its_budget_and_protected_set(gpt24, forced, preset):
    tokens, labels = forced
    policy = make_policy("linear", ratio="1/6", preset=preset)
    layout = Layout(SPEC24.prefix_len, SPEC24.grid)
    B, w = policy.budget(layout), layout.width
    anchors, recent = policy.anchor_tokens(layout), policy.recent_lines

    def observe(cache, i):
        vl = cache.visual_length()
        assert vl <= B + w
        consumed = i + 1
        if consumed % w == 0 and consumed > B:
            assert vl == B
            line = consumed // w - 1
            for pos in cache.positions:
                p = pos[:, :, :vl].long()
                assert (p[:, :, :anchors] == torch.arange(anchors)).all()
                assert (p[:, :, vl - recent * w:] == torch.arange((line - recent + 1) * w, (line + 1) * w)).all()
                assert (p[:, :, 1:] > p[:, :, :-1]).all()
                if policy.cfg_shared:
                    assert torch.equal(p[:2], p[2:])

    _drive(gpt24, SPEC24, policy, labels, tokens, observe)


def test_full_accumulation_with_two_recent_lines_is_h2o(gpt24):
    """decay=1 sums every line's attention since a token was written: H2O's score. With no anchors
    and 2 protected lines (H2O's recent half of 96 tokens) both keep the same tokens, so they
    generate the same images; the state survives every compaction aligned with its entries."""
    h2o = Engine(gpt24, None, SPEC24, make_policy("h2o", ratio="1/6"), max_batch=2).run_wave(reqs(2, top_k=20)).tokens
    lin = make_policy("linear", ratio="1/6", preset="paper", anchors=0, recent_lines=2, decay=1.0)
    got = Engine(gpt24, None, SPEC24, lin, max_batch=2).run_wave(reqs(2, top_k=20)).tokens
    assert torch.equal(got, h2o)
    last_line_only = make_policy("linear", ratio="1/6", preset="paper", anchors=0, recent_lines=2)
    other = Engine(gpt24, None, SPEC24, last_line_only, max_batch=2).run_wave(reqs(2, top_k=20)).tokens
    assert not torch.equal(other, h2o)


def _ctx(positions, scores_shape=None, grid=4, pairs=0, state=None):
    pos = torch.tensor(positions, dtype=torch.int16)
    return LineContext(layer=0, line=0, layout=Layout(prefix=1, grid=grid), positions=pos, attention=None,
                       state=state or {}, pairs=pairs)


def test_accumulate_decays_the_old_total():
    ctx = _ctx([[[0, 1, 2]]], state={"acc": torch.zeros(1, 1, 5)})
    ctx.accumulate("acc", torch.tensor([[[1.0, 2.0, 4.0]]]), 0.5)
    got = ctx.accumulate("acc", torch.tensor([[[1.0, 0.0, 0.0]]]), 0.5)
    assert torch.allclose(got, torch.tensor([[[1.5, 1.0, 2.0]]]))
    assert ctx.state["acc"][0, 0, 3:].abs().sum() == 0  # slots past the entries untouched


def test_from_row_above_reads_the_token_one_grid_row_up():
    # grid 4: token 5 = (row 1, col 1) sits below token 1; token 9 below 5; token 6's upper neighbour 2 is gone
    ctx = _ctx([[[0, 1, 5, 6, 9]]])
    scores = torch.tensor([[[10.0, 11.0, 15.0, 16.0, 19.0]]])
    assert ctx.from_row_above(scores).tolist() == [[[0.0, 0.0, 11.0, 0.0, 15.0]]]


def test_pair_sum_gives_conditional_rows_the_pair_total():
    ctx = _ctx([[[0, 1]], [[0, 1]], [[0, 1]], [[0, 1]]], pairs=2)
    s = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]], [[10.0, 20.0]], [[30.0, 40.0]]])
    out = ctx.pair_sum(s)
    assert out[:2].tolist() == [[[11.0, 22.0]], [[33.0, 44.0]]] and torch.equal(out[2:], s[2:])


def test_key_redundancy_discounts_duplicates_but_spares_the_newest():
    # keys 0, 1, 3 point the same way, key 2 elsewhere; each key's newest near-duplicate is not counted
    k = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [1.0, 0.02]])[None, None]
    ctx = _ctx([[[0, 1, 2, 3]]])
    ctx.keys = k
    red = ctx.key_redundancy(0.5)[0, 0]
    assert torch.allclose(red.sum(), torch.tensor(1.0))
    assert red[2] < red[0] and red[2] < red[1]  # the odd one out is less redundant than the older duplicates
    assert red[0] > red[3]  # key 3 is the newest duplicate: the others' similarity to it is not counted


def test_rkv_keeps_its_window_and_budget(gpt24, forced):
    tokens, labels = forced
    policy = make_policy("rkv", ratio="1/6")
    layout = Layout(SPEC24.prefix_len, SPEC24.grid)
    B, w = policy.budget(layout), layout.width

    def observe(cache, i):
        consumed = i + 1
        if consumed % w == 0 and consumed > B:
            assert cache.visual_length() == B
            for pos in cache.positions:
                assert (pos[:, :, B - 8:B].long() == torch.arange(consumed - 8, consumed)).all()

    _drive(gpt24, SPEC24, policy, labels, tokens, observe)
    with pytest.raises(CacheConfigError, match="window"):
        Engine(gpt24, None, SPEC24, make_policy("rkv", ratio="1/6", window=30))


def test_linear_keeps_what_fits_when_the_budget_is_below_its_protected_set():
    layout = Layout(SPEC24.prefix_len, SPEC24.grid)
    two_lines = make_policy("linear", lines=2, preset="paper", anchor_lines=1, recent_lines=2)
    assert (two_lines.recent_tokens(layout), two_lines.anchor_tokens(layout)) == (48, 0)
    three = make_policy("linear", lines=3, preset="paper", anchor_lines=1, recent_lines=2)
    assert (three.recent_tokens(layout), three.anchor_tokens(layout)) == (48, 24)
    tiny = make_policy("linear", lines=1, preset="paper")  # 24 tokens: the last line, no anchors
    assert (tiny.recent_tokens(layout), tiny.anchor_tokens(layout)) == (24, 0)
    tiny.check(layout)


def test_default_linear_keeps_a_line_to_select_at_tight_budgets():
    layout = Layout(SPEC24.prefix_len, SPEC24.grid)  # 24 x 24: 1/8 is 72 tokens (3 lines), 1/6 is 4 lines
    tight, roomy = make_policy("linear", ratio="1/8"), make_policy("linear", ratio="1/6")
    assert (tight.anchor_tokens(layout), tight.recent_tokens(layout)) == (24, 24)  # 24 left to select
    assert (roomy.anchor_tokens(layout), roomy.recent_tokens(layout)) == (24, 48)  # the two recent lines
    one_recent = make_policy("linear", ratio="1/8", preset="accumulate-1")
    assert tight.protected_tokens(layout) == one_recent.protected_tokens(layout)
    assert make_policy("linear", ratio="1/8", preset="accumulate").recent_tokens(layout) == 24  # = the defaults
    assert make_policy("linear", ratio="1/8", preset="structure").recent_tokens(layout) == 48  # no room kept
    assert make_policy("linear", ratio="1/8", recent_lines=1, selected_lines=3).recent_tokens(layout) == 24


@pytest.mark.parametrize("bad, match", [({"decay": 1.5}, "decay"), ({"shift_prior": -1}, "shift_prior"),
                                        ({"cfg_rank": "mean"}, "cfg_rank"), ({"anchor_lines": -1}, r"anchor_lines must be an integer in 0\.\.")])
def test_bad_linear_switches_are_clear_errors(bad, match):
    with pytest.raises(CacheConfigError, match=match):
        make_policy("linear", ratio="1/6", **bad)
