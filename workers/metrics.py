"""linegen's series in Ray's metrics system: every name in one place.

Recorded with `ray.util.metrics` in the process that knows the value (the worker actor for
images, tokens, waves and KV-cache bytes; the job driver for shards and workers), tagged by
``job_id`` (and ``worker``). Ray's per-node metrics agent exports them in Prometheus text at the
node's ``--metrics-export-port`` with a ``ray_`` prefix, counters with ``_total``:
``ray_linegen_images_generated_total{job_id="...",worker="..."}``, ``ray_linegen_workers_placed``,
so they show up in the Ray dashboard's metrics view and Grafana next to Ray's own series.

Outside a Ray worker or driver (a unit test building an actor by hand) recording is a no-op.
"""
from __future__ import annotations

from typing import Any

# name -> (kind, description, extra tag keys beyond job_id)
SERIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "linegen_images_generated": ("counter", "Images decoded (committed or not).", ("worker",)),
    "linegen_tokens_generated": ("counter", "Image tokens sampled.", ("worker",)),
    "linegen_images_per_s": ("gauge", "Images per second of the worker's last wave.", ("worker",)),
    "linegen_kv_cache_bytes": ("gauge", "KV-cache bytes in use in the worker's last wave.", ("worker",)),
    "linegen_sequences_per_wave": ("gauge", "Images decoded together in the worker's last wave.", ("worker",)),
    "linegen_shards_committed": ("counter", "Shards committed by this job's driver.", ()),
    "linegen_shards_failed": ("counter", "Shard attempts that failed (a worker crash or an error).", ()),
    "linegen_shards_requeued": ("counter", "Shards put back in the queue (node lost, crash or error).", ()),
    "linegen_workers_placed": ("gauge", "Workers the cluster has placed.", ()),
    "linegen_workers_pending": ("gauge", "Workers requested and waiting for resources (autoscaler demand).", ()),
}


class Recorder:
    """Records the series above with fixed tags; every method is a no-op without Ray."""

    def __init__(self, names: tuple[str, ...], **tags: str):
        self.tags = {k: str(v) for k, v in tags.items()}
        self._metrics: dict[str, Any] = {}
        try:
            import ray
            from ray.util import metrics

            if not ray.is_initialized():
                return
            for name in names:
                kind, description, extra = SERIES[name]
                cls = metrics.Counter if kind == "counter" else metrics.Gauge
                self._metrics[name] = cls(name, description=description, tag_keys=("job_id", *extra))
        except Exception:  # noqa: BLE001 - metrics are never worth failing a job for
            self._metrics = {}

    def add(self, name: str, value: float = 1.0) -> None:
        m = self._metrics.get(name)
        if m is not None and value > 0:
            m.inc(value, tags=self.tags)

    def set(self, name: str, value: float) -> None:
        m = self._metrics.get(name)
        if m is not None:
            m.set(float(value), tags=self.tags)


WORKER_SERIES = ("linegen_images_generated", "linegen_tokens_generated", "linegen_images_per_s",
                 "linegen_kv_cache_bytes", "linegen_sequences_per_wave")
DRIVER_SERIES = ("linegen_shards_committed", "linegen_shards_failed", "linegen_shards_requeued",
                 "linegen_workers_placed", "linegen_workers_pending")
