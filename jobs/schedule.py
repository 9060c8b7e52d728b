"""When a submitted job may start: `--at TIME` and `--after JOB_ID`.

Parsing (`parse_at`) runs on the laptop at submit time; waiting (`wait_for_start`) runs first in
the job's driver on the cluster (`python -m linegen.jobs.driver`), before Ray is initialised and before
any actor exists, so a waiting job holds no GPU (it is submitted with ``entrypoint_num_gpus=0``).

``--after A``: the driver polls A's markers in the same output root (jobs.layout / jobs.outcome):

- ``A/_SUCCESS``                  -> start;
- ``A/_FAILED`` or ``A/_CANCELLED`` -> this job is cancelled with the reason ("job A failed: ...");
- neither                         -> keep waiting. As a fallback for a driver of A that was killed
  before it could write a marker (SIGKILL, a lost node), the driver also asks the cluster's Jobs
  API, from inside the cluster, whether any attempt of A is still pending or running
  (`cluster.inside`); if none is and A never succeeded, A counts as failed.

No torch or Ray imports at module level.
"""
from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

from linegen.cluster.inside import jobs_from_inside
from linegen.jobs import layout
from linegen.jobs.errors import JobCancelled, UserError
from linegen.jobs.outcome import read_outcome
from linegen.jobs.intervals import INTERVALS

POLL_S = INTERVALS.after_poll_s  # how often a waiting driver looks at the other job's markers
RAY_CHECK_S = INTERVALS.after_ray_check_s  # how often it also asks the Jobs API (only the fallback)
IGNORE_SCHEDULE_ENV = "LINEGEN_IGNORE_SCHEDULE"  # `linegen resume --now` sets it for the attempt

_REL = re.compile(r"^\+?\s*((?:\d+(?:\.\d+)?\s*[smhd]\s*)+)$", re.IGNORECASE)
_REL_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])", re.IGNORECASE)
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

AT_HELP = ("HH:MM[:SS] (the next time the local clock shows it), YYYY-MM-DDTHH:MM[:SS] (local time "
           "unless it ends in Z or +HH:MM), or +DURATION such as +90s, +10m, +1h30m")


UNBOUNDED = ("forever", "none", "unbounded")


def parse_duration(text: str, flag: str) -> float | None:
    """``90`` / ``90s`` / ``10m`` / ``1h30m`` -> seconds; ``forever`` (or ``none``) -> None (no bound)."""
    raw = str(text).strip().lower()
    if raw in UNBOUNDED:
        return None
    if re.fullmatch(r"\d+(?:\.\d+)?", raw):
        return float(raw)
    m = _REL.match(raw) if not raw.startswith("+") else None
    if m is None:
        raise UserError(f"{flag} {text!r}: not a duration; use e.g. 90s, 10m, 1h30m or forever")
    return sum(float(n) * _UNITS[u] for n, u in _REL_PART.findall(m.group(1)))


def parse_at(text: str, now: float | None = None) -> float:
    """``--at`` -> Unix seconds (UTC). Local time is this machine's time zone.

    ``02:00`` is the next 02:00 (today if still ahead, else tomorrow); ``2026-11-23T02:00`` is that
    local time (a trailing ``Z`` or ``+01:00`` names another zone); ``+10m`` is relative to now.
    A date-time in the past is an error.
    """
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"--at needs a time: {AT_HELP}")
    raw = text.strip()
    now_ts = time.time() if now is None else now
    if raw.startswith("+") or _REL.match(raw):
        m = _REL.match(raw)
        if m is None:
            raise UserError(f"--at {text!r}: not a time; use {AT_HELP}")
        seconds = sum(float(n) * _UNITS[u.lower()] for n, u in _REL_PART.findall(m.group(1)))
        return now_ts + seconds
    m = _CLOCK.match(raw)
    if m:
        hh, mm, ss = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
        if hh > 23 or mm > 59 or ss > 59:
            raise UserError(f"--at {text!r}: not a valid clock time (00:00 to 23:59:59)")
        local_now = datetime.fromtimestamp(now_ts).astimezone()
        candidate = local_now.replace(hour=hh, minute=mm, second=ss, microsecond=0)
        if candidate.timestamp() <= now_ts:
            # Tomorrow at that wall-clock time (naive + astimezone re-resolves DST).
            naive = (candidate.replace(tzinfo=None) + timedelta(days=1))
            candidate = naive.astimezone()
        return candidate.timestamp()
    iso = raw.replace(" ", "T", 1) if re.match(r"^\d{4}-\d{2}-\d{2} \d", raw) else raw
    if iso.endswith(("Z", "z")):
        iso = iso[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(iso)
    except ValueError:
        raise UserError(f"--at {text!r}: not a time; use {AT_HELP}") from None
    if dt.tzinfo is None:
        dt = dt.astimezone()  # a naive time is local time
    ts = dt.timestamp()
    if ts < now_ts - 1.0:
        raise UserError(f"--at {text!r} is in the past ({describe_time(ts)}; now {describe_time(now_ts)})")
    return ts


def describe_time(ts: float) -> str:
    """``2026-11-23 02:00:00 CET (2026-11-23 01:00:00 UTC)``; UTC alone when local time is UTC."""
    local = datetime.fromtimestamp(ts).astimezone()
    utc = datetime.fromtimestamp(ts, tz=timezone.utc)
    u = utc.strftime("%Y-%m-%d %H:%M:%S UTC")
    if local.utcoffset() == timedelta(0):
        return u
    return f"{local.strftime('%Y-%m-%d %H:%M:%S %Z').strip()} ({u})"


def utc_iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe_delay(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


# --------------------------------------------------------------------------- waiting (driver side)


@dataclass
class DependencyState:
    state: str  # "succeeded" | "failed" | "cancelled" | "waiting"
    reason: str = ""


def dependency_state(storage, other: str, ray_check: Callable[[str], str | None] | None = None
                     ) -> DependencyState:
    """Where job ``other`` (same output root) stands, from its markers, then (optionally) Ray.

    ``ray_check(other)`` returns a failure reason when the cluster knows attempts of ``other`` and
    none is pending or running, else None (unknown, or still going).
    """

    if storage.exists(layout.success_key(other)):
        return DependencyState("succeeded")
    outcome = read_outcome(storage, other)
    if outcome is not None:
        verb = "was cancelled" if outcome.state == "cancelled" else "failed"
        return DependencyState(outcome.state, f"job {other} {verb}: {outcome.reason}")
    if ray_check is not None:
        reason = ray_check(other)
        if reason and not storage.exists(layout.success_key(other)):
            return DependencyState("failed", f"job {other} failed: {reason}")
    return DependencyState("waiting")


def _ray_check(other: str) -> str | None:
    """The Jobs API seen from inside the cluster: a reason if every attempt of ``other`` ended
    without success, else None (no attempts known, one still active, or the API unreachable)."""

    states = jobs_from_inside()
    if not states:
        return None
    mine = [s for s in states if (s.metadata or {}).get("linegen_job_id") == other or s.submission_id == other]
    if not mine or any(not s.terminal for s in mine):
        return None
    if any(s.status == "SUCCEEDED" for s in mine):
        return None  # its _SUCCESS decides; a SUCCEEDED driver wrote it before exiting
    last = max(mine, key=lambda s: (s.end_time or 0.0, s.start_time or 0.0))
    detail = (last.message or "").strip().splitlines()
    return f"its Ray job {last.submission_id} ended {last.status}" + (f" ({detail[0][:200]})" if detail else "")


def wait_for_start(spec, storage=None, *, sleep: Callable[[float], None] = time.sleep,
                   clock: Callable[[], float] = time.time, poll_s: float | None = None,
                   ray_check: Callable[[str], str | None] | None = _ray_check,
                   log: Callable[[str], None] | None = None) -> None:
    """Block until ``spec.start_at`` has passed and ``spec.after`` has succeeded.

    Raises JobCancelled if the other job failed or was cancelled. Does nothing when the
    environment variable LINEGEN_IGNORE_SCHEDULE is set (``linegen resume --now``).
    """
    if os.environ.get(IGNORE_SCHEDULE_ENV):
        return
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    poll = POLL_S if poll_s is None else poll_s
    if spec.start_at is not None:
        delay = spec.start_at - clock()
        if delay > 0:
            say(f"linegen: job {spec.job_id} is scheduled for {describe_time(spec.start_at)}; "
                f"waiting {describe_delay(delay)} (no GPU is held while waiting)")
            while True:
                delay = spec.start_at - clock()
                if delay <= 0:
                    break
                sleep(min(delay, 60.0))
    if spec.after:
        if storage is None:
            from linegen.jobs.storage import open_storage

            storage = open_storage(spec.out, endpoint_url=spec.s3_endpoint_url)
        announced = False
        last_ray = clock()
        while True:
            use_ray = ray_check is not None and clock() - last_ray >= RAY_CHECK_S
            if use_ray:
                last_ray = clock()
            dep = dependency_state(storage, spec.after, ray_check if use_ray else None)
            if dep.state == "succeeded":
                if announced:
                    say(f"linegen: job {spec.after} succeeded; starting job {spec.job_id}")
                break
            if dep.state in ("failed", "cancelled"):
                raise JobCancelled(f"cancelled: {dep.reason}")
            if not announced:
                say(f"linegen: job {spec.job_id} waits for job {spec.after} to succeed "
                    "(no GPU is held while waiting)")
                announced = True
            sleep(poll)
