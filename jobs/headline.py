"""The headline figures of a job, each defined once and evaluated two ways.

`linegen monitor` evaluates a figure in Python from a job's status document; the Grafana dashboard
(linegen/watch/dashboard.py) renders the same figure as PromQL over the `ray_linegen_*` series. Both come from
the one expression tree below, so the formulas cannot drift apart: ETA is (total - done) / rate
and cost per 1k images is cost / done x 1000 in both. Only the inputs differ by source: a status
document's numbers, or a PromQL expression over the registry's series (workers/metrics.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from linegen.workers.metrics import exported

# The dashboard's selector for one job's series; its variables are defined in dashboard.py.
JOB = 'job_id="$job_id",SessionName=~"$SessionName",ray_io_cluster=~"$Cluster"'
PRICE_VAR = "usd_per_gpu_hour"


def _sel(name: str) -> str:
    return f"{exported(name)}{{{JOB}}}"


# -- a tiny expression tree: evaluates on numbers, renders as PromQL -----------------------

class Expr:
    def value(self, doc: dict) -> float | None:
        raise NotImplementedError

    def promql(self) -> str:
        raise NotImplementedError

    def __sub__(self, other: Expr) -> Expr:
        return Op("-", self, other)

    def __mul__(self, other: Expr) -> Expr:
        return Op("*", self, other)

    def __truediv__(self, other: Expr) -> Expr:
        return Op("/", self, other)


@dataclass(frozen=True)
class Input(Expr):
    """A measured quantity: where a status document has it, and its PromQL over the series."""

    key: str
    from_status: Callable[[dict], float | None]
    query: str

    def value(self, doc: dict) -> float | None:
        try:
            v = self.from_status(doc)
        except (KeyError, TypeError, AttributeError):
            return None
        return None if v is None else float(v)

    def promql(self) -> str:
        return f"({self.query})"


@dataclass(frozen=True)
class Const(Expr):
    number: float

    def value(self, doc: dict) -> float | None:
        return self.number

    def promql(self) -> str:
        return f"{self.number:g}"


@dataclass(frozen=True)
class Op(Expr):
    op: str
    a: Expr
    b: Expr

    def value(self, doc: dict) -> float | None:
        x, y = self.a.value(doc), self.b.value(doc)
        if x is None or y is None:
            return None
        if self.op == "-":
            return x - y
        if self.op == "*":
            return x * y
        return x / y if y else None  # no rate (or nothing done) yet: unknown, as PromQL's empty result

    def promql(self) -> str:
        # dividing by a zero rate gives +Inf in PromQL; keep only a positive divisor, as value() does
        b = f"({self.b.promql()} > 0)" if self.op == "/" else self.b.promql()
        return f"({self.a.promql()} {self.op} {b})"


@dataclass(frozen=True)
class AtLeast0(Expr):
    """Never below 0 (more images done than planned cannot make a negative ETA)."""

    a: Expr

    def value(self, doc: dict) -> float | None:
        x = self.a.value(doc)
        return None if x is None else max(0.0, x)

    def promql(self) -> str:
        return f"clamp_min({self.a.promql()}, 0)"


def _get(*path: str) -> Callable[[dict], float | None]:
    def get(doc: dict):
        for p in path:
            doc = doc[p]
        return doc
    return get


# -- the inputs ----------------------------------------------------------------------------
IMAGES_DONE = Input("images_done", _get("images", "done"), f"max({_sel('linegen_images_done')})")
IMAGES_TOTAL = Input("images_total", _get("images", "total"), f"max({_sel('linegen_images_total')})")
IMAGES_PER_S = Input("images_per_s", _get("images_per_s"),
                     f"sum(rate({_sel('linegen_images_generated')}[$__rate_interval]))")
WORKERS_PLACED = Input("workers_placed", _get("workers", "placed"), f"max({_sel('linegen_workers_placed')})")
WORKERS_PENDING = Input("workers_pending", _get("workers", "pending"), f"max({_sel('linegen_workers_pending')})")
# a lost worker's series ends with it: the max over the range keeps what it had spent
DEVICE_HOURS = Input("device_hours", lambda d: d["cost"]["device_seconds"] / 3600,
                     f"sum(max_over_time({_sel('linegen_device_seconds')}[$__range])) / 3600")
# cost = device-hours x price: the dashboard takes one price from its $/GPU-hour variable; a status
# document has already applied the price table's price for each device (linegen/cost/job_cost.py)
USD = Input("usd", _get("cost", "usd"), f"{DEVICE_HOURS.query} * ${PRICE_VAR}")


@dataclass(frozen=True)
class Figure:
    key: str
    title: str
    unit: str  # Grafana's unit id; monitor formats by it too
    expr: Expr

    def value(self, status_doc: dict) -> float | None:
        return self.expr.value(status_doc)

    def promql(self) -> str:
        return self.expr.promql()


FIGURES: tuple[Figure, ...] = (
    Figure("images_done", "Images done", "short", IMAGES_DONE),
    Figure("images_per_s", "Images/s", "short", IMAGES_PER_S),
    Figure("eta_s", "ETA", "s", AtLeast0((IMAGES_TOTAL - IMAGES_DONE) / IMAGES_PER_S)),
    Figure("workers_placed", "Workers placed", "short", WORKERS_PLACED),
    Figure("workers_pending", "Workers pending", "short", WORKERS_PENDING),
    Figure("usd", "Cost so far", "currencyUSD", USD),
    Figure("usd_per_1k_images", "Cost per 1k images", "currencyUSD", USD / IMAGES_DONE * Const(1000)),
)


def _figure(key: str) -> Figure:
    return next(f for f in FIGURES if f.key == key)


def eta_s(images_total: int | None, images_done: int, images_per_s: float | None) -> float | None:
    """The ETA figure from plain numbers (the driver's live progress and `status` use this)."""
    return _figure("eta_s").value({"images": {"done": images_done, "total": images_total},
                                   "images_per_s": images_per_s})


def usd_per_1k_images(usd: float | None, images_done: int) -> float | None:
    """The cost-per-1k-images figure from plain numbers (linegen/cost/job_cost.py uses this)."""
    return _figure("usd_per_1k_images").value({"images": {"done": images_done}, "cost": {"usd": usd}})


def figures(status_doc: dict) -> dict[str, float | None]:
    """Every headline figure of one job's status document (`linegen status --json`); None: unknown."""
    return {f.key: f.value(status_doc) for f in FIGURES}
