"""A job's progress, throughput, ETA and cost, read from its own outputs (jobs.layout).

- totals from ``plan.json`` (written at submission) and the spec's shard size: shard ``i`` holds
  ``min(shard_size, items - i * shard_size)`` items (jobs.plan cuts consecutive shards);
- done = shards with a commit marker (one LIST);
- device-seconds, per-device time and batch timings from the committed shards' stats Parquet
  (jobs.stats, read once per shard; a `StatsCache` keeps them across refreshes of ``linegen monitor``);
- cost = device-seconds x the price table (jobs.cost), so far and projected;
- ``_SUCCESS`` / ``_FAILED`` / ``_CANCELLED`` markers for how it ended.

Throughput of a running attempt is measured on its own batches: images in stats rows that
finished after the attempt started, over the span from the first such batch's start to the last
one's end (so model loading is not counted, and a resumed job's earlier shards do not inflate it).
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from linegen.jobs import layout
from linegen.jobs.stats import ShardStats, StatsCache, read_shard_stats
from linegen.jobs.storage import Storage, StorageNotFound

READ_THREADS = 8


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


def read_progress(storage: Storage, job_id: str, *, with_stats: bool = True, since: float | None = None,
                  cache: StatsCache | None = None, spec=None) -> JobProgress:
    """Progress of ``job_id`` under ``storage``. ``since``: start of the running attempt (Unix s),
    for its throughput and ETA. ``with_stats=False`` skips the stats files (counts only)."""
    from linegen.jobs.outcome import read_outcome
    from linegen.jobs.spec import read_spec

    spec = spec if spec is not None else read_spec(storage, job_id)
    p = JobProgress(job_id=job_id, spec=spec)
    try:
        plan = json.loads(storage.get(layout.plan_key(job_id)))
        p.shards_total, p.images_total = int(plan["shards"]), int(plan["items"])
    except StorageNotFound:
        pass
    except (ValueError, KeyError, TypeError):
        p.errors.append(f"{layout.plan_key(job_id)} is unreadable")
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
        from linegen.jobs.summary import count_of

        p.images_done = count_of(p.summary.get("images")) or p.images_done
        p.shards_done = count_of(p.summary.get("shards")) or p.shards_done
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
