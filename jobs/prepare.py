"""Everything a job needs before any generation: its settings checked, its storage reachable, its
whole manifest validated and planned, and its identity recorded under the output root.

A job folder that already exists must hold the same job (resume); the manifest is copied into it
at first run, so a resume reads exactly the manifest the job started with.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from linegen.jobs import layout
from linegen.jobs.errors import UserError
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
    """Check, validate and plan ``spec``; record job.json, the manifest copy and plan.json.

    ``manifest_data``: the manifest's bytes when they come from the caller (the Python API's
    list of rows) rather than from ``spec.manifest``. ``record=False`` (``--dry-run``): every
    check, reads only; nothing is written, not even the output folder.
    """
    spec.model.check()
    model = spec.model.spec()
    spec.cache.build(model.prefix_len, model.grid)
    if spec.shard_size < 1:
        raise UserError(f"--shard-size must be >= 1, got {spec.shard_size}")
    ext = manifest_extension(spec.manifest)
    if ext is None:
        raise UserError(f"{spec.manifest}: manifest must be .jsonl, .csv or .parquet")
    storage = open_storage(spec.out, endpoint_url=spec.s3_endpoint_url)
    existing = read_spec(storage, spec.job_id)
    if existing is not None and not existing.same_work(spec):
        raise UserError(f"job {spec.job_id} already exists under {spec.out} with different settings "
                        "(manifest, model, cache, sampling, seed or shard size); use another --job-id")
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
            raise UserError(f"job {spec.job_id}: {spec.manifest} changed since the job started; "
                            "resume with the original manifest or use another --job-id")
    if data is None:
        raise read_error
    rows = parse_manifest(data, spec.manifest, Conditioning.of(model))
    plan = Plan(rows, job_seed=spec.seed, sampling=spec.sampling, shard_size=spec.shard_size)
    plan_doc = plan.doc()
    fingerprint = plan_doc["fingerprint"]
    if not record:
        if existing is not None:
            _check_recorded_plan(storage, spec, plan)
        return PreparedJob(spec=spec, storage=storage, shards=plan, fingerprint=fingerprint)
    storage.check()  # only now: a bad manifest or setting leaves nothing behind, not even a folder
    if existing is None:
        storage.put(copy_key, data)
        storage.put(layout.spec_key(spec.job_id), spec.to_json().encode())
        storage.put(layout.plan_key(spec.job_id), json.dumps(plan_doc).encode())
    else:
        _check_recorded_plan(storage, spec, plan)
    return PreparedJob(spec=spec, storage=storage, shards=plan, fingerprint=fingerprint)


def _check_recorded_plan(storage: Storage, spec: JobSpec, plan: Plan) -> None:
    recorded = json.loads(storage.get(layout.plan_key(spec.job_id)))
    if not plan.matches(recorded):
        raise UserError(f"job {spec.job_id}: the plan changed since the job started "
                        f"({recorded['items']} items then, {plan.items} now); use another --job-id")


def _read_manifest_bytes(spec: JobSpec) -> tuple[bytes | None, Exception | None]:
    """The manifest as the user points to it now, or (None, why) if it cannot be read from here."""
    try:
        return read_uri(spec.manifest, endpoint_url=spec.s3_endpoint_url), None
    except StorageError as e:
        return None, e


def load_job(out: str, job_id: str, endpoint_url: str | None = None) -> JobSpec:
    spec = read_spec(open_storage(out, endpoint_url=endpoint_url), job_id)
    if spec is None:
        raise UserError(f"no job {job_id!r} under {out}")
    return spec
