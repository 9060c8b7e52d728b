"""linegen's series in Ray's metrics system: the one registry of every name, kind, tag and help text.

Recorded with `ray.util.metrics` in the process that knows the value (the worker actor for
images, tokens, waves, device time and KV-cache bytes; the job driver for shards, workers, node
losses and the job's image counts), tagged by ``job_id`` (and ``worker``). Ray's per-node metrics
agent exports them in Prometheus text at the node's ``--metrics-export-port`` with a ``ray_``
prefix, counters with ``_total``: ``ray_linegen_images_generated_total{job_id="...",worker="..."}``,
``ray_linegen_workers_placed``, so they show up in the Ray dashboard's metrics view and Grafana
next to Ray's own series. The recording code (`Recorder`), the Grafana dashboard
(linegen/watch/dashboard.py) and the README's list all read `SERIES`, so a renamed series cannot
leave a dead panel behind.

Outside a Ray worker or driver (a unit test building an actor by hand) recording is a no-op.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EXPORT_PREFIX = "ray_"  # what Ray's metrics agent puts before every application series


@dataclass(frozen=True)
class Series:
    """One series as recorded (``name``) and as Prometheus stores it (``exported``)."""

    name: str
    kind: str  # "counter" | "gauge"
    help: str
    recorder: str  # "worker" | "driver": the process that records it
    tags: tuple[str, ...] = ()  # tag keys beyond job_id
    unit: str = ""  # Grafana's unit id for a panel showing it ("bytes", "s", ...)

    @property
    def exported(self) -> str:
        return EXPORT_PREFIX + self.name + ("_total" if self.kind == "counter" else "")

    @property
    def tag_keys(self) -> tuple[str, ...]:
        return ("job_id", *self.tags)


_W = ("worker",)
SERIES: dict[str, Series] = {s.name: s for s in (
    Series("linegen_images_generated", "counter", "Images decoded (committed or not).", "worker", _W),
    Series("linegen_tokens_generated", "counter", "Image tokens sampled.", "worker", _W),
    Series("linegen_device_seconds", "counter", "Device-seconds spent decoding (what the job is billed for).",
           "worker", _W, "s"),
    Series("linegen_images_per_s", "gauge", "Images per second of the worker's last wave.", "worker", _W),
    Series("linegen_kv_cache_bytes", "gauge", "KV-cache bytes in use in the worker's last wave.", "worker", _W,
           "bytes"),
    Series("linegen_sequences_per_wave", "gauge", "Images decoded together in the worker's last wave.", "worker",
           _W),
    Series("linegen_shards_committed", "counter", "Shards committed by this job's driver.", "driver"),
    Series("linegen_shards_failed", "counter", "Shard attempts that failed (a worker crash or an error).", "driver"),
    Series("linegen_shards_requeued", "counter", "Shards put back in the queue (node lost, crash or error).",
           "driver"),
    Series("linegen_nodes_lost", "counter", "Nodes lost while a worker of this job ran there.", "driver"),
    Series("linegen_workers_placed", "gauge", "Workers the cluster has placed.", "driver"),
    Series("linegen_workers_pending", "gauge", "Workers requested and waiting for resources (autoscaler demand).",
           "driver"),
    Series("linegen_images_done", "gauge", "Images done: committed, plus decoded in shards not committed yet.",
           "driver"),
    Series("linegen_images_total", "gauge", "Images the job makes in all.", "driver"),
)}

WORKER_SERIES = tuple(n for n, s in SERIES.items() if s.recorder == "worker")
DRIVER_SERIES = tuple(n for n, s in SERIES.items() if s.recorder == "driver")


def exported(name: str) -> str:
    """The Prometheus name of a registered series (KeyError for one that is not registered)."""
    return SERIES[name].exported


class Recorder:
    """Records the series above with fixed tags; every method is a no-op without Ray.

    Counters start at 0 as soon as the recorder exists (Prometheus' advice for counters), so a
    job with no failure still has a `shards_failed` series at 0 rather than none."""

    def __init__(self, names: tuple[str, ...], **tags: str):
        self.tags = {k: str(v) for k, v in tags.items()}
        self._metrics: dict[str, Any] = {}
        try:
            import ray
            from ray.util import metrics

            if not ray.is_initialized():
                return
            for name in names:
                s = SERIES[name]
                cls = metrics.Counter if s.kind == "counter" else metrics.Gauge
                self._metrics[name] = m = cls(name, description=s.help, tag_keys=s.tag_keys)
                if s.kind == "counter":
                    # Counter.inc refuses 0; recording a 0 increment is how Ray exports the series at 0
                    m._record(0.0, tags=self.tags)
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
