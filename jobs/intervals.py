"""How often a job's driver looks at things: every polling period and staleness limit in one place.

The defaults are the product's and suit a real cluster. ``LINEGEN_INTERVALS`` (``name=seconds``
pairs, comma-separated, e.g. ``live_every_s=0.5,after_poll_s=0.2``) overrides some of them for
one process tree: the test suite sets it so that a job shows its progress and notices another
job's end in fractions of a second instead of seconds. It is read once, when this module is first
imported; a submitted job's driver reads it from its own environment (the Ray head's, or the
attempt's runtime env).

No torch or Ray imports here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

from linegen.errors import UserError

ENV = "LINEGEN_INTERVALS"


@dataclass(frozen=True)
class Intervals:
    worker_poll_s: float = 1.0  # how long one poll of a worker waits for a finished shard
    nodes_every_s: float = 2.0  # how often ray.nodes() is read to find workers whose node has died
    report_every_s: float = 1.0  # the caller's progress callback, at most this often (and on every event)
    live_every_s: float = 3.0  # how often the driver rewrites _progress.json
    live_stale_s: float = 30.0  # a _progress.json older than this says nothing about now
    after_poll_s: float = 3.0  # how often a job waiting --after another looks at its markers
    after_ray_check_s: float = 30.0  # how often it also asks the Jobs API (only the fallback)


def parse_intervals(text: str, base: Intervals = Intervals()) -> Intervals:
    """``base`` with the ``name=seconds`` pairs of ``text`` applied; a bad pair is a one-line error."""
    known = {f.name for f in fields(Intervals)}
    changes: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, value = (s.strip() for s in part.partition("="))
        if not sep or name not in known:
            raise UserError(f"{ENV}: {part!r} is not NAME=SECONDS with NAME one of {', '.join(sorted(known))}")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not seconds > 0 or seconds == float("inf"):
            raise UserError(f"{ENV}: {name}={value!r} is not a positive number of seconds")
        changes[name] = seconds
    return replace(base, **changes)


def from_environment() -> Intervals:
    return parse_intervals(os.environ.get(ENV, ""))


INTERVALS = from_environment()
