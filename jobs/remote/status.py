"""Finding a job (its attempts on the cluster, its output root) and telling where it stands."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from linegen.cluster import jobs_api
from linegen.cluster.address import is_redacted
from linegen.cost.job_cost import cost_of
from linegen.errors import UserError
from linegen.jobs import layout
from linegen.jobs.hints import resume
from linegen.jobs.marker import DamagedMarker
from linegen.jobs.progress import read_progress
from linegen.jobs.remote.attempts import (ACTIVE, META_ENDPOINT, META_MODEL, META_OUT, attempt_doc, attempts_of,
                                          derive_state, group_attempts)
from linegen.jobs.remote.context import HTTP_TIMEOUT_S, Context
from linegen.jobs.schedule import describe_time, utc_iso
from linegen.jobs.spec import check_job_id, read_spec
from linegen.jobs.storage import StorageError, open_storage


@dataclass
class Located:
    job_id: str
    attempts: list
    all_states: list
    out: str | None
    endpoint: str | None = field(repr=False)  # may hold credentials: never shown
    storage: Any | None
    spec: Any | None
    cluster: str | None
    storage_error: str | None = None


def locate(ctx: Context, job_id: str, *, client=None, states: list | None = None,
           need_storage: bool = True) -> Located:
    """A job's attempts on the cluster (if one is given) and its output root (from the attempts'
    metadata, else --out / the config). A job known to neither is a one-line error."""

    check_job_id(job_id)
    address = ctx.address
    if states is None and address is not None:
        client = client or jobs_api.connect(address, timeout=HTTP_TIMEOUT_S)
        states = jobs_api.list_jobs(client)
    states = states or []
    attempts = attempts_of(states, job_id)
    meta = attempts[-1].metadata if attempts else {}
    out = meta.get(META_OUT) or ctx.out
    endpoint = meta.get(META_ENDPOINT) or ctx.s3_endpoint_url

    if is_redacted(endpoint):  # the metadata keeps no credentials: use the endpoint given here
        endpoint = ctx.s3_endpoint_url or endpoint
    if address is None:
        ctx.require_target()
    where = " or ".join(x for x in (f"on cluster {ctx.cluster_text()}" if address else None,
                                     f"under {out}" if out else None) if x)
    storage = spec = None
    storage_error = None
    if out is not None and need_storage:
        try:
            storage = open_storage(out, endpoint_url=endpoint)
            spec = read_spec(storage, job_id)
        except StorageError as e:
            if not attempts:
                raise
            storage, storage_error = None, f"cannot read the job's outputs at {out}: {e}"
    if not attempts and spec is None:
        if address is not None and not out:
            raise jobs_api.no_job(address, job_id)
        raise UserError(f"no job '{job_id}' {where}")
    return Located(job_id=job_id, attempts=attempts, all_states=states, out=out, endpoint=endpoint,
                   storage=storage, spec=spec, cluster=ctx.cluster_text(), storage_error=storage_error)


@dataclass
class Count:
    done: int | None = None
    total: int | None = None


@dataclass
class Schedule:
    start_at: float | None = None
    start_at_utc: str | None = None
    start_at_text: str | None = None
    after: str | None = None


@dataclass
class JobStatus:
    """Where one job stands; ``to_dict()`` is what `status --json` prints (unknowns are None)."""

    job_id: str
    state: str  # one of attempts.STATES, or Ray's own status when the job cannot be read
    reason: str = ""
    cluster: str | None = None
    out: str | None = None
    model: str | None = None
    cache_policy: str | None = None
    cache_ratio: str | None = None
    shard_size: int | None = None
    schedule: Schedule = field(default_factory=Schedule)
    shards: Count = field(default_factory=Count)
    images: Count = field(default_factory=Count)
    progress: float | None = None
    images_committed: int | None = None  # images.done counts images decoded in shards not committed yet
    images_per_s: float | None = None
    eta_s: float | None = None
    errors: list[str] = field(default_factory=list)
    attempts: list[dict] = field(default_factory=list)
    submitted_at: float | None = None
    finished_at: float | None = None
    cost: dict | None = None
    workers: dict | None = None  # live: placed, pending, what each needs, and each worker's node
    live_updated_at: float | None = None  # when the running driver last wrote _progress.json

    def to_dict(self) -> dict:
        """The JSON document; every epoch time has an ISO-8601 UTC twin (``*_utc``)."""

        d = dataclasses.asdict(self)
        d["submitted_at_utc"], d["finished_at_utc"] = utc_iso(self.submitted_at), utc_iso(self.finished_at)
        return d


def reconciled(attempt: dict, job_state: str) -> dict:
    """An attempt's doc with ``state``: Ray's status said in terms of the job's, so the two never
    contradict each other. Ray calls a driver RUNNING while it waits for its start time or for
    another job (the job is SCHEDULED/WAITING), and for the moment between writing _SUCCESS and
    exiting (the job has SUCCEEDED); ``status`` keeps Ray's own word."""
    ray_status = attempt.get("status")
    state = ray_status
    if ray_status in ("RUNNING", "PENDING"):
        if job_state == "SUCCEEDED":
            state = "FINISHING"  # its outputs are complete; the driver process is exiting
        elif job_state in ("SCHEDULED", "WAITING"):
            state = job_state  # the driver runs, and waits (no GPU held)
    return {**attempt, "state": state}


def job_status(ctx: Context, job_id: str, *, client=None, states: list | None = None, cache=None,
               with_stats: bool = True, now: float | None = None, loc: Located | None = None) -> JobStatus:
    """State, progress (shards and images done/total), images/s, ETA, errors and cost so far."""

    now = time.time() if now is None else now
    loc = loc or locate(ctx, job_id, client=client, states=states)
    active = [a for a in loc.attempts if a.status in ACTIVE]
    since = active[-1].start_time if active else None
    progress = None
    errors: list[str] = []
    if loc.storage_error:
        errors.append(loc.storage_error)
    if loc.storage is not None:
        # live progress counts while an attempt runs, or when no cluster can say whether one does
        progress = read_progress(loc.storage, job_id, with_stats=with_stats, since=since, cache=cache,
                                 spec=loc.spec, live=bool(active) or ctx.address is None)
        errors.extend(progress.errors)

    def dep_ok(other: str) -> bool:
        return loc.storage is not None and loc.storage.exists(layout.success_key(other))

    state, reason = derive_state(loc.attempts, progress, loc.spec, dep_succeeded=dep_ok, now=now,
                                 cluster_known=ctx.address is not None,
                                 resume_hint=resume(job_id, cluster=ctx.cluster_text(), out=loc.out))
    if progress is not None and progress.damaged:  # a file of the job cannot be trusted: say which
        state, reason = "DAMAGED", progress.damaged[0]
    if state in ("FAILED", "CANCELLED") and reason:
        errors.insert(0, reason)
    spec = loc.spec
    status = JobStatus(job_id=job_id, state=state, reason=reason, cluster=loc.cluster, out=loc.out,
                       errors=errors, attempts=[reconciled(attempt_doc(a), state) for a in loc.attempts])
    if spec is not None:
        status.model, status.cache_policy = spec.model.name, spec.cache.policy
        status.cache_ratio, status.shard_size = spec.cache.ratio, spec.shard_size
        status.schedule = Schedule(start_at=spec.start_at, start_at_utc=utc_iso(spec.start_at),
                                   start_at_text=describe_time(spec.start_at) if spec.start_at else None,
                                   after=spec.after)
    elif loc.attempts:
        status.model = (loc.attempts[-1].metadata or {}).get(META_MODEL)
    status.submitted_at = loc.attempts[0].start_time if loc.attempts else (spec.created_at if spec else None)
    if progress is not None:
        status.shards = Count(progress.shards_done, progress.shards_total)
        status.images = Count(progress.images_done, progress.images_total)
        status.images_committed = progress.images_committed
        status.progress = progress.fraction
        if progress.live_fresh:
            status.workers = dict(progress.live.get("workers") or {}) or None
            status.live_updated_at = progress.live.get("updated_at")
        status.images_per_s = progress.images_per_s
        status.eta_s = progress.eta_s if state in ("RUNNING", "WAITING") else None
        status.finished_at = (progress.summary or {}).get("finished_at")
        try:
            status.cost = cost_of(progress, ctx.prices(spec))
        except Exception as e:  # noqa: BLE001 - a bad price never hides the job's state
            errors.append(f"cost: {e}")
    return status


def statuses_of(ctx: Context, states: list, *, cache=None) -> list[JobStatus]:
    """Every linegen job among the cluster's Ray jobs, oldest first."""
    docs = []
    for jid, attempts in group_attempts(states).items():
        active = any(a.status in ACTIVE for a in attempts)
        try:
            docs.append(job_status(ctx, jid, states=states, cache=cache, with_stats=active))
        except UserError as e:
            docs.append(JobStatus(job_id=jid, state=attempts[-1].status, reason=str(e), errors=[str(e)],
                                  attempts=[attempt_doc(a) for a in attempts]))
    docs.sort(key=lambda d: d.submitted_at or 0.0)
    return docs


def list_jobs(ctx: Context, *, cache=None) -> list[JobStatus]:
    """Every linegen job on the cluster (attempts grouped under the job id), or under --out when no
    cluster is given; scheduled, running and finished, with progress."""

    if ctx.address is not None:
        client = jobs_api.connect(ctx.address, timeout=HTTP_TIMEOUT_S)
        return statuses_of(ctx, jobs_api.list_jobs(client), cache=cache)
    ctx.require_target()

    storage = open_storage(ctx.out, endpoint_url=ctx.s3_endpoint_url)
    ids = sorted({k.split("/", 1)[0] for k in storage.list("") if k.count("/") == 1 and k.endswith("/job.json")})
    docs = []
    for jid in ids:
        try:
            docs.append(job_status(ctx, jid, states=[], cache=cache, with_stats=False))
        except UserError as e:  # one damaged job folder is one row saying why, not a failed list
            docs.append(JobStatus(job_id=jid, state=_state_of_error(e), reason=str(e), errors=[str(e)], out=ctx.out))
    docs.sort(key=lambda d: d.submitted_at or 0.0)
    return docs


def _state_of_error(e: UserError) -> str:
    """DAMAGED when the job's own files are at fault; UNKNOWN when its storage could not be read."""

    return "UNKNOWN" if isinstance(e, StorageError) and not isinstance(e, DamagedMarker) else "DAMAGED"
