"""The driver's running account of a job: the shards still to hand out (`Todo`), what is done,
decoded and failed (`Tally`), and the live progress it reports from it (`Progress`): to the
caller's callback, to ``OUT/<job>/_progress.json`` (what `status`/`list`/`monitor` read without
the cluster), at most every REPORT_EVERY_S and on every event.
"""
from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

from linegen.jobs.intervals import INTERVALS
from linegen.jobs.plan import Plan, shard_id, shard_index
from linegen.jobs.pool import Pool, Run, Shape, Worker
from linegen.jobs.prepare import PreparedJob
from linegen.jobs.progress import LIVE_EVERY_S, write_live

REPORT_EVERY_S = INTERVALS.report_every_s  # the caller's progress callback, at most this often (and on every event)
RATE_WINDOW_S = 60.0  # images/s is measured over the last minute of waves


@dataclass
class Progress:
    images_done: int  # committed + decoded in shards not committed yet (live, from the first wave)
    images_total: int
    shards_done: int
    shards_total: int
    images_per_s: float
    eta_s: float | None
    failed: list[str] = field(default_factory=list)
    event: str = ""
    images_committed: int = 0
    usd: float | None = None  # cost so far of this run's waves
    workers_placed: int = 0
    workers_pending: int = 0
    waiting: str = ""  # why nothing runs, e.g. "waiting for resources: 0/4 workers placed (...)"


class Todo:
    """Shards still to hand out: requeued ones first, then the plan's uncommitted ones in order
    (drawn lazily, so a plan of a million shards is never a list)."""

    def __init__(self, plan: Plan, committed: set[str]):
        done = {i for i in map(shard_index, committed) if i is not None and i < len(plan)}
        self.plan = plan
        self.fresh_left = len(plan) - len(done)
        self._fresh: Iterator[int] = (i for i in range(len(plan)) if i not in done)
        self.retry: deque[Run] = deque()

    def __len__(self) -> int:
        return self.fresh_left + len(self.retry)

    def pop(self) -> Run:
        if self.retry:
            return self.retry.popleft()
        self.fresh_left -= 1
        return Run(self.plan[next(self._fresh)])

    def clear(self) -> list[str]:
        """Give up on every shard left; their ids."""
        ids = [run.shard.shard_id for run in self.retry] + [shard_id(i) for i in self._fresh]
        self.retry.clear()
        self.fresh_left = 0
        return ids


class Tally:
    """What is done so far, live numbers from the workers' waves, and where they are reported."""

    def __init__(self, job: PreparedJob, committed: set[str], progress: Callable[[Progress], None] | None):
        self.job, self.progress = job, progress
        plan = job.shards
        self.images_total = job.items_total
        indices = [i for i in map(shard_index, committed) if i is not None and i < len(plan)]
        self.images_done = sum(plan.size_of(i) for i in indices)  # committed
        self.shards_done = len(indices)
        self.generated = 0
        self.failed: dict[str, str] = {}
        self.t0 = time.time()
        self.events: deque[str] = deque(maxlen=20)
        self.counts = {"nodes_lost": 0, "workers_lost_with_nodes": 0, "requeued_node_lost": 0, "worker_crashes": 0,
                       "failed_attempts": 0, "requeued_failed": 0}
        self.lost_nodes: set[str] = set()
        self.retired = {"images": 0, "device_seconds": {}}  # what workers that are gone decoded
        self.samples: deque[tuple[float, int]] = deque()  # (time, images decoded this run)
        self.first_wave_at: float | None = None
        self.pool: Pool | None = None
        self.shape: Shape | None = None
        self.waiting = ""
        self.last_report = self.last_write = 0.0
        self.state = "starting"

    # -- live numbers -----------------------------------------------------------------------
    def _workers(self) -> list[Worker]:
        return list(self.pool.workers.values()) if self.pool else []

    def decoded(self) -> tuple[int, dict[str, float]]:
        """Images decoded and device-seconds per device by this run's workers (committed or not)."""
        images, secs = self.retired["images"], dict(self.retired["device_seconds"])
        for w in self._workers():
            images += int(w.live.get("images", 0))
            dev = w.live.get("device") or "unknown"
            if w.live.get("device_seconds"):
                secs[dev] = secs.get(dev, 0.0) + float(w.live["device_seconds"])
        return images, secs

    def in_flight(self) -> tuple[int, dict[str, float]]:
        """Images decoded in shards that are not committed yet, and their device-seconds."""
        images, secs = 0, {}
        for w in self._workers():
            live = w.live.get("in_flight") or {}
            dev = w.live.get("device") or "unknown"
            for run in w.in_flight:
                entry = live.get(run.shard.shard_id)
                if entry and entry.get("attempt") == run.attempt:
                    images += int(entry.get("decoded", 0))
                    secs[dev] = secs.get(dev, 0.0) + float(entry.get("device_seconds", 0.0))
        return images, secs

    def retire(self, w: Worker) -> None:
        self.retired["images"] += int(w.live.get("images", 0))
        dev = w.live.get("device") or "unknown"
        if w.live.get("device_seconds"):
            d = self.retired["device_seconds"]
            d[dev] = d.get(dev, 0.0) + float(w.live["device_seconds"])

    def rate(self, decoded: int) -> float:
        """Images/s over the last RATE_WINDOW_S of this run (from the first wave, not the start)."""
        now = time.time()
        self.samples.append((now, decoded))
        while len(self.samples) > 2 and now - self.samples[0][0] > RATE_WINDOW_S:
            self.samples.popleft()
        for w in self._workers():
            first = w.live.get("first_wave_at")
            if first and (self.first_wave_at is None or first < self.first_wave_at):
                self.first_wave_at = first
        t_old, d_old = self.samples[0]
        if d_old == 0 and self.first_wave_at:  # model loading is not throughput
            t_old = max(t_old, self.first_wave_at)
        span = now - t_old
        return (decoded - d_old) / span if span > 0 and decoded > d_old else 0.0

    def snapshot(self, event: str = "") -> Progress:
        from linegen.cost.job_cost import job_cost

        decoded, secs = self.decoded()
        flight, _ = self.in_flight()
        done = min(self.images_total, self.images_done + flight)
        rate = self.rate(decoded)
        eta = (self.images_total - done) / rate if rate > 0 else None
        try:
            usd = job_cost(secs, max(1, done), self.job.spec.prices)["usd"] if secs else None
        except Exception:  # noqa: BLE001 - a bad price never stops a job
            usd = None
        placed = len(self.pool.placed()) if self.pool else 0
        pending = len(self.pool.pending()) if self.pool else 0
        return Progress(done, self.images_total, self.shards_done, len(self.job.shards), rate, eta,
                        sorted(self.failed), event, self.images_done, usd, placed, pending, self.waiting)

    def note(self, text: str) -> None:
        """A line for the progress object's recent events (not an event of the callback)."""
        self.events.append(f"{time.strftime('%H:%M:%S')} {text}")

    def report(self, event: str = "", force: bool = False) -> None:
        """The caller's callback (on every event, else at most every REPORT_EVERY_S) and the
        progress object (every LIVE_EVERY_S)."""
        now = time.time()
        if event:
            self.note(event)
        due_cb = self.progress is not None and (event or force or now - self.last_report >= REPORT_EVERY_S)
        due_doc = force or now - self.last_write >= LIVE_EVERY_S
        if not (due_cb or due_doc):
            return
        p = self.snapshot(event)
        if due_cb:
            self.last_report = now
            self.progress(p)
        if due_doc:
            self.last_write = now
            self._write(p)

    def _write(self, p: Progress) -> None:
        _, secs = self.decoded()
        _, flight_secs = self.in_flight()
        pool = self.pool
        doc = {
            "job_id": self.job.spec.job_id, "attempt": os.environ.get("LINEGEN_ATTEMPT"), "pid": os.getpid(),
            "started_at": self.t0, "updated_at": time.time(), "interval_s": LIVE_EVERY_S,
            "state": self.state, "message": self.waiting,
            "images_total": p.images_total, "shards_total": p.shards_total,
            "images_done": p.images_done, "images_committed": p.images_committed, "shards_done": p.shards_done,
            "images_per_s": p.images_per_s, "eta_s": p.eta_s, "usd_this_run": p.usd,
            "device_seconds_by_device": secs, "uncommitted_device_seconds_by_device": flight_secs,
            "workers": {"placed": p.workers_placed, "pending": p.workers_pending,
                        "needs": self.shape.needs() if self.shape else None,
                        "min": self.shape.min_workers if self.shape else None,
                        "max": self.shape.max_workers if self.shape else None,
                        "list": [w.doc(pool.node_names()) for w in pool.workers.values()] if pool else []},
            "shards": {**self.counts, "failed": len(self.failed)},
            "events": list(self.events),
        }
        write_live(self.job.storage, self.job.spec.job_id, doc)
