"""SnapKV at decode time: the last line is the observation window; its mean attention, max-pooled,
ranks the older tokens; the window itself is kept. Compressed once per line."""
from __future__ import annotations

from typing import TYPE_CHECKING

from linegen.workers.cache.base import BudgetedPolicy, Layout

if TYPE_CHECKING:
    from torch import Tensor

    from linegen.workers.cache.context import LineContext


class SnapKVCache(BudgetedPolicy):
    name = "snapkv"
    needs_queries = True

    def __init__(self, ratio: float | None = None, lines: int | None = None, *, kernel: int = 7,
                 head_shares: str = ""):
        super().__init__(ratio, lines, head_shares)
        self.kernel = kernel

    def protected_tokens(self, layout: Layout) -> int:
        return layout.width

    def score(self, ctx: LineContext) -> Tensor:
        scores = ctx.pool_1d(ctx.visual_attention().mean(dim=2), self.kernel)
        window_start = ctx.line * ctx.layout.width
        return ctx.protect(scores, ctx.positions >= window_start)

    def describe(self) -> dict:
        return {**super().describe(), "kernel": self.kernel}
