"""A job's progress, throughput, ETA and cost, read from its own outputs (jobs.layout).

- totals from ``plan.json`` (written at submission) and the spec's shard size: shard ``i`` holds
  ``min(shard_size, items - i * shard_size)`` items (jobs.plan cuts consecutive shards);
- done = shards with a commit marker (one LIST);
- device-seconds, per-device time and batch timings from the committed shards' stats Parquet
  (jobs.stats, read once per shard; a `StatsCache` keeps them across refreshes of ``linegen monitor``);
- cost = device-seconds x the price table (linegen.cost.job_cost), so far and projected;
- ``_SUCCESS`` / ``_FAILED`` / ``_CANCELLED`` markers for how it ended;
- live progress from ``_progress.json``, which the running driver rewrites every ``LIVE_EVERY_S``
  from its workers' waves (`write_live`): images decoded but not committed yet, images/s and ETA
  from the first wave on, the device-seconds of those waves (cost so far), workers placed and
  pending, and why the job waits. It is *fresh* while its ``updated_at`` is recent
  (`LIVE_STALE_S`), which is how `status --out` tells a running job without asking a cluster.

Throughput of a running attempt is measured on its own batches: images in stats rows that
finished after the attempt started, over the span from the first such batch's start to the last
one's end (so model loading is not counted, and a resumed job's earlier shards do not inflate it).
"""
from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from linegen.errors import UserError
from linegen.guarded import load_json_object
from linegen.jobs import layout
from linegen.jobs.headline import eta_s
from linegen.jobs.outcome import read_outcome
from linegen.jobs.plan import shard_index
from linegen.jobs.prepare import read_plan
from linegen.jobs.spec import read_spec
from linegen.jobs.intervals import INTERVALS
from linegen.jobs.stats import ShardStats, StatsCache, read_shard_stats
from linegen.jobs.storage import Storage, StorageError, StorageNotFound
from linegen.jobs.summary import read_summary

READ_THREADS = 8
LIVE_EVERY_S = INTERVALS.live_every_s  # how often the driver rewrites _progress.json
LIVE_STALE_S = INTERVALS.live_stale_s  # a _progress.json older than this says nothing about now
LIVE_STATES = ("starting", "waiting", "running")  # what a driver that still works writes


@dataclass
class Progress:
    """A running job's live progress, as its driver reports it (to a callback and `_progress.json`)."""
    images_done: int  # committed + decoded in shards not committed yet (live, from the first wave)
    images_total: int
    shards_done: int
    shards_total: int
    images_per_s: float
    eta_s: float | None
    failed: list[str] = field(default_factory=list)
    event: str = ""
    images_committed: int = 0
    usd: float | None = None  # cost so far of this run's waves
    workers_placed: int = 0
    workers_pending: int = 0
    waiting: str = ""  # why nothing runs, e.g. "waiting for resources: 0/4 workers placed (...)"


@dataclass
class JobProgress:
    job_id: str
    spec: Any | None  # JobSpec, or None when job.json is missing
    shards_total: int | None = None
    images_total: int | None = None
    shards_done: int = 0
    images_done: int = 0
    succeeded: bool = False
    summary: dict | None = None  # the _SUCCESS document
    outcome: Any | None = None  # jobs.outcome.Outcome
    device_seconds: dict[str, float] = field(default_factory=dict)
    images_per_s: float | None = None
    eta_s: float | None = None
    last_commit_at: float | None = None
    first_batch_at: float | None = None
    errors: list[str] = field(default_factory=list)
    images_committed: int = 0
    live: dict | None = None  # the driver's _progress.json, if any
    live_fresh: bool = False  # ... and written recently: the job is running now
    live_age_s: float | None = None
    damaged: list[str] = field(default_factory=list)  # files of the job that cannot be read (one line each)

    @property
    def waiting(self) -> str:
        """Why a running job does not generate (e.g. "waiting for resources: 0/4 workers placed ...")."""
        return str((self.live or {}).get("message") or "") if self.live_fresh else ""

    @property
    def fraction(self) -> float | None:
        if not self.images_total:
            return 1.0 if self.succeeded else None
        return min(1.0, self.images_done / self.images_total)


def _shard_size_of(shard_id: str, shard_size: int, items: int) -> int:
    index = shard_index(shard_id)
    return 0 if index is None else max(0, min(shard_size, items - index * shard_size))


def write_live(storage: Storage, job_id: str, doc: dict) -> bool:
    """Rewrite the job's _progress.json (best effort: a storage blip never stops the job); whether
    it was written."""
    try:
        storage.put(layout.progress_key(job_id), json.dumps(doc, default=str).encode())
        return True
    except Exception as e:  # noqa: BLE001
        print(f"linegen: could not write {layout.progress_key(job_id)}: {str(e).splitlines()[0][:200]}",
              file=sys.stderr, flush=True)
        return False


def clear_live(storage: Storage, job_id: str) -> None:
    try:
        storage.delete(layout.progress_key(job_id))
    except Exception:  # noqa: BLE001 - a leftover is stale after LIVE_STALE_S anyway
        pass


def read_live(storage: Storage, job_id: str) -> dict | None:
    """The driver's _progress.json, its fields checked; None if absent or damaged (it is rewritten
    every few seconds, and only says how a running job does: damage never hides the job)."""

    key = layout.progress_key(job_id)
    try:
        f = load_json_object(storage.get(key), storage.location(key))
        f.float("updated_at", None)
        f.float("interval_s", None, lo=0.0)
        f.float("images_per_s", None, lo=0.0)
        f.int("images_done", None)
        f.str("state", None)
        f.str("message", None)
        f.number_map("device_seconds_by_device", None)
        f.number_map("uncommitted_device_seconds_by_device", None)
        f.obj("workers", None)
    except UserError:
        return None
    return f.doc


def _add(into: dict[str, float], more: dict | None) -> None:
    for dev, secs in (more or {}).items():
        into[dev] = into.get(dev, 0.0) + float(secs or 0.0)


def read_progress(storage: Storage, job_id: str, *, with_stats: bool = True, since: float | None = None,
                  cache: StatsCache | None = None, spec=None, live: bool = True) -> JobProgress:
    """Progress of ``job_id`` under ``storage``. ``since``: start of the running attempt (Unix s),
    for its throughput and ETA. ``with_stats=False`` skips the stats files (counts only).
    ``live=False``: ignore _progress.json (the cluster says no attempt runs)."""

    spec = spec if spec is not None else read_spec(storage, job_id)
    p = JobProgress(job_id=job_id, spec=spec)
    try:
        plan = read_plan(storage, job_id, missing_ok=True)
        if plan is not None:
            p.shards_total, p.images_total = plan["shards"], plan["items"]
    except UserError as e:
        p.damaged.append(str(e))
    try:
        p.summary = read_summary(storage, job_id)
        p.succeeded = p.summary is not None
    except UserError as e:
        p.damaged.append(str(e))
    p.outcome = None if p.succeeded else read_outcome(storage, job_id)
    p.errors.extend(p.damaged)

    committed = sorted(layout.committed_shards(storage, job_id))
    p.shards_done = len(committed)
    if spec is not None and p.images_total is not None:
        p.images_done = sum(_shard_size_of(s, spec.shard_size, p.images_total) for s in committed)
    if p.summary is not None:
        from linegen.jobs.summary import count_of

        p.images_done = count_of(p.summary.get("images")) or p.images_done
        p.shards_done = count_of(p.summary.get("shards")) or p.shards_done
        if p.images_total is None:
            p.images_total, p.shards_total = p.images_done, p.shards_done
    p.images_committed = p.images_done

    if p.summary is not None and not with_stats:
        p.device_seconds = dict(p.summary.get("device_seconds_by_device") or {})
        p.images_per_s = p.summary.get("images_per_s_this_run")
        return p
    if p.summary is None and live:
        _read_live_into(p, storage, job_id)
    if not with_stats:
        if p.live_fresh:  # this run's waves, committed or not: cost so far without reading stats
            _add(p.device_seconds, p.live.get("device_seconds_by_device"))
        return p

    _read_stats_into(p, storage, job_id, committed, cache or StatsCache(), since)
    return p


def _read_stats_into(p: JobProgress, storage: Storage, job_id: str, committed: list[str], cache: StatsCache,
                     since: float | None) -> None:
    """Device-seconds, batch times, and (for a running attempt) images/s and ETA from the committed
    shards' stats."""
    root = repr(storage)

    def load(shard_id: str) -> ShardStats | None:
        key = (root, job_id, shard_id)
        hit = cache.get(key)
        if hit is not None:
            return hit
        try:
            st = read_shard_stats(storage, job_id, shard_id)
        except StorageNotFound:
            return None
        except StorageError as e:  # a damaged marker or stats file: named, and the rest still counts
            p.damaged.append(str(e))
            p.errors.append(str(e))
            return None
        cache.put(key, st)
        return st

    stats = []
    if committed:
        with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(committed))) as pool:
            stats = [s for s in pool.map(load, committed) if s is not None]
    for st in stats:
        _add(p.device_seconds, st.device_seconds)
    if p.live_fresh:  # and the waves of shards not committed yet
        _add(p.device_seconds, p.live.get("uncommitted_device_seconds_by_device"))
    batches = [b for st in stats for b in st.batches]
    if batches:
        p.last_commit_at = max(b[1] for b in batches)
        p.first_batch_at = min(b[0] for b in batches)
    if p.live_fresh and p.images_per_s is not None:
        return  # the driver's own rate, from the first wave on
    if since is not None and not p.succeeded:
        recent = [b for b in batches if b[1] >= since]
        if recent:
            span = max(b[1] for b in recent) - min(b[0] for b in recent)
            images = sum(b[2] for b in recent)
            if span > 0 and images:
                p.images_per_s = images / span
        p.eta_s = eta_s(p.images_total, p.images_done, p.images_per_s)  # the dashboard's formula
    elif p.summary is not None:
        p.images_per_s = p.summary.get("images_per_s_this_run")


def _read_live_into(p: JobProgress, storage: Storage, job_id: str) -> None:
    """Live numbers from a fresh _progress.json: images decoded in shards not committed yet count
    as done (never fewer than the committed ones), the driver's images/s and ETA."""
    live = read_live(storage, job_id)
    if live is None:
        return
    p.live = live
    try:
        p.live_age_s = max(0.0, time.time() - float(live.get("updated_at") or 0.0))
    except (TypeError, ValueError):
        return
    p.live_fresh = (live.get("state") in LIVE_STATES
                    and p.live_age_s <= max(LIVE_STALE_S, 10 * float(live.get("interval_s") or LIVE_EVERY_S)))
    if not p.live_fresh:
        return
    done = int(live.get("images_done") or 0)
    p.images_done = max(p.images_done, min(done, p.images_total or done))
    rate = live.get("images_per_s")
    p.images_per_s = float(rate) if rate else None
    p.eta_s = eta_s(p.images_total, p.images_done, p.images_per_s)  # the dashboard's formula
