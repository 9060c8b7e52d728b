"""What each attempt runs with: linegen's own code, its entrypoint, environment and metadata.

The code ships as one ``py_modules`` entry, a folder named ``linegen`` holding the packages the
driver and the workers import (``linegen.jobs``, ``linegen.workers``, ``linegen.cluster``,
``linegen.cli``), so the cluster runs the same linegen as the laptop, under the same names, and
nothing generic lands on its import path. An installed linegen already is such a folder; an
editable install maps the repository's top-level folders into the namespace, so they are staged
into a temporary ``linegen`` folder for the upload (Ray zips and uploads it while submitting).

The environment holds ``LINEGEN_ATTEMPT`` and, if given, ``LINEGEN_S3_ENDPOINT_URL`` unless that URL
holds credentials (Ray stores and shows a job's runtime env; metadata gets the URL redacted).
The Python dependencies (torch, ray[default], boto3, pyarrow, numpy, pillow) must be installed on
every node; with ``--no-ship-code`` linegen itself must be installed there too. S3 access on the
cluster uses the nodes' own credential chain (instance role, env, profile): nothing is forwarded.
"""
from __future__ import annotations

import importlib.util
import shlex
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from linegen.cluster.address import redact_url
from linegen.errors import UserError
from linegen.jobs.remote.attempts import (META_AFTER, META_ATTEMPT, META_ENDPOINT, META_JOB, META_MODEL, META_NOW,
                                          META_OUT, META_START, META_VERSION)
from linegen.jobs.schedule import utc_iso
from linegen.jobs.storage.uri import absolute_uri

NAMESPACE = "linegen"
PACKAGES = ("jobs", "workers", "cluster", "cli")  # what the driver and the actors import
CODE_EXCLUDES = ["__pycache__", "*.pyc", ".pytest_cache", "*.egg-info"]
MAX_CODE_BYTES = 90 * 1024 * 1024  # Ray's practical upload limit is about 100 MiB
DEFAULT_DRIVER_CPUS = 0.1


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"cannot ship linegen's code: package {name} not found "
                        "(install linegen on the cluster and use --no-ship-code)")
    return Path(list(spec.submodule_search_locations)[0])


@contextmanager
def staged_code() -> Iterator[Path]:
    """A temporary ``linegen`` folder holding every package an attempt imports; removed after."""
    ignore = shutil.ignore_patterns(*CODE_EXCLUDES)
    with tempfile.TemporaryDirectory(prefix="linegen-code-") as tmp:
        target = Path(tmp) / NAMESPACE
        shutil.copytree(_package_dir(NAMESPACE), target, ignore=ignore)
        for name in PACKAGES:
            if not (target / name).is_dir():  # editable install: the folder lives elsewhere
                shutil.copytree(_package_dir(f"{NAMESPACE}.{name}"), target / name, ignore=ignore)
        yield target


def _code_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def runtime_env(*, code: Path | None, attempt: str, s3_endpoint_url: str | None,
                ignore_schedule: bool = False) -> dict:
    """The attempt's runtime_env; ``code`` is a folder from `staged_code` (None: --no-ship-code)."""

    env_vars = {"LINEGEN_ATTEMPT": attempt, "PYTHONUNBUFFERED": "1"}
    # Ray stores a job's runtime env and shows it on its dashboard: an endpoint with credentials
    # is never put there (the nodes set LINEGEN_S3_ENDPOINT_URL themselves; `submit` says so).
    if s3_endpoint_url and redact_url(s3_endpoint_url) == s3_endpoint_url:
        env_vars["LINEGEN_S3_ENDPOINT_URL"] = s3_endpoint_url
    if ignore_schedule:
        from linegen.jobs.schedule import IGNORE_SCHEDULE_ENV

        env_vars[IGNORE_SCHEDULE_ENV] = "1"
    env: dict[str, Any] = {"env_vars": env_vars}
    if code is not None:
        size = _code_bytes(code)
        if size > MAX_CODE_BYTES:
            raise UserError(f"linegen's code is {size / 2**20:.0f} MiB, too large to ship with the job "
                            "(Ray's limit is about 100 MiB); install linegen on the cluster and use --no-ship-code")
        env["py_modules"] = [str(code)]
        env["excludes"] = list(CODE_EXCLUDES)
    return env


def quiet_upload_logs() -> None:
    """Ray's client logs every py_modules upload at INFO on stderr; a user wants one line from us."""
    import logging

    for name in ("ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.WARNING)


def entrypoint(out: str, job_id: str) -> str:
    return f"python -m linegen.jobs.driver {shlex.quote(out)} {shlex.quote(job_id)}"


def linegen_version() -> str:
    try:
        from importlib.metadata import version

        return version("linegen")
    except Exception:  # noqa: BLE001
        return "unknown"


def version_warning(cluster_version: str) -> str | None:
    try:
        from importlib.metadata import version

        local = version("ray")
    except Exception:  # noqa: BLE001
        return None
    if local.split(".")[:2] != str(cluster_version).split(".")[:2]:
        return (f"this machine has Ray {local} but the cluster runs Ray {cluster_version}; "
                "the Jobs API usually works across versions, the job runs with the cluster's")
    return None


def metadata(job_id: str, out: str, endpoint: str | None, attempt: int, spec, now: bool = False) -> dict:
    meta = {META_JOB: job_id, META_OUT: out, META_ATTEMPT: str(attempt), META_MODEL: spec.model.name,
            META_VERSION: linegen_version()}
    if endpoint:
        from linegen.cluster.address import redact_url

        meta[META_ENDPOINT] = redact_url(endpoint)
    if spec.start_at is not None:
        meta[META_START] = utc_iso(spec.start_at)
    if spec.after:
        meta[META_AFTER] = spec.after
    if now:
        meta[META_NOW] = "1"
    return meta


def absolute_out(out: str) -> str:
    return absolute_uri(out)
