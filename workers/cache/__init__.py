"""KV cache policies, selectable by name: full, linear (LineAR), streaming, h2o, snapkv, rkv.

Importing this package (and building a policy) needs no torch; the cache itself
(workers/cache/kv.py) and the scoring context (workers/cache/context.py) do.
"""
from __future__ import annotations

from linegen.workers.cache.base import DEFAULT_RATIO, CacheConfigError, CachePolicy, Layout, parse_ratio
from linegen.workers.cache.full import FullCache
from linegen.workers.cache.h2o import H2OCache
from linegen.workers.cache.linear import LineARCache
from linegen.workers.cache.options import SCHEMAS, check_options, options_help
from linegen.workers.cache.presets import PRESETS, expand
from linegen.workers.cache.rkv import RKVCache
from linegen.workers.cache.snapkv import SnapKVCache
from linegen.workers.cache.streaming import StreamingCache

POLICIES: dict[str, type[CachePolicy]] = {
    "full": FullCache,
    "linear": LineARCache,
    "streaming": StreamingCache,
    "h2o": H2OCache,
    "snapkv": SnapKVCache,
    "rkv": RKVCache,
}
POLICY_NAMES = tuple(POLICIES)


def make_policy(name: str, ratio: float | str | None = None, lines: int | None = None, **options) -> CachePolicy:
    """Build a policy by name. `full` ignores the budget; the others need a ratio or lines.

    `preset=NAME` among the options selects a named option set (workers/cache/presets.py).
    """
    if name not in POLICIES:
        raise CacheConfigError(f"unknown cache policy {name!r}; choose from {', '.join(POLICIES)}")
    check_options(name, options)  # every key typed and in range, before anything is built
    if name == "full":
        return FullCache()
    if ratio is not None and lines is not None:
        raise CacheConfigError("give either --cache-ratio or --cache-lines, not both")
    if ratio is None and lines is None:
        ratio = DEFAULT_RATIO
    if ratio is not None:
        ratio = parse_ratio(ratio)
    return POLICIES[name](ratio=ratio, lines=lines, **expand(name, options))


__all__ = ["DEFAULT_RATIO", "CacheConfigError", "CachePolicy", "Layout", "POLICIES", "POLICY_NAMES", "PRESETS",
           "SCHEMAS", "check_options", "make_policy", "options_help", "parse_ratio"]
