"""Accelerator prices in US dollars per device-hour, for cost estimates.

The built-in numbers are public on-demand list prices of one cloud (AWS, us-east-1, Linux) so
that they are comparable with each other: the hourly price of an instance divided by the
number of devices in it (so a device-hour also pays for its share of the host's CPUs and
memory). CPU is priced per vCPU-hour. Every entry carries its source and date. Prices move and
differ by 2-3x between clouds for the same GPU: override them with your own rates
(``--price H100=3.29`` or ``[prices]`` in the config file).

Device names are matched the way ``torch.cuda.get_device_name()`` and Ray's accelerator types
spell them: "NVIDIA H100 80GB HBM3" -> H100, "NVIDIA A100-SXM4-40GB" -> A100-40GB,
"Tesla T4" -> T4, "cpu" -> CPU.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

_VANTAGE = "AWS on-demand list price (instances.vantage.sh data, as collected in github.com/tsaol/aws-gpu)"
_SKYPILOT = ("AWS on-demand list price (SkyPilot catalog catalogs/v8/aws/vms.csv @00148f2a, "
             "see docs/outputs.md)")


@dataclass(frozen=True)
class Price:
    """One device's price: ``usd_per_hour`` per device-hour (per vCPU-hour for CPU)."""

    device: str
    usd_per_hour: float
    source: str
    date: str
    unit: str = "device-hour"
    note: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"device": self.device, "usd_per_hour": self.usd_per_hour, "unit": self.unit,
                "source": self.source, "date": self.date, "note": self.note}


BUILTIN_PRICES: dict[str, Price] = {
    p.device: p
    for p in (
        Price("H100", 55.04 / 8, f"{_SKYPILOT}; same in {_VANTAGE}", "2025-12-21",
              note="p5.48xlarge $55.04/h for 8x H100 80GB (us-east-1)"),
        Price("H200", 63.296 / 8, _VANTAGE, "2025-12-21",
              note="p5en.48xlarge $63.296/h for 8x H200 (us-east-1)"),
        Price("A100-80GB", 27.45 / 8, _SKYPILOT, "2026-11",
              note="approximate: p4de.24xlarge $27.45/h for 8x A100 80GB (us-east-1)"),
        Price("A100-40GB", 21.96 / 8, _SKYPILOT, "2026-11",
              note="approximate: p4d.24xlarge $21.96/h for 8x A100 40GB (us-east-1)"),
        Price("L40S", 1.861, _VANTAGE, "2026-08-26",
              note="g6e.xlarge $1.861/h for 1x L40S (us-east-1)"),
        Price("L4", 0.9776, _SKYPILOT, "2026-11",
              note="approximate: g6.2xlarge $0.9776/h for 1x L4 (us-east-1)"),
        Price("A10G", 1.006, "AWS on-demand list price (factualminds.com EC2 pricing article)", "2026-06-17",
              note="approximate: g5.xlarge $1.006/h for 1x A10G (us-east-1)"),
        Price("T4", 0.526, _VANTAGE, "2026-08-26",
              note="g4dn.xlarge $0.526/h for 1x T4 (us-east-1)"),
        Price("V100", 3.06, _VANTAGE, "2026-08-26",
              note="p3.2xlarge $3.06/h for 1x V100 16GB (us-east-1)"),
        Price("CPU", 0.0816 / 2, "AWS on-demand list price (factualminds.com EC2 pricing article)",
              "2026-06-17", unit="vCPU-hour",
              note="approximate: m7g.large $0.0816/h for 2 vCPUs (us-east-1)"),
    )
}


# --------------------------------------------------------------------------- device names

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\bH200\b"), "H200"),
    (re.compile(r"\bH100\b"), "H100"),
    (re.compile(r"\bA100\b.*\b80\s*G(B|IB)?\b"), "A100-80GB"),
    (re.compile(r"\bA100\b.*\b40\s*G(B|IB)?\b"), "A100-40GB"),
    (re.compile(r"\bL40S\b"), "L40S"),
    (re.compile(r"\bL4\b"), "L4"),
    (re.compile(r"\bA10G\b"), "A10G"),
    (re.compile(r"\bT4\b"), "T4"),
    (re.compile(r"\bV100\b"), "V100"),
    (re.compile(r"^V?CPUS?$"), "CPU"),
]
_FAMILY = {"A100-80GB": "A100", "A100-40GB": "A100"}
_VENDOR_WORDS = {"NVIDIA", "TESLA", "GEFORCE", "AMD", "RADEON"}


def _words(name: str) -> str:
    """Upper case, separators as spaces, vendor prefixes dropped: 'NVIDIA A100-SXM4-80GB' ->
    'A100 SXM4 80GB'."""
    words = re.sub(r"[^A-Za-z0-9.]+", " ", name).upper().split()
    while len(words) > 1 and words[0] in _VENDOR_WORDS:
        words.pop(0)
    return " ".join(words)


def _compact(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", _words(name))


def canonical_device(name: str) -> str:
    """The table key for a device name: a built-in name (H100, A100-80GB, CPU, ...) if one
    matches, else the name in upper case without vendor prefix or separators."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("empty device name")
    words = _words(name)
    for pattern, key in _PATTERNS:
        if pattern.search(words):
            return key
    return _compact(name)


def parse_price(spec: str) -> tuple[str, float]:
    """``"H100=3.29"`` -> ``("H100", 3.29)``; ValueError with a clear message otherwise."""
    if not isinstance(spec, str) or spec.count("=") != 1:
        raise ValueError(f"bad price {spec!r}: expected DEVICE=DOLLARS_PER_HOUR, e.g. H100=3.29")
    name, _, value = (part.strip() for part in spec.partition("="))
    if not name:
        raise ValueError(f"bad price {spec!r}: no device name before '=' (e.g. H100=3.29)")
    return name, _check_value(name, value.lstrip("$"), spec)


def _check_value(name: str, value: object, spec: object) -> float:
    if isinstance(value, bool):
        raise ValueError(f"bad price {spec!r}: the price of {name} must be a number of dollars per hour")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(
            f"bad price {spec!r}: {value!r} is not a number of dollars per hour (e.g. {name}=3.29)"
        ) from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"bad price {spec!r}: the price of {name} must be a finite number >= 0")
    return number


class UnknownDevice(ValueError):
    """No price for a device; the message says how to give one."""


class PriceTable:
    """Built-in prices plus overrides; lookups by any spelling of a device name.

    Overrides win over built-ins. A family override applies to every variant: ``A100=2.0``
    prices both A100-80GB and A100-40GB unless one of them is given on its own.
    """

    def __init__(self, prices: Mapping[str, Price] | None = None, overridden: Iterable[str] = ()):
        base = BUILTIN_PRICES if prices is None else prices
        self._prices: dict[str, Price] = {canonical_device(k): v for k, v in base.items()}
        self._overridden: set[str] = {canonical_device(n) for n in overridden}

    @classmethod
    def builtin(cls) -> PriceTable:
        return cls()

    def with_overrides(self, overrides: Mapping[str, object] | Iterable[str] | None,
                       source: str = "user override") -> PriceTable:
        """A new table with ``overrides`` applied: a mapping ``{"H100": 3.29}`` (e.g. the config's
        ``[prices]``) or strings ``["H100=3.29"]`` (e.g. repeated ``--price`` flags)."""
        if overrides is None:
            return PriceTable(self._prices, self._overridden)
        pairs: list[tuple[str, float]] = []
        if isinstance(overrides, Mapping):
            for name, value in overrides.items():
                if not isinstance(name, str) or not name.strip():
                    raise ValueError(f"bad price {name!r}={value!r}: no device name")
                pairs.append((name.strip(), _check_value(name, value, f"{name}={value}")))
        elif isinstance(overrides, str):
            pairs.append(parse_price(overrides))
        else:
            pairs.extend(parse_price(s) for s in overrides)
        prices = dict(self._prices)
        for name, value in pairs:
            key = canonical_device(name)
            unit = prices[key].unit if key in prices else "device-hour"
            prices[key] = Price(key, value, source, "", unit=unit, note=f"given as {name}={value:g}")
        return PriceTable(prices, self._overridden | {canonical_device(n) for n, _ in pairs})

    def lookup(self, device: str) -> Price | None:
        """The price for a device name as torch or Ray spell it, or None if unknown."""
        key = canonical_device(device)
        overridden = self._overridden
        family = _FAMILY.get(key)
        # An override of the exact device, then of its family, then the built-ins.
        for candidate, only_overrides in ((key, True), (family, True), (key, False), (family, False)):
            if candidate and candidate in self._prices and (not only_overrides or candidate in overridden):
                price = self._prices[candidate]
                return price if price.device == key else replace(price, device=key)
        # A user-named device that is not built in: match its name inside the reported name
        # ("RTX4090" for "NVIDIA GeForce RTX 4090"), longest name first.
        compact = _compact(device)
        for name in sorted(overridden, key=len, reverse=True):
            if name and name in compact and name in self._prices:
                return self._prices[name]
        return None

    def usd_per_hour(self, device: str) -> float:
        price = self.lookup(device)
        if price is None:
            raise UnknownDevice(
                f"no price for device {device!r}; give one with --price "
                f"{canonical_device(device)}=DOLLARS_PER_HOUR or in [prices] of the config "
                f"(known: {', '.join(sorted(self._prices))})"
            )
        return price.usd_per_hour

    def items(self) -> list[Price]:
        return [self._prices[k] for k in sorted(self._prices)]

    def to_dict(self) -> dict[str, dict[str, object]]:
        return {p.device: p.to_dict() for p in self.items()}

    def __contains__(self, device: object) -> bool:
        return isinstance(device, str) and self.lookup(device) is not None


def cost(device_seconds: float, device: str, table: PriceTable | None = None) -> float:
    """Dollars for ``device_seconds`` of ``device`` (for CPU: vCPU-seconds).

    Raises UnknownDevice (a ValueError) if the table has no price for it.
    """
    if device_seconds < 0 or not math.isfinite(device_seconds):
        raise ValueError(f"device_seconds must be a finite number >= 0, got {device_seconds!r}")
    table = table or PriceTable()
    return device_seconds / 3600.0 * table.usd_per_hour(device)
