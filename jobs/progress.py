"""A job's progress, throughput, ETA and cost, read from its own outputs (jobs.layout).

- totals from ``plan.json`` (written at submission) and the spec's shard size: shard ``i`` holds
  ``min(shard_size, items - i * shard_size)`` items (jobs.plan cuts consecutive shards);
- done = shards with a commit marker (one LIST);
- device-seconds, per-device time and batch timings from the committed shards' stats Parquet
  (read once per shard; a `StatsCache` keeps them across refreshes of ``linegen monitor``);
- cost = device-seconds x the price table (jobs.driver.job_cost), so far and projected;
- ``_SUCCESS`` / ``_FAILED`` / ``_CANCELLED`` markers for how it ended.

Throughput of a running attempt is measured on its own batches: images in stats rows that
finished after the attempt started, over the span from the first such batch's start to the last
one's end (so model loading is not counted, and a resumed job's earlier shards do not inflate it).
"""
from __future__ import annotations

import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from linegen.jobs import layout
from linegen.jobs.storage import Storage, StorageNotFound

READ_THREADS = 8


@dataclass(frozen=True)
class ShardStats:
    images: int
    device_seconds: dict[str, float]
    batches: tuple[tuple[float, float, int], ...]  # (started_at, finished_at, images)


class StatsCache:
    """Committed shards' stats never change, so each is read once per process."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, str, str], ShardStats] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str]) -> ShardStats | None:
        with self._lock:
            return self._data.get(key)

    def put(self, key: tuple[str, str, str], value: ShardStats) -> None:
        with self._lock:
            self._data[key] = value


def _epoch(v: Any) -> float:
    if v is None:
        return 0.0
    if hasattr(v, "timestamp"):
        return float(v.timestamp())
    return float(v)


def read_shard_stats(storage: Storage, job_id: str, shard_id: str) -> ShardStats:
    import pyarrow.parquet as pq

    # No Arrow thread pools (we parallelise per shard ourselves): Arrow's pool threads still alive
    # at interpreter exit can abort a short-lived CLI with "terminate called without an active
    # exception" (apache/arrow#34314).
    table = pq.read_table(io.BytesIO(storage.get(layout.stats_key(job_id, shard_id))),
                          columns=["device", "images", "wall_s", "started_at", "finished_at"],
                          use_threads=False, pre_buffer=False)
    d = table.to_pydict()
    devices: dict[str, float] = {}
    for dev, w in zip(d["device"], d["wall_s"]):
        devices[dev or "unknown"] = devices.get(dev or "unknown", 0.0) + float(w or 0.0)
    batches = tuple((_epoch(s), _epoch(f), int(n or 0))
                    for s, f, n in zip(d["started_at"], d["finished_at"], d["images"]))
    return ShardStats(images=sum(int(n or 0) for n in d["images"]), device_seconds=devices, batches=batches)


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

    @property
    def fraction(self) -> float | None:
        if not self.images_total:
            return 1.0 if self.succeeded else None
        return min(1.0, self.images_done / self.images_total)


def _shard_size_of(shard_id: str, shard_size: int, items: int) -> int:
    try:
        index = int(shard_id.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0
    return max(0, min(shard_size, items - index * shard_size))


def read_spec(storage: Storage, job_id: str):
    from linegen.jobs.spec import JobSpec

    try:
        return JobSpec.from_json(storage.get(layout.spec_key(job_id)))
    except StorageNotFound:
        return None


def read_progress(storage: Storage, job_id: str, *, with_stats: bool = True, since: float | None = None,
                  cache: StatsCache | None = None, spec=None) -> JobProgress:
    """Progress of ``job_id`` under ``storage``. ``since``: start of the running attempt (Unix s),
    for its throughput and ETA. ``with_stats=False`` skips the stats files (counts only)."""
    from linegen.jobs.driver import plan_key
    from linegen.jobs.outcome import read_outcome

    spec = spec if spec is not None else read_spec(storage, job_id)
    p = JobProgress(job_id=job_id, spec=spec)
    try:
        plan = json.loads(storage.get(plan_key(job_id)))
        p.shards_total, p.images_total = int(plan["shards"]), int(plan["items"])
    except StorageNotFound:
        pass
    except (ValueError, KeyError, TypeError):
        p.errors.append(f"{plan_key(job_id)} is unreadable")
    try:
        p.summary = json.loads(storage.get(layout.success_key(job_id)))
        p.succeeded = True
    except StorageNotFound:
        pass
    except ValueError:
        p.errors.append(f"{layout.success_key(job_id)} is unreadable")
    p.outcome = None if p.succeeded else read_outcome(storage, job_id)

    committed = sorted(layout.committed_shards(storage, job_id))
    p.shards_done = len(committed)
    if spec is not None and p.images_total is not None:
        p.images_done = sum(_shard_size_of(s, spec.shard_size, p.images_total) for s in committed)
    if p.summary is not None:
        p.images_done = int(p.summary.get("images", p.images_done))
        p.shards_done = int(p.summary.get("shards", p.shards_done))
        if p.images_total is None:
            p.images_total, p.shards_total = p.images_done, p.shards_done

    if p.summary is not None and not with_stats:
        p.device_seconds = dict(p.summary.get("device_seconds_by_device") or {})
        p.images_per_s = p.summary.get("images_per_s_this_run")
        return p
    if not with_stats or not committed:
        return p

    cache = cache or StatsCache()
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
        cache.put(key, st)
        return st

    with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(committed))) as pool:
        stats = [s for s in pool.map(load, committed) if s is not None]
    for st in stats:
        for dev, secs in st.device_seconds.items():
            p.device_seconds[dev] = p.device_seconds.get(dev, 0.0) + secs
    batches = [b for st in stats for b in st.batches]
    if batches:
        p.last_commit_at = max(b[1] for b in batches)
        p.first_batch_at = min(b[0] for b in batches)
    if since is not None and not p.succeeded:
        recent = [b for b in batches if b[1] >= since]
        if recent:
            span = max(b[1] for b in recent) - min(b[0] for b in recent)
            images = sum(b[2] for b in recent)
            if span > 0 and images:
                p.images_per_s = images / span
        if p.images_per_s and p.images_total is not None:
            p.eta_s = max(0.0, (p.images_total - p.images_done) / p.images_per_s)
    elif p.summary is not None:
        p.images_per_s = p.summary.get("images_per_s_this_run")
    return p


def cost_of(progress: JobProgress, prices: dict[str, float] | None = None) -> dict:
    """Cost so far (device-seconds from the stats x $/device-hour) and, if the job is not
    complete, projected for all its images at the same $/image."""
    from linegen.jobs.driver import job_cost

    devices = progress.device_seconds
    if not devices and progress.summary is not None:
        devices = dict(progress.summary.get("device_seconds_by_device") or {})
    images = progress.images_done
    c = job_cost(devices, images, prices or None)
    c["device_seconds"] = sum(devices.values())
    c["device_seconds_by_device"] = dict(devices)
    c["images"] = images
    if progress.images_total and images and images < progress.images_total:
        c["projected_usd"] = c["usd"] / images * progress.images_total
    else:
        c["projected_usd"] = c["usd"] if progress.succeeded else None
    return c

