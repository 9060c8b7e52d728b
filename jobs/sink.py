"""ShardSink: how a finished shard becomes durable output, exactly once.

The job driver builds one sink per job and hands it to every worker actor with each shard; the
actor only calls `commit(...)` (and maybe `is_committed`), so workers never learn about
storage, keys or Parquet. The sink holds only plain values and a Storage (which pickles
without credentials), so Ray can ship it anywhere.

Commit protocol for one shard (keys from jobs.layout):

1. If `_commits/<shard>.json` exists, another attempt already finished: write nothing.
2. `put` the image Parquet, then `put` the stats Parquet. Both keys are deterministic and
   each put is atomic, so a reader never sees half a file; but a file without a marker may be
   an orphan of a crashed attempt, which is why nobody reads it.
3. `put_if_absent` the commit marker, last. Its presence is the single fact that says "this
   shard is complete": it is written only after both data files are fully stored, so a crash
   at any earlier point leaves no marker and the shard is simply redone on resume (the retry
   overwrites the orphans). The marker records the row count, the first/last item id and the
   sha256 + size of both files, so a reader can check that the files are the ones committed.

Readers (the driver's resume, `_SUCCESS`, users) trust only shards with a marker.

Two attempts of one shard racing (a requeued shard whose "dead" actor was only slow, or two
drivers resuming one job): the conditional put lets exactly one marker win; the loser gets
False and treats the shard as done, so the shard is counted once. Both attempts generate the
same items with the same seeds, so their files describe the same images. What the fixed layout
cannot prevent is the loser overwriting a data file *after* the winner's marker landed (its
put was already in flight); the files then still hold a complete shard, but their bytes may
differ from the sha256 in the marker (stats timings always differ, PNGs only under GPU
nondeterminism). The sink narrows that window by re-checking the marker between its two data
puts; a reader that needs byte-exact provenance verifies the checksums. The driver avoids the
case by requeuing a shard only after its actor is known dead.
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import numpy as np

from linegen.jobs import layout, writer
from linegen.jobs.plan import Shard
from linegen.jobs.storage import Storage, StorageNotFound

# Stats fields the sink knows better than the worker; a worker may omit them.
_IDENTITY_FIELDS = ("job_id", "shard_id", "attempt", "model", "cache_policy", "cache_ratio")


class ShardSink:
    def __init__(self, storage: Storage, job_id: str, model: str, cache_policy: str,
                 cache_ratio: float, *, png_workers: int = 4,
                 row_group_size: int = writer.ROW_GROUP_SIZE) -> None:
        layout.commits_prefix(job_id)  # fail here, in the driver, on a job id that cannot be a key
        self.storage = storage
        self.job_id = job_id
        self.model = model
        self.cache_policy = cache_policy
        self.cache_ratio = float(cache_ratio)
        self.png_workers = png_workers
        self.row_group_size = row_group_size

    def __repr__(self) -> str:
        return f"ShardSink({self.storage!r}, job_id={self.job_id!r})"

    def is_committed(self, shard_id: str) -> bool:
        return self.storage.exists(layout.commit_key(self.job_id, shard_id))

    def read_commit(self, shard_id: str) -> dict[str, Any] | None:
        try:
            data = self.storage.get(layout.commit_key(self.job_id, shard_id))
        except StorageNotFound:
            return None
        return json.loads(data)

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
        image_bytes = writer.to_parquet_bytes(
            writer.image_table(shard.items, images, tokens, model=self.model,
                               cache_policy=self.cache_policy, cache_ratio=self.cache_ratio,
                               png_workers=self.png_workers, prompt_info=prompt_info),
            self.row_group_size)
        stats_bytes = writer.to_parquet_bytes(
            writer.stats_table([self._stats_row(sid, attempt, row) for row in stats]),
            self.row_group_size)

        image_key = layout.image_key(self.job_id, sid)
        stats_key = layout.stats_key(self.job_id, sid)
        self.storage.put(image_key, image_bytes)
        if self.is_committed(sid):  # another attempt won while we uploaded: keep its stats
            return False
        self.storage.put(stats_key, stats_bytes)

        marker = {
            "job_id": self.job_id,
            "shard_id": sid,
            "attempt": int(attempt),
            "images": n,
            "stats_rows": len(stats),
            "first_item_id": shard.items[0].item_id,
            "last_item_id": shard.items[-1].item_id,
            "files": {
                "images": _file_info(image_key, image_bytes),
                "stats": _file_info(stats_key, stats_bytes),
            },
            "finished_at": time.time(),
        }
        data = json.dumps(marker, indent=2, sort_keys=True).encode()
        return self.storage.put_if_absent(layout.commit_key(self.job_id, sid), data)

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
