"""linegen jobs on a remote Ray cluster: submit, resume, status, list, logs, cancel, cost, monitor.

Each function combines what Ray knows (cluster.jobs_api: the job's attempts and their states)
with what the job wrote (jobs.progress: plan, commits, stats, markers), and returns plain dicts
the CLI prints as tables or JSON.

Attempts. A job id is the Ray submission id of its first attempt, so submitting the same job
twice never runs it twice (Ray refuses a reused submission id; `submit` looks first). Ray never
reuses an id, so `resume` submits ``<job_id>-resume-<n>`` (n = 1, 2, ...), and only when no
attempt of the job is PENDING or RUNNING; the driver skips committed shards, so the output stays
exactly-once. Every attempt carries the metadata ``linegen_job_id`` (that is how attempts are
grouped), ``linegen_out`` (so ``status JOB --cluster URL`` finds the outputs), the attempt number
and the schedule. Never a token or a credential.

What ships to the cluster (``runtime_env``): our packages ``cli``, ``jobs``, ``workers`` and
``cluster`` as ``py_modules`` (so the cluster runs the same linegen as the laptop, without
``__pycache__``), ``LINEGEN_ATTEMPT`` and, if given, ``LINEGEN_S3_ENDPOINT_URL`` (not secret). The
Python dependencies (torch, ray[default], boto3, pyarrow, numpy, pillow) must be installed on every
node; with ``--no-ship-code`` linegen itself must be installed there too. A driver that cannot
import them fails at once, and `status` says which module is missing. S3 access on the cluster
uses the nodes' own credential chain (instance role, env, profile): nothing is forwarded.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from linegen.jobs.errors import UserError

PACKAGES = ("cli", "jobs", "workers", "cluster")
CODE_EXCLUDES = ["__pycache__", "*.pyc", ".pytest_cache", "*.egg-info"]
MAX_CODE_BYTES = 90 * 1024 * 1024  # Ray's practical upload limit is about 100 MiB
ACTIVE = frozenset({"PENDING", "RUNNING"})
DEFAULT_DRIVER_CPUS = 0.1
# Seconds to wait for the dashboard to answer one request: a refused connection fails at once,
# but a busy head (a job decoding on the same node) can take a few seconds to answer.
HTTP_TIMEOUT_S = 10.0

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
          "INCOMPLETE", "UNKNOWN")


# --------------------------------------------------------------------------- context


@dataclass
class Context:
    """Where the commands point: cluster (or None), output root, S3 endpoint, prices."""

    address: Any | None  # cluster.address.ClusterAddress
    out: str | None = None
    s3_endpoint_url: str | None = None
    config_prices: dict[str, float] = field(default_factory=dict)
    flag_prices: dict[str, float] = field(default_factory=dict)
    config: Any | None = None

    def require_cluster(self):
        if self.address is None:
            raise UserError("no cluster given: pass --cluster http://HEAD:8265, set RAY_ADDRESS, "
                            "or set [cluster] address in the config file")
        return self.address

    def prices(self, spec=None) -> dict[str, float]:
        """Built-ins < config [prices] < prices recorded at submit < --price now."""
        merged = dict(self.config_prices)
        merged.update(getattr(spec, "prices", None) or {})
        merged.update(self.flag_prices)
        return merged


def parse_headers(items: list[str] | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    for n, item in enumerate(items or [], start=1):
        cuts = [i for i in (item.find("="), item.find(":")) if i >= 0]
        if not cuts:
            # the value may be a secret: never echo it
            raise UserError(f"--header #{n} must look like NAME=VALUE (or 'NAME: VALUE')")
        k, v = item[:min(cuts)], item[min(cuts) + 1:]
        k = k.strip()
        if not k or not re.match(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$", k):
            raise UserError(f"--header: {k!r} is not a valid HTTP header name")
        headers[k] = v.strip()
    return headers


def make_context(cluster: str | None = None, token: str | None = None, headers: list[str] | None = None,
                 out: str | None = None, config_path: str | None = None, prices: list[str] | None = None,
                 s3_endpoint_url: str | None = None, token_file: str | None = None) -> Context:
    """Flags + config file + environment -> Context. Every problem is a one-line UserError."""
    from linegen.cluster.address import resolve_cluster
    from linegen.cluster.config import ConfigError, load_config
    from linegen.cluster.prices import parse_price

    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        raise UserError(str(e)) from None
    try:
        address = resolve_cluster(cluster, token, parse_headers(headers),
                                  token_file=token_file or cfg.cluster.token_file,
                                  default_url=cfg.cluster.address)
    except ValueError as e:
        raise UserError(str(e)) from None
    flag_prices: dict[str, float] = {}
    for p in prices or []:
        try:
            name, value = parse_price(p)
        except ValueError as e:
            raise UserError(f"--price: {e}") from None
        flag_prices[name] = value
    return Context(address=address, out=out or cfg.output.out,
                   s3_endpoint_url=s3_endpoint_url or cfg.s3.endpoint_url,
                   config_prices=dict(cfg.prices), flag_prices=flag_prices, config=cfg)


# --------------------------------------------------------------------------- attempts


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


def _states_from_snapshot(jobs: list[dict]) -> list:
    from linegen.cluster.jobs_api import JobState

    return [JobState(submission_id=j.get("submission_id"), status=str(j.get("status")),
                     message=j.get("message") or "", start_time=j.get("start_time"),
                     end_time=j.get("end_time"), metadata=dict(j.get("metadata") or {}),
                     entrypoint=j.get("entrypoint") or "", job_id=j.get("job_id")) for j in jobs]


# --------------------------------------------------------------------------- runtime env


def code_dirs() -> list[str]:
    """Our packages' folders, as shipped with ``py_modules``."""
    root = Path(__file__).resolve().parent.parent
    dirs = [root / p for p in PACKAGES]
    missing = [str(d) for d in dirs if not (d / "__init__.py").is_file()]
    if missing:
        raise UserError(f"cannot ship linegen's code: package folder(s) not found: {', '.join(missing)} "
                        "(install linegen on the cluster and use --no-ship-code)")
    return [str(d) for d in dirs]


def _code_bytes(dirs: list[str]) -> int:
    total = 0
    for d in dirs:
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames[:] = [n for n in dirnames if n != "__pycache__" and not n.endswith(".egg-info")]
            total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in filenames if not f.endswith(".pyc"))
    return total


def runtime_env(*, ship_code: bool, attempt: str, s3_endpoint_url: str | None,
                ignore_schedule: bool = False) -> dict:
    env_vars = {"LINEGEN_ATTEMPT": attempt, "PYTHONUNBUFFERED": "1"}
    if s3_endpoint_url:
        env_vars["LINEGEN_S3_ENDPOINT_URL"] = s3_endpoint_url
    if ignore_schedule:
        from linegen.jobs.schedule import IGNORE_SCHEDULE_ENV

        env_vars[IGNORE_SCHEDULE_ENV] = "1"
    env: dict[str, Any] = {"env_vars": env_vars}
    if ship_code:
        dirs = code_dirs()
        size = _code_bytes(dirs)
        if size > MAX_CODE_BYTES:
            raise UserError(f"linegen's code is {size / 2**20:.0f} MiB, too large to ship with the job "
                            "(Ray's limit is about 100 MiB); install linegen on the cluster and use --no-ship-code")
        env["py_modules"] = dirs
        env["excludes"] = list(CODE_EXCLUDES)
    return env


def _quiet_upload_logs() -> None:
    """Ray's client logs every py_modules upload at INFO on stderr; a user wants one line from us."""
    import logging

    for name in ("ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.WARNING)


def entrypoint(out: str, job_id: str) -> str:
    return f"python -m linegen.jobs.driver {shlex.quote(out)} {shlex.quote(job_id)}"


def _linegen_version() -> str:
    try:
        from importlib.metadata import version

        return version("linegen")
    except Exception:  # noqa: BLE001
        return "unknown"


def _version_warning(cluster_version: str) -> str | None:
    try:
        from importlib.metadata import version

        local = version("ray")
    except Exception:  # noqa: BLE001
        return None
    if local.split(".")[:2] != str(cluster_version).split(".")[:2]:
        return (f"this machine has Ray {local} but the cluster runs Ray {cluster_version}; "
                "the Jobs API usually works across versions, the job runs with the cluster's")
    return None


def shown_url(url: str) -> str:
    """A cluster URL as printed: without any ``user:password@`` part."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


def _is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def _absolute_out(out: str) -> str:
    if out.startswith("s3://"):
        return out.rstrip("/")
    path = out[len("file://"):] if out.startswith("file://") else out
    return os.path.abspath(os.path.expanduser(path))


def _metadata(job_id: str, out: str, endpoint: str | None, attempt: int, spec, now: bool = False) -> dict:
    from linegen.jobs.schedule import utc_iso

    meta = {META_JOB: job_id, META_OUT: out, META_ATTEMPT: str(attempt), META_MODEL: spec.model.name,
            META_VERSION: _linegen_version()}
    if endpoint:
        meta[META_ENDPOINT] = endpoint
    if spec.start_at is not None:
        meta[META_START] = utc_iso(spec.start_at)
    if spec.after:
        meta[META_AFTER] = spec.after
    if now:
        meta[META_NOW] = "1"
    return meta


# --------------------------------------------------------------------------- submit / resume


def submit(ctx: Context, spec, *, at: str | None = None, after: str | None = None, ship_code: bool = True,
           driver_cpus: float = DEFAULT_DRIVER_CPUS) -> dict:
    """Validate and prepare the job (manifest copied to OUT/<job>/, job.json, plan.json), then
    submit its driver as Ray job ``<job_id>``. Returns at once; never runs a job twice."""
    from linegen.cluster import jobs_api
    from linegen.jobs import layout
    from linegen.jobs.schedule import dependency_state, describe_time, parse_at, utc_iso
    from linegen.jobs.spec import check_job_id
    from linegen.jobs.storage import open_storage

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
    w = _version_warning(jobs_api.ray_version(address, timeout=HTTP_TIMEOUT_S))
    if w:
        warnings.append(w)
    out = _absolute_out(spec.out)
    if not out.startswith("s3://") and not _is_loopback(address.url):
        warnings.append(f"--out {out} is a local folder: the cluster's nodes must see the same path "
                        "(a shared filesystem); use s3://bucket/prefix otherwise")
    endpoint = spec.s3_endpoint_url or ctx.s3_endpoint_url
    spec = dataclasses.replace(spec, out=out, s3_endpoint_url=endpoint, start_at=start_at, after=after,
                               prices=ctx.flag_prices or None)
    result = {"job_id": spec.job_id, "submission_id": spec.job_id, "cluster": shown_url(address.url), "out": out,
              "start_at": start_at, "start_at_utc": utc_iso(start_at),
              "start_at_text": describe_time(start_at) if start_at else None, "after": after,
              "warnings": warnings}

    states = jobs_api.list_jobs(client)
    mine = attempts_of(states, spec.job_id)
    if mine:
        latest = mine[-1]
        return {**result, "status": "already submitted", "submission_id": latest.submission_id,
                "ray_status": latest.status}
    storage = open_storage(out, endpoint_url=endpoint)
    if storage.exists(layout.success_key(spec.job_id)):
        return {**result, "status": "already complete"}
    if after is not None:
        dep_attempts = attempts_of(states, after)
        if not dep_attempts and not storage.exists(layout.spec_key(after)):
            raise UserError(f"--after {after}: no job {after!r} on cluster {shown_url(address.url)} or under {out}")
        dep = dependency_state(storage, after)
        dep_active = any(a.status in ACTIVE for a in dep_attempts)
        if dep.state in ("failed", "cancelled") and not dep_active:
            raise UserError(f"--after {after}: {dep.reason}; resume it first (linegen resume {after})")
        if dep.state == "waiting" and not dep_active:
            warnings.append(f"job {after} is not running on {shown_url(address.url)}; this job waits until it "
                            f"succeeds (linegen resume {after})")
    from linegen.jobs.driver import prepare_job
    from linegen.jobs.progress import read_spec

    recorded = read_spec(storage, spec.job_id)
    prepare_job(spec)  # every check before anything runs; writes job.json, the manifest copy, plan.json
    if recorded is not None:
        from linegen.jobs.outcome import clear_outcome

        clear_outcome(storage, spec.job_id)  # an earlier run's _FAILED/_CANCELLED no longer holds
        warnings.append(f"job {spec.job_id} already exists under {out}: its committed shards are kept"
                        + ("" if (recorded.start_at, recorded.after) == (start_at, after)
                           else " and its recorded schedule applies"))
        spec = dataclasses.replace(spec, start_at=recorded.start_at, after=recorded.after)
    env = runtime_env(ship_code=ship_code, attempt=spec.job_id, s3_endpoint_url=endpoint)
    _quiet_upload_logs()
    submitted = jobs_api.submit(client, entrypoint(out, spec.job_id), spec.job_id, env,
                                _metadata(spec.job_id, out, endpoint, 0, spec),
                                entrypoint_num_cpus=driver_cpus, entrypoint_num_gpus=0)
    return {**result, "status": "submitted" if submitted else "already submitted",
            "start_at": spec.start_at, "start_at_utc": utc_iso(spec.start_at),
            "start_at_text": describe_time(spec.start_at) if spec.start_at else None, "after": spec.after}


def resume(ctx: Context, job_id: str, *, now: bool = False, ship_code: bool = True,
           driver_cpus: float = DEFAULT_DRIVER_CPUS) -> dict:
    """Submit the next attempt ``<job_id>-resume-<n>`` of a job that is not running and not
    complete. ``now``: ignore the job's --at/--after for this attempt."""
    from linegen.cluster import jobs_api
    from linegen.jobs import layout
    from linegen.jobs.outcome import clear_outcome

    address = ctx.require_cluster()
    client = jobs_api.connect(address, timeout=HTTP_TIMEOUT_S)
    loc = locate(ctx, job_id, client=client)
    if loc.spec is None:
        raise UserError(f"job {job_id}: no job.json under {loc.out}; nothing to resume")
    base = {"job_id": job_id, "cluster": shown_url(address.url), "out": loc.out}
    if loc.storage.exists(layout.success_key(job_id)):
        return {**base, "status": "already complete", "submission_id": None}
    active = [a for a in loc.attempts if a.status in ACTIVE]
    if active:
        return {**base, "status": "already running", "submission_id": active[-1].submission_id}
    n = max([attempt_number(a.submission_id, job_id) for a in loc.attempts] + [0]) + 1
    taken = {s.submission_id for s in loc.all_states}
    while f"{job_id}-resume-{n}" in taken:
        n += 1
    sid = f"{job_id}-resume-{n}"
    clear_outcome(loc.storage, job_id)
    endpoint = loc.endpoint
    env = runtime_env(ship_code=ship_code, attempt=sid, s3_endpoint_url=endpoint, ignore_schedule=now)
    _quiet_upload_logs()
    submitted = jobs_api.submit(client, entrypoint(loc.out, job_id), sid, env,
                                _metadata(job_id, loc.out, endpoint, n, loc.spec, now=now),
                                entrypoint_num_cpus=driver_cpus, entrypoint_num_gpus=0)
    return {**base, "status": "submitted" if submitted else "already submitted", "submission_id": sid,
            "attempt": n}


# --------------------------------------------------------------------------- locating a job


@dataclass
class Located:
    job_id: str
    attempts: list
    all_states: list
    out: str | None
    endpoint: str | None
    storage: Any | None
    spec: Any | None
    cluster: str | None
    storage_error: str | None = None


def locate(ctx: Context, job_id: str, *, client=None, states: list | None = None,
           need_storage: bool = True) -> Located:
    """A job's attempts on the cluster (if one is given) and its output root (from the attempts'
    metadata, else --out / the config). A job known to neither is a one-line error."""
    from linegen.cluster import jobs_api
    from linegen.jobs.progress import read_spec
    from linegen.jobs.spec import check_job_id
    from linegen.jobs.storage import StorageError, open_storage

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
    if address is None and out is None:
        raise UserError("no cluster and no output root given: pass --cluster http://HEAD:8265 or --out "
                        "(or set them in the config file)")
    where = " or ".join(x for x in (f"on cluster {address.url}" if address else None,
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
            from linegen.cluster.jobs_api import no_job

            raise no_job(address, job_id)
        raise UserError(f"no job '{job_id}' {where}")
    return Located(job_id=job_id, attempts=attempts, all_states=states, out=out, endpoint=endpoint,
                   storage=storage, spec=spec, cluster=shown_url(address.url) if address else None,
                   storage_error=storage_error)


# --------------------------------------------------------------------------- status


def explain_failure(message: str, shipped: bool = True) -> str:
    """Ray's message for a FAILED job -> one line a user can act on."""
    text = message or ""
    m = re.search(r"No module named '([^']+)'", text)
    if m:
        mod = m.group(1)
        top = mod.split(".")[0]
        if top in PACKAGES:
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
                 cluster_known: bool = True) -> tuple[str, str]:
    """(state, reason) from Ray's attempts and the job's own outputs."""
    from linegen.jobs.schedule import describe_time

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
        return "RUNNING", ""
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
            return "INCOMPLETE", "the driver exited without writing _SUCCESS; `linegen resume` finishes the job"
    if cluster_known:
        return "INCOMPLETE", "not running; `linegen resume` finishes the job"
    return "UNKNOWN", "no cluster given: whether it is running cannot be told from its outputs alone"


def _attempt_doc(a) -> dict:
    msg = (a.message or "").strip().splitlines()
    return {"submission_id": a.submission_id, "status": a.status, "start_time": a.start_time,
            "end_time": a.end_time, "message": msg[0][:300] if msg else ""}


def job_status(ctx: Context, job_id: str, *, client=None, states: list | None = None, cache=None,
               with_stats: bool = True, now: float | None = None, loc: Located | None = None) -> dict:
    """State, progress (shards and images done/total), images/s, ETA, errors and cost so far."""
    from linegen.jobs import layout
    from linegen.jobs.progress import cost_of, read_progress
    from linegen.jobs.schedule import describe_time, utc_iso

    now = time.time() if now is None else now
    loc = loc or locate(ctx, job_id, client=client, states=states)
    active = [a for a in loc.attempts if a.status in ACTIVE]
    since = active[-1].start_time if active else None
    progress = None
    errors: list[str] = []
    if loc.storage_error:
        errors.append(loc.storage_error)
    if loc.storage is not None:
        progress = read_progress(loc.storage, job_id, with_stats=with_stats, since=since, cache=cache,
                                 spec=loc.spec)
        errors.extend(progress.errors)

    def dep_ok(other: str) -> bool:
        return loc.storage is not None and loc.storage.exists(layout.success_key(other))

    state, reason = derive_state(loc.attempts, progress, loc.spec, dep_succeeded=dep_ok, now=now,
                                 cluster_known=ctx.address is not None)
    if state in ("FAILED", "CANCELLED") and reason:
        errors.insert(0, reason)
    spec = loc.spec
    doc: dict[str, Any] = {
        "job_id": job_id, "state": state, "reason": reason, "cluster": loc.cluster, "out": loc.out,
        "model": spec.model.name if spec else (loc.attempts[-1].metadata or {}).get(META_MODEL) if loc.attempts else None,
        "cache_policy": spec.cache.policy if spec else None,
        "cache_ratio": spec.cache.ratio if spec else None,
        "shard_size": spec.shard_size if spec else None,
        "schedule": {
            "start_at": spec.start_at if spec else None,
            "start_at_utc": utc_iso(spec.start_at) if spec and spec.start_at else None,
            "start_at_text": describe_time(spec.start_at) if spec and spec.start_at else None,
            "after": spec.after if spec else None,
        },
        "shards": {"done": progress.shards_done if progress else None,
                   "total": progress.shards_total if progress else None},
        "images": {"done": progress.images_done if progress else None,
                   "total": progress.images_total if progress else None},
        "progress": progress.fraction if progress else None,
        "images_per_s": progress.images_per_s if progress else None,
        "eta_s": progress.eta_s if (progress and state == "RUNNING") else None,
        "errors": errors,
        "attempts": [_attempt_doc(a) for a in loc.attempts],
        "submitted_at": loc.attempts[0].start_time if loc.attempts else (spec.created_at if spec else None),
        "finished_at": (progress.summary or {}).get("finished_at") if progress and progress.summary else None,
        "cost": None,
    }
    if progress is not None:
        try:
            doc["cost"] = cost_of(progress, ctx.prices(spec))
        except Exception as e:  # noqa: BLE001 - a bad price never hides the job's state
            errors.append(f"cost: {e}")
    return doc


# --------------------------------------------------------------------------- list / logs / cancel


def list_jobs(ctx: Context, *, cache=None) -> list[dict]:
    """Every linegen job on the cluster (attempts grouped under the job id), or under --out when no
    cluster is given; scheduled, running and finished, with progress."""
    from linegen.cluster import jobs_api

    if ctx.address is not None:
        client = jobs_api.connect(ctx.address, timeout=HTTP_TIMEOUT_S)
        states = jobs_api.list_jobs(client)
        groups = group_attempts(states)
        docs = []
        for jid, attempts in groups.items():
            active = any(a.status in ACTIVE for a in attempts)
            try:
                docs.append(job_status(ctx, jid, states=states, cache=cache, with_stats=active))
            except UserError as e:
                docs.append({"job_id": jid, "state": attempts[-1].status, "reason": str(e),
                             "attempts": [_attempt_doc(a) for a in attempts], "errors": [str(e)]})
        docs.sort(key=lambda d: d.get("submitted_at") or 0.0)
        return docs
    if ctx.out is None:
        raise UserError("no cluster and no output root given: pass --cluster http://HEAD:8265 or --out "
                        "(or set them in the config file)")
    from linegen.jobs.storage import open_storage

    storage = open_storage(ctx.out, endpoint_url=ctx.s3_endpoint_url)
    ids = sorted({k.split("/", 1)[0] for k in storage.list("") if k.count("/") == 1 and k.endswith("/job.json")})
    docs = [job_status(ctx, jid, states=[], cache=cache, with_stats=False) for jid in ids]
    docs.sort(key=lambda d: d.get("submitted_at") or 0.0)
    return docs


def logs(ctx: Context, job_id: str, *, follow: bool = False) -> Iterator[str]:
    """The driver's output of every attempt (oldest first); ``follow``: stream the latest attempt
    until it ends."""
    from linegen.cluster import jobs_api

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


def cancel(ctx: Context, job_id: str, *, wait_s: float = 30.0,
           reason: str = "cancelled by user (linegen cancel)") -> dict:
    """Stop every pending/running attempt. Committed shards stay valid; `resume` finishes the job."""
    from linegen.cluster import jobs_api
    from linegen.jobs import layout
    from linegen.jobs.outcome import write_cancelled
    from linegen.jobs.storage import StorageError

    address = ctx.require_cluster()
    client = jobs_api.connect(address, timeout=HTTP_TIMEOUT_S)
    loc = locate(ctx, job_id, client=client)
    if not loc.attempts:
        raise jobs_api.no_job(address, job_id)
    base = {"job_id": job_id, "cluster": shown_url(address.url), "out": loc.out, "warnings": []}
    if loc.storage is not None and loc.storage.exists(layout.success_key(job_id)):
        return {**base, "status": "already complete", "stopped": []}
    active = [a for a in loc.attempts if a.status in ACTIVE]
    if not active:
        return {**base, "status": f"not running ({loc.attempts[-1].status})", "stopped": []}
    if loc.storage is not None:
        try:
            write_cancelled(loc.storage, job_id, reason)
        except StorageError as e:
            base["warnings"].append(f"could not record the cancellation under {loc.out}: {e}")
    stopped = []
    for a in active:
        jobs_api.stop(client, a.submission_id)
        stopped.append(a.submission_id)
    final = {}
    deadline = time.monotonic() + wait_s
    for sid in stopped:
        left = max(1.0, deadline - time.monotonic())
        try:
            final[sid] = jobs_api.wait(client, sid, timeout=left, poll=0.5).status
        except jobs_api.ClusterError as e:
            base["warnings"].append(str(e))
    if loc.storage is not None and loc.storage.exists(layout.success_key(job_id)):
        from linegen.jobs.outcome import clear_outcome

        clear_outcome(loc.storage, job_id)  # it finished just before the stop arrived
        return {**base, "status": "already complete", "stopped": stopped}
    committed = None
    if loc.storage is not None:
        committed = len(layout.committed_shards(loc.storage, job_id))
    return {**base, "status": "cancelled", "stopped": stopped, "final": final, "shards_committed": committed}


# --------------------------------------------------------------------------- cost / monitor


def job_cost_report(ctx: Context, job_id: str) -> dict:
    """Cost from the job's stats: device-seconds per device x $/device-hour; $/1k images."""
    from linegen.cluster.prices import PriceTable
    from linegen.jobs.progress import cost_of, read_progress

    loc = locate(ctx, job_id)
    if loc.storage is None:
        raise UserError(loc.storage_error or f"job {job_id}: its output root is unknown; pass --out")
    progress = read_progress(loc.storage, job_id, with_stats=True, spec=loc.spec)
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
    from linegen.cluster import jobs_api
    from linegen.cluster.utilisation import snapshot

    address = ctx.require_cluster()
    snap = snapshot(address, timeout=HTTP_TIMEOUT_S)
    if isinstance(snap.get("jobs"), list):
        states = _states_from_snapshot(snap["jobs"])
    else:
        states = jobs_api.list_jobs(jobs_api.connect(address, timeout=HTTP_TIMEOUT_S))
    docs = []
    for jid, attempts in group_attempts(states).items():
        active = any(a.status in ACTIVE for a in attempts)
        try:
            docs.append(job_status(ctx, jid, states=states, cache=cache, with_stats=active))
        except UserError as e:
            docs.append({"job_id": jid, "state": attempts[-1].status, "reason": str(e), "errors": [str(e)],
                         "attempts": [_attempt_doc(a) for a in attempts]})
    docs.sort(key=lambda d: d.get("submitted_at") or 0.0)
    snap["linegen_jobs"] = docs
    snap["cluster"] = shown_url(str(snap.get("cluster", "")))
    return snap
