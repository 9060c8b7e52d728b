"""LineAR: keep anchors, the last R lines and the mid-region tokens the last line attended to most.

docs/linear.md: at each line boundary, the just-finished line's post-RoPE queries attend
(explicit fp32 softmax, causal inside the line) over every cached key including the prefix; the
probabilities are aggregated over the line's queries per (row, layer, head), and the top scores
among the mid-region candidates fill the budget. Evicted tokens never come back.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from linegen.workers.cache.base import BudgetedPolicy, CacheConfigError, Layout

if TYPE_CHECKING:
    from torch import Tensor

    from linegen.workers.cache.context import LineContext

AGGREGATIONS = ("sum", "mean", "max")


class LineARCache(BudgetedPolicy):
    name = "linear"
    needs_queries = True

    def __init__(self, ratio: float | None = None, lines: int | None = None, *, anchors: int = 4,
                 recent_lines: int = 1, aggregate: str = "sum", pool_1d: int = 0, pool_2d: int = 0,
                 cfg_shared: bool = False):
        super().__init__(ratio, lines)
        if anchors < 0 or recent_lines < 0:
            raise CacheConfigError("anchors and recent lines must be >= 0")
        if aggregate not in AGGREGATIONS:
            raise CacheConfigError(f"aggregate must be one of {', '.join(AGGREGATIONS)}, got {aggregate!r}")
        if pool_1d and pool_2d:
            raise CacheConfigError("choose 1-D or 2-D pooling, not both")
        for k in (pool_1d, pool_2d):
            if k and (k < 1 or k % 2 == 0):
                raise CacheConfigError(f"pooling kernel must be an odd number >= 1, got {k}")
        self.anchors, self.recent_lines, self.aggregate = anchors, recent_lines, aggregate
        self.pool_1d, self.pool_2d, self.cfg_shared = pool_1d, pool_2d, cfg_shared

    def protected_tokens(self, layout: Layout) -> int:
        return self.anchors + self.recent_lines * layout.width

    def score(self, ctx: LineContext) -> Tensor:
        attn = ctx.visual_attention()
        if self.aggregate == "max":
            scores = attn.amax(dim=2)
        else:
            scores = attn.sum(dim=2)  # mean ranks identically; sum keeps the numbers interpretable
            if self.aggregate == "mean":
                scores = scores / attn.shape[2]
        scores = ctx.pool_1d(scores, self.pool_1d)
        scores = ctx.pool_2d(scores, self.pool_2d)
        first_recent = (ctx.line - self.recent_lines + 1) * ctx.layout.width
        keep = (ctx.positions < self.anchors) | (ctx.positions >= first_recent)
        return ctx.protect(scores, keep)

    def describe(self) -> dict:
        return {**super().describe(), "anchors": self.anchors, "recent_lines": self.recent_lines,
                "aggregate": self.aggregate, "pool_1d": self.pool_1d, "pool_2d": self.pool_2d,
                "cfg_shared": self.cfg_shared}
