"""StreamingLLM: attention sinks (the first visual tokens) plus a window of the most recent ones.

Content-agnostic; R-KV's port keeps RoPE positions untouched, as we do (keys are post-RoPE).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from linegen.workers.cache.base import BudgetedPolicy, Layout

if TYPE_CHECKING:
    from torch import Tensor

    from linegen.workers.cache.context import LineContext


class StreamingCache(BudgetedPolicy):
    name = "streaming"

    def __init__(self, ratio: float | None = None, lines: int | None = None, *, sinks: int = 4,
                 head_shares: str = ""):
        super().__init__(ratio, lines, head_shares)
        self.sinks = sinks

    def protected_tokens(self, layout: Layout) -> int:
        return self.sinks

    def score(self, ctx: LineContext) -> Tensor:
        # More recent = higher priority; the sinks always stay.
        return ctx.protect(ctx.positions.float(), ctx.positions < self.sinks)

    def describe(self) -> dict:
        return {**super().describe(), "sinks": self.sinks}
