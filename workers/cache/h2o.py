"""H2O: heavy hitters by attention accumulated over every decoding step so far, plus recent tokens.

The per-step attention of each query is reconstructed exactly at the line boundary from the
stashed queries (causal inside the line), so the accumulated score equals H2O's per-step sum.
Selection happens on the shared line schedule, per layer, head and row.
"""
from __future__ import annotations

import torch
from torch import Tensor

from linegen.workers.cache.base import LineContext, Layout
from linegen.workers.cache.budget import BudgetedPolicy, protect, visual_attention


class H2OCache(BudgetedPolicy):
    name = "h2o"
    needs_queries = True

    def __init__(self, ratio: float | None = None, lines: int | None = None, *, recent_share: float = 0.5):
        super().__init__(ratio, lines)
        self.recent_share = recent_share

    def recent(self, layout: Layout) -> int:
        return int(round(self.budget(layout) * self.recent_share))

    def protected_tokens(self, layout: Layout) -> int:
        return self.recent(layout)

    def init_state(self, rows: int, heads: int, capacity: int, device: torch.device) -> dict:
        return {"acc": torch.zeros(rows, heads, capacity, dtype=torch.float32, device=device)}

    def score(self, ctx: LineContext) -> Tensor:
        acc = ctx.state["acc"]
        vl = ctx.positions.shape[-1]
        acc[:, :, :vl] += visual_attention(ctx).sum(dim=2)
        newest = (ctx.line + 1) * ctx.layout.width  # visual tokens consumed so far
        keep = ctx.positions >= newest - self.recent(ctx.layout)
        return protect(acc[:, :, :vl].clone(), keep)

    def describe(self) -> dict:
        return {**super().describe(), "recent_share": self.recent_share}
