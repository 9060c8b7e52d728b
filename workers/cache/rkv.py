"""R-KV at decode time, on the line schedule (buffer = one line): importance minus redundancy.

R-KV (Cai et al., 2025) scores each cached token by
    lambda * importance - (1 - lambda) * redundancy,
importance being the attention of the last `window` observation queries (averaged over them,
softmax over the keys before the window, max-pooled with `kernel`) and redundancy the key's
mean cosine similarity to the other keys, softmax-normalised (LineContext.key_redundancy). The
`window` newest tokens are kept as the observation window; the rest of the budget goes to the
best scores. The paper's README uses lambda = 0.1; `threshold` 0.5 marks near-duplicate keys.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from linegen.workers.cache.base import BudgetedPolicy, CacheConfigError, Layout

if TYPE_CHECKING:
    from torch import Tensor

    from linegen.workers.cache.context import LineContext


class RKVCache(BudgetedPolicy):
    name = "rkv"
    needs_queries = True
    needs_keys = True

    def __init__(self, ratio: float | None = None, lines: int | None = None, *, window: int = 8,
                 kernel: int = 7, mix: float = 0.1, threshold: float = 0.5, head_shares: str = ""):
        super().__init__(ratio, lines, head_shares)
        if window < 1:
            raise CacheConfigError(f"window must be >= 1, got {window}")
        if kernel < 1 or kernel % 2 == 0:
            raise CacheConfigError(f"kernel must be an odd number >= 1, got {kernel}")
        if not 0.0 <= mix <= 1.0:
            raise CacheConfigError(f"mix must be in [0, 1], got {mix}")
        self.window, self.kernel, self.mix, self.threshold = window, kernel, float(mix), float(threshold)

    def check(self, layout: Layout) -> None:
        if self.window > layout.width:
            raise CacheConfigError(f"rkv: the observation window ({self.window}) must fit in one line "
                                   f"({layout.width} tokens)")
        super().check(layout)

    def protected_tokens(self, layout: Layout) -> int:
        return self.window

    def score(self, ctx: LineContext) -> Tensor:
        newest = (ctx.line + 1) * ctx.layout.width  # visual tokens consumed so far
        attn = ctx.attention[:, :, -self.window:]  # [R, H, window, L]: the observation queries
        p, vl = ctx.layout.prefix, ctx.positions.shape[-1]
        # Softmax over the keys before the window = the exact attention renormalised over them.
        before = attn[..., :p + vl - self.window]
        importance = (before / before.sum(-1, keepdim=True).clamp_min(1e-12)).mean(dim=2)[..., p:]
        importance = ctx.pool_1d(importance, self.kernel)
        redundancy = ctx.key_redundancy(self.threshold)[..., :vl - self.window]
        scores = self.mix * importance - (1 - self.mix) * redundancy
        full = ctx.positions.new_zeros(ctx.positions.shape, dtype=scores.dtype)
        full[..., :vl - self.window] = scores
        return ctx.protect(full, ctx.positions >= newest - self.window)

    def describe(self) -> dict:
        return {**super().describe(), "window": self.window, "kernel": self.kernel, "mix": self.mix,
                "threshold": self.threshold}
