"""The elastic pool of model-holding workers of one job.

Workers are asked for by resources (`Shape`): a GPU run asks for ``--gpus-per-worker`` GPUs per
worker and never falls back to CPU; only ``--device cpu`` (without GPUs per worker) runs CPU
workers. The driver requests workers as Ray actors and leaves them pending while the cluster has
no room: a pending actor is demand that Ray's autoscaler scales on, and a node that joins gets the
pending ones. Without ``--max-workers`` the pool keeps as many workers pending as it has placed
(at least one), so it grows as fast as the cluster does and never asks for more than the shards
left can use.

A worker is *placed* once its `where()` answers (construction is cheap; the model loads after
that). The driver tops up every placed worker's queue (`PREFETCH` shards), polls each one for
finished shards and live progress, and tells a lost node (the worker's node is gone from
``ray.nodes()``, or Ray says the actor died with its node) from a crash of the worker itself.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from linegen.errors import UserError
from linegen.jobs.intervals import INTERVALS
from linegen.jobs.plan import Shard
from linegen.jobs.schedule import parse_duration

PREFETCH = 2  # shards queued per worker
POLL_S = INTERVALS.worker_poll_s  # how long one poll() waits for a finished shard; also the live-progress period
NODES_EVERY_S = INTERVALS.nodes_every_s  # how often ray.nodes() is read to find workers whose node has died
EMBEDDED_WAIT_S = 300.0  # --wait-for-resources default for `linegen run` (a submitted job waits forever)


@dataclass(frozen=True)
class Shape:
    """How the job asks Ray for workers."""
    resources: dict  # Ray actor options: num_gpus / num_cpus
    cpu_threads: int | None  # torch threads per worker (CPU compute)
    min_workers: int
    max_workers: int | None  # None: as many as the cluster places
    wait_s: float | None  # how long fewer than min_workers may be placed; None: forever

    @property
    def gpu(self) -> bool:
        return self.resources.get("num_gpus", 0) > 0

    def needs(self) -> str:
        parts = []
        if self.resources.get("num_gpus"):
            parts.append(f"{self.resources['num_gpus']:g} GPU")
        parts.append(f"{self.resources.get('num_cpus', 0):g} CPU")
        return " and ".join(parts)


def pool_shape(spec, *, submitted: bool) -> Shape:
    """The workers a job asks for. ``submitted``: a driver on a cluster that may autoscale (`--device
    auto` then means GPU workers); otherwise the embedded cluster, whose GPUs are what it has now."""
    import ray

    device = spec.model.device
    gpus = spec.gpus_per_worker
    if gpus is None:
        if device == "cpu":
            gpus = 0.0
        elif device.startswith("cuda") or submitted:
            gpus = 1.0
        else:  # auto on the embedded cluster
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    wait = parse_duration(spec.wait_for_resources, "--wait-for-resources") if spec.wait_for_resources else (
        None if submitted else EMBEDDED_WAIT_S)
    lo = spec.min_workers or spec.workers or 1
    if gpus > 0:
        hi = spec.max_workers or spec.workers
        return Shape({"num_gpus": gpus, "num_cpus": 1}, 1 if device == "cpu" else None, lo, hi, wait)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    hi = spec.max_workers or spec.workers or lo
    # Fractional CPUs, so that a further actor or task never waits for a whole free core: two
    # actors with num_cpus=1 take both cores of a 2-core machine and starve everything else.
    return Shape({"num_cpus": min(1.0, cpus / (hi + 1))}, max(1, cpus // hi), lo, hi, wait)


@dataclass
class Run:
    """One shard's place in the queue: its execution number and how many of them failed."""
    shard: Shard
    attempt: int = 1  # 1, 2, ...: every execution gets its own number (data file names may use it)
    failures: int = 0  # crashes and errors; a lost node does not count


@dataclass
class WorkerNumbers:
    """What the pool's workers report, summed: the numbers the driver hands its tally."""
    decoded: int = 0  # images decoded by this run's workers, gone ones included (committed or not)
    device_seconds: dict[str, float] = field(default_factory=dict)  # by device, gone workers included
    in_flight_images: int = 0  # decoded in shards not committed yet
    in_flight_seconds: dict[str, float] = field(default_factory=dict)
    placed: int = 0
    pending: int = 0
    first_wave_at: float | None = None  # the earliest first wave of any worker (epoch s)
    storage_unreachable_since: float | None = None  # the earliest any worker's commits stopped reaching storage
    workers: list[dict] = field(default_factory=list)  # one `Worker.doc` each


def _add_seconds(into: dict[str, float], device: str, seconds: float) -> None:
    into[device] = into.get(device, 0.0) + seconds


@dataclass
class Worker:
    name: str
    actor: object
    placed_at: float | None = None
    node_id: str | None = None
    host: str | None = None
    loaded: bool = False
    in_flight: list[Run] = field(default_factory=list)
    acked: int = 0  # the last outcome sequence number booked
    live: dict = field(default_factory=dict)  # the last poll's snapshot
    where_ref: object | None = None
    poll_ref: object | None = None

    def doc(self, node_names: dict[str, str]) -> dict:
        state = "pending" if self.placed_at is None else ("running" if self.loaded else "loading")
        return {"name": self.name, "state": state, "node_id": self.node_id,
                "node": node_names.get(self.node_id or "", self.host), "images": int(self.live.get("images", 0)),
                "in_flight": [r.shard.shard_id for r in self.in_flight]}


class Pool:
    def __init__(self, job, sink, shape: Shape):
        import ray

        from linegen.workers.actor import GenerationActor

        self.ray, self.job, self.sink, self.shape = ray, job, sink, shape
        # a threaded actor: submit() and where() must not wait behind a blocking poll()
        self.cls = ray.remote(max_concurrency=4, max_restarts=0)(GenerationActor)
        self.started = 0
        self.workers: dict[str, Worker] = {}
        self.nodes: dict[str, dict] = {}  # node id -> ray.nodes() entry
        self.nodes_read_at = 0.0
        self.retired = WorkerNumbers()  # what workers that are gone decoded

    # -- membership -------------------------------------------------------------------------
    def request(self) -> Worker:
        """Ask Ray for one more worker; it stays pending until the cluster has room for it."""
        spec = self.job.spec
        name = f"linegen-{spec.job_id}-worker-{self.started}"
        self.started += 1
        try:
            actor = self.cls.options(name=name, namespace="linegen", **self.shape.resources).remote(
                spec.model, spec.cache, self.sink, batch_size=spec.batch_size, memory_budget=spec.memory_budget,
                worker_name=name, cpu_threads=self.shape.cpu_threads, job_id=spec.job_id)
        except ValueError as e:  # e.g. a resource request Ray rejects outright
            raise UserError(f"cannot request a worker ({self.shape.needs()}): {e}") from None
        w = Worker(name=name, actor=actor)
        w.where_ref = actor.where.remote()
        self.workers[name] = w
        return w

    def remove(self, name: str) -> Worker:
        """Stop a worker; what it decoded stays counted."""
        w = self.workers.pop(name)
        try:
            self.ray.kill(w.actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead
            pass
        self.retired.decoded += int(w.live.get("images", 0))
        if w.live.get("device_seconds"):
            _add_seconds(self.retired.device_seconds, w.live.get("device") or "unknown", float(w.live["device_seconds"]))
        return w

    def placed(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.placed_at is not None]

    def pending(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.placed_at is None]

    def busy(self) -> bool:
        return any(w.in_flight for w in self.workers.values())

    def numbers(self) -> WorkerNumbers:
        """The workers' live reports summed (from their last poll), gone workers' work included."""
        n = WorkerNumbers(decoded=self.retired.decoded, device_seconds=dict(self.retired.device_seconds),
                          placed=len(self.placed()), pending=len(self.pending()),
                          workers=[w.doc(self.node_names()) for w in self.workers.values()])
        for w in self.workers.values():
            dev = w.live.get("device") or "unknown"
            n.decoded += int(w.live.get("images", 0))
            if w.live.get("device_seconds"):
                _add_seconds(n.device_seconds, dev, float(w.live["device_seconds"]))
            first = w.live.get("first_wave_at")
            if first and (n.first_wave_at is None or first < n.first_wave_at):
                n.first_wave_at = first
            down = w.live.get("storage_unreachable_since")
            if isinstance(down, (int, float)) and (n.storage_unreachable_since is None
                                                   or down < n.storage_unreachable_since):
                n.storage_unreachable_since = float(down)
            live = w.live.get("in_flight") or {}
            for run in w.in_flight:
                entry = live.get(run.shard.shard_id)
                if entry and entry.get("attempt") == run.attempt:  # this attempt's, not an older one's
                    n.in_flight_images += int(entry.get("decoded", 0))
                    _add_seconds(n.in_flight_seconds, dev, float(entry.get("device_seconds", 0.0)))
        return n

    # -- calls ------------------------------------------------------------------------------
    def submit(self, w: Worker, run: Run) -> None:
        w.actor.submit.remote(run.shard, run.attempt)
        w.in_flight.append(run)

    def arm(self, w: Worker) -> None:
        w.poll_ref = w.actor.poll.remote(w.acked, POLL_S)

    def refs(self) -> dict:
        """Every outstanding call -> (worker name, "where" | "poll")."""
        out = {}
        for w in self.workers.values():
            if w.where_ref is not None:
                out[w.where_ref] = (w.name, "where")
            if w.poll_ref is not None:
                out[w.poll_ref] = (w.name, "poll")
        return out

    # -- nodes ------------------------------------------------------------------------------
    def read_nodes(self, force: bool = False) -> dict[str, dict]:
        now = time.monotonic()
        if force or now - self.nodes_read_at >= NODES_EVERY_S:
            try:
                self.nodes = {n["NodeID"]: n for n in self.ray.nodes()}
                self.nodes_read_at = now
            except Exception:  # noqa: BLE001 - the GCS is briefly unreachable: keep the last view
                pass
        return self.nodes

    def node_alive(self, node_id: str | None, force: bool = False) -> bool:
        if node_id is None:
            return True
        entry = self.read_nodes(force).get(node_id)
        return entry is None or bool(entry.get("Alive"))

    def node_names(self) -> dict[str, str]:
        return {nid: (n.get("NodeName") or n.get("NodeManagerAddress") or nid[:8]) for nid, n in self.nodes.items()}

    def lost_with_node(self, w: Worker, error: BaseException) -> bool:
        """Whether a worker died because its node did (preemption, a lost spot node) rather than
        by crashing itself: Ray says so, or the node is gone from ``ray.nodes()``."""
        if getattr(error, "preempted", False) or "its node has died" in str(error):
            return True
        deadline = time.monotonic() + 3.0  # the GCS may take a moment to mark the node dead
        while True:
            if not self.node_alive(w.node_id, force=True):
                return True
            if w.node_id is None or time.monotonic() > deadline:
                return False
            time.sleep(0.5)

    def cluster_text(self) -> str:
        try:
            res = self.ray.cluster_resources()
        except Exception:  # noqa: BLE001
            return "the cluster's resources are unknown"
        return f"the cluster has {res.get('GPU', 0):g} GPU and {res.get('CPU', 0):g} CPU"
