"""The error every cache setting raises when it cannot work (no torch, no other imports)."""
from __future__ import annotations


class CacheConfigError(ValueError):
    """A cache setting that cannot work (bad ratio, budget smaller than the protected set...)."""
