"""What a job is: everything needed to (re)run it, stored as OUT/<job_id>/job.json.

The spec never holds credentials: S3 access comes from the standard credential chain wherever
the job runs; only a non-secret endpoint URL is recorded.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field

from linegen.jobs import layout
from linegen.jobs.cache_choice import CacheChoice
from linegen.jobs.errors import UserError
from linegen.jobs.models import ModelChoice
from linegen.workers.models.config import SamplingParams

JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_job_id(job_id: str) -> str:
    if not JOB_ID.match(job_id) or ".." in job_id:
        raise UserError(f"job id {job_id!r} must be 1-128 characters of letters, digits, '.', '_' or '-' "
                        "and start with a letter or digit")
    return job_id


def new_job_id(prefix: str = "job") -> str:
    import secrets

    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    manifest: str  # URI of the manifest as submitted (the driver reads the copy in the job folder if any)
    out: str  # output root: local folder or s3://bucket/prefix; the job writes under <out>/<job_id>/
    model: ModelChoice
    cache: CacheChoice = field(default_factory=CacheChoice)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int = 0
    shard_size: int = 1000
    workers: int | None = None  # None: one per GPU, or a CPU-sized pool without GPUs
    batch_size: int | None = None  # None: as many as the memory budget allows
    memory_budget: str | None = None  # e.g. "20GiB"; None: a fraction of free device memory
    max_attempts: int = 3
    s3_endpoint_url: str | None = None
    created_at: float = field(default_factory=time.time)
    # Scheduling (`linegen submit --at/--after`); the driver waits for both before starting Ray
    # work. Defaults keep job.json files written before these fields existed loadable.
    start_at: float | None = None  # Unix seconds (UTC): do not start before this time
    after: str | None = None  # another job id (same output root) that must succeed first
    prices: dict[str, float] | None = None  # $/device-hour overrides for the cost in _SUCCESS
    # The elastic worker pool (jobs.pool); none of these changes an image.
    gpus_per_worker: float | None = None  # None: 1 for a GPU run, 0 with --device cpu
    min_workers: int | None = None  # None: 1 (or --workers)
    max_workers: int | None = None  # None: as many as the cluster places (GPU runs), 1 on CPU (or --workers)
    wait_for_resources: str | None = None  # a duration ("10m", "forever"); None: forever when submitted, 5m embedded

    @classmethod
    def from_flags(cls, *, manifest: str, out: str = "out", job_id: str | None = None, shard_size: int = 1000,
                   workers: int | None = None, min_workers: int | None = None, max_workers: int | None = None,
                   gpus_per_worker: float | None = None, wait_for_resources: str | None = None,
                   max_attempts: int = 3, **settings) -> "JobSpec":
        """A job from flag values; ``settings`` are the keywords of `Settings.from_flags`."""
        from linegen.jobs.schedule import parse_duration
        from linegen.jobs.settings import Settings

        s = Settings.from_flags(**settings)
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise UserError(f"--shard-size must be an integer >= 1, got {shard_size!r}")
        for flag, value in (("--workers", workers), ("--min-workers", min_workers), ("--max-workers", max_workers),
                            ("--max-attempts", max_attempts)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UserError(f"{flag} must be an integer >= 1, got {value!r}")
        if workers is not None and (min_workers or max_workers):
            raise UserError("--workers N is --min-workers N --max-workers N; give one or the other")
        if min_workers and max_workers and min_workers > max_workers:
            raise UserError(f"--min-workers {min_workers} is more than --max-workers {max_workers}")
        if gpus_per_worker is not None:
            if isinstance(gpus_per_worker, bool) or not isinstance(gpus_per_worker, (int, float)) \
                    or not 0 <= gpus_per_worker <= 64:
                raise UserError(f"--gpus-per-worker must be a number in 0..64, got {gpus_per_worker!r}")
            if gpus_per_worker == 0 and s.model.device.startswith("cuda"):
                raise UserError(f"--device {s.model.device} needs --gpus-per-worker > 0")
            gpus_per_worker = float(gpus_per_worker)
        if wait_for_resources is not None:
            parse_duration(wait_for_resources, "--wait-for-resources")
        return cls(job_id=check_job_id(job_id) if job_id else new_job_id(), manifest=manifest, out=out,
                   model=s.model, cache=s.cache, sampling=s.sampling, seed=s.seed, shard_size=shard_size,
                   workers=workers, batch_size=s.batch_size, memory_budget=s.memory_budget,
                   max_attempts=max_attempts, s3_endpoint_url=s.s3_endpoint_url, gpus_per_worker=gpus_per_worker,
                   min_workers=min_workers, max_workers=max_workers, wait_for_resources=wait_for_resources)

    def to_json(self) -> str:
        d = asdict(self)
        return json.dumps(d, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "JobSpec":
        d = json.loads(text)
        d["model"] = ModelChoice(**d["model"])
        d["cache"] = CacheChoice(**d["cache"])
        d["sampling"] = SamplingParams(**d["sampling"])
        return cls(**d)  # fields added later have defaults, so older job.json files load

    def same_work(self, other: "JobSpec") -> bool:
        """Whether `other` would produce the same images (resume must not mix two jobs)."""
        keys = ("manifest", "model", "cache", "sampling", "seed", "shard_size")
        return all(getattr(self, k) == getattr(other, k) for k in keys)


def read_spec(storage, job_id: str) -> JobSpec | None:
    """The job.json under ``storage`` for ``job_id``, or None when the job does not exist there."""
    from linegen.jobs.storage import StorageNotFound

    try:
        return JobSpec.from_json(storage.get(layout.spec_key(job_id)))
    except StorageNotFound:
        return None
