"""Per-(layer, head) budgets at the same total bytes as one uniform budget.

Heads differ: some look only at the last line or two (local heads), others spread their attention
over old lines (broad heads). A uniform budget B per head wastes memory on the first and starves the
second. `head_shares` gives each head a share of the total instead: head (l, h) keeps about
B * share[l][h] visual tokens, and the budgets always sum to exactly n_layer * n_head * B, so a
sequence's cache has the same bytes as under the uniform budget (each head's storage is its
budget plus one line, and the lines cancel), packing is unchanged and `bench` shows the same
sequences per device.

The shares are written as text so that a flag, a config file and an image row all carry the same
value: layers separated by `/`, heads by `,` (`0.5,1.5,1,1/1,1,1,1/...`); the mean need not be 1
(only proportions count). `linegen tune` measures them (workers/cache/head_profile.py).

Budgets are whole multiples of half a line (`quantum`) where the total allows, so a layer's heads
fall into a few groups of equal budget that the cache stores and attends to together. No torch here: settings are checked on the laptop.
"""
from __future__ import annotations

import math

from linegen.workers.cache.errors import CacheConfigError


def parse_shares(text: str) -> tuple[tuple[float, ...], ...]:
    """'1,1/0.5,1.5' -> ((1.0, 1.0), (0.5, 1.5)); '' -> () (uniform)."""
    text = text.strip()
    if not text:
        return ()
    layers = []
    for layer in text.split("/"):
        heads = []
        for item in layer.split(","):
            try:
                value = float(item)
            except ValueError:
                raise CacheConfigError(f"head_shares: {item.strip()!r} is not a number "
                                       f"(layers separated by '/', heads by ',', e.g. 0.5,1.5/1,1)") from None
            if not math.isfinite(value) or value <= 0:
                raise CacheConfigError(f"head_shares: every share must be a positive number, got {item.strip()}")
            heads.append(value)
        layers.append(tuple(heads))
    if len({len(h) for h in layers}) != 1:
        raise CacheConfigError("head_shares: every layer must list the same number of heads")
    return tuple(layers)


def format_shares(shares) -> str:
    """The text form of a [layers][heads] table of shares (6 significant digits: `allocate` gives
    back the very budgets they were computed from)."""
    return "/".join(",".join(f"{float(s):.6g}" for s in heads) for heads in shares)


def check_shape(shares: tuple[tuple[float, ...], ...], n_layer: int, n_head: int) -> None:
    if shares and (len(shares) != n_layer or len(shares[0]) != n_head):
        raise CacheConfigError(f"head_shares has {len(shares)} layers x {len(shares[0])} heads; "
                               f"the model has {n_layer} x {n_head}")


def quantum(width: int) -> int:
    """Budgets move in half lines: fine enough to follow a head's needs, coarse enough that a
    layer's heads fall into a few groups of equal budget."""
    return max(1, width // 2)


def allocate(shares: tuple[tuple[float, ...], ...], budget: int, num_tokens: int, width: int) -> list[list[int]]:
    """Integer budgets [layer][head] in proportion to `shares` that sum to exactly
    n_layer * n_head * budget, each within [min(width, budget), num_tokens]."""
    n = sum(len(h) for h in shares)
    total, q = n * budget, quantum(width)
    low, high = min(width, budget), num_tokens
    if total > n * high:
        raise CacheConfigError(f"head_shares: a budget of {budget} per head exceeds the grid")
    flat = [s for heads in shares for s in heads]
    weight = sum(flat)
    ideal = [total * s / weight for s in flat]
    out = [min(high, max(low, q * round(x / q))) for x in ideal]
    # Hand out (or take back) whole quanta to the head furthest from its ideal, then what is left
    # (less than one quantum) token by token the same way.
    while sum(out) != total:
        short = total - sum(out)
        sign = 1 if short > 0 else -1
        step = q if abs(short) >= q and any(low <= o + sign * q <= high for o in out) else 1
        room = [i for i in range(n) if low <= out[i] + sign * step <= high]
        if not room:  # cannot happen: n * low <= total <= n * high
            raise CacheConfigError("head_shares: these shares cannot be met within the grid")
        i = max(room, key=lambda j: sign * (ideal[j] - out[j]))
        out[i] += sign * step
    per = len(shares[0])
    return [out[i:i + per] for i in range(0, n, per)]


def groups(budgets: list[int]) -> list[tuple[int, tuple[int, ...]]]:
    """One layer's heads grouped by equal budget: [(budget, head indices)], largest budget first."""
    by: dict[int, list[int]] = {}
    for head, b in enumerate(budgets):
        by.setdefault(b, []).append(head)
    return [(b, tuple(by[b])) for b in sorted(by, reverse=True)]
