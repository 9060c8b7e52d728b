"""Every cache policy's options, one schema per policy: type, range and meaning of each key.

`make_policy` checks the options against this before it builds a policy, so every entry point
(`--cache-option`, a config file's `cache_options`, `linegen.run(cache_options=...)`, `tune`'s
pick) is checked the same way, on the laptop, before any work: a value the engine cannot use
(an even pooling kernel shifts the scores by one entry and breaks the shapes; a NaN threshold
silently keeps nothing) is a one-line error naming the key. The `--cache-option` help is written
from the same tables, so it lists every key. No torch here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from linegen.workers.cache.errors import CacheConfigError
from linegen.workers.cache.head_budgets import parse_shares
from linegen.workers.cache.presets import PRESETS

MAX_KERNEL = 255  # pooling windows wider than this cover a whole 16x16..24x24 grid anyway
MAX_TOKENS = 1 << 20  # counts of tokens or lines: far above any grid, far below what overflows


@dataclass(frozen=True)
class Option:
    kind: type  # int, float, bool or str
    default: Any
    help: str
    low: float | None = None  # inclusive bounds for numbers
    high: float | None = None
    choices: tuple[str, ...] = ()  # for str options
    odd: bool = False  # a pooling kernel: an odd integer (0 where `low` is 0 means off)
    shares: bool = False  # per-head shares as text (workers/cache/head_budgets.py)

    def rule(self) -> str:
        """What a valid value is, in words ('an odd integer in 1..255')."""
        if self.kind is bool:
            return "true or false"
        if self.shares:
            return "empty (one budget for every head) or positive shares, heads separated by ',' and layers by '/'"
        if self.kind is str:
            return "one of " + ", ".join(self.choices)
        noun = "an integer" if self.kind is int else "a number"
        if self.odd:
            noun = "0 (off) or an odd integer" if self.low == 0 else "an odd integer"
            lo = 1
        else:
            lo = self.low
        if lo is not None and self.high is not None:
            return f"{noun} in {_num(lo)}..{_num(self.high)}"
        return f"{noun} >= {_num(lo)}" if lo is not None else noun

    def ok(self, value: Any) -> bool:
        if self.kind is bool:
            return isinstance(value, bool)
        if self.shares:
            try:
                return isinstance(value, str) and parse_shares(value) is not None
            except CacheConfigError:
                return False
        if self.kind is str:
            return isinstance(value, str) and value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and value < self.low or self.high is not None and value > self.high:
            return False
        return not self.odd or value == 0 or value % 2 == 1


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


_KERNEL_HELP = "max-pooling window over the scores"
_SHARES = Option(str, "", "each head's share of the budget, same total bytes (linegen tune measures them)", shares=True)

SCHEMAS: dict[str, dict[str, Option]] = {
    "full": {},
    "linear": {
        "anchors": Option(int, 4, "first visual tokens always kept", 0, MAX_TOKENS),
        "anchor_lines": Option(int, 1, "first token lines always kept (instead of anchors)", 0, MAX_TOKENS),
        "recent_lines": Option(int, 2, "most recent token lines always kept", 0, MAX_TOKENS),
        "selected_lines": Option(int, 1, "lines of the budget kept for attention-selected tokens", 0, MAX_TOKENS),
        "aggregate": Option(str, "sum", "how a line's queries' attention is combined", choices=("sum", "mean", "max")),
        "pool_1d": Option(int, 0, _KERNEL_HELP + " in cache order", 0, MAX_KERNEL, odd=True),
        "pool_2d": Option(int, 0, _KERNEL_HELP + " on the token grid", 0, MAX_KERNEL, odd=True),
        "decay": Option(float, 1.0, "weight of earlier lines' attention (0: the last line only)", 0.0, 1.0),
        "shift_prior": Option(float, 0.0, "bonus for the token one line above", 0.0, 1e6),
        "cfg_shared": Option(bool, True, "one selection per CFG pair"),
        "cfg_rank": Option(str, "cond", "which row of a CFG pair ranks", choices=("cond", "sum")),
        "head_shares": _SHARES,
    },
    "streaming": {"sinks": Option(int, 4, "first tokens always kept (attention sinks)", 0, MAX_TOKENS),
                  "head_shares": _SHARES},
    "h2o": {"recent_share": Option(float, 0.5, "share of the budget kept for the most recent tokens", 0.0, 1.0),
            "head_shares": _SHARES},
    "snapkv": {"kernel": Option(int, 7, _KERNEL_HELP, 1, MAX_KERNEL, odd=True), "head_shares": _SHARES},
    "rkv": {
        "window": Option(int, 8, "observation queries (newest tokens, kept)", 1, MAX_TOKENS),
        "kernel": Option(int, 7, _KERNEL_HELP, 1, MAX_KERNEL, odd=True),
        "mix": Option(float, 0.1, "weight of importance vs redundancy", 0.0, 1.0),
        "threshold": Option(float, 0.5, "cosine similarity from which keys count as duplicates", 0.0, 1.0),
        "head_shares": _SHARES,
    },
}


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_options(policy: str, options: dict) -> None:
    """Raise CacheConfigError naming the first key that the policy does not take or whose value
    is of the wrong type or out of range."""
    schema = SCHEMAS.get(policy)
    if schema is None:
        return  # an unknown policy is make_policy's error
    for key, value in options.items():
        if key == "preset":
            presets = PRESETS.get(policy, {})
            if not presets:
                raise CacheConfigError(f"cache option preset={_show(value)}: cache policy {policy!r} has no presets")
            if value not in presets:
                raise CacheConfigError(f"cache option preset={_show(value)}: cache policy {policy!r} has no preset "
                                       f"{_show(value)!r} (presets: {', '.join(presets)})")
            continue
        if key not in schema:
            takes = ", ".join(list(schema) + (["preset"] if PRESETS.get(policy) else [])) or "no options"
            fix = " (--cache full keeps every token; drop the option or pick a compressing --cache)" \
                if policy == "full" else ""
            raise CacheConfigError(f"cache option {key}={_show(value)}: cache policy {policy!r} has no option "
                                   f"{key!r} (it takes: {takes}){fix}")
        opt = schema[key]
        if not opt.ok(value):
            raise CacheConfigError(f"cache option {key}={_show(value)}: {policy}'s {key} must be {opt.rule()}")


def _example(o: Option) -> str:
    if o.shares:
        return "S,S,../S,S,.. (default: one budget)"
    return "|".join(o.choices) if o.choices else _show(o.default)


def options_help() -> str:
    """Every policy's keys with their defaults (or choices) for the `--cache-option` help
    (generated from the schemas, so it never misses one)."""
    parts = []
    for policy, schema in SCHEMAS.items():
        if not schema:
            continue
        keys = ", ".join(f"{k}={_example(o)}" for k, o in schema.items())
        presets = PRESETS.get(policy)
        parts.append(f"{policy}: {keys}" + (f"; preset={'|'.join(presets)}" if presets else ""))
    return "; ".join(parts)
