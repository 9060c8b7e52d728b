"""What a job is: everything needed to (re)run it, stored as OUT/<job_id>/job.json.

The spec never holds credentials: S3 access comes from the standard credential chain wherever
the job runs, and an endpoint URL is recorded with any ``user:password@`` part redacted
(`cluster.address.redact_url`); the real URL stays in memory, from the flag or the environment.
"""
from __future__ import annotations

import dataclasses
import json
import re
import time
import types
import typing
from dataclasses import asdict, dataclass, field
from typing import Any

from linegen.cluster.address import redact_url
from linegen.errors import UserError
from linegen.guarded import load_json
from linegen.jobs import layout
from linegen.jobs.identity import IDENTITY, ROWS_MANIFEST, derived_job_id
from linegen.jobs.identity import where as _where
from linegen.jobs.manifest import ALLOWED_FIELDS
from linegen.jobs.schedule import parse_duration
from linegen.jobs.storage import StorageNotFound, absolute_uri, read_uri
from linegen.settings.cache_choice import CacheChoice
from linegen.settings.model_choice import ModelChoice
from linegen.settings.resolve import Settings
from linegen.workers.models.config import SamplingParams

JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DEFAULT_OUT = "out"  # the output root of `linegen run` (and the local commands) when none is given
DEFAULT_SHARD_SIZE = 1000  # images per shard: the unit of commit and resume
DEFAULT_MAX_ATTEMPTS = 3  # executions of a shard that may fail (a lost node does not spend one)
FORMATS = ("parquet", "webdataset")  # image shards: images/<shard>.parquet or images/<shard>.tar
IMAGE_FORMATS = ("png", "jpeg", "webp")  # how each image is encoded (jobs/writer.py IMAGE_FORMATS)


def check_job_id(job_id: str) -> str:
    # fullmatch: `$` in match() also accepts a trailing newline
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id) or ".." in job_id:
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
    shard_size: int = DEFAULT_SHARD_SIZE
    workers: int | None = None  # None: one per GPU, or a CPU-sized pool without GPUs
    batch_size: int | None = None  # None: as many as the memory budget allows
    memory_budget: str | None = None  # e.g. "20GiB"; None: a fraction of free device memory
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    # In memory the URL as given; job.json holds it redacted (to_json), and so does repr.
    s3_endpoint_url: str | None = field(default=None, repr=False)
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
    format: str = "parquet"  # one of FORMATS
    # How long a storage outage may last before it spends a shard's attempt (jobs.outage); None: 15m.
    storage_outage_budget: str | None = None
    log_every_s: float = 30.0  # a plain progress line this often where no terminal shows a bar (jobs.progress_lines)
    image_format: str = "png"  # one of IMAGE_FORMATS
    image_quality: int | None = None  # 1..100 for jpeg/webp (None: 75); png is lossless
    keep_columns: tuple[str, ...] = ()  # manifest columns carried into the image rows ("*": every unknown one)
    cache_source: str | None = None  # where the cache setting came from (Settings.cache_source); shown by `run`

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep_columns", tuple(self.keep_columns))  # job.json holds a list

    @classmethod
    def from_flags(cls, *, manifest: str, out: str | None = None, job_id: str | None = None, shard_size: int = DEFAULT_SHARD_SIZE,
                   workers: int | None = None, min_workers: int | None = None, max_workers: int | None = None,
                   gpus_per_worker: float | None = None, wait_for_resources: str | None = None,
                   max_attempts: int = DEFAULT_MAX_ATTEMPTS, format: str = "parquet", config: Any = None,
                   storage_outage_budget: str | None = None, manifest_data: bytes | None = None,
                   log_every: float = 30.0, image_format: str = "png", image_quality: int | None = None,
                   keep_columns: Any = None, **settings) -> "JobSpec":
        """A job from flag values; ``settings`` are the keywords of `Settings.from_flags`.

        Without ``job_id`` the id is derived from the manifest's content and every setting that
        decides the images (`jobs.identity`), so the same command is the same job: it resumes, or
        answers from its markers. ``manifest_data``: the manifest's bytes when the caller has
        them (Python rows); otherwise the manifest is read here.

        ``out`` and the S3 endpoint default to the config file's (``[output] out``, ``[s3]
        endpoint_url``), then to `DEFAULT_OUT`. A local manifest path is recorded absolute, so a
        relative and an absolute spelling of one file are the same job.
        """

        if config is not None:
            out = out or config.output.out
            settings["s3_endpoint_url"] = settings.get("s3_endpoint_url") or config.s3.endpoint_url
        s = Settings.from_flags(config=config, **settings)
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
        if storage_outage_budget is not None:
            from linegen.jobs.outage import budget_seconds

            budget_seconds(storage_outage_budget)
        if isinstance(log_every, bool) or not isinstance(log_every, (int, float)) or not 0 < log_every < 1e9:
            raise UserError(f"--log-every must be a number of seconds > 0, got {log_every!r}")
        if image_format not in IMAGE_FORMATS:
            raise UserError(f"--image-format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")
        if image_quality is not None:
            if image_format == "png":
                raise UserError("--image-quality applies to --image-format jpeg or webp (png is lossless)")
            if isinstance(image_quality, bool) or not isinstance(image_quality, int) or not 1 <= image_quality <= 100:
                raise UserError(f"--image-quality must be an integer in 1..100, got {image_quality!r}")
        keep = parse_keep_columns(keep_columns)
        if format not in FORMATS:
            raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
        if manifest != ROWS_MANIFEST:
            manifest = absolute_uri(manifest)
        spec = cls(job_id=check_job_id(job_id) if job_id else "unnamed", manifest=manifest,
                   out=out or DEFAULT_OUT, model=s.model, cache=s.cache, sampling=s.sampling, seed=s.seed,
                   shard_size=shard_size, workers=workers, batch_size=s.batch_size, memory_budget=s.memory_budget,
                   max_attempts=max_attempts, s3_endpoint_url=s.s3_endpoint_url, gpus_per_worker=gpus_per_worker,
                   min_workers=min_workers, max_workers=max_workers, wait_for_resources=wait_for_resources,
                   format=format, storage_outage_budget=storage_outage_budget,
                   log_every_s=float(log_every), image_format=image_format,
                   image_quality=image_quality, keep_columns=keep, cache_source=s.cache_source)
        if job_id:
            return spec

        data = manifest_data if manifest_data is not None else read_uri(manifest, endpoint_url=spec.s3_endpoint_url)
        return dataclasses.replace(spec, job_id=derived_job_id(spec, data))

    def to_json(self) -> str:
        """job.json: every field, with the endpoint URLs redacted (never a credential)."""

        d = asdict(self)
        for holder in (d, d["model"]):
            if holder.get("s3_endpoint_url"):
                holder["s3_endpoint_url"] = redact_url(holder["s3_endpoint_url"])
        return json.dumps(d, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "job.json") -> "JobSpec":
        """Parse job.json strictly: anything unreadable, unknown or of the wrong type is a one-line
        UserError naming ``where`` (a job folder from another tool, or one edited by hand)."""

        d = _fields_of(cls, load_json(text, where), where)
        d["model"] = _nested(ModelChoice, d.get("model"), f"{where}: model")
        d["cache"] = _nested(CacheChoice, d.get("cache", {}), f"{where}: cache")
        d["sampling"] = _nested(SamplingParams, d.get("sampling", {}), f"{where}: sampling")
        return _build(cls, d, where)

    def differences(self, other: "JobSpec") -> list[str]:
        """The identity settings in which ``other`` differs, as `name: X here, Y in the job` (empty:
        the same job). ``self`` is the recorded job. The manifest compares by where it is (relative
        and absolute spellings agree); endpoint URLs are never part of a job's identity."""
        out = []
        for name in IDENTITY:
            mine, theirs = getattr(self, name), getattr(other, name)
            if name == "manifest":
                mine, theirs = _where(mine), _where(theirs)
            if dataclasses.is_dataclass(mine):
                for f in dataclasses.fields(mine):
                    if f.name in ("s3_endpoint_url", "compile"):  # neither changes an image
                        continue
                    a, b = getattr(mine, f.name), getattr(theirs, f.name)
                    if f.name in ("checkpoint", "vq_checkpoint", "text_encoder"):
                        a, b = _where(a), _where(b)
                    if a != b:
                        out.append(f"{name}.{f.name}: {b!r} here, {a!r} in the job")
            elif mine != theirs:
                out.append(f"{name}: {theirs!r} here, {mine!r} in the job")
        return out

    def same_work(self, other: "JobSpec") -> bool:
        """Whether `other` would produce the same images (resume must not mix two jobs)."""
        return not self.differences(other)


def parse_keep_columns(value: Any) -> tuple[str, ...]:
    """--keep-columns a,b (repeatable) or a list: the names, checked against linegen's own columns."""
    if not value:
        return ()
    from linegen.jobs.writer import IMAGE_COLUMN_NAMES

    items = [value] if isinstance(value, str) else list(value)
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise UserError(f"--keep-columns takes column names, got {item!r}")
        names += [n.strip() for n in item.split(",") if n.strip()]
    for name in names:
        if name in ALLOWED_FIELDS:
            raise UserError(f"--keep-columns {name}: '{name}' is a manifest field; its value is in every image row already")
        if name in IMAGE_COLUMN_NAMES:
            raise UserError(f"--keep-columns {name}: '{name}' is one of linegen's image columns; rename the column "
                            "in the manifest")
    return tuple(dict.fromkeys(names))


def _fields_of(cls: type, d: Any, where: str) -> dict:
    if not isinstance(d, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(d).__name__}; the job folder is damaged")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise UserError(f"{where}: unknown field {unknown[0]!r} (written by a newer linegen, or edited by hand)")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in d]
    if missing:
        raise UserError(f"{where}: field {missing[0]!r} is missing; the job folder is damaged")
    return dict(d)


def _nested(cls: type, d: Any, where: str):
    return _build(cls, _fields_of(cls, d, where), where)


def _build(cls: type, d: dict, where: str):
    hints = typing.get_type_hints(cls)
    for name, value in d.items():
        if dataclasses.is_dataclass(value):
            continue
        if not _matches(value, hints[name]):
            raise UserError(f"{where}: field {name!r} has the wrong type ({type(value).__name__})")
    try:
        return cls(**d)
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {str(e).splitlines()[0][:200]}") from None


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field's annotation (str, int, float, bool, None, dicts and
    tuples of those, and unions of them)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if origin is tuple or hint is tuple:
        return isinstance(value, list)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def read_spec(storage, job_id: str) -> JobSpec | None:
    """The job.json under ``storage`` for ``job_id``, or None when the job does not exist there.
    A damaged job.json is a UserError naming it."""

    key = layout.spec_key(job_id)
    try:
        data = storage.get(key)
    except StorageNotFound:
        return None
    return JobSpec.from_json(data, where=storage.location(key))
