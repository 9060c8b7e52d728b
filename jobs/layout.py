"""Key names of a job's outputs, relative to the output root (docs/design.md, "Output layout").

Every reader and writer builds keys through these functions, so the layout lives in one place:

    <job_id>/job.json                      spec as submitted
    <job_id>/manifest.<ext>                copy of the submitted manifest
    <job_id>/plan.json                     the plan's fingerprint, items and shards (resume checks it)
    <job_id>/images/<shard_id>.parquet     one row per image (--format webdataset: <shard_id>.tar)
    <job_id>/stats/<shard_id>.parquet      one row per engine batch
    <job_id>/_attempts/<shard_id>/<token>/ an attempt's files before its commit (jobs/sink.py)
    <job_id>/_commits/<shard_id>.json      the commit: presence means the shard is complete
    <job_id>/_SUCCESS                      job summary
    <job_id>/_FAILED                       why the job's driver failed (JSON; jobs.outcome)
    <job_id>/_CANCELLED                    why it was cancelled or stopped (JSON; jobs.outcome)
    <job_id>/_progress.json                live progress, rewritten by the running driver (jobs.progress);
                                           removed when the job succeeds
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations: layout must not pull in boto3 or anything heavy
    from linegen.jobs.storage import Storage

COMMIT_SUFFIX = ".json"


def _component(name: str, what: str) -> str:
    # A '/' would silently move a file into another folder of the layout (and '..' out of the
    # job); the storage layer rejects '..' too, but this names which argument was wrong.
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise ValueError(f"invalid {what} {name!r}: must be one non-empty path component")
    return name


def spec_key(job_id: str) -> str:
    return f"{_component(job_id, 'job id')}/job.json"


def manifest_key(job_id: str, ext: str) -> str:
    """Where the copy of the submitted manifest goes; `ext` with or without the dot."""
    ext = _component(ext.lstrip("."), "manifest extension")
    return f"{_component(job_id, 'job id')}/manifest.{ext}"


def plan_key(job_id: str) -> str:
    return f"{_component(job_id, 'job id')}/plan.json"


IMAGE_EXT = {"parquet": "parquet", "webdataset": "tar"}  # an image shard's file type per --format


def image_key(job_id: str, shard_id: str, fmt: str = "parquet") -> str:
    return f"{_component(job_id, 'job id')}/images/{_component(shard_id, 'shard id')}.{IMAGE_EXT[fmt]}"


def stats_key(job_id: str, shard_id: str) -> str:
    return f"{_component(job_id, 'job id')}/stats/{_component(shard_id, 'shard id')}.parquet"


def attempts_prefix(job_id: str) -> str:
    return f"{_component(job_id, 'job id')}/_attempts/"


def attempt_key(job_id: str, shard_id: str, token: str, published_key: str) -> str:
    """Where one attempt writes a file before it commits: outside images/ and stats/, so no reader
    (and no ``images/*.parquet`` glob) ever sees it; named by the attempt's own ``token``, so no
    other attempt ever writes it."""
    folder, _, name = published_key.rpartition("/")  # "<job>/images", "shard-00000.parquet"
    kind, ext = folder.rsplit("/", 1)[-1], name.rsplit(".", 1)[-1]  # "images", "parquet"
    return f"{attempts_prefix(job_id)}{_component(shard_id, 'shard id')}/{_component(token, 'attempt token')}/{kind}.{ext}"


def commits_prefix(job_id: str) -> str:
    return f"{_component(job_id, 'job id')}/_commits/"


def commit_key(job_id: str, shard_id: str) -> str:
    return f"{commits_prefix(job_id)}{_component(shard_id, 'shard id')}{COMMIT_SUFFIX}"


def success_key(job_id: str) -> str:
    return f"{_component(job_id, 'job id')}/_SUCCESS"


def failed_key(job_id: str) -> str:
    return f"{_component(job_id, 'job id')}/_FAILED"


def cancelled_key(job_id: str) -> str:
    return f"{_component(job_id, 'job id')}/_CANCELLED"


def progress_key(job_id: str) -> str:
    return f"{_component(job_id, 'job id')}/_progress.json"


def committed_shards(storage: "Storage", job_id: str) -> set[str]:
    """Ids of the shards that have a commit marker: one LIST, however many shards there are."""
    prefix = commits_prefix(job_id)
    shards: set[str] = set()
    for key in storage.list(prefix):
        name = key[len(prefix):]
        # Skip anything that is not a direct marker file (stray uploads, sub-folders).
        if "/" not in name and name.endswith(COMMIT_SUFFIX) and len(name) > len(COMMIT_SUFFIX):
            shards.add(name[: -len(COMMIT_SUFFIX)])
    return shards
