"""Reading a Parquet file held in memory (shards, stats, manifests), safely in short-lived processes."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq


def from_parquet_bytes(data: bytes, columns: list[str] | None = None) -> pa.Table:
    """A Parquet file held in memory -> Table, read on this thread alone.

    Arrow's thread pools, still running when a short-lived CLI process exits, can abort it with
    "terminate called without an active exception" (apache/arrow#34314). Measured here:
    `linegen status` crashed in 2 of 40 runs reading through io.BytesIO, and a ParquetFile over an
    Arrow buffer with no pre-buffering and no threads crashed in 0 of 200.
    """
    return pq.ParquetFile(pa.BufferReader(data), pre_buffer=False).read(columns=columns, use_threads=False)
