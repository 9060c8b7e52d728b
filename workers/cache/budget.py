"""The shared part of every compressing policy: a visual budget B, in tokens, and its checks."""
from __future__ import annotations

import torch
from torch import Tensor

from linegen.workers.cache.base import CacheConfigError, CachePolicy, LineContext, Layout


class BudgetedPolicy(CachePolicy):
    """Keeps B visual tokens after each line (B = ratio*N, or lines*w); the prefix is never counted."""

    def __init__(self, ratio: float | None = None, lines: int | None = None):
        if (ratio is None) == (lines is None):
            raise CacheConfigError("give exactly one of a cache ratio or a budget in lines")
        if ratio is not None and not 0 < ratio <= 1:
            raise CacheConfigError(f"cache ratio must be in (0, 1], got {ratio}")
        if lines is not None and lines < 1:
            raise CacheConfigError(f"cache budget in lines must be >= 1, got {lines}")
        self.ratio, self.lines = ratio, lines

    def budget(self, layout: Layout) -> int:
        if self.lines is not None:
            return min(layout.num_tokens, self.lines * layout.width)
        return min(layout.num_tokens, max(1, round(self.ratio * layout.num_tokens)))

    def visual_capacity(self, layout: Layout) -> int:
        return min(layout.num_tokens, self.budget(layout) + layout.width)

    def protected_tokens(self, layout: Layout) -> int:
        """How many tokens the policy always keeps; the budget must hold at least these."""
        return 0

    def check(self, layout: Layout) -> None:
        b, need = self.budget(layout), self.protected_tokens(layout)
        if b < layout.num_tokens and b < need:
            raise CacheConfigError(
                f"{self.name}: a budget of {b} visual tokens is smaller than the {need} tokens it "
                f"must always keep; raise --cache-ratio/--cache-lines or lower the protected set")

    def describe(self) -> dict:
        d = {"policy": self.name, "ratio": self.ratio}
        if self.lines is not None:
            d["lines"] = self.lines
        return d


def visual_attention(ctx: LineContext) -> Tensor:
    """[R, H, w, Lv]: the line's attention restricted to the visual entries (prefix columns dropped)."""
    return ctx.attention[..., ctx.layout.prefix:]


def pool_1d(scores: Tensor, kernel: int) -> Tensor:
    """Max-pool scores along the cache order (kept entries stay in raster order)."""
    if kernel <= 1:
        return scores
    r, h, n = scores.shape
    pooled = torch.nn.functional.max_pool1d(scores.reshape(r * h, 1, n), kernel, stride=1, padding=kernel // 2)
    return pooled.reshape(r, h, n)


def pool_2d(scores: Tensor, positions: Tensor, layout: Layout, kernel: int) -> Tensor:
    """Max-pool scores over the 2-D token grid (missing, evicted cells count as -inf)."""
    if kernel <= 1:
        return scores
    r, h, n = scores.shape
    g = layout.grid
    grid = torch.full((r, h, g * g), float("-inf"), dtype=scores.dtype, device=scores.device)
    positions = positions.long()
    grid.scatter_(2, positions, scores)
    pooled = torch.nn.functional.max_pool2d(grid.reshape(r * h, 1, g, g), kernel, stride=1, padding=kernel // 2)
    return pooled.reshape(r, h, g * g).gather(2, positions)


def protect(scores: Tensor, keep: Tensor) -> Tensor:
    return scores.masked_fill(keep, float("inf"))
