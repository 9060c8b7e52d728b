"""The full cache: every visual token is kept (the baseline every policy is measured against)."""
from __future__ import annotations

from linegen.workers.cache.base import CachePolicy, Layout


class FullCache(CachePolicy):
    name = "full"

    def visual_capacity(self, layout: Layout) -> int:
        return layout.num_tokens

    def describe(self) -> dict:
        return {"policy": self.name, "ratio": 1.0}
