"""Where a sequence's tokens sit: the condition prefix, then the raster of visual tokens."""
from __future__ import annotations

from dataclasses import dataclass


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
