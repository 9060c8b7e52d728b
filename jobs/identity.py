"""A job's id when the user gives none: derived from what decides its images, so the same command
is the same job.

`linegen run prompts.jsonl --out out` run twice (or again after Ctrl-C) must resume the first job,
not start a second one that generates every image again. So the id is a digest of the settings
that decide the images (`IDENTITY` below: the manifest's location and *content*, model,
cache, sampling, seed, shard size, format) and the output root, prefixed with the manifest's stem
so people can read it: ``prompts-3f9c2a1b7e04``. Editing the manifest or changing any of those
settings gives another id (a new job); workers, batch size, schedule and prices do not.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import TYPE_CHECKING

from linegen.jobs.storage import absolute_uri

if TYPE_CHECKING:
    from linegen.jobs.spec import JobSpec

DIGEST_CHARS = 12  # 48 bits: two different commands under one root never meet in practice
STEM_CHARS = 40
# Fields of ModelChoice that never change an image (mirrors JobSpec.differences).
_NOT_IMAGE = ("s3_endpoint_url", "compile")
_PATHS = ("checkpoint", "vq_checkpoint", "text_encoder")


# The settings that decide which images a job holds: a job id reused with any of them different
# is another job (`JobSpec.differences`). The rest (workers, batch size, schedule, prices) may
# change between runs of one job.
IDENTITY = ("manifest", "model", "cache", "sampling", "seed", "shard_size", "format", "image_format", "image_quality",
            "keep_columns")
ROWS_MANIFEST = "rows.jsonl"  # what a job made from Python rows records as its manifest (its copy keeps them)


def where(uri: str | None) -> str | None:
    """A manifest or checkpoint location as one absolute spelling (None for rows given in Python)."""
    return None if uri is None or uri == ROWS_MANIFEST else absolute_uri(uri)


def derived_job_id(spec: "JobSpec", manifest_data: bytes) -> str:
    """``<manifest stem>-<12 hex>`` for ``spec`` (its own job_id is ignored)."""
    return f"{_stem(spec.manifest)}-{identity_digest(spec, manifest_data)[:DIGEST_CHARS]}"


def identity_digest(spec: "JobSpec", manifest_data: bytes) -> str:

    doc: dict = {"out": absolute_uri(spec.out), "manifest_sha256": hashlib.sha256(manifest_data).hexdigest()}
    for name in IDENTITY:
        value = getattr(spec, name)
        if name == "manifest":
            value = where(value)
        elif dataclasses.is_dataclass(value):
            value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.name not in _NOT_IMAGE}
            for key in _PATHS:
                if value.get(key) is not None:
                    value[key] = where(value[key])
        doc[name] = value
    text = json.dumps(doc, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _stem(manifest: str) -> str:
    """The manifest's file name without its extension(s), in job-id characters."""
    name = manifest.rstrip("/").rsplit("/", 1)[-1]
    for ext in (".jsonl", ".csv", ".parquet", ".json", ".gz"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name)
    name = re.sub(r"\.{2,}", ".", name).lstrip("._-")[:STEM_CHARS].rstrip("._-")
    return name or "job"
