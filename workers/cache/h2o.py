"""H2O: heavy hitters by attention accumulated over every decoding step so far, plus recent tokens.

The per-step attention of each query is reconstructed exactly at the line boundary from the
stashed queries (causal inside the line), so the accumulated score equals H2O's per-step sum.
Selection happens on the shared line schedule, per layer, head and row.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from linegen.workers.cache.base import BudgetedPolicy, Layout

if TYPE_CHECKING:
    from torch import Tensor

    from linegen.workers.cache.context import LineContext


class H2OCache(BudgetedPolicy):
    name = "h2o"
    needs_queries = True
    state_names = ("acc",)  # attention each entry has received so far, summed over every step

    def __init__(self, ratio: float | None = None, lines: int | None = None, *, recent_share: float = 0.5,
                 head_shares: str = ""):
        super().__init__(ratio, lines, head_shares)
        self.recent_share = recent_share

    def recent(self, layout: Layout, budget: int | None = None) -> int:
        return int(round((self.budget(layout) if budget is None else budget) * self.recent_share))

    def protected_tokens(self, layout: Layout) -> int:
        return self.recent(layout)

    def score(self, ctx: LineContext) -> Tensor:
        acc = ctx.state["acc"]
        vl = ctx.positions.shape[-1]
        acc[:, :, :vl] += ctx.visual_attention().sum(dim=2)
        newest = (ctx.line + 1) * ctx.layout.width  # visual tokens consumed so far
        keep = ctx.positions >= newest - self.recent(ctx.layout, ctx.budget)
        return ctx.protect(acc[:, :, :vl].clone(), keep)

    def describe(self) -> dict:
        return {**super().describe(), "recent_share": self.recent_share}
