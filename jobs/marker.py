"""A shard's commit marker, read as untrusted input: typed, and confined to its own job and shard.

The marker (`_commits/<shard>.json`, written by jobs.sink) is the one fact readers trust, and the
"already finished" path *acts* on it: it moves the staged files it names to the published keys it
names. A marker edited by hand, or written by another tool, must therefore never name a key
outside its shard: every key is checked to be exactly the one jobs.layout gives this job, shard,
format and attempt token (which also confines it to ``<job>/images/``, ``<job>/stats/`` and
``<job>/_attempts/<shard>/``). Anything else refuses the marker with one line naming it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from linegen.guarded import load_json_object
from linegen.jobs import layout
from linegen.jobs.storage.base import StorageError

KINDS = ("images", "stats")
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_MARKER_BYTES = 64 * 1024  # a marker is well under 2 KiB


class DamagedMarker(StorageError):
    """A commit marker that is not what jobs.sink writes for its shard (`linegen.StorageError`)."""


@dataclass(frozen=True)
class FileRef:
    key: str  # the published key, <job>/images/<shard>.<ext> or <job>/stats/<shard>.parquet
    sha256: str
    bytes: int
    staged: str | None  # <job>/_attempts/<shard>/<token>/<kind>.<ext>; None in markers from before staging


@dataclass(frozen=True)
class CommitMarker:
    job_id: str
    shard_id: str
    attempt: int
    attempt_token: str | None
    format: str
    images: int
    files: dict[str, FileRef]
    where: str  # the marker as a user would name it (path or s3:// URL), for messages
    doc: dict  # the document as written (extra fields a newer linegen may add stay readable)

    def __getitem__(self, name: str) -> Any:  # marker["files"]["images"]["key"], as the dict reads
        return self.doc[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.doc.get(name, default)


def parse_marker(data: bytes, job_id: str, shard_id: str, where: str) -> CommitMarker:
    """The marker of ``job_id``/``shard_id`` from its bytes; `DamagedMarker` naming ``where`` if it
    is unreadable, has a field of the wrong type, or names any key but its shard's own."""
    f = load_json_object(data, where, max_bytes=MAX_MARKER_BYTES, error=DamagedMarker)
    for name, want in (("job_id", job_id), ("shard_id", shard_id)):
        if f.str(name) != want:
            raise DamagedMarker(f"{where}: damaged: field '{name}' is {f.doc[name]!r}, not {want!r}")
    fmt = f.str("format", "parquet")
    if fmt not in layout.IMAGE_EXT:
        raise DamagedMarker(f"{where}: damaged: field 'format' is {fmt!r} (parquet or webdataset)")
    token = f.str("attempt_token", None, max_len=200)
    files_f = f.obj("files")
    files: dict[str, FileRef] = {}
    for kind in KINDS:
        info = files_f.obj(kind)
        expected = layout.image_key(job_id, shard_id, fmt) if kind == "images" else layout.stats_key(job_id, shard_id)
        key = info.str("key")
        if key != expected:
            raise DamagedMarker(f"{where}: damaged: files.{kind}.key is {key!r}; this shard's file is {expected!r}")
        sha = info.str("sha256")
        if not _SHA256.fullmatch(sha):
            raise DamagedMarker(f"{where}: damaged: files.{kind}.sha256 is not 64 hex digits")
        staged = info.str("staged", None, max_len=1000)
        if staged:
            if token is None:
                raise DamagedMarker(f"{where}: damaged: files.{kind}.staged without an attempt_token")
            try:
                want_staged = layout.attempt_key(job_id, shard_id, token, expected)
            except ValueError:
                raise DamagedMarker(f"{where}: damaged: attempt_token {token!r} is not one path component") from None
            if staged != want_staged:
                raise DamagedMarker(f"{where}: damaged: files.{kind}.staged is {staged!r}; "
                                    f"this attempt's file is {want_staged!r}")
        files[kind] = FileRef(key=key, sha256=sha, bytes=info.int("bytes"), staged=staged or None)
    return CommitMarker(job_id=job_id, shard_id=shard_id, attempt=f.int("attempt", 0), attempt_token=token,
                        format=fmt, images=f.int("images", lo=1), files=files, where=where, doc=f.doc)


def check_bytes(marker: CommitMarker, kind: str, data: bytes, at: str) -> bytes:
    """``data`` (read from ``at``) if it is the file the marker describes; `DamagedMarker` saying what
    differs otherwise. Size always; the sha256 as well (the caller skips this for speed only with
    ``verify=False``, where it checks `check_size`)."""
    import hashlib

    check_size(marker, kind, len(data), at)
    ref = marker.files[kind]
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise DamagedMarker(f"{at}: sha256 does not match its commit marker {marker.where}")
    return data


def check_size(marker: CommitMarker, kind: str, size: int, at: str) -> None:
    ref = marker.files[kind]
    if size != ref.bytes:
        raise DamagedMarker(f"{at}: {size:,} bytes, but its commit marker {marker.where} says {ref.bytes:,}")
