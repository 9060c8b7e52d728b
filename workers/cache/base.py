"""The cache-policy interface shared by `full`, LineAR and the baselines, and the visual budget.

A policy never touches the cache's storage: it answers a few questions and the cache
(workers/cache/kv.py) does the rest.
  * how many visual entries must a row hold at most (`visual_capacity`),
  * whether the cache should stash each line's queries (`needs_queries`) and show the policy the
    cached keys (`needs_keys`),
  * which per-entry state it accumulates (`state_names`: fp32 [rows, heads, capacity] tensors the
    cache allocates and keeps aligned with the entries),
  * at a line boundary, a score for every cached visual entry (`score`), where +inf marks an
    entry that must be kept; the cache keeps the `budget` best per (row, head) and gathers them.

This module and the policy modules import no torch: a laptop that only submits a job checks its
cache settings (name, ratio, options, budget against the model's grid) without the GPU stack.
Scoring receives a `LineContext` (workers/cache/context.py) whose tensors and helpers do the math.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from fractions import Fraction
from typing import TYPE_CHECKING

from linegen.workers.cache.errors import CacheConfigError
from linegen.workers.cache.head_budgets import allocate, check_shape, parse_shares
from linegen.workers.cache.layout import Layout

if TYPE_CHECKING:
    from torch import Tensor

    from linegen.workers.cache.context import LineContext

# The LineAR paper's headline setting for LlamaGen: keep 1/6 of the visual tokens (4 of 24 lines).
DEFAULT_RATIO = "1/6"


def parse_ratio(text: str | float) -> float:
    """'1/6', '0.25', 0.5 -> float in (0, 1]."""
    try:
        value = float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError):
        raise CacheConfigError(f"cache ratio {text!r} is not a number or fraction like 1/6") from None
    if not 0 < value <= 1:
        raise CacheConfigError(f"cache ratio must be in (0, 1], got {text}")
    return value


class CachePolicy(ABC):
    name: str = ""
    needs_queries: bool = False
    needs_keys: bool = False  # True: LineContext.keys holds the cached visual keys (R-KV's redundancy)
    cfg_shared: bool = False  # True: a CFG pair's null row keeps what its conditional row keeps
    state_names: tuple[str, ...] = ()  # per-entry fp32 state the cache keeps aligned (e.g. H2O's "acc")

    @abstractmethod
    def visual_capacity(self, layout: Layout) -> int:
        """Most visual entries a row holds at any step (sizes the static buffer)."""

    def budget(self, layout: Layout) -> int:
        """Visual entries kept after a compaction; >= num_tokens means never compact."""
        return layout.num_tokens

    def check(self, layout: Layout) -> None:
        """Raise CacheConfigError if this policy cannot work on `layout`."""

    def head_budgets(self, layout: Layout, n_layer: int, n_head: int) -> list[list[int]]:
        """Visual entries each (layer, head) keeps after a compaction (the same for all here)."""
        return [[self.budget(layout)] * n_head for _ in range(n_layer)]

    def score(self, ctx: "LineContext") -> "Tensor":
        """[R, H, Lv] keep-priority of each cached visual entry; +inf = must keep."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"policy": self.name}

    def options(self) -> dict:
        """Every option of this policy, defaults included and a preset resolved (what an image row
        and a tuned config entry record, so a later change of a default changes nothing recorded)."""
        return {k: v for k, v in self.describe().items() if k not in ("policy", "ratio", "lines")}


class BudgetedPolicy(CachePolicy):
    """Keeps B visual tokens after each line (B = ratio*N, or lines*w); the prefix is never counted."""

    def __init__(self, ratio: float | None = None, lines: int | None = None, head_shares: str = ""):
        if (ratio is None) == (lines is None):
            raise CacheConfigError("give exactly one of a cache ratio or a budget in lines")
        if ratio is not None and not 0 < ratio <= 1:
            raise CacheConfigError(f"cache ratio must be in (0, 1], got {ratio}")
        if lines is not None and lines < 1:
            raise CacheConfigError(f"cache budget in lines must be >= 1, got {lines}")
        self.ratio, self.lines = ratio, lines
        self.head_shares = head_shares.strip()
        self.shares = parse_shares(self.head_shares)  # () = the same budget for every head

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

    def head_budgets(self, layout: Layout, n_layer: int, n_head: int) -> list[list[int]]:
        """Visual entries each (layer, head) keeps after a compaction; they sum to
        n_layer * n_head * budget whatever the shares (workers/cache/head_budgets.py)."""
        b = self.budget(layout)
        if not self.shares or b >= layout.num_tokens:
            return super().head_budgets(layout, n_layer, n_head)
        check_shape(self.shares, n_layer, n_head)
        return allocate(self.shares, b, layout.num_tokens, layout.width)

    def describe(self) -> dict:
        d = {"policy": self.name, "ratio": self.ratio}
        if self.lines is not None:
            d["lines"] = self.lines
        d["head_shares"] = self.head_shares
        return d
