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

from linegen.errors import UserError, one_line
from linegen.jobs import layout
from linegen.jobs.errors import JobFailed
from linegen.jobs.outcome import driver_outcome
from linegen.jobs.pool import POLL_S, PREFETCH, Pool, Run, Shape, Worker, WorkerNumbers, pool_shape
from linegen.jobs.prepare import PreparedJob, load_job, prepare_job
from linegen.jobs.progress import Progress, clear_live
from linegen.jobs.schedule import wait_for_start
from linegen.jobs.summary import write_success
from linegen.jobs.tally import Tally, Todo
from linegen.workers.metrics import DRIVER_SERIES, Recorder


def run_job(job: PreparedJob, progress: Callable[[Progress], None] | None = None, *, submitted: bool = False) -> dict:
    """Generate every uncommitted shard of a prepared job, then write `_SUCCESS`; Ray must be
    initialised. ``submitted``: the driver of a submitted job (its cluster may autoscale: `--device
    auto` asks for GPUs and it waits for them as long as `--wait-for-resources` allows)."""
    spec = job.spec
    committed = layout.committed_shards(job.storage, spec.job_id)
    tally = Tally(job, committed, progress)
    tally.report(WorkerNumbers(), "planned", force=True)
    todo = Todo(job.shards, committed)
    try:
        if len(todo):
            Scheduler(job, todo, tally, pool_shape(spec, submitted=submitted)).run()
        if tally.failed:
            raise JobFailed(spec.job_id, tally.failed)
        summary = write_success(job, time.time() - tally.t0, tally.generated, tally.counts, timeline=tally.timeline)
    except UserError as e:
        tally.state, tally.waiting = "failed", str(e).splitlines()[0]
        tally.report(WorkerNumbers(), "failed", force=True)
        raise
    except BaseException:  # Ctrl-C, SIGTERM (`linegen cancel`), a crash: the driver stops reporting
        tally.state, tally.waiting = "stopped", ""
        tally.report(WorkerNumbers(), "stopped", force=True)
        raise
    clear_live(job.storage, spec.job_id)  # _SUCCESS says everything now
    # Temp files of whole-object writes a killed run left (its live progress mid-rewrite, say):
    # a write takes milliseconds, so one untouched for 10 s is nobody's, even with a second
    # driver of the same job still running.
    job.storage.remove_leftovers(f"{spec.job_id}/", older_than_s=10.0)
    tally.state = "succeeded"
    if tally.progress is not None:  # the last line says what the run did, from its summary
        final = tally.snapshot(WorkerNumbers(), "finished")
        final.images_per_s = summary.get("images_per_s_this_run") or final.images_per_s
        final.usd = (summary.get("cost") or {}).get("usd", final.usd)
        tally.progress(final)
    return summary


class Scheduler:
    """Hands a job's shards to an elastic pool of workers until each is committed or out of
    attempts. One round of `run`: scale the pool, dispatch shards, check it has the workers it
    needs, collect the workers' answers, find workers whose node is gone, report."""

    def __init__(self, job: PreparedJob, todo: Todo, tally: Tally, shape: Shape):
        from linegen.jobs.sink import ShardSink

        self.spec, self.todo, self.tally, self.shape = job.spec, todo, tally, shape
        self.pool = Pool(job, ShardSink.for_job(job), shape)
        self.metrics = Recorder(DRIVER_SERIES, job_id=job.spec.job_id)
        self.crashes = 0  # workers that died by themselves (not with their node)
        self.last_death = ""  # why the last one did
        self.short_since: float | None = time.monotonic()  # since when fewer than min_workers are placed
        self.peak = 0  # the most workers placed at once
        tally.shape, tally.state = shape, "waiting"

    def run(self) -> None:
        while len(self.todo) or self.pool.busy():
            self.scale()
            self.dispatch()
            if not self.has_workers():
                break
            self.collect()
            self.find_lost_nodes()
            self.report()
        for name in list(self.pool.workers):
            self.pool.remove(name)
        self.metrics.set("linegen_workers_placed", 0)
        self.metrics.set("linegen_workers_pending", 0)
        self.metrics.set("linegen_images_done", self.tally.images_done)

    # -- the steps of one round -------------------------------------------------------------
    def scale(self) -> None:
        """Request or withdraw workers so the pool fits the shards left; release idle ones at the end."""
        pool, shape, todo = self.pool, self.shape, self.todo
        placed, pending = pool.placed(), pool.pending()
        remaining = len(todo) + sum(len(w.in_flight) for w in placed)
        budget_left = self.crashes < self.spec.max_attempts * max(1, shape.min_workers, self.peak)
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
                    pool.remove(w.name)

    def dispatch(self) -> None:
        """Top up every placed worker's queue to PREFETCH shards."""
        placed = self.pool.placed()
        self.peak = max(self.peak, len(placed))
        for w in placed:
            while len(self.todo) and len(w.in_flight) < PREFETCH:
                self.pool.submit(w, self.todo.pop())

    def has_workers(self) -> bool:
        """Say why the job waits (if it does), fail it once it has waited too long, and give up on
        the shards left when no worker is left and none may be requested (crashes used up the budget)."""
        pool, shape, tally = self.pool, self.shape, self.tally
        placed = len(pool.placed())
        now = time.monotonic()
        if placed >= shape.min_workers:
            self.short_since = None
        elif self.short_since is None:
            self.short_since = now
        tally.waiting = "" if placed >= shape.min_workers else (
            f"waiting for resources: {placed}/{len(pool.workers)} workers placed (each needs "
            f"{shape.needs()}; {pool.cluster_text()})" + ("; a GPU run never falls back to CPU" if shape.gpu else ""))
        tally.state = "running" if placed else "waiting"
        if self.short_since is not None and shape.wait_s is not None and now - self.short_since > shape.wait_s:
            raise UserError(f"waited {shape.wait_s:g} s for resources: {placed} of at least "
                            f"{shape.min_workers} worker(s) placed (each needs {shape.needs()}; "
                            f"{pool.cluster_text()}); --wait-for-resources bounds this")
        if not pool.workers:
            for sid in self.todo.clear():
                tally.failed[sid] = self.last_death or "no worker left"
            return False
        self.metrics.set("linegen_workers_placed", placed)
        self.metrics.set("linegen_workers_pending", len(pool.pending()))
        self.metrics.set("linegen_images_total", tally.images_total)
        self.metrics.set("linegen_images_done", min(tally.images_total, tally.images_done + pool.numbers().in_flight_images))
        return True

    def collect(self) -> None:
        """Wait up to POLL_S for any worker's answer, then take every answer that is in."""
        pool = self.pool
        refs = pool.refs()
        ready, _ = pool.ray.wait(list(refs), num_returns=1, timeout=POLL_S)
        if ready:
            ready, _ = pool.ray.wait(list(refs), num_returns=len(refs), timeout=0)
        for ref in ready:
            name, kind = refs[ref]
            w = pool.workers.get(name)
            if w is not None:
                self.answer(w, kind, ref)

    def answer(self, w: Worker, kind: str, ref) -> None:
        """One worker's answer: where it was placed, or a poll's finished shards and live numbers."""
        from ray.exceptions import ActorUnavailableError, RayActorError

        pool = self.pool
        try:
            answer = pool.ray.get(ref)
        except ActorUnavailableError:  # a blip (the node's network): ask again
            if kind == "poll":
                pool.arm(w)
            else:
                w.where_ref = w.actor.where.remote()
            return
        except RayActorError as e:
            return self.lose(w, e, f"worker died: {one_line(e, last=True)}")
        except Exception as e:  # noqa: BLE001 - the call itself failed: treat the worker as broken
            return self.lose(w, None, f"worker failed: {one_line(e, last=True)}")
        if kind == "where":
            w.where_ref, w.placed_at = None, time.time()
            w.node_id, w.host = answer.get("node_id"), answer.get("host")
            pool.read_nodes(force=True)
            pool.arm(w)
            return self.report(f"{w.name} placed on {pool.node_names().get(w.node_id or '', w.host)}")
        if answer["load_error"]:
            return self.lose(w, None, answer["load_error"])
        w.loaded, w.live = answer["loaded"], answer["live"]
        for seq, outcome in answer["outcomes"]:
            if seq > w.acked:
                w.acked = seq
                self.settle(w, outcome)
        pool.arm(w)

    def find_lost_nodes(self) -> None:
        """Workers on nodes that are gone, before Ray reports each actor."""
        for w in self.pool.placed():
            if not self.pool.node_alive(w.node_id):
                self.lose(w, RuntimeError("its node has died"), "its node has died")

    def report(self, event: str = "") -> None:
        self.tally.report(self.pool.numbers(), event)

    # -- what happens to a shard or a worker ------------------------------------------------
    def settle(self, w: Worker, outcome) -> None:
        """Book one shard outcome a worker reported."""
        run = next((r for r in w.in_flight if r.shard.shard_id == outcome.shard_id and r.attempt == outcome.attempt),
                   None)
        if run is None:
            return  # not ours any more (requeued elsewhere)
        w.in_flight.remove(run)
        if outcome.status in ("committed", "already"):
            self.tally.committed(run.shard.size, outcome.images if outcome.status == "committed" else 0)
            self.metrics.add("linegen_shards_committed")
            self.report(f"{outcome.shard_id} {outcome.status}")
        else:
            self.requeue(run, outcome.error or "failed", node_lost=False)
            self.report(f"{outcome.shard_id} failed: {outcome.error}")

    def lose(self, w: Worker, error: BaseException | None, why: str) -> None:
        """A worker is gone: requeue its shards, free for a lost node, spending an attempt for a crash."""
        node_lost = error is not None and self.pool.lost_with_node(w, error)
        self.pool.remove(w.name)
        for run in w.in_flight:
            self.requeue(run, why, node_lost=node_lost)
        if node_lost:
            if w.node_id and w.node_id not in self.tally.lost_nodes:
                self.metrics.add("linegen_nodes_lost")
                self.tally.mark("node_lost", node=self.pool.node_names().get(w.node_id, w.host))
            self.tally.node_lost(w.node_id)
            self.report(f"{w.name} lost with its node; {len(w.in_flight)} shard(s) requeued (no attempt spent)")
        else:
            self.crashes += 1
            self.tally.counts["worker_crashes"] += 1
            self.last_death = why
            self.tally.note(f"{w.name}: {why}")
            self.report("worker restarted")

    def requeue(self, run: Run, why: str, *, node_lost: bool) -> None:
        """A shard goes back to the queue: free when its node was lost, else it spends an attempt."""
        counts = self.tally.counts
        self.metrics.add("linegen_shards_requeued")
        self.tally.mark("requeued" if node_lost else "failed", shard=run.shard.shard_id)
        if node_lost:
            counts["requeued_node_lost"] += 1
            self.todo.retry.append(Run(run.shard, run.attempt + 1, run.failures))
            return
        self.metrics.add("linegen_shards_failed")
        counts["failed_attempts"] += 1
        if run.failures + 1 >= self.spec.max_attempts:
            self.tally.failed[run.shard.shard_id] = why
        else:
            counts["requeued_failed"] += 1
            self.todo.retry.append(Run(run.shard, run.attempt + 1, run.failures + 1))


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

            summary = run_job(prepare_job(spec), progress=show, submitted=True)
        except UserError as e:
            from linegen.cluster.address import redact_text

            print(f"error: {redact_text(e)}", file=sys.stderr, flush=True)
            return outcome.failed(e)
    print(json.dumps({"summary": summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
