"""`linegen resume JOB` without a cluster: the rest of a local job, run on the embedded local Ray.

A job that `linegen run` started (and Ctrl-C, a crash or a failure stopped) has everything it
needs under its output root: job.json and the manifest copy. Resuming runs exactly what
`linegen run` with the job's own settings would, so committed shards are skipped.
"""
from __future__ import annotations

from typing import Callable

from linegen.jobs.prepare import load_job, prepare_job
from linegen.jobs.run import run_embedded
from linegen.jobs.spec import check_job_id


def resume_local(out: str, job_id: str, *, s3_endpoint_url: str | None = None,
                 progress: Callable | None = None, num_cpus: int | None = None) -> dict:
    """Finish job ``job_id`` under ``out`` on the embedded cluster; its `_SUCCESS` summary."""

    spec = load_job(out, check_job_id(job_id), s3_endpoint_url)
    return run_embedded(prepare_job(spec), progress=progress, num_cpus=num_cpus)
