"""`linegen logs` and `linegen cancel`: a job's driver output, and stopping it."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Iterator

from linegen.cluster import jobs_api
from linegen.jobs import layout
from linegen.jobs.outcome import clear_outcome, write_cancelled
from linegen.jobs.remote.attempts import ACTIVE
from linegen.jobs.remote.context import HTTP_TIMEOUT_S, Context
from linegen.jobs.remote.status import locate
from linegen.jobs.storage import StorageError


def logs(ctx: Context, job_id: str, *, follow: bool = False) -> Iterator[str]:
    """The driver's output of every attempt (oldest first); ``follow``: stream the latest attempt
    until it ends."""

    address = ctx.require_cluster()
    client = jobs_api.connect(address, timeout=HTTP_TIMEOUT_S)
    loc = locate(ctx, job_id, client=client, need_storage=False)
    if not loc.attempts:
        raise jobs_api.no_job(address, job_id)
    many = len(loc.attempts) > 1
    for a in loc.attempts[:-1] if follow else loc.attempts:
        if many:
            yield f"==> attempt {a.submission_id} ({a.status}) <==\n"
        yield jobs_api.logs(client, a.submission_id)
    if follow:
        last = loc.attempts[-1]
        if many:
            yield f"==> attempt {last.submission_id} <==\n"
        yield from jobs_api.tail_logs(client, last.submission_id)


class Cancellation(StrEnum):
    CANCELLED = "cancelled"
    ALREADY_COMPLETE = "already complete"
    NOT_RUNNING = "not running"


@dataclass
class CancelResult:
    job_id: str
    status: Cancellation
    cluster: str
    out: str | None
    stopped: list[str] = field(default_factory=list)  # the attempts a stop was sent to
    final: dict[str, str] = field(default_factory=dict)  # attempt -> Ray's state after the stop
    last_ray_status: str | None = None  # NOT_RUNNING: how the latest attempt ended
    shards_committed: int | None = None  # they stay valid; `resume` finishes the rest
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def cancel(ctx: Context, job_id: str, *, wait_s: float = 30.0,
           reason: str = "cancelled by user (linegen cancel)") -> CancelResult:
    """Stop every pending/running attempt. Committed shards stay valid; `resume` finishes the job."""

    address = ctx.require_cluster()
    client = jobs_api.connect(address, timeout=HTTP_TIMEOUT_S)
    loc = locate(ctx, job_id, client=client)
    if not loc.attempts:
        raise jobs_api.no_job(address, job_id)
    result = CancelResult(job_id=job_id, status=Cancellation.CANCELLED, cluster=ctx.cluster_text(), out=loc.out)

    def complete() -> bool:
        return loc.storage is not None and loc.storage.exists(layout.success_key(job_id))

    if complete():
        result.status = Cancellation.ALREADY_COMPLETE
        return result
    active = [a for a in loc.attempts if a.status in ACTIVE]
    if not active:
        result.status, result.last_ray_status = Cancellation.NOT_RUNNING, loc.attempts[-1].status
        return result
    if loc.storage is not None:
        try:
            write_cancelled(loc.storage, job_id, reason)
        except StorageError as e:
            result.warnings.append(f"could not record the cancellation under {loc.out}: {e}")
    for a in active:
        jobs_api.stop(client, a.submission_id)
        result.stopped.append(a.submission_id)
    deadline = time.monotonic() + wait_s
    for sid in result.stopped:
        left = max(1.0, deadline - time.monotonic())
        try:
            result.final[sid] = jobs_api.wait(client, sid, timeout=left, poll=0.5).status
        except jobs_api.ClusterError as e:
            result.warnings.append(str(e))
    if complete():
        clear_outcome(loc.storage, job_id)  # it finished just before the stop arrived
        result.status = Cancellation.ALREADY_COMPLETE
        return result
    if loc.storage is not None:
        result.shards_committed = len(layout.committed_shards(loc.storage, job_id))
    return result
