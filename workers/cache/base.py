"""The cache-policy interface shared by `full`, LineAR and the baselines.

A policy never touches tensors' storage: it answers three questions and the cache
(workers/cache/kv.py) does the rest.
  * how many visual entries must a row hold at most (`visual_capacity`),
  * whether the cache should stash each line's queries (`needs_queries`),
  * at a line boundary, a score for every cached visual entry (`score`), where +inf marks an
    entry that must be kept; the cache keeps the `budget` best per (row, head) and gathers them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor


class CacheConfigError(ValueError):
    """A cache setting that cannot work (bad ratio, budget smaller than the protected set...)."""


@dataclass(frozen=True)
class Layout:
    """Where tokens sit: `prefix` condition tokens, then a `grid` x `grid` raster of visual tokens."""

    prefix: int
    grid: int

    @property
    def width(self) -> int:
        return self.grid

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid


@dataclass
class LineContext:
    """Everything a policy may look at when line `line` has just been consumed, for one layer."""

    layer: int
    line: int
    layout: Layout
    positions: Tensor  # [R, H, Lv] original visual index of every cached visual entry (int16)
    attention: Tensor | None  # [R, H, w, L] fp32 attention of the line's queries over all L cached keys
    state: dict  # the policy's own per-layer state (e.g. H2O's accumulated scores), kept aligned by the cache
    pairs: int  # rows [0, pairs) are conditional, [pairs, 2*pairs) their unconditional partners; 0 = no CFG


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
    cfg_shared: bool = False  # True: a CFG pair's null row keeps what its conditional row keeps

    @abstractmethod
    def visual_capacity(self, layout: Layout) -> int:
        """Most visual entries a row holds at any step (sizes the static buffer)."""

    def budget(self, layout: Layout) -> int:
        """Visual entries kept after a compaction; >= num_tokens means never compact."""
        return layout.num_tokens

    def check(self, layout: Layout) -> None:
        """Raise CacheConfigError if this policy cannot work on `layout`."""

    def score(self, ctx: LineContext) -> Tensor:
        """[R, H, Lv] keep-priority of each cached visual entry; +inf = must keep."""
        raise NotImplementedError

    def init_state(self, rows: int, heads: int, capacity: int, device: torch.device) -> dict:
        """Per-layer state; tensors whose last dim is the visual capacity are gathered on compaction."""
        return {}

    def describe(self) -> dict:
        return {"policy": self.name}


def line_attention(q: Tensor, k: Tensor, line_len: int, key_mask: Tensor | None) -> Tensor:
    """Explicit fp32 softmax(q k^T / sqrt(d)) of a line's queries over all cached keys.

    q: [R, H, w, d]; k: [R, H, L, d] where the last `line_len` keys are the line's own tokens
    (the causal mask applies only among them); key_mask: [R, L] bool (False = padded prefix) or None.
    """
    w, length = q.shape[2], k.shape[2]
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    # query j of the line may see line keys 0..j; everything before the line is visible.
    qi = torch.arange(w, device=q.device)[:, None] + (length - line_len)
    kj = torch.arange(length, device=q.device)[None, :]
    visible = kj <= qi  # [w, L]
    allowed = visible[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]
    logits = logits.masked_fill(~allowed, float("-inf"))
    return torch.softmax(logits, dim=-1)
