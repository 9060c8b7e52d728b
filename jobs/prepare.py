"""Everything a job needs before any generation: its settings checked, its storage reachable, its
whole manifest validated and planned, and its identity claimed under the output root.

The identity (job.json) is claimed with a conditional put before any shard work, so of two
drivers started together with one job id only one job can exist: a driver whose settings differ
is refused and told which setting differs; drivers with the same settings go on together, and the
commit protocol (jobs/sink.py) keeps every shard exactly once. The manifest copy and plan.json are
conditional puts too: the first writer's bytes stay, and everyone else compares against them.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from linegen.errors import UserError
from linegen.guarded import load_json_object
from linegen.jobs import layout
from linegen.jobs.manifest import Conditioning, manifest_extension, parse_manifest
from linegen.jobs.plan import Plan
from linegen.jobs.spec import JobSpec, read_spec
from linegen.jobs.storage import Storage, StorageError, StorageNotFound, open_storage, read_uri


@dataclass
class PreparedJob:
    spec: JobSpec
    storage: Storage
    shards: Plan  # a Sequence of shard descriptors, built on demand
    fingerprint: str

    @property
    def items_total(self) -> int:
        return self.shards.items


def prepare_job(spec: JobSpec, manifest_data: bytes | None = None, *, record: bool = True) -> PreparedJob:
    """Check, validate and plan ``spec``; claim job.json, record the manifest copy and plan.json.

    ``manifest_data``: the manifest's bytes when they come from the caller (the Python API's
    list of rows) rather than from ``spec.manifest``. ``record=False`` (``--dry-run``): every
    check, reads only; nothing is written, not even the output folder.
    """
    spec.model.check()
    model = spec.model.spec()
    spec.cache.build(model.prefix_len, model.grid, (model.gpt.n_layer, model.gpt.n_head))
    if spec.shard_size < 1:
        raise UserError(f"--shard-size must be >= 1, got {spec.shard_size}")
    ext = manifest_extension(spec.manifest)
    if ext is None:
        raise UserError(f"{spec.manifest}: manifest must be .jsonl, .csv or .parquet")
    storage = open_storage(spec.out, endpoint_url=spec.s3_endpoint_url)
    existing = read_spec(storage, spec.job_id)
    if existing is not None:
        _refuse_other_job(existing, spec)
    copy_key = layout.manifest_key(spec.job_id, ext)
    data, read_error = (manifest_data, None) if manifest_data is not None else _read_manifest_bytes(spec)
    if existing is not None:
        try:
            copy = storage.get(copy_key)
        except StorageNotFound:
            copy = None
        if data is None:  # the user's file is gone (or unreachable here): the job's own copy counts
            data = copy
        elif copy is not None and copy != data:
            raise _manifest_changed(spec)
    if data is None:
        raise read_error
    rows = parse_manifest(data, spec.manifest, Conditioning.of(model), keep=spec.keep_columns)
    plan = Plan(rows, job_seed=spec.seed, sampling=spec.sampling, shard_size=spec.shard_size)
    plan_doc = plan.doc()
    fingerprint = plan_doc["fingerprint"]
    if not record:
        if existing is not None:
            _check_recorded_plan(storage, spec, plan)
        return PreparedJob(spec=spec, storage=storage, shards=plan, fingerprint=fingerprint)
    storage.check()  # only now: a bad manifest or setting leaves nothing behind, not even a folder

    # The claim. Losing it means another driver (now, or in an earlier run) recorded this job id.
    if not storage.put_if_absent(layout.spec_key(spec.job_id), spec.to_json().encode()):
        recorded = read_spec(storage, spec.job_id)
        if recorded is None:
            raise UserError(f"job {spec.job_id}: {storage.location(layout.spec_key(spec.job_id))} "
                            "vanished while this run claimed it; run the command again")
        _refuse_other_job(recorded, spec)
    if not storage.put_if_absent(copy_key, data) and storage.get(copy_key) != data:
        raise _manifest_changed(spec)
    if not storage.put_if_absent(layout.plan_key(spec.job_id), json.dumps(plan_doc).encode()):
        _check_recorded_plan(storage, spec, plan)
    return PreparedJob(spec=spec, storage=storage, shards=plan, fingerprint=fingerprint)


def _check_recorded_plan(storage: Storage, spec: JobSpec, plan: Plan) -> None:
    recorded = read_plan(storage, spec.job_id)
    if not plan.matches(recorded):
        raise UserError(f"job {spec.job_id}: the plan changed since the job started "
                        f"({recorded['items']} items then, {plan.items} now); use another --job-id")


def _refuse_other_job(recorded: JobSpec, spec: JobSpec) -> None:
    diffs = recorded.differences(spec)
    if diffs:
        raise UserError(f"job {spec.job_id} already exists under {spec.out} with different settings: "
                        f"{'; '.join(diffs)}; run it with the job's settings to resume it, or use another --job-id")


def _manifest_changed(spec: JobSpec) -> UserError:
    return UserError(f"job {spec.job_id}: {spec.manifest} changed since the job started (manifest content "
                     "differs); resume with the original manifest or use another --job-id")


def read_plan(storage: Storage, job_id: str, *, missing_ok: bool = False) -> dict | None:
    """plan.json ({"fingerprint", "items", "shards"}); a damaged one is a UserError naming it.
    ``missing_ok``: None when there is none (a job still being prepared)."""

    key = layout.plan_key(job_id)
    where = storage.location(key)
    try:
        data = storage.get(key)
    except StorageNotFound:
        if missing_ok:
            return None
        raise UserError(f"{where} is missing; the job folder is damaged") from None
    f = load_json_object(data, where)
    if set(f.doc) - {"fingerprint_version"} != {"fingerprint", "items", "shards"}:
        raise UserError(f"{where}: damaged: expected {{\"fingerprint\", \"items\", \"shards\"}}")
    f.str("fingerprint")
    f.int("items", hi=10**12)
    f.int("shards", hi=10**12)
    return f.doc


def _read_manifest_bytes(spec: JobSpec) -> tuple[bytes | None, Exception | None]:
    """The manifest as the user points to it now, or (None, why) if it cannot be read from here."""
    try:
        return read_uri(spec.manifest, endpoint_url=spec.s3_endpoint_url), None
    except StorageError as e:
        return None, e


def with_endpoint(spec: JobSpec, endpoint_url: str | None) -> JobSpec:
    """A recorded job with the S3 endpoint as this process knows it: job.json holds the URL with
    its credentials redacted, the flag or LINEGEN_S3_ENDPOINT_URL holds the real one."""
    if not endpoint_url:
        return spec
    return dataclasses.replace(spec, s3_endpoint_url=endpoint_url,
                               model=dataclasses.replace(spec.model, s3_endpoint_url=endpoint_url))


def load_job(out: str, job_id: str, endpoint_url: str | None = None) -> JobSpec:
    spec = read_spec(open_storage(out, endpoint_url=endpoint_url), job_id)
    if spec is None:
        raise UserError(f"no job {job_id!r} under {out}")
    return with_endpoint(spec, endpoint_url)
