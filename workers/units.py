"""How numbers are written for people: money, durations, rates (memory sizes: sizes.py). Plain
Python, so every layer (jobs, cli, quality) shares one home. One rounding rule everywhere
(the run summary, `status`, `list`, `monitor`, the progress lines of an unattended run), so a
job's cost reads the same wherever it is shown ($0.000084, never $0.0000 in one place and
$0.000084 in another). JSON keeps the unrounded numbers."""
from __future__ import annotations

from typing import Any


def money(usd: Any) -> str:
    """'$0', '$0.000084' (under a cent: 2 significant digits kept), '$0.0123', '$1,234.57'."""
    if usd is None:
        return "n/a"
    usd = float(usd)
    if usd == 0:
        return "$0"
    if usd < 0.01:
        return f"${usd:.6f}"
    return f"${usd:,.2f}" if usd >= 100 else f"${usd:.4f}"


def duration(seconds: Any) -> str:
    if seconds is None:
        return "n/a"
    s = max(0, int(round(float(seconds))))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def rate(x: Any) -> str:
    return "n/a" if x is None else f"{float(x):.2f} img/s"
