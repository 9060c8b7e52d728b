"""The model-holding Ray actors of one job, with the shards each has in flight.

The driver tops up every actor's queue (`PREFETCH` shards, so the next one is there before the
current one drains), waits on their outcomes, and replaces an actor that dies (bounded).
"""
from __future__ import annotations

from linegen.jobs.plan import Shard

PREFETCH = 2  # shards queued per actor


class Pool:
    def __init__(self, job, sink, count: int, resources: dict, cpu_threads: int | None):
        import ray

        from linegen.workers.actor import GenerationActor

        self.ray = ray
        self.job, self.sink = job, sink
        # a threaded actor: submit() must not wait behind a blocking next_outcome()
        self.cls = ray.remote(max_concurrency=4, **resources)(GenerationActor)
        self.cpu_threads = cpu_threads
        self.started = 0
        self.actors: dict[str, object] = {}
        self.in_flight: dict[str, list[tuple[Shard, int]]] = {}
        self.waiting: dict[object, str] = {}  # next_outcome() ref -> actor name
        for _ in range(count):
            self.add()

    def add(self) -> str:
        spec = self.job.spec
        name = f"linegen-{spec.job_id}-worker-{self.started}"
        self.started += 1
        actor = self.cls.options(name=name, namespace="linegen").remote(
            spec.model, spec.cache, self.sink, batch_size=spec.batch_size, memory_budget=spec.memory_budget,
            worker_name=name, cpu_threads=self.cpu_threads)
        self.actors[name] = actor
        self.in_flight[name] = []
        self.waiting[actor.next_outcome.remote(5.0)] = name
        return name

    def submit(self, name: str, shard: Shard, attempt: int) -> None:
        self.actors[name].submit.remote(shard, attempt)
        self.in_flight[name].append((shard, attempt))

    def remove(self, name: str) -> list[tuple[Shard, int]]:
        actor = self.actors.pop(name)
        lost = self.in_flight.pop(name)
        try:
            self.ray.kill(actor)
        except Exception:
            pass
        return lost

    def rearm(self, name: str) -> None:
        self.waiting[self.actors[name].next_outcome.remote(5.0)] = name

    def busy(self) -> bool:
        return any(self.in_flight.values())


def pool_shape(spec) -> tuple[int, dict, int | None]:
    """(workers, Ray resources per worker, torch threads per worker) for the cluster right now."""
    import ray

    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
    if gpus > 0:
        return spec.workers or gpus, {"num_gpus": 1, "num_cpus": 1}, None
    workers = spec.workers or 1
    # Fractional CPUs, so that a further actor or task never waits for a whole free core: two
    # actors with num_cpus=1 take both cores of a 2-core machine and starve everything else.
    return workers, {"num_cpus": min(1.0, cpus / (workers + 1))}, max(1, cpus // workers)
