"""The Python API behind `import linegen` (and the CLI): run, validate, submit, status, read_rows.

Every function takes the same keywords as the CLI's flags (``--cache-ratio`` is ``cache_ratio``);
settings that decide the images are the keywords of `linegen.settings.resolve.Settings.from_flags`. Errors
are `linegen.UserError` subclasses carrying the one-line message the CLI prints.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Sequence

from linegen.errors import UserError
from linegen.jobs import layout
from linegen.jobs.layout import IMAGE_EXT
from linegen.jobs.manifest import ALLOWED_FIELDS, Conditioning, parse_rows, read_manifest, total_items
from linegen.jobs.marker import DamagedMarker
from linegen.jobs.prepare import prepare_job
from linegen.jobs.remote import job_status, make_context
from linegen.jobs.remote import submit as submit_job
from linegen.jobs.run import run_embedded
from linegen.jobs.spec import DEFAULT_OUT, DEFAULT_SHARD_SIZE, ROWS_MANIFEST, JobSpec, parse_keep_columns
from linegen.jobs.storage import StorageError, fetch_folder_to_local, open_storage
from linegen.jobs.summary import count_of
from linegen.settings import janus_choice
from linegen.settings.model_choice import ModelChoice
from linegen.watch import dashboard as grafana
from linegen.watch.report import write_report
from linegen.workers.models.janus_config import is_janus
from linegen.workers.models.text import TextEncoderError, load_tokenizer, prepare_texts, token_counts


@dataclass(frozen=True)
class JobResult:
    """A finished job: where it is, and its `_SUCCESS` summary (counts, totals, cost)."""

    job_id: str
    out: str
    summary: dict = field(repr=False)
    s3_endpoint_url: str | None = field(default=None, repr=False)
    format: str = "parquet"

    @property
    def images(self) -> int:
        return count_of(self.summary["images"])

    @property
    def generated_this_run(self) -> int:
        return int(self.summary["generated_this_run"])

    @property
    def images_glob(self) -> str:
        """For ``datasets.load_dataset("parquet", data_files=...)``, ``webdataset.WebDataset`` and
        other readers: it matches published (committed) shards only."""

        return f"{self.out.rstrip('/')}/{self.job_id}/images/*.{IMAGE_EXT[self.format]}"

    def read_table(self, columns: list[str] | None = None):
        """Every committed image row as one pyarrow Table, shard order."""
        return read_images(self.out, self.job_id, columns=columns, s3_endpoint_url=self.s3_endpoint_url)


@dataclass(frozen=True)
class Validation:
    rows: int
    items: int
    truncated: list[dict] = field(default_factory=list)  # t2i with a text encoder: prompts that will be cut

    def to_dict(self) -> dict:
        # images: the shape of every count in linegen's JSON (nothing is done by a validation)
        return {"valid": True, "rows": self.rows, "images": {"done": None, "total": self.items},
                "truncated": self.truncated}


def _manifest_source(manifest, keep=None) -> tuple[str, bytes | None]:
    """(name, bytes) for a path/URI (bytes read later) or a list of row dicts (validated here)."""
    if isinstance(manifest, str) or hasattr(manifest, "__fspath__"):
        import os

        return os.fspath(manifest), None
    if not isinstance(manifest, Sequence):
        raise UserError(f"manifest must be a path, an s3:// URI or a list of row dicts, got {type(manifest).__name__}")

    parse_rows(manifest, keep=parse_keep_columns(keep))  # every problem, by row index, before anything is written
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in manifest).encode()
    return ROWS_MANIFEST, data


def run(manifest, out: str = "out", *, job_id: str | None = None, shard_size: int = DEFAULT_SHARD_SIZE,
        workers: int | None = None, format: str = "parquet", progress: Callable | None = None,
        num_cpus: int | None = None, **settings) -> JobResult:
    """Run a job on the embedded local Ray (or the Ray this process already initialised).

    ``manifest``: a path/URI (.jsonl, .csv, .parquet) or a list of row dicts, validated exactly
    like a file. Re-running with the same ``job_id`` and ``out`` resumes: every item exactly once.
    Without ``job_id`` the id derives from the manifest's content and the settings that decide the
    images, so the same call is the same job (it resumes, or answers from its markers).
    ``progress`` receives `jobs.progress.Progress` updates.
    """

    name, data = _manifest_source(manifest, settings.get("keep_columns"))
    spec = JobSpec.from_flags(manifest=name, out=out, job_id=job_id, shard_size=shard_size, workers=workers,
                              format=format, manifest_data=data, **settings)
    prepared = prepare_job(spec, manifest_data=data)  # the whole manifest and every setting first
    summary = run_embedded(prepared, progress=progress, num_cpus=num_cpus)
    return JobResult(job_id=spec.job_id, out=spec.out, summary=summary, s3_endpoint_url=spec.s3_endpoint_url,
                     format=spec.format)


def validate(manifest, *, model: str | None = None, text_encoder: str | None = None,
             s3_endpoint_url: str | None = None, keep_columns=None, checkpoint: str | None = None) -> Validation:
    """Check a manifest (path/URI or rows): raises ManifestError naming every bad row and field.
    Rows are checked against ``model`` (default: the one `run` uses, so what passes here runs);
    with a t2i model and its text encoder (Janus-Pro: its checkpoint folder), the prompts the
    tokenizer will cut are listed by line."""
    from linegen.workers.models.registry import DEFAULT_MODEL

    spec = ModelChoice(name=model or DEFAULT_MODEL, random_weights=True).spec()
    conditioning = Conditioning.of(spec)
    if text_encoder is not None and spec.gpt.cond != "t2i":
        raise UserError("--text-encoder needs --model with a text-to-image model")

    keep = parse_keep_columns(keep_columns)
    name, data = _manifest_source(manifest, keep)
    rows = (parse_rows(manifest, conditioning=conditioning, keep=keep) if data is not None
            else read_manifest(name, conditioning, endpoint_url=s3_endpoint_url, keep=keep))
    truncated = [] if text_encoder is None else _truncated_prompts(rows, text_encoder, spec.gpt.caption_tokens,
                                                                  s3_endpoint_url)
    if checkpoint is not None:
        truncated = _janus_truncated(rows, model, checkpoint, s3_endpoint_url)
    return Validation(rows=len(rows), items=total_items(rows), truncated=truncated)


def _truncated_prompts(rows, text_encoder: str, limit: int, endpoint_url: str | None) -> list[dict]:
    try:
        tokenizer = load_tokenizer(fetch_folder_to_local(text_encoder, endpoint_url=endpoint_url))
    except (StorageError, TextEncoderError) as e:
        raise UserError(f"--text-encoder {text_encoder}: {e}") from None
    prompt_rows = [r for r in rows if r.prompt is not None]
    counts = token_counts(tokenizer, prepare_texts([r.prompt for r in prompt_rows]))
    return [{"line": r.line, "tokens": n, "limit": limit} for r, n in zip(prompt_rows, counts) if n > limit]


def _janus_truncated(rows, model: str | None, checkpoint: str, endpoint_url: str | None) -> list[dict]:
    """Janus-Pro: the prompts (chat template included) longer than a row's prompt entries."""

    choice = ModelChoice(name=model or "", checkpoint=checkpoint, s3_endpoint_url=endpoint_url)
    spec = choice.spec() if model is not None else None
    if spec is None or not is_janus(spec):
        raise UserError("--checkpoint in validate needs --model with a Janus-Pro model (it lists the prompts cut)")
    encoder = janus_choice.prompts(choice, spec)
    prompt_rows = [r for r in rows if r.prompt is not None]
    limit = spec.gpt.caption_tokens
    counts = encoder.token_counts([r.prompt for r in prompt_rows])
    return [{"line": r.line, "tokens": n, "limit": limit} for r, n in zip(prompt_rows, counts) if n > limit]


def read_rows(manifest: str, *, model: str | None = None, s3_endpoint_url: str | None = None) -> list[dict]:
    """A manifest's rows as dicts with their ``row`` index, for `Generator` and Ray Data
    (``ray.data.from_items(linegen.read_rows(path))``); validated like `linegen run` does."""

    conditioning = None
    if model is not None:
        from linegen.settings.model_choice import ModelChoice

        conditioning = Conditioning.of(ModelChoice(name=model, random_weights=True).spec())
    rows = read_manifest(manifest, conditioning, endpoint_url=s3_endpoint_url)
    return [{"row": r.index, **{k: getattr(r, k) for k in ALLOWED_FIELDS if getattr(r, k) is not None}} for r in rows]


def read_images(out: str, job_id: str, *, columns: list[str] | None = None, s3_endpoint_url: str | None = None,
                verify: bool = True):
    """The image rows of every committed shard of a Parquet job (what a reader may trust).

    Each file is read through its commit marker and checked against it: its size always, its
    sha256 too unless ``verify=False`` (faster on large jobs). A marker that names another shard's
    file, a file that is not the one its marker describes, or one that is not Parquet raises one
    `linegen.StorageError` naming the marker or the file and what is wrong."""
    import pyarrow as pa

    from linegen.jobs.parquet import from_parquet_bytes
    from linegen.jobs.sink import committed_file, read_commit

    storage = open_storage(out, endpoint_url=s3_endpoint_url)
    tables = []
    for sid in sorted(layout.committed_shards(storage, job_id)):
        marker = read_commit(storage, job_id, sid)
        if marker is None:  # removed since the listing
            continue
        if marker.format != "parquet":
            raise UserError(f"job {job_id} is a {marker.format} job: read {out.rstrip('/')}/{job_id}/images/*.tar "
                            "with the webdataset library (or tarfile)")
        data = committed_file(storage, marker, "images", verify=verify)
        try:
            table = from_parquet_bytes(data, columns=columns)
        except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds; each means the same here
            raise DamagedMarker(f"{storage.location(marker.files['images'].key)}: not a readable Parquet file "
                                f"({str(e).splitlines()[0][:160]}; commit marker {marker.where})") from None
        if table.num_rows != marker.images:
            raise DamagedMarker(f"{storage.location(marker.files['images'].key)}: {table.num_rows} rows, but its "
                                f"commit marker {marker.where} says {marker.images}")
        tables.append(table)
    if not tables:
        raise UserError(f"job {job_id} has no committed shards under {out}")
    return pa.concat_tables(tables)


def connect(*, cluster: str | None = None, out: str | None = None, token: str | None = None,
            token_file: str | None = None, headers: list[str] | None = None, config: str | None = None,
            prices: list[str] | None = None, s3_endpoint_url: str | None = None, default_out: str | None = None,
            timeout: float | None = None):
    """Where remote operations point (flags > config file > environment), as `jobs.remote.Context`;
    ``default_out``: the output root when neither ``out`` nor the config names one; ``timeout``:
    seconds one request to the cluster may take in all (default 30)."""

    return make_context(cluster=cluster, token=token, headers=headers, out=out, config=config, prices=prices,
                        s3_endpoint_url=s3_endpoint_url, token_file=token_file, default_out=default_out,
                        timeout=timeout)


def submit(manifest: str, *, cluster: str | None = None, out: str | None = None, job_id: str | None = None,
           at: str | None = None, after: str | None = None, ship_code: bool = True, driver_cpus: float = 0.1,
           shard_size: int = DEFAULT_SHARD_SIZE, workers: int | None = None, token: str | None = None,
           token_file: str | None = None, headers: list[str] | None = None, config: str | None = None,
           prices: list[str] | None = None, timeout: float | None = None, **settings):
    """Submit a job to a Ray cluster and return at once (`jobs.remote.SubmitResult`)."""

    ctx = connect(cluster=cluster, out=out, token=token, token_file=token_file, headers=headers, config=config,
                  prices=prices, s3_endpoint_url=settings.pop("s3_endpoint_url", None), timeout=timeout)
    ctx.require_cluster()
    if ctx.out is None:
        raise UserError("no output root: pass --out s3://bucket/prefix or set [output] out in the config file")
    spec = JobSpec.from_flags(manifest=manifest, out=ctx.out, job_id=job_id, shard_size=shard_size, workers=workers,
                              s3_endpoint_url=ctx.s3_endpoint_url, config=ctx.config, **settings)
    return submit_job(ctx, spec, at=at, after=after, ship_code=ship_code, driver_cpus=driver_cpus)


def status(job_id: str, **connection):
    """Where a job stands (`jobs.remote.JobStatus`); ``connection``: the keywords of `connect`
    (without a cluster or an output root, the job is looked for under `jobs.spec.DEFAULT_OUT`)."""

    connection.setdefault("default_out", DEFAULT_OUT)
    return job_status(connect(**connection), job_id)


__all__ = ["JobResult", "Validation", "connect", "read_images", "read_rows", "run", "status", "submit", "validate"]


def dashboard(out: str | None = None, *, price: float | None = None) -> dict:
    """linegen's Grafana dashboard (JSON model) built from the metrics registry; written to ``out``
    if given. ``price``: the default of its $/GPU-hour variable (default: the built-in H100 price)."""

    doc = grafana.build(price)
    if out is not None:
        grafana.write(out, doc)
    return doc


def report(job_id: str, *, html: str | None = None, **connection) -> str:
    """A self-contained HTML report of a job (finished or running; local or S3 output): throughput,
    memory, shards, node losses, cost, settings and sample images. Written to ``html`` (default
    ``report-JOB.html``); returns the path. ``connection``: as `connect` (out=, cluster=, ...)."""

    return write_report(connect(**connection, default_out=_default_out()), job_id, html or f"report-{job_id}.html")


def _default_out() -> str:
    return DEFAULT_OUT
