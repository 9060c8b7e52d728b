"""linegen's Grafana dashboard, generated from the metrics registry (workers/metrics.py) and the
headline figures (headline.py), so a renamed series fails here rather than leaving a dead panel.

Variables follow Ray's own dashboards (``datasource``, ``SessionName``, ``Cluster`` = the
``ray_io_cluster`` label KubeRay sets), plus ``job_id`` and a ``$/GPU-hour`` price. GPU panels
read Ray's node series (``ray_node_gpus_utilization``, ``ray_node_gram_used`` in MB) of the nodes
that run one of the job's workers: a node series and a worker series scraped from the same node
share Prometheus' ``instance`` label. `linegen dashboard --out FILE` writes it; the same JSON is
shipped in the package (linegen/watch/linegen-dashboard.json) and kept equal by a test.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from linegen.jobs.headline import FIGURES, JOB, PRICE_VAR
from linegen.workers.metrics import exported

UID = "linegen-jobs"
SHIPPED = Path(__file__).with_name("linegen-dashboard.json")
RAY_FILTER = 'SessionName=~"$SessionName",ray_io_cluster=~"$Cluster"'
# the Ray node series the GPU and node panels read (names as Ray's metrics agent exports them)
RAY_NODE_SERIES = ("ray_node_gpus_utilization", "ray_node_gram_used", "ray_node_cpu_utilization",
                   "ray_node_mem_used")


def _figure(key: str) -> str:
    return next(f for f in FIGURES if f.key == key).promql()


def _s(name: str) -> str:
    """A registered series of the selected job."""
    return f"{exported(name)}{{{JOB}}}"


def _on_job_nodes(node_series: str) -> str:
    """A Ray node series restricted to the nodes running one of the job's workers."""
    return (f"{node_series}{{{RAY_FILTER}}} and on (instance) "
            f"group by (instance) ({_s('linegen_sequences_per_wave')})")


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    targets: tuple[Target, ...]
    unit: str = "short"
    kind: str = "timeseries"  # "timeseries" | "stat"
    description: str = ""
    needs_gpu: bool = False  # only has data on a cluster whose nodes report GPUs to Ray
    width: int = 12


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def rows() -> tuple[Row, ...]:
    headline = tuple(Panel(f.title, (Target(f.promql(), f.title),), f.unit, "stat",
                           "Same formula as `linegen monitor` (jobs/headline.py).", width=24 // 8)
                     for f in FIGURES)
    per_worker = "{{worker}}"
    return (
        Row("Job", headline),
        Row("Throughput", (
            Panel("Images generated", (Target(f"sum by (worker) ({_s('linegen_images_generated')})", per_worker),),
                  description="Images decoded per worker since it started (committed or not)."),
            Panel("Images/s per worker", (Target(f"sum by (worker) (rate({_s('linegen_images_generated')}[$__rate_interval]))",
                                      per_worker),
                               Target(_figure("images_per_s"), "all workers")),
                  description="Decoded images per second, per worker and in all."),
            Panel("ETA over time", (Target(_figure("eta_s"), "ETA"),), "s",
                  description="(images in the job - images done) / images/s."),
            Panel("Shards committed / failed / requeued", (
                Target(f"sum({_s('linegen_shards_committed')})", "committed"),
                Target(f"sum({_s('linegen_shards_failed')})", "failed attempts"),
                Target(f"sum({_s('linegen_shards_requeued')})", "requeued")),
                description="Counters of this run's driver."),
        )),
        Row("Workers and packing", (
            Panel("Workers placed vs pending", (
                Target(f"max({_s('linegen_workers_placed')})", "placed"),
                Target(f"max({_s('linegen_workers_pending')})", "pending (autoscaler demand)")),
                description="Pending workers are the demand Ray's autoscaler scales on."),
            Panel("Node losses", (
                Target(f"sum({_s('linegen_nodes_lost')})", "nodes lost"),
                Target(f"sum({_s('linegen_shards_requeued')})", "shards requeued")),
                description="Nodes lost under a worker; their shards were requeued without spending an attempt."),
            Panel("Sequences per wave", (Target(f"max by (worker) ({_s('linegen_sequences_per_wave')})",
                                                per_worker),),
                  description="Images decoded together: the packing the compressed KV cache buys."),
            Panel("KV-cache bytes per worker", (Target(f"max by (worker) ({_s('linegen_kv_cache_bytes')})",
                                                       per_worker),), "bytes"),
        )),
        Row("Nodes of this job", (
            Panel("GPU utilisation", (Target(
                f"max by (instance, GpuIndex, GpuDeviceName) ({_on_job_nodes('ray_node_gpus_utilization')})",
                "{{instance}} GPU {{GpuIndex}}"),), "percent", needs_gpu=True,
                description="Ray's node series of the nodes running this job's workers."),
            Panel("GPU memory used", (Target(
                f"max by (instance, GpuIndex, GpuDeviceName) ({_on_job_nodes('ray_node_gram_used')}) * 1024 * 1024",
                "{{instance}} GPU {{GpuIndex}}"),), "bytes", needs_gpu=True,
                description="Ray reports GPU memory in MB."),
            Panel("CPU utilisation and memory", (
                Target(f"max by (instance) ({_on_job_nodes('ray_node_cpu_utilization')})", "{{instance}} CPU %"),
                Target(f"max by (instance) ({_on_job_nodes('ray_node_mem_used')})", "{{instance}} memory")),
                description="Ray's node series of the nodes running this job's workers (memory in bytes)."),
        )),
        Row("Cost", (
            Panel("Cost over time", (Target(_figure("usd"), "cost so far"),), "currencyUSD",
                  description="Device-hours x $/GPU-hour."),
            Panel("Cost per 1k images over time", (Target(_figure("usd_per_1k_images"), "per 1k images"),),
                  "currencyUSD", description="Cost so far / images done x 1000."),
        )),
    )


def panels() -> list[Panel]:
    return [p for r in rows() for p in r.panels]


def _variables(default_price: float) -> list[dict]:
    def query_var(name: str, label: str, query: str, all_value: str | None, description: str) -> dict:
        v = {"name": name, "label": label, "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "definition": query, "query": {"query": query, "refId": f"{name}-query"}, "refresh": 2,
             "includeAll": all_value is not None, "multi": False, "sort": 2, "hide": 0,
             "description": description, "current": {}, "options": []}
        if all_value is not None:
            v["allValue"] = all_value
        return v

    # Ray's dashboards take the sessions and clusters from a node series every node exports
    return [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "hide": 0, "label": "Data source",
         "current": {}, "options": []},
        query_var("SessionName", "Ray session", "label_values(ray_node_network_receive_speed, SessionName)", ".+",
                  "A Ray session (one cluster start), as in Ray's own dashboards."),
        query_var("Cluster", "Cluster", "label_values(ray_node_network_receive_speed, ray_io_cluster)", ".*",
                  "The ray_io_cluster label (set per cluster by KubeRay's PodMonitor); All when unset."),
        query_var("job_id", "Job", f"label_values({exported('linegen_images_total')}{{{RAY_FILTER}}}, job_id)", None,
                  "A linegen job id (the Ray submission id)."),
        {"name": PRICE_VAR, "label": "$/GPU-hour", "type": "textbox", "query": f"{default_price:g}", "hide": 0,
         "current": {"text": f"{default_price:g}", "value": f"{default_price:g}"},
         "options": [{"selected": True, "text": f"{default_price:g}", "value": f"{default_price:g}"}],
         "description": "Your price per device-hour, for the cost panels."},
    ]


def _panel_json(p: Panel, pid: int, x: int, y: int, h: int) -> dict:
    d = {"id": pid, "type": p.kind, "title": p.title, "description": p.description,
         "datasource": {"type": "prometheus", "uid": "${datasource}"},
         "gridPos": {"h": h, "w": p.width, "x": x, "y": y},
         "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
         "targets": [{"refId": chr(ord("A") + i), "expr": t.expr, "legendFormat": t.legend,
                      "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                     for i, t in enumerate(p.targets)]}
    if p.kind == "stat":
        d["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "none", "graphMode": "area", "textMode": "value"}
    else:
        d["options"] = {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
    return d


def build(default_price: float | None = None) -> dict:
    """The dashboard as Grafana's JSON model (import it, or provision it as a file)."""
    if default_price is None:
        from linegen.cost.prices import PriceTable

        default_price = PriceTable.builtin().lookup("H100").usd_per_hour
    out, pid, y = [], 1, 0
    for row in rows():
        out.append({"id": pid, "type": "row", "title": row.title, "collapsed": False, "panels": [],
                    "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        pid, y, x = pid + 1, y + 1, 0
        h = 4 if row.panels and row.panels[0].kind == "stat" else 8
        for p in row.panels:
            if x + p.width > 24:
                x, y = 0, y + h
            out.append(_panel_json(p, pid, x, y, h))
            pid, x = pid + 1, x + p.width
        y += h
    return {"uid": UID, "title": "linegen jobs", "tags": ["linegen", "ray"], "editable": True,
            "schemaVersion": 39, "version": 1, "refresh": "10s", "time": {"from": "now-6h", "to": "now"},
            "graphTooltip": 1, "timezone": "", "links": [], "annotations": {"list": []},
            "templating": {"list": _variables(default_price)}, "panels": out,
            "description": "linegen jobs on Ray: throughput, packing, workers, node losses, GPUs and cost. "
                           "Generated by `linegen dashboard`."}


def dumps(dashboard: dict) -> str:
    return json.dumps(dashboard, indent=2, sort_keys=True) + "\n"


def write(path: str | Path, dashboard: dict | None = None) -> Path:
    p = Path(path)
    try:
        p.write_text(dumps(dashboard if dashboard is not None else build()))
    except OSError as e:
        from linegen.errors import UserError

        raise UserError(f"{p}: cannot write the dashboard: {e.strerror or e}") from None
    return p
