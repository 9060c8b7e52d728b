"""Memory sizes as people write them ('20GiB', '512MB') and as we print them. No torch here: a
laptop checks `--memory-budget` before it submits a job."""
from __future__ import annotations

import re
from fractions import Fraction

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "pib": 2**50}
MAX_BYTES = 2**63 - 1  # what a size may be anywhere it is used (torch, /proc, JSON readers)


def parse_bytes(text: str | int) -> int:
    """'20GiB', '512MB', '1.5 GiB', 123 -> bytes; ValueError with a one-line reason otherwise."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in UNITS:
        raise ValueError(f"cannot read memory size {text!r}; use e.g. 20GiB, 512MiB, 8GB "
                         "(B, KB..PB, KiB..PiB)")
    value = int(Fraction(m.group(1)) * UNITS[m.group(2).lower()])  # exact: no float overflow
    if value < 1:
        raise ValueError(f"memory size {text!r} must be at least one byte")
    if value > MAX_BYTES:
        raise ValueError(f"memory size {text!r} is more than any machine has (at most 8 EiB)")
    return value


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"
