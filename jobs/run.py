"""`linegen run`: a job on the embedded default (a local Ray started in-process) or, when Ray is
already initialised, on that cluster; the same driver a submitted job runs."""
from __future__ import annotations

from typing import Callable

from linegen.jobs.driver import PreparedJob, Progress, prepare_job, run_job
from linegen.jobs.spec import JobSpec


def run_embedded(spec: JobSpec, progress: Callable[[Progress], None] | None = None,
                 num_cpus: int | None = None, prepared: PreparedJob | None = None) -> dict:
    prepared = prepared or prepare_job(spec)  # every check and the whole manifest before Ray starts
    from linegen.jobs.summary import finished_summary

    done = finished_summary(prepared)  # every shard already committed: the markers answer, no Ray
    if done is not None:
        return done
    from linegen.cluster.local import LocalCluster
    from linegen.jobs.outcome import local_outcome

    import logging

    # A private in-process cluster: no token file to write, no Ray banner on the user's terminal.
    with local_outcome(prepared.storage, spec.job_id), \
            LocalCluster(num_cpus=num_cpus, auth_mode="disabled", log_to_driver=False,
                         init_kwargs={"logging_level": logging.ERROR}):
        return run_job(spec, progress=progress, prepared=prepared)
