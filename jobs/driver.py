"""The job driver: plan, skip committed shards, feed a pool of model-holding actors, finish.

Runs in-process for the embedded default (`linegen run`) or as the entrypoint of a Ray job on a
cluster (`python -m linegen.jobs.driver OUT JOB_ID`, see `linegen submit`). Exactly-once comes
from the shard protocol (jobs/sink.py): a shard counts once its commit marker exists, so a crashed
driver or actor is handled by running the uncommitted shards again, with the same seeds. Image
bytes never pass through here: actors write their shards themselves.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from linegen.jobs import layout
from linegen.jobs.errors import JobFailed, UserError
from linegen.jobs.plan import Shard
from linegen.jobs.pool import PREFETCH, Pool, pool_shape
from linegen.jobs.prepare import PreparedJob, load_job, prepare_job
from linegen.jobs.spec import JobSpec
from linegen.jobs.summary import write_success


@dataclass
class Progress:
    images_done: int
    images_total: int
    shards_done: int
    shards_total: int
    images_per_s: float
    eta_s: float | None
    failed: list[str] = field(default_factory=list)
    event: str = ""


class _Tally:
    """What is done so far, and the progress callback that reports it."""

    def __init__(self, job: PreparedJob, committed: set[str], progress: Callable[[Progress], None] | None):
        self.job, self.progress = job, progress
        self.images_total = job.items_total
        self.images_done = sum(len(s.items) for s in job.shards if s.shard_id in committed)
        self.shards_done = sum(1 for s in job.shards if s.shard_id in committed)
        self.generated = 0
        self.failed: dict[str, str] = {}
        self.t0 = time.time()

    def report(self, event: str) -> None:
        if self.progress is None:
            return
        elapsed = time.time() - self.t0
        rate = self.generated / elapsed if elapsed > 0 and self.generated else 0.0
        eta = (self.images_total - self.images_done) / rate if rate > 0 else None
        self.progress(Progress(self.images_done, self.images_total, self.shards_done, len(self.job.shards),
                               rate, eta, sorted(self.failed), event))


def run_job(spec: JobSpec, progress: Callable[[Progress], None] | None = None,
            prepared: PreparedJob | None = None) -> dict:
    """Generate every uncommitted shard of the job, then write `_SUCCESS`; Ray must be initialised."""
    job = prepared or prepare_job(spec)
    committed = layout.committed_shards(job.storage, spec.job_id)
    tally = _Tally(job, committed, progress)
    tally.report("planned")
    todo = deque((s, 1) for s in job.shards if s.shard_id not in committed)
    if todo:
        _generate(job, todo, tally)
    if tally.failed:
        raise JobFailed(spec.job_id, tally.failed)
    summary = write_success(job, time.time() - tally.t0, tally.generated)
    tally.report("finished")
    return summary


def _generate(job: PreparedJob, todo: deque, tally: _Tally) -> None:
    """Hand shards to the actors until each is committed or out of attempts."""
    from ray.exceptions import RayActorError

    from linegen.jobs.sink import ShardSink

    spec = job.spec
    sink = ShardSink.for_job(job)
    count, resources, threads = pool_shape(spec)
    pool = Pool(job, sink, max(1, min(count, len(todo))), resources, threads)
    restarts_left = pool.started * spec.max_attempts
    last_death = ""

    def requeue(shard: Shard, attempt: int, why: str) -> None:
        if attempt >= spec.max_attempts:
            tally.failed[shard.shard_id] = why
        else:
            todo.append((shard, attempt + 1))

    while todo or pool.busy():
        for name in list(pool.actors):  # top up every actor's queue
            while todo and len(pool.in_flight[name]) < PREFETCH:
                pool.submit(name, *todo.popleft())
        if not pool.waiting:  # every worker is gone and no restarts are left
            for shard, _ in todo:
                tally.failed[shard.shard_id] = last_death or "no worker left"
            todo.clear()
            break
        ready, _ = pool.ray.wait(list(pool.waiting), num_returns=1, timeout=10.0)
        for ref in ready:
            name = pool.waiting.pop(ref)
            try:
                outcome = pool.ray.get(ref)
            except RayActorError as e:
                last_death = f"worker died: {_last_line(e)}"
                for shard, attempt in pool.remove(name):
                    requeue(shard, attempt, last_death)
                if restarts_left > 0 and (todo or pool.busy()):
                    restarts_left -= 1
                    try:
                        pool.add()
                    except Exception as add_error:  # Ray refused a new actor: no more workers
                        last_death = f"cannot start a worker: {_last_line(add_error)}"
                tally.report("worker restarted")
                continue
            if outcome is not None:
                _settle(pool.in_flight[name], outcome, tally, requeue)
            pool.rearm(name)
    for name in list(pool.actors):
        pool.remove(name)


def _settle(flight: list, outcome, tally: _Tally, requeue) -> None:
    """Book one shard outcome reported by an actor."""
    entry = next((e for e in flight if e[0].shard_id == outcome.shard_id), None)
    if entry is not None:
        flight.remove(entry)
    if outcome.status in ("committed", "already"):
        tally.shards_done += 1
        tally.images_done += len(entry[0].items) if entry else outcome.images
        tally.generated += outcome.images if outcome.status == "committed" else 0
        tally.report(f"{outcome.shard_id} {outcome.status}")
    elif entry is not None:
        requeue(entry[0], entry[1], outcome.error or "failed")
        tally.report(f"{outcome.shard_id} failed: {outcome.error}")


def _last_line(e: BaseException) -> str:
    """Ray wraps an actor's own error in a long message; its last line names the cause."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1][:300] if lines else type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Entrypoint of a submitted Ray job: python -m linegen.jobs.driver OUT JOB_ID."""
    import ray

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m linegen.jobs.driver OUT JOB_ID", file=sys.stderr)
        return 2
    out, job_id = argv
    # linegen submit: _FAILED/_CANCELLED markers and SIGTERM (jobs/outcome.py); --at/--after
    # waiting before Ray and actors exist, so no GPU is held (jobs/schedule.py).
    from linegen.jobs.outcome import driver_outcome
    from linegen.jobs.schedule import wait_for_start

    endpoint = os.environ.get("LINEGEN_S3_ENDPOINT_URL")
    with driver_outcome(out, job_id, endpoint) as outcome:
        try:
            spec = load_job(out, job_id, endpoint)
            wait_for_start(spec)
            ray.init(address=os.environ.get("RAY_ADDRESS", "auto"))

            def show(p: Progress) -> None:
                print(json.dumps({"progress": p.__dict__}), flush=True)

            summary = run_job(spec, progress=show)
        except UserError as e:
            from linegen.cluster.address import redact_text

            print(f"error: {redact_text(e)}", file=sys.stderr, flush=True)
            return outcome.failed(e)
    print(json.dumps({"summary": summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
