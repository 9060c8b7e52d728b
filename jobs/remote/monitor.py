"""What a person watches: `linegen monitor`'s cluster snapshot and `linegen cost JOB`'s report."""
from __future__ import annotations

from linegen.cluster import jobs_api
from linegen.cluster.utilisation import snapshot
from linegen.cost.job_cost import cost_of
from linegen.cost.prices import PriceTable
from linegen.errors import UserError
from linegen.jobs.headline import figures
from linegen.jobs.progress import read_progress
from linegen.jobs.remote.attempts import states_from_snapshot
from linegen.jobs.remote.context import HTTP_TIMEOUT_S, Context
from linegen.jobs.remote.status import locate, statuses_of


def job_cost_report(ctx: Context, job_id: str) -> dict:
    """Cost from the job's stats: device-seconds per device x $/device-hour; $/1k images."""

    loc = locate(ctx, job_id)
    if loc.storage is None:
        raise UserError(loc.storage_error or f"job {job_id}: its output root is unknown; pass --out")
    progress = read_progress(loc.storage, job_id, with_stats=True, spec=loc.spec, live=False)  # committed stats only
    if progress.damaged:  # a cost from files that cannot be trusted would be a wrong number
        raise UserError(f"job {job_id} is damaged: {progress.damaged[0]}")
    prices = ctx.prices(loc.spec)
    c = cost_of(progress, prices)
    table = PriceTable.builtin().with_overrides(prices or None)
    used = {}
    for dev in c["device_seconds_by_device"]:
        p = table.lookup(dev)
        if p is not None:
            used[dev] = {"priced_as": p.device, "usd_per_hour": p.usd_per_hour, "unit": p.unit,
                         "source": p.source, "note": p.note}
    return {"job_id": job_id, "out": loc.out, "complete": progress.succeeded, **c,
            "images": {"done": progress.images_done, "total": progress.images_total}, "prices": used}


def monitor_snapshot(ctx: Context, *, cache=None) -> dict:
    """`cluster.utilisation.snapshot` (nodes, CPUs/GPUs total and in use, GPU utilisation and memory
    where Ray reports them, else "n/a") plus every linegen job with progress, images/s, ETA, cost."""

    address = ctx.require_cluster()
    snap = snapshot(address, timeout=HTTP_TIMEOUT_S)
    if isinstance(snap.get("jobs"), list):
        states = states_from_snapshot(snap["jobs"])
    else:
        states = jobs_api.list_jobs(jobs_api.connect(address, timeout=HTTP_TIMEOUT_S))

    snap["linegen_jobs"] = [s.to_dict() for s in statuses_of(ctx, states, cache=cache)]
    for doc in snap["linegen_jobs"]:  # the dashboard's headline figures, by the same formulas
        doc["headline"] = figures(doc)
    snap["cluster"] = ctx.cluster_text()
    return snap
