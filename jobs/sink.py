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
ever moved there: a move first checks the staged bytes' sha256 against the marker, and never
replaces a file it did not stage), the published names hold committed shards only (a glob over `images/` never
sees an attempt that lost, or one still running), and two drivers running one job at once, or a
requeued attempt whose first actor was only slow, cannot overwrite each other. A crash between
steps 3 and 4 leaves a committed shard whose files are still staged; `publish_pending` (run
before `_SUCCESS` is written) finishes the move, and every reader that trusts markers can read the
staged copy meanwhile (`committed_file`, which checks what it reads against the marker).

A marker is read as untrusted input (jobs.marker): one that names any key but its own shard's is
refused, so an edited marker cannot make the "already finished" path move files around OUT.
While the store is unreachable every step waits and retries (jobs.outage, within
``--storage-outage-budget``) instead of failing the attempt, and once our marker is written the
shard is committed whatever happens to the move (publish_pending finishes it).
"""
from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any

import numpy as np

from linegen.jobs import layout, writer
from linegen.jobs.manifest import kept_columns
from linegen.jobs.marker import CommitMarker, DamagedMarker, check_bytes, check_size, parse_marker
from linegen.jobs.outage import Outage, budget_seconds
from linegen.jobs.plan import Shard
from linegen.jobs.schedule import utc_iso
from linegen.jobs.storage import Storage, StorageExists, StorageNotFound

# Stats fields the sink knows better than the worker; a worker may omit them.
_IDENTITY_FIELDS = ("job_id", "shard_id", "attempt", "model", "cache_policy", "cache_ratio")


class ShardSink:
    def __init__(self, storage: Storage, job_id: str, model: str, cache_policy: str,
                 cache_ratio: float, *, format: str = "parquet", class_names: tuple[str, ...] | None = None,
                 png_workers: int = 4, row_group_size: int = writer.ROW_GROUP_SIZE, cache_options: dict | None = None,
                 image_format: str = "png", image_quality: int | None = None,
                 extra_columns: tuple[tuple[str, str], ...] = (), outage: Outage | None = None) -> None:
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
        self.outage = outage or Outage()
        # what every image row records besides the item's own values (jobs/writer.py item_records)
        self.cache_options = writer.cache_options_text(cache_options)
        self.image_format, self.image_quality = image_format, image_quality
        self.extra_columns = tuple(extra_columns)

    @classmethod
    def for_job(cls, job) -> "ShardSink":
        """The sink of a prepared job (jobs.prepare.PreparedJob): its storage, model, cache, format."""

        spec = job.spec
        model = spec.model.spec()

        return cls(job.storage, spec.job_id, model.name, spec.cache.policy,
                   spec.cache.effective_ratio(model.prefix_len, model.grid), format=spec.format,
                   class_names=model.class_names,
                   cache_options=spec.cache.build().options(),
                   image_format=spec.image_format, image_quality=spec.image_quality,
                   extra_columns=kept_columns(job.shards.rows) if spec.keep_columns else (),
                   outage=Outage(budget_seconds(getattr(spec, "storage_outage_budget", None))))

    def __repr__(self) -> str:
        return f"ShardSink({self.storage!r}, job_id={self.job_id!r}, format={self.format!r})"

    def is_committed(self, shard_id: str) -> bool:
        key = layout.commit_key(self.job_id, shard_id)
        return self.outage.ride(f"look up {key}", lambda: self.storage.exists(key))

    def read_commit(self, shard_id: str) -> CommitMarker | None:
        return read_commit(self.storage, self.job_id, shard_id)

    def commit(self, shard: Shard, attempt: int, tokens: np.ndarray, images: np.ndarray,
               stats: list[dict[str, Any]], prompt_info: list[tuple[int, bool] | None] | None = None) -> bool:
        """Write the shard's files and its commit marker. True if our marker was written,
        False if the shard was (or got) committed by another attempt.

        `tokens` [n, N] and `images` [n, H, W, 3] uint8 are in `shard.items` order. Stats rows
        may omit job_id/shard_id/attempt/model/cache_policy/cache_ratio (filled in here).
        An unreachable store is waited for (jobs.outage, within the outage budget); other storage
        errors, and an outage longer than the budget, propagate and leave no marker. Once the
        marker is written this returns True, even if the move fails (publish_pending redoes it).
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
        ride = self.outage.ride
        for kind, (_, data) in files.items():
            ride(f"write {staged[kind]}", lambda k=staged[kind], d=data: self.storage.put(k, d))

        finished = time.time()

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
        key = layout.commit_key(self.job_id, sid)
        data = json.dumps(marker, indent=2, sort_keys=True).encode()
        won = ride(f"write {key}", lambda: self.storage.put_if_absent(key, data))
        if not won:
            # False after a retry can be our own write that landed before the connection dropped.
            existing = ride(f"read {key}", lambda: read_commit(self.storage, self.job_id, sid))
            won = existing is not None and existing.attempt_token == token
        if not won:  # another attempt committed the shard: our files were never part of it
            for k in staged.values():
                ride(f"delete {k}", lambda k=k: self.storage.delete(k))
            return False
        # Committed from here on, whatever happens to the move: publish_pending finishes it later.
        try:
            ride(f"publish {sid}", lambda: publish(self.storage, parse_marker(data, self.job_id, sid, key),
                                                   known={kind: d for kind, (_, d) in files.items()}))
        except Exception as e:  # noqa: BLE001 - the marker is written: the shard must not be reported failed
            import sys

            print(f"linegen: {sid} is committed but its files stay staged for now "
                  f"({str(e).splitlines()[0][:300]}); they are published before the job finishes",
                  file=sys.stderr, flush=True)
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


def read_commit(storage: Storage, job_id: str, shard_id: str) -> CommitMarker | None:
    """The shard's commit marker, checked (jobs.marker): None if there is none, `DamagedMarker`
    (a `StorageError` naming it) if it is not what jobs.sink writes for this shard."""
    key = layout.commit_key(job_id, shard_id)
    try:
        data = storage.get(key)
    except StorageNotFound:
        return None
    return parse_marker(data, job_id, shard_id, storage.location(key))


def publish(storage: Storage, marker: CommitMarker, *, known: dict[str, bytes] | None = None) -> None:
    """Move a committed shard's staged files to their published keys. Safe to repeat and to race:
    a staged file already gone means its move happened (the published file is then there).

    The staged bytes are checked against the marker's sha256 first (``known``: bytes this process
    just wrote there, not read again), and a published key that already holds a file is never
    replaced: if it is the marker's file, the staged copy was a leftover; if not, it is an error."""
    for kind, ref in marker.files.items():
        if not ref.staged:  # a marker from before staging: its files were written in place
            continue
        try:
            data = known[kind] if known and kind in known else storage.get(ref.staged)
        except StorageNotFound:
            if not storage.exists(ref.key):
                raise DamagedMarker(f"{storage.location(ref.key)}: missing, and not staged at {ref.staged} either "
                                    f"(commit marker {marker.where})") from None
            continue
        check_bytes(marker, kind, data, storage.location(ref.staged))
        try:
            storage.move(ref.staged, ref.key, overwrite=False)
        except StorageNotFound:
            if not storage.exists(ref.key):
                raise
        except StorageExists:
            # Published already (a move that copied but did not delete), or a file put there by
            # someone else: only the marker's own bytes may stay.
            check_bytes(marker, kind, storage.get(ref.key), storage.location(ref.key))
            storage.delete(ref.staged)


def committed_file(storage: Storage, marker: CommitMarker, kind: str, *, verify: bool = True) -> bytes:
    """A committed shard's ``images`` or ``stats`` file: published, or still staged if the
    committing process stopped between its marker and its move. Checked against the marker: its
    size always, its sha256 unless ``verify=False``; a mismatch is a `DamagedMarker` saying what."""
    ref = marker.files[kind]
    data, key = _get_any(storage, ref.key, ref.staged)
    if data is None:
        raise DamagedMarker(f"{storage.location(ref.key)} is missing (commit marker {marker.where} names it)")
    if verify:
        return check_bytes(marker, kind, data, storage.location(key))
    check_size(marker, kind, len(data), storage.location(key))
    return data


def _get_any(storage: Storage, key: str, staged: str | None) -> tuple[bytes | None, str]:
    for k in (key, staged, key):  # published; staged; published meanwhile (moved just now)
        if not k:
            continue
        try:
            return storage.get(k), k
        except StorageNotFound:
            continue
    return None, key


def publish_pending(storage: Storage, job_id: str) -> int:
    """Finish every commit whose move was interrupted, and remove the staged files of attempts
    that lost; one LIST of the job's `_attempts/` (empty when nothing was interrupted). Staged
    files of a shard with no marker may belong to an attempt still running: they stay. Temporary
    files a killed write left in a committed shard's folder go too. Returns the number of shards
    published here."""
    prefix = layout.attempts_prefix(job_id)
    by_attempt: dict[tuple[str, str], list[str]] = {}
    for key in storage.list(prefix):
        parts = key[len(prefix):].split("/")
        if len(parts) == 3:
            by_attempt.setdefault((parts[0], parts[1]), []).append(key)
    published = 0
    markers: dict[str, CommitMarker | None] = {}
    for (shard_id, token), keys in sorted(by_attempt.items()):
        if shard_id not in markers:
            try:
                markers[shard_id] = read_commit(storage, job_id, shard_id)
            except ValueError:  # a folder that cannot be a shard id: not ours, leave it alone
                markers[shard_id] = None
        marker = markers[shard_id]
        if marker is None:
            continue
        if marker.attempt_token == token:
            publish(storage, marker)
            published += 1
        else:
            for key in keys:
                storage.delete(key)
    for shard_id in layout.committed_shards(storage, job_id):
        storage.remove_leftovers(f"{prefix}{shard_id}/")
    return published
