"""A committed shard's stats Parquet, summed: images, tokens, device time, memory, batch timings.

One reader for everyone who adds stats up: the driver's `_SUCCESS` summary (jobs.summary) and a
job's progress and cost (jobs.progress). Committed stats never change, so `StatsCache` keeps
them across refreshes of `linegen monitor`.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from linegen.jobs import layout
from linegen.jobs.marker import DamagedMarker
from linegen.jobs.storage import StorageNotFound

COLUMNS = ["device", "images", "tokens", "wall_s", "peak_memory_bytes", "kv_cache_bytes",
           "prompts_truncated", "started_at", "finished_at"]


@dataclass(frozen=True)
class ShardStats:
    images: int
    tokens: int
    device_seconds: dict[str, float]  # device name -> seconds (a wave shared by shards is split by items)
    peak_memory_bytes: int
    kv_cache_bytes: int
    prompts_truncated: int
    batches: tuple[tuple[float, float, int], ...]  # (started_at, finished_at, images)


def _epoch(v: Any) -> float:
    if v is None:
        return 0.0
    if hasattr(v, "timestamp"):
        return float(v.timestamp())
    return float(v)


def _stats_table(storage, job_id: str, shard_id: str, verify: bool):
    """The committed shard's stats table, read through its marker and checked against it (jobs.sink
    `committed_file`): StorageNotFound without a marker, `DamagedMarker` when the file is not the
    one the marker describes or not a readable Parquet file."""
    from linegen.jobs.parquet import from_parquet_bytes
    from linegen.jobs.sink import committed_file, read_commit

    marker = read_commit(storage, job_id, shard_id)
    if marker is None:
        raise StorageNotFound(f"{storage.location(layout.commit_key(job_id, shard_id))} does not exist")
    data = committed_file(storage, marker, "stats", verify=verify)
    try:
        table = from_parquet_bytes(data)
        if "images" not in table.column_names:
            raise ValueError("no 'images' column")
    except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds; each is a damaged file
        raise DamagedMarker(f"{storage.location(marker.files['stats'].key)}: not a stats Parquet file "
                            f"({str(e).splitlines()[0][:160]})") from None
    return table


def read_shard_stats(storage, job_id: str, shard_id: str, *, verify: bool = True) -> ShardStats:
    """The committed shard's stats summed (see `_stats_table` for what is checked)."""
    table = _stats_table(storage, job_id, shard_id, verify)
    present = [c for c in COLUMNS if c in table.column_names]  # prompts_truncated: absent in older files
    d = table.select(present).to_pydict()
    n = table.num_rows
    col = lambda name: d.get(name, [None] * n)  # noqa: E731
    devices: dict[str, float] = {}
    for dev, w in zip(col("device"), col("wall_s")):
        devices[dev or "unknown"] = devices.get(dev or "unknown", 0.0) + float(w or 0.0)
    return ShardStats(
        images=sum(int(x or 0) for x in col("images")),
        tokens=sum(int(x or 0) for x in col("tokens")),
        device_seconds=devices,
        peak_memory_bytes=max([0] + [int(x) for x in col("peak_memory_bytes") if x is not None]),
        kv_cache_bytes=max([0] + [int(x) for x in col("kv_cache_bytes") if x is not None]),
        prompts_truncated=sum(int(x or 0) for x in col("prompts_truncated")),
        batches=tuple((_epoch(s), _epoch(f), int(k or 0))
                      for s, f, k in zip(col("started_at"), col("finished_at"), col("images"))),
    )


def read_stats_rows(storage, job_id: str, shard_id: str, columns: list[str], *, verify: bool = True) -> list[dict]:
    """A committed shard's stats, one dict per engine batch (columns an older file lacks are None);
    epoch floats for the times. For reports that plot batches rather than add them up."""
    table = _stats_table(storage, job_id, shard_id, verify)
    d = table.select([c for c in columns if c in table.column_names]).to_pydict()
    rows = [{c: (d[c][i] if c in d else None) for c in columns} for i in range(table.num_rows)]
    for r in rows:
        for c in ("started_at", "finished_at"):
            if c in r:
                r[c] = _epoch(r[c])
    return rows


class StatsCache:
    """Committed shards' stats never change, so each is read once per process."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, str, str], ShardStats] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str]) -> ShardStats | None:
        with self._lock:
            return self._data.get(key)

    def put(self, key: tuple[str, str, str], value: ShardStats) -> None:
        with self._lock:
            self._data[key] = value
