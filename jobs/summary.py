"""`_SUCCESS`: a finished job's counts and totals over every committed shard's stats (this run's
and earlier runs'), and its cost.

Counts have one shape in every document linegen writes or prints (`_SUCCESS`, `run --json`,
`status`, `list`, `monitor`, `cost`): ``images`` and ``shards`` are ``{"done": N, "total": M}``;
`count_of` also reads the plain integers of summaries written before.
"""
from __future__ import annotations

import json
import time

from linegen.cost.job_cost import job_cost
from linegen.errors import UserError
from linegen.guarded import load_json_object
from linegen.jobs import layout
from linegen.jobs.outage import Outage, budget_seconds
from linegen.jobs.plan import shard_id
from linegen.jobs.schedule import utc_iso
from linegen.jobs.stats import read_shard_stats
from linegen.jobs.storage import StorageNotFound


def write_success(job, wall_s: float, generated: int, recovery: dict | None = None, *,
                  timeline: list[dict] | None = None) -> dict:
    """Check that every planned shard is committed and the stats add up to the plan, then write
    and return the summary. ``recovery``: what this run survived (nodes lost, shards requeued,
    failed attempts), as the driver counted it; ``timeline``: when each of those happened. Waits
    out a storage outage (jobs.outage)."""

    outage = Outage(budget_seconds(getattr(job.spec, "storage_outage_budget", None)))
    return outage.ride(f"write {layout.success_key(job.spec.job_id)}",
                       lambda: _write_success(job, wall_s, generated, recovery, timeline))


def _write_success(job, wall_s: float, generated: int, recovery: dict | None, timeline: list[dict] | None) -> dict:
    from linegen.jobs.sink import publish_pending

    storage, job_id = job.storage, job.spec.job_id
    committed = layout.committed_shards(storage, job_id)
    ids = [shard_id(i) for i in range(len(job.shards))]
    missing = [sid for sid in ids if sid not in committed]
    if missing:
        raise UserError(f"job {job_id}: {len(missing)} shard(s) have no commit marker: {', '.join(missing[:5])}")
    publish_pending(storage, job_id)  # a commit cut off before its move; losers' staged files
    images = tokens = truncated = peak = kv = 0
    devices: dict[str, float] = {}
    for sid in ids:
        st = read_shard_stats(storage, job_id, sid)
        images += st.images
        tokens += st.tokens
        truncated += st.prompts_truncated
        peak, kv = max(peak, st.peak_memory_bytes), max(kv, st.kv_cache_bytes)
        for dev, secs in st.device_seconds.items():
            devices[dev] = devices.get(dev, 0.0) + secs
    if images != job.items_total:
        raise UserError(f"job {job_id}: stats count {images} images, the plan has {job.items_total}")
    device_s = sum(devices.values())
    finished_at = time.time()
    summary = {
        "job_id": job_id, "shards": {"done": len(job.shards), "total": len(job.shards)},
        "images": {"done": images, "total": job.items_total}, "tokens": tokens,
        "generated_this_run": generated, "plan_fingerprint": job.fingerprint,
        "model": job.spec.model.name, "cache_policy": job.spec.cache.policy,
        "device_seconds": device_s, "device_seconds_by_device": devices,
        "images_per_device_s": images / device_s if device_s else None,
        "wall_s_this_run": wall_s, "images_per_s_this_run": generated / wall_s if wall_s > 0 else None,
        "peak_memory_bytes": peak, "kv_cache_bytes": kv, "prompts_truncated": truncated,
        "finished_at": finished_at, "finished_at_utc": utc_iso(finished_at),
        "recovery_this_run": dict(recovery or {}),
        "timeline_this_run": list(timeline or []),
    }
    summary["cost"] = job_cost(devices, images, job.spec.prices)  # prices: `submit --price`
    storage.put(layout.success_key(job_id), json.dumps(summary, indent=2).encode())
    return summary


def finished_summary(job) -> dict | None:
    """For a job whose every planned shard is committed, its summary without any generation (no
    Ray needed): the recorded `_SUCCESS` as it stands (not rewritten, so ``finished_at`` stays
    when the job finished), or one written now from the markers if the last run stopped just
    before writing it. None while any shard is missing."""
    from linegen.jobs.sink import publish_pending

    committed = layout.committed_shards(job.storage, job.spec.job_id)
    if any(s.shard_id not in committed for s in job.shards):
        return None
    publish_pending(job.storage, job.spec.job_id)
    try:
        recorded = read_summary(job.storage, job.spec.job_id)
    except UserError:  # a damaged summary of a complete job is written again from the markers
        recorded = None
    if recorded is None or recorded.get("plan_fingerprint") != job.fingerprint:
        return write_success(job, 0.0, 0)
    return {**recorded, "generated_this_run": 0, "wall_s_this_run": 0.0, "images_per_s_this_run": None}


def read_summary(storage, job_id: str) -> dict | None:
    """The job's `_SUCCESS` (None if it has none), with every field a reader uses checked for its
    type; a damaged one is a `linegen.guarded.DamagedFile` naming it."""

    key = layout.success_key(job_id)
    try:
        data = storage.get(key)
    except StorageNotFound:
        return None
    f = load_json_object(data, storage.location(key))
    f.count("images")
    f.count("shards", None)
    for name in ("device_seconds", "images_per_device_s", "images_per_s_this_run", "wall_s_this_run",
                 "finished_at", "peak_memory_bytes", "kv_cache_bytes"):
        f.float(name, None, lo=0.0)
    for name in ("tokens", "generated_this_run", "prompts_truncated"):
        f.int(name, None)
    f.number_map("device_seconds_by_device", None)
    f.str("plan_fingerprint", None)
    f.obj("cost", None)
    f.obj("recovery_this_run", None)
    return f.doc


def count_of(value) -> int | None:
    """The done count of an ``images``/``shards`` entry: ``{"done", "total"}``, or a plain integer
    (a `_SUCCESS` written by an older linegen); None when it is neither (`read_summary` has
    already refused such a file)."""
    if isinstance(value, dict):
        value = value.get("done")
    return value if isinstance(value, int) and not isinstance(value, bool) else None
