"""The job driver: plan, skip committed shards, feed a pool of model-holding actors, finish.

Runs in-process for the embedded default (`linegen run`) or as the entrypoint of a Ray job on a
cluster (`python -m linegen.jobs.driver OUT/JOB_ID`, see `linegen submit`). Exactly-once comes from the
shard protocol (jobs/sink.py): a shard counts once its commit marker exists, so a crashed
driver or actor is handled by running the uncommitted shards again, with the same seeds.
Image bytes never pass through here: actors write their shards themselves.
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
from linegen.jobs.errors import UserError
from linegen.jobs.manifest import Conditioning, parse_manifest
from linegen.jobs.plan import Shard, expand_items, plan_fingerprint, plan_shards
from linegen.jobs.spec import JobSpec
from linegen.jobs.storage import Storage, StorageNotFound, open_storage

PREFETCH = 2  # shards queued per actor: the next one is there before the current one drains
MANIFEST_EXTS = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")


class JobFailed(UserError):
    def __init__(self, job_id: str, failed: dict[str, str]):
        self.failed = failed
        lines = [f"job {job_id}: {len(failed)} shard(s) failed after all attempts:"]
        lines += [f"  {sid}: {err}" for sid, err in sorted(failed.items())]
        super().__init__("\n".join(lines))


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


@dataclass
class PreparedJob:
    spec: JobSpec
    storage: Storage
    shards: list[Shard]
    fingerprint: str

    @property
    def items_total(self) -> int:
        return sum(len(s.items) for s in self.shards)


def _conditioning(spec: JobSpec) -> Conditioning:
    model = spec.model.spec()
    if model.gpt.cond == "t2i":
        return Conditioning(kind="text")
    return Conditioning(kind="class", num_classes=model.gpt.num_classes)


def _manifest_ext(uri: str) -> str:
    for ext in MANIFEST_EXTS:
        if uri.lower().endswith(ext):
            return ext
    raise UserError(f"{uri}: manifest must be .jsonl, .csv or .parquet")


def prepare_job(spec: JobSpec) -> PreparedJob:
    """Everything before any generation: settings, storage access, the whole manifest, the plan.

    A job folder that already exists must hold the same job (resume); the manifest is copied
    into it at first run, so a resume reads exactly the manifest the job started with.
    """
    spec.model.check()
    model = spec.model.spec()
    spec.cache.build(model.prefix_len, model.grid)
    if spec.shard_size < 1:
        raise UserError(f"--shard-size must be >= 1, got {spec.shard_size}")
    storage = open_storage(spec.out, endpoint_url=spec.s3_endpoint_url)
    existing = _read_spec(storage, spec.job_id)
    if existing is not None and not existing.same_work(spec):
        raise UserError(f"job {spec.job_id} already exists under {spec.out} with different settings "
                        "(manifest, model, cache, sampling, seed or shard size); use another --job-id")
    ext = _manifest_ext(spec.manifest)
    copy_key = layout.manifest_key(spec.job_id, ext)
    data, read_error = _read_manifest_bytes(spec)
    if existing is not None:
        try:
            copy = storage.get(copy_key)
        except StorageNotFound:
            copy = None
        if data is None:  # the user's file is gone (or unreachable here): the job's own copy counts
            data = copy
        elif copy is not None and copy != data:
            raise UserError(f"job {spec.job_id}: {spec.manifest} changed since the job started; "
                            "resume with the original manifest or use another --job-id")
    if data is None:
        raise read_error
    name = spec.manifest
    rows = parse_manifest(data, name, _conditioning(spec))
    items = expand_items(rows, job_seed=spec.seed, sampling=spec.sampling)
    shards = plan_shards(items, spec.shard_size)
    fingerprint = plan_fingerprint(shards)
    plan_doc = {"fingerprint": fingerprint, "items": len(items), "shards": len(shards)}
    storage.check()  # only now: a bad manifest or setting leaves nothing behind, not even a folder
    if existing is None:
        storage.put(copy_key, data)
        storage.put(layout.spec_key(spec.job_id), spec.to_json().encode())
        storage.put(plan_key(spec.job_id), json.dumps(plan_doc).encode())
    else:
        recorded = json.loads(storage.get(plan_key(spec.job_id)))
        if recorded["fingerprint"] != fingerprint:
            raise UserError(f"job {spec.job_id}: the plan changed since the job started "
                            f"({recorded['items']} items then, {len(items)} now); use another --job-id")
    return PreparedJob(spec=spec, storage=storage, shards=shards, fingerprint=fingerprint)


def _read_manifest_bytes(spec: JobSpec) -> tuple[bytes | None, Exception | None]:
    """The manifest as the user points to it now, or (None, why) if it cannot be read from here."""
    from linegen.jobs.storage import StorageError, read_uri

    try:
        return read_uri(spec.manifest, endpoint_url=spec.s3_endpoint_url), None
    except StorageError as e:
        return None, e


def plan_key(job_id: str) -> str:
    return f"{job_id}/plan.json"


def _read_spec(storage: Storage, job_id: str) -> JobSpec | None:
    try:
        return JobSpec.from_json(storage.get(layout.spec_key(job_id)))
    except StorageNotFound:
        return None


def load_job(out: str, job_id: str, endpoint_url: str | None = None) -> JobSpec:
    storage = open_storage(out, endpoint_url=endpoint_url)
    spec = _read_spec(storage, job_id)
    if spec is None:
        raise UserError(f"no job {job_id!r} under {out}")
    return spec


# -- the actor pool ---------------------------------------------------------------------------
class _Pool:
    """Actors with their in-flight shards; replaces an actor that dies (bounded)."""

    def __init__(self, job: PreparedJob, sink, count: int, resources: dict, cpu_threads: int | None):
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


def _pool_shape(spec: JobSpec) -> tuple[int, dict, int | None]:
    import ray

    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
    if gpus > 0:
        return spec.workers or gpus, {"num_gpus": 1, "num_cpus": 1}, None
    workers = spec.workers or 1
    # fractional CPUs so that extra actors or tasks never starve (see notes/environment.md)
    return workers, {"num_cpus": min(1.0, cpus / (workers + 1))}, max(1, cpus // workers)


def run_job(spec: JobSpec, progress: Callable[[Progress], None] | None = None,
            prepared: PreparedJob | None = None) -> dict:
    """Generate every uncommitted shard of the job; Ray must already be initialised."""
    from ray.exceptions import RayActorError

    from linegen.jobs.sink import ShardSink

    job = prepared or prepare_job(spec)
    storage, job_id = job.storage, spec.job_id
    committed = layout.committed_shards(storage, job_id)
    todo = deque((s, 1) for s in job.shards if s.shard_id not in committed)
    total = job.items_total
    done_images = sum(len(s.items) for s in job.shards if s.shard_id in committed)
    done_shards = len(job.shards) - len(todo)
    t0, generated = time.time(), 0
    failed: dict[str, str] = {}

    def report(event: str) -> None:
        if progress is None:
            return
        elapsed = time.time() - t0
        rate = generated / elapsed if elapsed > 0 and generated else 0.0
        eta = (total - done_images) / rate if rate > 0 else None
        progress(Progress(done_images, total, done_shards, len(job.shards), rate, eta, sorted(failed), event))

    report("planned")
    if todo:
        model = spec.model.spec()
        ratio = spec.cache.effective_ratio(model.prefix_len, model.grid)
        sink = ShardSink(storage, job_id, model.name, spec.cache.policy, ratio)
        count, resources, threads = _pool_shape(spec)
        count = max(1, min(count, len(todo)))
        pool = _Pool(job, sink, count, resources, threads)
        ray = pool.ray
        restarts_left = count * spec.max_attempts
        last_death = ""

        def requeue(shard: Shard, attempt: int, why: str) -> None:
            if attempt >= spec.max_attempts:
                failed[shard.shard_id] = why
            else:
                todo.append((shard, attempt + 1))

        while todo or any(pool.in_flight.values()):
            for name in list(pool.actors):  # top up every actor's queue
                while todo and len(pool.in_flight[name]) < PREFETCH:
                    pool.submit(name, *todo.popleft())
            if not pool.waiting:  # every worker is gone and no restarts are left
                for shard, _ in todo:
                    failed[shard.shard_id] = last_death or "no worker left"
                todo.clear()
                break
            ready, _ = ray.wait(list(pool.waiting), num_returns=1, timeout=10.0)
            for ref in ready:
                name = pool.waiting.pop(ref)
                try:
                    outcome = ray.get(ref)
                except RayActorError as e:
                    last_death = f"worker died: {_last_line(e)}"
                    for shard, attempt in pool.remove(name):
                        requeue(shard, attempt, last_death)
                    if restarts_left > 0 and (todo or any(pool.in_flight.values())):
                        restarts_left -= 1
                        try:
                            pool.add()
                        except Exception as add_error:  # Ray refused a new actor: no more workers
                            last_death = f"cannot start a worker: {_last_line(add_error)}"
                    report("worker restarted")
                    continue
                if outcome is not None:
                    flight = pool.in_flight[name]
                    entry = next((e for e in flight if e[0].shard_id == outcome.shard_id), None)
                    if entry is not None:
                        flight.remove(entry)
                    if outcome.status in ("committed", "already"):
                        done_shards += 1
                        done_images += len(entry[0].items) if entry else outcome.images
                        generated += outcome.images if outcome.status == "committed" else 0
                        report(f"{outcome.shard_id} {outcome.status}")
                    elif entry is not None:
                        requeue(entry[0], entry[1], outcome.error or "failed")
                        report(f"{outcome.shard_id} failed: {outcome.error}")
                pool.rearm(name)
        for name in list(pool.actors):
            pool.remove(name)
    if failed:
        raise JobFailed(job_id, failed)
    summary = write_success(job, time.time() - t0, generated)
    report("finished")
    return summary


def _last_line(e: BaseException) -> str:
    """Ray wraps an actor's own error in a long message; its last line names the cause."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1][:300] if lines else type(e).__name__


def write_success(job: PreparedJob, wall_s: float, generated: int) -> dict:
    """_SUCCESS: counts and totals over every committed shard's stats (this run's and earlier ones)."""
    import io

    import pyarrow.parquet as pq

    storage, job_id = job.storage, job.spec.job_id
    committed = layout.committed_shards(storage, job_id)
    missing = [s.shard_id for s in job.shards if s.shard_id not in committed]
    if missing:
        raise UserError(f"job {job_id}: {len(missing)} shard(s) have no commit marker: {', '.join(missing[:5])}")
    images = tokens = truncated = 0
    device_s, peak, kv = 0.0, 0, 0
    devices: dict[str, float] = {}
    for s in job.shards:
        table = pq.read_table(io.BytesIO(storage.get(layout.stats_key(job_id, s.shard_id))))
        d = table.to_pydict()
        images += sum(d["images"])
        tokens += sum(d["tokens"])
        device_s += sum(d["wall_s"])
        peak = max([peak] + [x for x in d["peak_memory_bytes"] if x is not None])
        kv = max([kv] + [x for x in d["kv_cache_bytes"] if x is not None])
        truncated += sum(x or 0 for x in d.get("prompts_truncated", []))  # absent in older stats files
        for dev, w in zip(d["device"], d["wall_s"]):
            devices[dev] = devices.get(dev, 0.0) + w
    if images != job.items_total:
        raise UserError(f"job {job_id}: stats count {images} images, the plan has {job.items_total}")
    summary = {
        "job_id": job_id, "shards": len(job.shards), "images": images, "tokens": tokens,
        "generated_this_run": generated, "plan_fingerprint": job.fingerprint,
        "model": job.spec.model.name, "cache_policy": job.spec.cache.policy,
        "device_seconds": device_s, "device_seconds_by_device": devices,
        "images_per_device_s": images / device_s if device_s else None,
        "wall_s_this_run": wall_s, "images_per_s_this_run": generated / wall_s if wall_s > 0 else None,
        "peak_memory_bytes": peak, "kv_cache_bytes": kv, "prompts_truncated": truncated,
        "finished_at": time.time(),
    }
    summary["cost"] = job_cost(devices, images, job.spec.prices)  # prices: `submit --price`
    storage.put(layout.success_key(job_id), json.dumps(summary, indent=2).encode())
    return summary


def job_cost(device_seconds: dict[str, float], images: int, overrides=None) -> dict:
    """Device-seconds x the price table's $/device-hour (CPU workers are priced per vCPU-hour,
    one vCPU per worker: a lower bound). Unknown devices are listed, not guessed."""
    from linegen.cluster.prices import PriceTable

    table = PriceTable.builtin().with_overrides(overrides)
    usd, unknown, used = 0.0, [], {}
    for dev, secs in device_seconds.items():
        price = table.lookup(dev)
        if price is None:
            unknown.append(dev)
            continue
        usd += secs / 3600 * price.usd_per_hour
        used[dev] = price.usd_per_hour
    return {"usd": usd, "usd_per_1k_images": usd / images * 1000 if images else None,
            "usd_per_hour": used, "unpriced_devices": unknown}


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

    with driver_outcome(out, job_id, os.environ.get("LINEGEN_S3_ENDPOINT_URL")) as outcome:
        try:
            spec = load_job(out, job_id, os.environ.get("LINEGEN_S3_ENDPOINT_URL"))
            wait_for_start(spec)
            ray.init(address=os.environ.get("RAY_ADDRESS", "auto"))

            def show(p: Progress) -> None:
                print(json.dumps({"progress": p.__dict__}), flush=True)

            summary = run_job(spec, progress=show)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            return outcome.failed(e)
    print(json.dumps({"summary": summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
