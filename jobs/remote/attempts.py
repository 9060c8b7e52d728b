"""The Ray jobs behind one linegen job, and the one state they add up to.

A job id is the Ray submission id of its first attempt, so submitting the same job twice never
runs it twice (Ray refuses a reused submission id; `submit` looks first). Ray never reuses an id,
so `resume` submits ``<job_id>-resume-<n>`` (n = 1, 2, ...), and only when no attempt of the job
is PENDING or RUNNING; the driver skips committed shards, so the output stays exactly-once. Every
attempt carries the metadata ``linegen_job_id`` (that is how attempts are grouped),
``linegen_out`` (so ``status JOB --cluster URL`` finds the outputs), the attempt number and the
schedule. Never a token or a credential.
"""
from __future__ import annotations

import re
import time

from linegen.cluster.jobs_api import JobState
from linegen.jobs.schedule import describe_time, utc_iso

ACTIVE = frozenset({"PENDING", "RUNNING"})

META_JOB = "linegen_job_id"
META_OUT = "linegen_out"
META_ENDPOINT = "linegen_s3_endpoint_url"
META_ATTEMPT = "linegen_attempt"
META_START = "linegen_start_at"
META_AFTER = "linegen_after"
META_NOW = "linegen_ignore_schedule"
META_MODEL = "linegen_model"
META_VERSION = "linegen_version"

# linegen-level states (Ray's plus the ones only our outputs can tell)
STATES = ("SCHEDULED", "WAITING", "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED",
          "INCOMPLETE", "UNKNOWN", "DAMAGED")


def attempt_number(submission_id: str | None, job_id: str) -> int:
    if submission_id == job_id:
        return 0
    m = re.fullmatch(re.escape(job_id) + r"-resume-(\d+)", submission_id or "")
    return int(m.group(1)) if m else 0


def attempts_of(states: list, job_id: str) -> list:
    """The Ray jobs that are attempts of ``job_id``, first attempt first."""
    mine = [s for s in states
            if (s.metadata or {}).get(META_JOB) == job_id or s.submission_id == job_id]
    return sorted(mine, key=lambda s: (attempt_number(s.submission_id, job_id), s.start_time or 0.0))


def group_attempts(states: list) -> dict[str, list]:
    """linegen job id -> its attempts (Ray jobs without our metadata are left out)."""
    groups: dict[str, list] = {}
    for s in states:
        jid = (s.metadata or {}).get(META_JOB)
        if jid:
            groups.setdefault(jid, []).append(s)
    return {jid: sorted(a, key=lambda s: (attempt_number(s.submission_id, jid), s.start_time or 0.0))
            for jid, a in groups.items()}


def states_from_snapshot(jobs: list[dict]) -> list:
    """The jobs of a dashboard snapshot as JobStates (saves a second request)."""

    return [JobState(submission_id=j.get("submission_id"), status=str(j.get("status")),
                     message=j.get("message") or "", start_time=j.get("start_time"),
                     end_time=j.get("end_time"), metadata=dict(j.get("metadata") or {}),
                     entrypoint=j.get("entrypoint") or "", job_id=j.get("job_id")) for j in jobs]


def attempt_doc(a) -> dict:
    msg = (a.message or "").strip().splitlines()
    return {"submission_id": a.submission_id, "status": a.status, "start_time": a.start_time,
            "start_time_utc": utc_iso(a.start_time), "end_time": a.end_time, "end_time_utc": utc_iso(a.end_time),
            "message": msg[0][:300] if msg else ""}


def explain_failure(message: str) -> str:
    """Ray's message for a FAILED job -> one line a user can act on."""
    text = message or ""
    m = re.search(r"No module named '([^']+)'", text)
    if m:
        mod = m.group(1)
        if mod.split(".")[0] == "linegen":
            return (f"linegen is not importable on the cluster (No module named '{mod}'): install it on every "
                    "node or submit without --no-ship-code")
        return (f"the cluster's Python has no module '{mod}': linegen's dependencies (torch, ray[default], "
                "boto3, pyarrow, numpy, pillow) must be installed on every node")
    if "runtime env" in text.lower() or "runtime_env" in text:
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), text)
        return f"the job's runtime environment could not be set up: {first[:300]}"
    errors = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("error:")]
    if errors:
        return errors[-1][len("error:"):].strip()[:500]
    code = re.search(r"exit code (-?\d+)", text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    tail = lines[-1][:300] if lines else ""
    return (f"the driver exited with code {code.group(1)}: {tail}" if code else tail) or "failed"


def derive_state(attempts: list, progress, spec, *, dep_succeeded=None, now: float | None = None,
                 cluster_known: bool = True, resume_hint: str = "linegen resume JOB") -> tuple[str, str]:
    """(state, reason) from Ray's attempts and the job's own outputs; ``resume_hint``: the resume
    command as it works for this job (`jobs.hints`), for the reasons that suggest it."""

    now = time.time() if now is None else now
    if progress is not None and progress.succeeded:
        return "SUCCEEDED", ""
    active = [a for a in attempts if a.status in ACTIVE]
    if active:
        a = active[-1]
        if a.status == "PENDING":
            return "PENDING", "waiting for the cluster to start the driver (resources, runtime environment)"
        ignore = (a.metadata or {}).get(META_NOW) == "1"
        done = progress.shards_done if progress is not None else 0
        if spec is not None and not ignore and spec.start_at is not None and now < spec.start_at and not done:
            return "SCHEDULED", f"starts at {describe_time(spec.start_at)}"
        if (spec is not None and not ignore and spec.after and dep_succeeded is not None
                and not dep_succeeded(spec.after)):
            return "WAITING", f"waits for job {spec.after} to succeed"
        return _live_state(progress) or ("RUNNING", "")
    if not cluster_known and progress is not None and progress.live_fresh:
        return _live_state(progress)  # the driver reported a moment ago: it runs (e.g. `linegen run`)
    if not cluster_known and progress is not None and (progress.live or {}).get("state") == "failed":
        return "FAILED", str(progress.live.get("message") or "failed")  # its driver said why, last
    if progress is not None and progress.outcome is not None:
        state = "CANCELLED" if progress.outcome.state == "cancelled" else "FAILED"
        return state, progress.outcome.reason
    if attempts:
        last = attempts[-1]
        if last.status == "STOPPED":
            return "CANCELLED", "stopped"
        if last.status == "FAILED":
            return "FAILED", explain_failure(last.message)
        if last.status == "SUCCEEDED":
            return "INCOMPLETE", f"the driver exited without writing _SUCCESS; `{resume_hint}` finishes the job"
    if cluster_known:
        return "INCOMPLETE", f"not running; `{resume_hint}` finishes the job"
    if progress is not None and progress.live_age_s is not None:
        return "INCOMPLETE", (f"not running: its driver last reported {int(progress.live_age_s)} s ago; "
                              f"run it again (or `{resume_hint}`) to finish it")
    return "UNKNOWN", "no cluster given: whether it is running cannot be told from its outputs alone"


def _live_state(progress) -> tuple[str, str] | None:
    """RUNNING, or WAITING with the driver's reason (e.g. no worker placed yet), from live progress."""
    if progress is None or not progress.live_fresh:
        return None
    if (progress.live or {}).get("state") == "waiting":
        return "WAITING", progress.waiting or "waiting for resources"
    return "RUNNING", progress.waiting
