"""`_SUCCESS`: a finished job's counts and totals over every committed shard's stats (this run's
and earlier runs'), and its cost."""
from __future__ import annotations

import json
import time

from linegen.jobs import layout
from linegen.jobs.cost import job_cost
from linegen.jobs.errors import UserError
from linegen.jobs.plan import shard_id
from linegen.jobs.stats import read_shard_stats


def write_success(job, wall_s: float, generated: int, recovery: dict | None = None) -> dict:
    """Check that every planned shard is committed and the stats add up to the plan, then write
    and return the summary. ``recovery``: what this run survived (nodes lost, shards requeued,
    failed attempts), as the driver counted it."""
    storage, job_id = job.storage, job.spec.job_id
    committed = layout.committed_shards(storage, job_id)
    ids = [shard_id(i) for i in range(len(job.shards))]
    missing = [sid for sid in ids if sid not in committed]
    if missing:
        raise UserError(f"job {job_id}: {len(missing)} shard(s) have no commit marker: {', '.join(missing[:5])}")
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
    summary = {
        "job_id": job_id, "shards": len(job.shards), "images": images, "tokens": tokens,
        "generated_this_run": generated, "plan_fingerprint": job.fingerprint,
        "model": job.spec.model.name, "cache_policy": job.spec.cache.policy,
        "device_seconds": device_s, "device_seconds_by_device": devices,
        "images_per_device_s": images / device_s if device_s else None,
        "wall_s_this_run": wall_s, "images_per_s_this_run": generated / wall_s if wall_s > 0 else None,
        "peak_memory_bytes": peak, "kv_cache_bytes": kv, "prompts_truncated": truncated,
        "finished_at": time.time(), "recovery_this_run": dict(recovery or {}),
    }
    summary["cost"] = job_cost(devices, images, job.spec.prices)  # prices: `submit --price`
    storage.put(layout.success_key(job_id), json.dumps(summary, indent=2).encode())
    return summary
