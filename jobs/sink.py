"""ShardSink: how a finished shard becomes durable output, exactly once.

The job driver builds one sink per job (`ShardSink.for_job`) and hands it to every worker actor
with each shard; the actor only calls `commit(...)` (and maybe `is_committed`), so workers never
learn about storage, keys or file formats. The sink holds only plain values and a Storage (which
pickles without credentials), so Ray can ship it anywhere.

Commit protocol for one shard (keys from jobs.layout; docs/design.md, "Exactly-once commit
protocol"):

1. If `_commits/<shard>.json` exists, another attempt already finished: write nothing.
2. Write the image file (Parquet or a WebDataset tar) and the stats Parquet under this attempt's
   own folder, `_attempts/<shard>/<token>/`, `token` being unique to the attempt. No other writer
   ever touches these keys, and no reader looks there.
3. `put_if_absent` the commit marker. It names the published keys (`images/<shard>.<ext>`,
   `stats/<shard>.parquet`), the sha256 and size of both files, and where they were staged. This
   is the single fact that says "this shard is complete", and exactly one attempt wins it.
4. The winner publishes: each staged file is moved to its published key (a rename locally, a
   server-side copy on S3). A loser deletes its staged files.

So a published file is always the one its marker describes (only the marker's own bytes are
ever moved there), the published names hold committed shards only (a glob over `images/` never
sees an attempt that lost, or one still running), and two drivers running one job at once, or a
requeued attempt whose first actor was only slow, cannot overwrite each other. A crash between
steps 3 and 4 leaves a committed shard whose files are still staged; `publish_pending` (run
before `_SUCCESS` is written) finishes the move, and every reader that trusts markers can read the
staged copy meanwhile (`committed_file`).
"""
from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any

import numpy as np

from linegen.jobs import layout, writer
from linegen.jobs.plan import Shard
from linegen.jobs.storage import Storage, StorageNotFound

# Stats fields the sink knows better than the worker; a worker may omit them.
_IDENTITY_FIELDS = ("job_id", "shard_id", "attempt", "model", "cache_policy", "cache_ratio")
KINDS = ("images", "stats")


class ShardSink:
    def __init__(self, storage: Storage, job_id: str, model: str, cache_policy: str,
                 cache_ratio: float, *, format: str = "parquet", class_names: tuple[str, ...] | None = None,
                 png_workers: int = 4, row_group_size: int = writer.ROW_GROUP_SIZE, cache_options: dict | None = None,
                 image_format: str = "png", image_quality: int | None = None,
                 extra_columns: tuple[tuple[str, str], ...] = ()) -> None:
        layout.commits_prefix(job_id)  # fail here, in the driver, on a job id that cannot be a key
        if format not in layout.IMAGE_EXT:
            raise ValueError(f"unknown output format {format!r}")
        self.storage = storage
        self.job_id = job_id
        self.model = model
        self.cache_policy = cache_policy
        self.cache_ratio = float(cache_ratio)
        self.format = format
        self.class_names = tuple(class_names) if class_names else None
        self.png_workers = png_workers
        self.row_group_size = row_group_size
        # what every image row records besides the item's own values (jobs/writer.py item_records)
        self.cache_options = writer.cache_options_text(cache_options)
        self.image_format, self.image_quality = image_format, image_quality
        self.extra_columns = tuple(extra_columns)

    @classmethod
    def for_job(cls, job) -> "ShardSink":
        """The sink of a prepared job (jobs.prepare.PreparedJob): its storage, model, cache, format."""
        spec = job.spec
        model = spec.model.spec()
        from linegen.jobs.manifest import kept_columns

        return cls(job.storage, spec.job_id, model.name, spec.cache.policy,
                   spec.cache.effective_ratio(model.prefix_len, model.grid), format=spec.format,
                   class_names=model.class_names, cache_options=spec.cache.options,
                   image_format=spec.image_format, image_quality=spec.image_quality,
                   extra_columns=kept_columns(job.shards.rows) if spec.keep_columns else ())

    def __repr__(self) -> str:
        return f"ShardSink({self.storage!r}, job_id={self.job_id!r}, format={self.format!r})"

    def is_committed(self, shard_id: str) -> bool:
        return self.storage.exists(layout.commit_key(self.job_id, shard_id))

    def read_commit(self, shard_id: str) -> dict[str, Any] | None:
        return read_commit(self.storage, self.job_id, shard_id)

    def commit(self, shard: Shard, attempt: int, tokens: np.ndarray, images: np.ndarray,
               stats: list[dict[str, Any]], prompt_info: list[tuple[int, bool] | None] | None = None) -> bool:
        """Write the shard's files and its commit marker. True if our marker was written,
        False if the shard was (or got) committed by another attempt.

        `tokens` [n, N] and `images` [n, H, W, 3] uint8 are in `shard.items` order. Stats rows
        may omit job_id/shard_id/attempt/model/cache_policy/cache_ratio (filled in here).
        Storage errors propagate and leave no marker.
        """
        sid = shard.shard_id
        n = len(shard.items)
        tokens = np.asarray(tokens)
        images = np.asarray(images)
        # A marker must never describe a partial shard: check before anything is written.
        if n == 0 or len(tokens) != n or len(images) != n:
            raise ValueError(f"{sid}: {n} items but {len(tokens)} token grids and "
                             f"{len(images)} images; refusing to commit an incomplete shard")

        if self.is_committed(sid):
            return False

        # Encode everything first, so bad input fails before any file is written.
        files = {"images": (layout.image_key(self.job_id, sid, self.format), self._image_bytes(shard, images, tokens,
                                                                                               prompt_info)),
                 "stats": (layout.stats_key(self.job_id, sid), writer.to_parquet_bytes(
                     writer.stats_table([self._stats_row(sid, attempt, row) for row in stats]), self.row_group_size))}
        token = f"{int(attempt)}-{uuid.uuid4().hex[:12]}"
        staged = {kind: layout.attempt_key(self.job_id, sid, token, key) for kind, (key, _) in files.items()}
        for kind, (_, data) in files.items():
            self.storage.put(staged[kind], data)

        finished = time.time()
        from linegen.jobs.schedule import utc_iso

        marker = {
            "job_id": self.job_id,
            "shard_id": sid,
            "attempt": int(attempt),
            "attempt_token": token,
            "format": self.format,
            "images": n,
            "stats_rows": len(stats),
            "first_item_id": shard.items[0].item_id,
            "last_item_id": shard.items[-1].item_id,
            "files": {kind: {**_file_info(key, data), "staged": staged[kind]} for kind, (key, data) in files.items()},
            "finished_at": finished,
            "finished_at_utc": utc_iso(finished),
        }
        won = self.storage.put_if_absent(layout.commit_key(self.job_id, sid),
                                         json.dumps(marker, indent=2, sort_keys=True).encode())
        if not won:  # another attempt committed the shard: our files were never part of it
            for key in staged.values():
                self.storage.delete(key)
            return False
        publish(self.storage, marker)
        return True

    def _image_bytes(self, shard: Shard, images: np.ndarray, tokens: np.ndarray, prompt_info) -> bytes:
        options = dict(job_id=self.job_id, model=self.model, cache_policy=self.cache_policy,
                       cache_ratio=self.cache_ratio, class_names=self.class_names, png_workers=self.png_workers,
                       prompt_info=prompt_info, cache_options=self.cache_options, image_format=self.image_format,
                       image_quality=self.image_quality, extra_columns=self.extra_columns)
        if self.format == "webdataset":
            from linegen.jobs.webdataset import shard_tar

            return shard_tar(shard.items, images, tokens, **options)
        return writer.to_parquet_bytes(writer.image_table(shard.items, images, tokens, **options), self.row_group_size)

    def _stats_row(self, shard_id: str, attempt: int, row: dict[str, Any]) -> dict[str, Any]:
        known = {"job_id": self.job_id, "shard_id": shard_id, "attempt": int(attempt),
                 "model": self.model, "cache_policy": self.cache_policy,
                 "cache_ratio": self.cache_ratio}
        # A worker that reports a different identity is a wiring bug; silently overwriting it
        # would hide that, so disagreeing values are an error.
        clash = [k for k in _IDENTITY_FIELDS if k in row and row[k] != known[k]]
        if clash:
            raise ValueError(f"{shard_id}: stats row disagrees with the sink on "
                             + ", ".join(f"{k}={row[k]!r} (expected {known[k]!r})" for k in clash))
        return {**known, **row}


def _file_info(key: str, data: bytes) -> dict[str, Any]:
    return {"key": key, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def read_commit(storage: Storage, job_id: str, shard_id: str) -> dict[str, Any] | None:
    try:
        data = storage.get(layout.commit_key(job_id, shard_id))
    except StorageNotFound:
        return None
    return json.loads(data)


def publish(storage: Storage, marker: dict[str, Any]) -> None:
    """Move a committed shard's staged files to their published keys. Safe to repeat and to race:
    a staged file already gone means its move happened (the published file is then there)."""
    for info in marker["files"].values():
        staged = info.get("staged")
        if not staged:  # a marker from before staging: its files were written in place
            continue
        try:
            storage.move(staged, info["key"])
        except StorageNotFound:
            if not storage.exists(info["key"]):
                raise


def committed_file(storage: Storage, marker: dict[str, Any], kind: str) -> bytes:
    """A committed shard's ``images`` or ``stats`` file: published, or still staged if the
    committing process stopped between its marker and its move."""
    info = marker["files"][kind]
    try:
        return storage.get(info["key"])
    except StorageNotFound:
        if not info.get("staged"):
            raise
    try:
        return storage.get(info["staged"])
    except StorageNotFound:  # it was being moved just now: published meanwhile
        return storage.get(info["key"])


def publish_pending(storage: Storage, job_id: str) -> int:
    """Finish every commit whose move was interrupted, and remove the staged files of attempts
    that lost; one LIST of the job's `_attempts/` (empty when nothing was interrupted). Staged
    files of a shard with no marker may belong to an attempt still running: they stay. Returns
    the number of shards published here."""
    prefix = layout.attempts_prefix(job_id)
    by_attempt: dict[tuple[str, str], list[str]] = {}
    for key in storage.list(prefix):
        parts = key[len(prefix):].split("/")
        if len(parts) == 3:
            by_attempt.setdefault((parts[0], parts[1]), []).append(key)
    published = 0
    markers: dict[str, dict | None] = {}
    for (shard_id, token), keys in sorted(by_attempt.items()):
        if shard_id not in markers:
            markers[shard_id] = read_commit(storage, job_id, shard_id)
        marker = markers[shard_id]
        if marker is None:
            continue
        if marker.get("attempt_token") == token:
            publish(storage, marker)
            published += 1
        else:
            for key in keys:
                storage.delete(key)
    return published
