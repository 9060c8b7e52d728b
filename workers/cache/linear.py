"""LineAR: keep anchors, the last R lines and the mid-region tokens the last line attended to most.

docs/linear.md: at each line boundary, the just-finished line's post-RoPE queries attend
(explicit fp32 softmax, causal inside the line) over every cached key including the prefix; the
probabilities are aggregated over the line's queries per (row, layer, head), and the top scores
among the mid-region candidates fill the budget. Evicted tokens never come back.

The switches beyond the paper's description, each off in the `paper` option set
(workers/cache/presets.py), which reproduces the method as specified:
  * `anchor_lines`: protect whole first lines, not just `anchors` tokens;
  * `decay`: rank by the line's attention plus `decay` times the entry's earlier total
    (0 = the last line only, 1 = every line since the token was written, like H2O);
  * `shift_prior`: add this weight times the score of the token one row above, the relative
    position the next line will see it from (see LineContext.from_row_above);
  * `cfg_shared` with `cfg_rank`: one selection per CFG pair, ranked by the conditional row's
    scores (`cond`) or by the pair's sum (`sum`);
  * `selected_lines`: at least this many lines' worth of the budget go to attention-selected
    tokens; recent lines give way (down to one) when anchors and recent lines would fill it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from linegen.workers.cache.base import BudgetedPolicy, CacheConfigError, Layout

if TYPE_CHECKING:
    from torch import Tensor

    from linegen.workers.cache.context import LineContext

AGGREGATIONS = ("sum", "mean", "max")
CFG_RANKS = ("cond", "sum")


class LineARCache(BudgetedPolicy):
    name = "linear"
    needs_queries = True

    # Defaults: the best setting of the sweep on the built-in model (benchmarks/RESULTS.md): the
    # whole first line as anchors, 2 recent lines, every line's attention since a token was
    # written, one selection per CFG pair. `preset=paper` is the method as specified.
    def __init__(self, ratio: float | None = None, lines: int | None = None, *, anchors: int = 4,
                 anchor_lines: int = 1, recent_lines: int = 2, aggregate: str = "sum", pool_1d: int = 0,
                 pool_2d: int = 0, decay: float = 1.0, shift_prior: float = 0.0, cfg_shared: bool = True,
                 cfg_rank: str = "cond", selected_lines: int = 1, head_shares: str = ""):
        super().__init__(ratio, lines, head_shares)
        if anchors < 0 or anchor_lines < 0 or recent_lines < 0 or selected_lines < 0:
            raise CacheConfigError("anchors, anchor lines, recent lines and selected lines must be >= 0")
        if aggregate not in AGGREGATIONS:
            raise CacheConfigError(f"aggregate must be one of {', '.join(AGGREGATIONS)}, got {aggregate!r}")
        if cfg_rank not in CFG_RANKS:
            raise CacheConfigError(f"cfg_rank must be one of {', '.join(CFG_RANKS)}, got {cfg_rank!r}")
        if pool_1d and pool_2d:
            raise CacheConfigError("choose 1-D or 2-D pooling, not both")
        for k in (pool_1d, pool_2d):
            if k and (k < 1 or k % 2 == 0):
                raise CacheConfigError(f"pooling kernel must be an odd number >= 1, got {k}")
        if not 0.0 <= decay <= 1.0:
            raise CacheConfigError(f"decay must be in [0, 1], got {decay}")
        if shift_prior < 0:
            raise CacheConfigError(f"shift_prior must be >= 0, got {shift_prior}")
        self.anchors, self.anchor_lines, self.recent_lines = anchors, anchor_lines, recent_lines
        self.aggregate, self.pool_1d, self.pool_2d = aggregate, pool_1d, pool_2d
        self.decay, self.shift_prior = float(decay), float(shift_prior)
        self.cfg_shared, self.cfg_rank = bool(cfg_shared), cfg_rank
        self.selected_lines = selected_lines
        # Only an accumulating LineAR keeps per-entry state (and so scores before its first eviction).
        self.state_names = ("acc",) if self.decay > 0 else ()

    # A budget too small for the whole protected set keeps what fits, recent lines first (the
    # local context every head attends to), then anchors; the mid region is what remains.
    # `selected_lines` first shrinks the recent lines (never below one) so that the mid region
    # keeps that many lines: at 1/8 of a 24x24 grid (3 lines), a first line plus two recent lines
    # would leave nothing to select, and the samples drift (benchmarks/RESULTS.md, issue 14). A
    # budget that cannot hold anchors, a selected line and a recent line at all is left to recent
    # lines: so with per-head budgets (`head_shares`), a local head given a line or two keeps only
    # recent tokens, while a broad head keeps anchors and selected far tokens.
    def recent_tokens(self, layout: Layout, budget: int | None = None) -> int:
        w = layout.width
        budget = self.budget(layout) if budget is None else budget
        recent = self.recent_lines * w
        anchors = max(self.anchors, self.anchor_lines * w)
        if self.selected_lines and recent > w and budget >= anchors + (self.selected_lines + 1) * w:
            recent = min(recent, budget - anchors - self.selected_lines * w)
        return min(recent, budget)

    def anchor_tokens(self, layout: Layout, budget: int | None = None) -> int:
        budget = self.budget(layout) if budget is None else budget
        return min(max(self.anchors, self.anchor_lines * layout.width), budget - self.recent_tokens(layout, budget))

    def protected_tokens(self, layout: Layout) -> int:
        return self.anchor_tokens(layout) + self.recent_tokens(layout)

    def score(self, ctx: LineContext) -> Tensor:
        attn = ctx.visual_attention()
        if self.aggregate == "max":
            scores = attn.amax(dim=2)
        else:
            scores = attn.sum(dim=2)  # mean ranks identically; sum keeps the numbers interpretable
            if self.aggregate == "mean":
                scores = scores / attn.shape[2]
        if self.decay > 0:
            scores = ctx.accumulate("acc", scores, self.decay)
        if self.shift_prior > 0:
            scores = scores + self.shift_prior * ctx.from_row_above(scores)
        scores = ctx.pool_1d(scores, self.pool_1d)
        scores = ctx.pool_2d(scores, self.pool_2d)
        if self.cfg_shared and self.cfg_rank == "sum":
            scores = ctx.pair_sum(scores)  # the cache then copies the conditional rows' choice
        newest = (ctx.line + 1) * ctx.layout.width  # visual tokens consumed so far
        keep = ((ctx.positions < self.anchor_tokens(ctx.layout, ctx.budget))
                | (ctx.positions >= newest - self.recent_tokens(ctx.layout, ctx.budget)))
        return ctx.protect(scores, keep)

    def describe(self) -> dict:
        return {**super().describe(), "anchors": self.anchors, "anchor_lines": self.anchor_lines,
                "recent_lines": self.recent_lines, "aggregate": self.aggregate, "pool_1d": self.pool_1d,
                "pool_2d": self.pool_2d, "decay": self.decay, "shift_prior": self.shift_prior,
                "cfg_shared": self.cfg_shared, "cfg_rank": self.cfg_rank, "selected_lines": self.selected_lines}
