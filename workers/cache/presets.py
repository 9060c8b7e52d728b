"""Named option sets of the cache policies: `--cache linear --cache-option preset=paper`.

A preset is a plain dict of a policy's options; options given next to it override its values.
`paper` is LineAR as docs/linear.md specifies it (4 anchor tokens, 1 recent line, the last
line's summed attention, one selection per row), kept reachable so the method can still be
reproduced and compared. The others are the single switches and combinations that
`linegen tune` (linegen/quality/tune.py) and the sweep in benchmarks/RESULTS.md measure.
"""
from __future__ import annotations

from linegen.workers.cache.base import CacheConfigError

_PAPER = {"anchors": 4, "anchor_lines": 0, "recent_lines": 1, "aggregate": "sum", "pool_1d": 0, "pool_2d": 0,
          "decay": 0.0, "shift_prior": 0.0, "cfg_shared": False, "cfg_rank": "cond", "selected_lines": 0}

PRESETS: dict[str, dict[str, dict]] = {
    "linear": {
        "paper": _PAPER,
        # one switch at a time, on top of the paper's setting
        "anchor-line": {**_PAPER, "anchor_lines": 1},
        "cfg-pair": {**_PAPER, "cfg_shared": True},
        "recent-2": {**_PAPER, "recent_lines": 2},
        "decay": {**_PAPER, "decay": 0.9},
        "column-prior": {**_PAPER, "shift_prior": 1.0},
        # combinations
        "structure": {**_PAPER, "anchor_lines": 1, "cfg_shared": True, "recent_lines": 2},
        "accumulate": {**_PAPER, "anchor_lines": 1, "cfg_shared": True, "recent_lines": 2, "decay": 1.0,
                       "selected_lines": 1},  # the defaults
        "accumulate-1": {**_PAPER, "anchor_lines": 1, "cfg_shared": True, "recent_lines": 1, "decay": 1.0},
        "accumulate-decay": {**_PAPER, "anchor_lines": 1, "cfg_shared": True, "recent_lines": 2, "decay": 0.9},
        "accumulate-prior": {**_PAPER, "anchor_lines": 1, "cfg_shared": True, "recent_lines": 2, "decay": 1.0,
                             "shift_prior": 1.0},
    },
}


def expand(policy: str, options: dict) -> dict:
    """Options with `preset=NAME` replaced by that preset's values (explicit options win)."""
    if "preset" not in options:
        return options
    rest = {k: v for k, v in options.items() if k != "preset"}
    name = options["preset"]
    known = PRESETS.get(policy, {})
    if name not in known:
        choices = ", ".join(known) if known else "none"
        raise CacheConfigError(f"cache policy {policy!r} has no preset {name!r} (presets: {choices})")
    return {**known[name], **rest}
