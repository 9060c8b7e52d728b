"""Small line charts as inline SVG, so a report is one self-contained file with no plotting library.

Every chart of a report shares one time axis (seconds since the job started), so shards, retries
and node losses line up with throughput and memory.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Callable

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
W, H = 920, 250
LEFT, RIGHT, TOP, BOTTOM = 80, 170, 30, 36  # plot margins; the legend sits on the right


@dataclass
class Line:
    name: str
    points: list[tuple[float, float]]
    step: bool = False  # a cumulative count: hold each value until the next
    dashed: bool = False


@dataclass
class Mark:
    """A vertical marker at time ``x`` (a node loss, a requeued shard)."""

    x: float
    label: str
    color: str = "#d62728"


@dataclass
class Chart:
    title: str
    lines: list[Line]
    x_range: tuple[float, float]
    y_format: Callable[[float], str] = lambda v: f"{v:g}"
    marks: list[Mark] = field(default_factory=list)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round numbers covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int(math.ceil((hi - start) / step)) + 1)]


def time_label(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s % 60 else f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def render(chart: Chart) -> str:
    x0, x1 = chart.x_range
    if x1 <= x0:
        x1 = x0 + 1.0
    ys = [y for ln in chart.lines for _, y in ln.points]
    y_hi = max(ys) if ys else 1.0
    y_ticks = nice_ticks(0.0, y_hi if y_hi > 0 else 1.0)
    y1 = y_ticks[-1]
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return TOP + ph - (y / y1) * ph if y1 else TOP + ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" role="img" aria-label="{escape(chart.title)}">',
           f'<text x="{LEFT}" y="18" font-size="14" font-weight="bold">{escape(chart.title)}</text>',
           f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>']
    for t in y_ticks:
        y = sy(t)
        out.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
                   f'{escape(chart.y_format(t))}</text>')
    for t in nice_ticks(0.0, x1 - x0, 8):
        if t > x1 - x0:
            break
        x = sx(x0 + t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP + ph}" y2="{TOP + ph + 4}" stroke="#888"/>')
        out.append(f'<text x="{x:.1f}" y="{TOP + ph + 17}" font-size="11" text-anchor="middle">{time_label(t)}</text>')
    for m in chart.marks:
        x = sx(m.x)
        out.append(f'<line class="mark" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + ph}" stroke="{m.color}" '
                   f'stroke-dasharray="4 3"><title>{escape(m.label)}</title></line>')
    for i, ln in enumerate(chart.lines):
        color = PALETTE[i % len(PALETTE)]
        pts = sorted(ln.points)
        if ln.step and pts:
            stepped = [pts[0]]
            for (xa, ya), (xb, yb) in zip(pts, pts[1:]):
                stepped += [(xb, ya), (xb, yb)]
            pts = stepped
        if len(pts) == 1:
            x, y = pts[0]
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>')
        elif pts:
            d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            dash = ' stroke-dasharray="6 3"' if ln.dashed else ""
            out.append(f'<polyline class="series" fill="none" stroke="{color}" stroke-width="1.8"{dash} points="{d}">'
                       f"<title>{escape(ln.name)}</title></polyline>")
        ly = TOP + 12 + 16 * i
        out.append(f'<line x1="{W - RIGHT + 12}" x2="{W - RIGHT + 30}" y1="{ly - 4}" y2="{ly - 4}" stroke="{color}" '
                   f'stroke-width="3"/><text x="{W - RIGHT + 36}" y="{ly}" font-size="11">{escape(ln.name[:22])}</text>')
    if not chart.lines:
        out.append(f'<text x="{LEFT + pw / 2}" y="{TOP + ph / 2}" font-size="13" text-anchor="middle" fill="#888">'
                   "no data yet</text>")
    out.append("</svg>")
    return "\n".join(out)
