"""The job driver: plan, skip committed shards, feed an elastic pool of model-holding workers, finish.

Runs in-process for the embedded default (`linegen run`) or as the entrypoint of a Ray job on a
cluster (`python -m linegen.jobs.driver OUT JOB_ID`, see `linegen submit`). Exactly-once comes
from the shard protocol (jobs/sink.py): a shard counts once its commit marker exists, so a crashed
driver or actor is handled by running the uncommitted shards again, with the same seeds. Image
bytes never pass through here: actors write their shards themselves.

The pool (jobs/pool.py) grows as nodes join and shrinks as they leave. A shard on a worker whose
node was lost goes back to the queue without spending an attempt; a shard whose worker crashed or
that failed spends one (``--max-attempts``). While it runs the driver reports live progress from
the workers' waves: to the caller (the `linegen run` bar), to ``OUT/<job>/_progress.json`` (what
`status`/`list`/`monitor` read without the cluster) and to Ray's metrics (`ray_linegen_*`).
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable

from linegen.jobs import layout
from linegen.jobs.errors import JobFailed, UserError
from linegen.jobs.pool import POLL_S, PREFETCH, Pool, Run, Shape, Worker, pool_shape
from linegen.jobs.prepare import PreparedJob, load_job, prepare_job
from linegen.jobs.progress import clear_live
from linegen.jobs.spec import JobSpec
from linegen.jobs.summary import write_success
from linegen.jobs.tally import Progress, Tally, Todo

def run_job(spec: JobSpec, progress: Callable[[Progress], None] | None = None,
            prepared: PreparedJob | None = None, *, submitted: bool = False) -> dict:
    """Generate every uncommitted shard of the job, then write `_SUCCESS`; Ray must be initialised.
    ``submitted``: the driver of a submitted job (its cluster may autoscale: `--device auto`
    asks for GPUs and it waits for them as long as `--wait-for-resources` allows)."""
    job = prepared or prepare_job(spec)
    committed = layout.committed_shards(job.storage, spec.job_id)
    tally = Tally(job, committed, progress)
    tally.report("planned", force=True)
    todo = Todo(job.shards, committed)
    try:
        if len(todo):
            _generate(job, todo, tally, pool_shape(spec, submitted=submitted))
        if tally.failed:
            raise JobFailed(spec.job_id, tally.failed)
        summary = write_success(job, time.time() - tally.t0, tally.generated, tally.counts)
    except UserError as e:
        tally.state, tally.waiting = "failed", str(e).splitlines()[0]
        tally.report("failed", force=True)
        raise
    except BaseException:  # Ctrl-C, SIGTERM (`linegen cancel`), a crash: the driver stops reporting
        tally.state, tally.waiting = "stopped", ""
        tally.report("stopped", force=True)
        raise
    clear_live(job.storage, spec.job_id)  # _SUCCESS says everything now
    tally.state = "succeeded"
    if tally.progress is not None:
        tally.progress(tally.snapshot("finished"))
    return summary


def _generate(job: PreparedJob, todo: Todo, tally: Tally, shape: Shape) -> None:
    """Hand shards to the workers until each is committed or out of attempts."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    from linegen.jobs.sink import ShardSink
    from linegen.workers.metrics import DRIVER_SERIES, Recorder

    spec = job.spec
    sink = ShardSink.for_job(job)
    pool = Pool(job, sink, shape)
    tally.pool, tally.shape, tally.state = pool, shape, "waiting"
    metrics = Recorder(DRIVER_SERIES, job_id=spec.job_id)
    crashes, last_death = 0, ""
    short_since: float | None = time.monotonic()  # since when fewer than min_workers are placed
    peak = 0

    def requeue(run: Run, why: str, *, node_lost: bool) -> None:
        metrics.add("linegen_shards_requeued")
        if node_lost:
            tally.counts["requeued_node_lost"] += 1
            todo.retry.append(Run(run.shard, run.attempt + 1, run.failures))
            return
        metrics.add("linegen_shards_failed")
        tally.counts["failed_attempts"] += 1
        if run.failures + 1 >= spec.max_attempts:
            tally.failed[run.shard.shard_id] = why
        else:
            tally.counts["requeued_failed"] += 1
            todo.retry.append(Run(run.shard, run.attempt + 1, run.failures + 1))

    def lose(w: Worker, error: BaseException | None, why: str) -> None:
        """A worker is gone: requeue its shards, free for a lost node, spending an attempt for a crash."""
        nonlocal crashes, last_death
        node_lost = error is not None and pool.lost_with_node(w, error)
        pool.remove(w.name)
        tally.retire(w)
        for run in w.in_flight:
            requeue(run, why, node_lost=node_lost)
        if node_lost:
            tally.counts["workers_lost_with_nodes"] += 1
            if w.node_id:
                tally.lost_nodes.add(w.node_id)
                tally.counts["nodes_lost"] = len(tally.lost_nodes)
            tally.report(f"{w.name} lost with its node; {len(w.in_flight)} shard(s) requeued (no attempt spent)")
        else:
            crashes += 1
            tally.counts["worker_crashes"] += 1
            last_death = why
            tally.note(f"{w.name}: {why}")
            tally.report("worker restarted")

    def scale() -> None:
        placed, pending = pool.placed(), pool.pending()
        remaining = len(todo) + sum(len(w.in_flight) for w in placed)
        budget_left = crashes < spec.max_attempts * max(1, shape.min_workers, peak)
        cap = shape.max_workers if shape.max_workers is not None else remaining
        want = min(cap, remaining) if budget_left else 0
        # a new worker is of use only with a shard to hand it; without --max-workers, grow as fast
        # as the cluster places them (as many pending as placed)
        extra = min(want - len(placed), len(todo))
        if shape.max_workers is None:
            extra = min(extra, max(1, len(placed)))
        if budget_left and len(todo):
            extra = max(extra, shape.min_workers - len(placed))
        extra = max(0, extra)
        for _ in range(extra - len(pending)):
            pool.request()
        for w in pending[extra:]:  # more pending than can be used: withdraw the newest
            pool.remove(w.name)
        if not len(todo):  # nothing left to hand out: release idle workers (GPUs go back to the cluster)
            for w in placed:
                if not w.in_flight:
                    tally.retire(pool.remove(w.name))

    while len(todo) or pool.busy():
        scale()
        placed = pool.placed()
        peak = max(peak, len(placed))
        for w in placed:  # top up every placed worker's queue
            while len(todo) and len(w.in_flight) < PREFETCH:
                pool.submit(w, todo.pop())
        now = time.monotonic()
        if len(placed) >= shape.min_workers:
            short_since = None
        elif short_since is None:
            short_since = now
        tally.waiting = "" if len(placed) >= shape.min_workers else (
            f"waiting for resources: {len(placed)}/{len(pool.workers)} workers placed (each needs "
            f"{shape.needs()}; {pool.cluster_text()})" + ("; a GPU run never falls back to CPU" if shape.gpu else ""))
        tally.state = "running" if placed else "waiting"
        if short_since is not None and shape.wait_s is not None and now - short_since > shape.wait_s:
            raise UserError(f"waited {shape.wait_s:g} s for resources: {len(placed)} of at least "
                            f"{shape.min_workers} worker(s) placed (each needs {shape.needs()}; "
                            f"{pool.cluster_text()}); --wait-for-resources bounds this")
        if not pool.workers:  # no worker and none may be requested: crashes used up the budget
            for sid in todo.clear():
                tally.failed[sid] = last_death or "no worker left"
            break
        metrics.set("linegen_workers_placed", len(placed))
        metrics.set("linegen_workers_pending", len(pool.pending()))

        refs = pool.refs()
        ready, _ = pool.ray.wait(list(refs), num_returns=1, timeout=POLL_S)
        if ready:
            ready, _ = pool.ray.wait(list(refs), num_returns=len(refs), timeout=0)
        for ref in ready:
            name, kind = refs[ref]
            w = pool.workers.get(name)
            if w is None:
                continue
            try:
                answer = pool.ray.get(ref)
            except ActorUnavailableError:  # a blip (the node's network): ask again
                if kind == "poll":
                    pool.arm(w)
                else:
                    w.where_ref = w.actor.where.remote()
                continue
            except RayActorError as e:
                lose(w, e, f"worker died: {_last_line(e)}")
                continue
            except Exception as e:  # noqa: BLE001 - the call itself failed: treat the worker as broken
                lose(w, None, f"worker failed: {_last_line(e)}")
                continue
            if kind == "where":
                w.where_ref, w.placed_at = None, time.time()
                w.node_id, w.host = answer.get("node_id"), answer.get("host")
                pool.read_nodes(force=True)
                pool.arm(w)
                tally.report(f"{w.name} placed on {pool.node_names().get(w.node_id or '', w.host)}")
                continue
            if answer["load_error"]:
                lose(w, None, answer["load_error"])
                continue
            w.loaded, w.live = answer["loaded"], answer["live"]
            for seq, outcome in answer["outcomes"]:
                if seq > w.acked:
                    w.acked = seq
                    _settle(w, outcome, tally, requeue, metrics)
            pool.arm(w)
        for w in pool.placed():  # workers on nodes that are gone, before Ray reports each actor
            if not pool.node_alive(w.node_id):
                lose(w, RuntimeError("its node has died"), "its node has died")
        tally.report()
    for name in list(pool.workers):
        tally.retire(pool.remove(name))
    metrics.set("linegen_workers_placed", 0)
    metrics.set("linegen_workers_pending", 0)


def _settle(w: Worker, outcome, tally: Tally, requeue, metrics) -> None:
    """Book one shard outcome reported by a worker."""
    run = next((r for r in w.in_flight if r.shard.shard_id == outcome.shard_id and r.attempt == outcome.attempt),
               None)
    if run is None:
        return  # not ours any more (requeued elsewhere)
    w.in_flight.remove(run)
    if outcome.status in ("committed", "already"):
        tally.shards_done += 1
        tally.images_done += run.shard.size
        tally.generated += outcome.images if outcome.status == "committed" else 0
        metrics.add("linegen_shards_committed")
        tally.report(f"{outcome.shard_id} {outcome.status}")
    else:
        requeue(run, outcome.error or "failed", node_lost=False)
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

            from linegen.jobs.progress_lines import ProgressLog

            lines = ProgressLog(job_id, lambda line: print(line, flush=True), every_s=spec.log_every_s)

            def show(p: Progress) -> None:
                if p.event:  # the raw event (`linegen logs --json`), and a plain line every --log-every
                    print(json.dumps({"progress": p.__dict__}), flush=True)
                lines(p)

            summary = run_job(spec, progress=show, submitted=True)
        except UserError as e:
            from linegen.cluster.address import redact_text

            print(f"error: {redact_text(e)}", file=sys.stderr, flush=True)
            return outcome.failed(e)
    print(json.dumps({"summary": summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
