"""`linegen submit` and `linegen resume`: prepare a job's outputs, then hand its driver to Ray.

Both return at once. A job never runs twice: its first attempt's Ray submission id is the job id,
and a resume only submits the next attempt id when no attempt is pending or running.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum

from linegen.cluster import jobs_api
from linegen.cluster.address import redact_url
from linegen.errors import UserError
from linegen.jobs import hints, layout
from linegen.jobs.outcome import clear_outcome
from linegen.jobs.prepare import prepare_job
from linegen.jobs.remote.attempts import ACTIVE, attempt_number, attempts_of
from linegen.jobs.remote.context import HTTP_TIMEOUT_S, Context
from linegen.jobs.remote.shipping import (DEFAULT_DRIVER_CPUS, absolute_out, entrypoint, metadata, quiet_upload_logs,
                                          runtime_env, staged_code, version_warning)
from linegen.jobs.remote.status import locate
from linegen.jobs.schedule import dependency_state, describe_time, parse_at, utc_iso
from linegen.jobs.spec import check_job_id, read_spec
from linegen.jobs.storage import open_storage


class Outcome(StrEnum):
    SUBMITTED = "submitted"
    ALREADY_SUBMITTED = "already submitted"
    ALREADY_RUNNING = "already running"
    ALREADY_COMPLETE = "already complete"
    FINISHED = "finished"  # a local job resumed on the embedded cluster, to the end


@dataclass
class SubmitResult:
    job_id: str
    status: Outcome
    submission_id: str | None  # the Ray job of the attempt that runs (or ran) it
    cluster: str
    out: str
    start_at: float | None = None
    start_at_utc: str | None = None
    start_at_text: str | None = None
    after: str | None = None
    ray_status: str | None = None  # Ray's state of an attempt submitted earlier
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ResumeResult:
    job_id: str
    status: Outcome
    submission_id: str | None
    cluster: str | None  # None: resumed locally (no cluster given)
    out: str | None
    attempt: int | None = None
    summary: dict | None = None  # a local resume's `_SUCCESS` summary

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _is_loopback(url: str) -> bool:
    from urllib.parse import urlsplit

    host = (urlsplit(url).hostname or "").lower()
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def _submit_attempt(client, *, out: str, job_id: str, submission_id: str, spec, attempt: int,
                    endpoint: str | None, ship_code: bool, driver_cpus: float, now: bool = False) -> bool:
    from contextlib import nullcontext

    quiet_upload_logs()
    with (staged_code() if ship_code else nullcontext()) as code:
        env = runtime_env(code=code, attempt=submission_id, s3_endpoint_url=endpoint, ignore_schedule=now)
        return jobs_api.submit(client, entrypoint(out, job_id), submission_id, env,
                               metadata(job_id, out, endpoint, attempt, spec, now=now),
                               entrypoint_num_cpus=driver_cpus, entrypoint_num_gpus=0)


def submit(ctx: Context, spec, *, at: str | None = None, after: str | None = None, ship_code: bool = True,
           driver_cpus: float = DEFAULT_DRIVER_CPUS) -> SubmitResult:
    """Validate and prepare the job (manifest copied to OUT/<job>/, job.json, plan.json), then
    submit its driver as Ray job ``<job_id>``. Returns at once; never runs a job twice."""

    address = ctx.require_cluster()
    if driver_cpus < 0:
        raise UserError(f"--driver-cpus must be >= 0, got {driver_cpus}")
    start_at = parse_at(at) if at else None
    if after is not None:
        check_job_id(after)
        if after == spec.job_id:
            raise UserError("--after names the job itself")
    client = jobs_api.connect(address, timeout=HTTP_TIMEOUT_S)  # unreachable / not Ray / token: fail before writing anything
    warnings: list[str] = []
    w = version_warning(jobs_api.ray_version(address, timeout=HTTP_TIMEOUT_S))
    if w:
        warnings.append(w)
    out = absolute_out(spec.out)
    cluster = ctx.cluster_text()
    if not out.startswith("s3://") and not _is_loopback(address.url):
        warnings.append(f"--out {out} is a local folder: the cluster's nodes must see the same path "
                        "(a shared filesystem); use s3://bucket/prefix otherwise")
    endpoint = spec.s3_endpoint_url or ctx.s3_endpoint_url

    if endpoint and redact_url(endpoint) != endpoint:
        warnings.append(f"the S3 endpoint {redact_url(endpoint)} holds credentials, which are never sent to the "
                        "cluster: set LINEGEN_S3_ENDPOINT_URL on its nodes")
    spec = dataclasses.replace(spec, out=out, s3_endpoint_url=endpoint, start_at=start_at, after=after,
                               prices=ctx.flag_prices or None)

    def result(status: Outcome, **kw) -> SubmitResult:
        fields = dict(job_id=spec.job_id, status=status, submission_id=spec.job_id, cluster=cluster, out=out,
                      start_at=spec.start_at, start_at_utc=utc_iso(spec.start_at),
                      start_at_text=describe_time(spec.start_at) if spec.start_at else None, after=spec.after,
                      warnings=warnings)
        return SubmitResult(**{**fields, **kw})

    states = jobs_api.list_jobs(client)
    mine = attempts_of(states, spec.job_id)
    if mine:
        latest = mine[-1]
        return result(Outcome.ALREADY_SUBMITTED, submission_id=latest.submission_id, ray_status=latest.status)
    storage = open_storage(out, endpoint_url=endpoint)
    if storage.exists(layout.success_key(spec.job_id)):
        return result(Outcome.ALREADY_COMPLETE)
    if after is not None:
        dep_attempts = attempts_of(states, after)
        if not dep_attempts and not storage.exists(layout.spec_key(after)):
            raise UserError(f"--after {after}: no job {after!r} on cluster {cluster} or under {out}")
        dep = dependency_state(storage, after)
        dep_active = any(a.status in ACTIVE for a in dep_attempts)
        if dep.state in ("failed", "cancelled") and not dep_active:
            raise UserError(f"--after {after}: {dep.reason}; resume it first "
                            f"({hints.resume(after, cluster=cluster)})")
        if dep.state == "waiting" and not dep_active:
            warnings.append(f"job {after} is not running on {cluster}; this job waits until it "
                            f"succeeds ({hints.resume(after, cluster=cluster)})")

    recorded = read_spec(storage, spec.job_id)
    prepare_job(spec)  # every check before anything runs; writes job.json, the manifest copy, plan.json
    if recorded is not None:
        from linegen.jobs.outcome import clear_outcome

        clear_outcome(storage, spec.job_id)  # an earlier run's _FAILED/_CANCELLED no longer holds
        warnings.append(f"job {spec.job_id} already exists under {out}: its committed shards are kept"
                        + ("" if (recorded.start_at, recorded.after) == (start_at, after)
                           else " and its recorded schedule applies"))
        spec = dataclasses.replace(spec, start_at=recorded.start_at, after=recorded.after)
    submitted = _submit_attempt(client, out=out, job_id=spec.job_id, submission_id=spec.job_id, spec=spec,
                                attempt=0, endpoint=endpoint, ship_code=ship_code, driver_cpus=driver_cpus)
    return result(Outcome.SUBMITTED if submitted else Outcome.ALREADY_SUBMITTED)


def resume(ctx: Context, job_id: str, *, now: bool = False, ship_code: bool = True,
           driver_cpus: float = DEFAULT_DRIVER_CPUS) -> ResumeResult:
    """Submit the next attempt ``<job_id>-resume-<n>`` of a job that is not running and not
    complete. ``now``: ignore the job's --at/--after for this attempt. Without a cluster, the job
    under the output root runs to the end here, on the embedded local Ray (`jobs.resume`)."""
    if ctx.address is None:
        from linegen.jobs.resume import resume_local

        loc = locate(ctx, job_id)  # a one-line error for an unknown or damaged job
        summary = resume_local(loc.out, job_id, s3_endpoint_url=loc.endpoint)
        return ResumeResult(job_id=job_id, status=Outcome.FINISHED, submission_id=None, cluster=None,
                            out=loc.out, summary=summary)
    address = ctx.require_cluster()
    client = jobs_api.connect(address, timeout=HTTP_TIMEOUT_S)
    loc = locate(ctx, job_id, client=client)
    if loc.spec is None:
        raise UserError(f"job {job_id}: no job.json under {loc.out}; nothing to resume")

    def result(status: Outcome, submission_id: str | None, attempt: int | None = None) -> ResumeResult:
        return ResumeResult(job_id=job_id, status=status, submission_id=submission_id, cluster=ctx.cluster_text(),
                            out=loc.out, attempt=attempt)

    if loc.storage.exists(layout.success_key(job_id)):
        return result(Outcome.ALREADY_COMPLETE, None)
    active = [a for a in loc.attempts if a.status in ACTIVE]
    if active:
        return result(Outcome.ALREADY_RUNNING, active[-1].submission_id)
    n = max([attempt_number(a.submission_id, job_id) for a in loc.attempts] + [0]) + 1
    taken = {s.submission_id for s in loc.all_states}
    while f"{job_id}-resume-{n}" in taken:
        n += 1
    sid = f"{job_id}-resume-{n}"
    clear_outcome(loc.storage, job_id)
    submitted = _submit_attempt(client, out=loc.out, job_id=job_id, submission_id=sid, spec=loc.spec,
                                attempt=n, endpoint=loc.endpoint, ship_code=ship_code, driver_cpus=driver_cpus,
                                now=now)
    return result(Outcome.SUBMITTED if submitted else Outcome.ALREADY_SUBMITTED, sid, n)
