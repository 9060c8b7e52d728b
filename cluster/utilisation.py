"""A utilisation snapshot of a Ray cluster, for ``linegen monitor --once --json``.

Remote clusters are read through the dashboard's REST API (Ray 2.60):

- ``/api/version``                  the Ray version (and a check that this is a Ray dashboard);
- ``/api/v0/nodes``                 State API: node id, IP, head flag, ALIVE/DEAD, resources_total;
- ``/api/cluster_status``           logical resources in use, cluster-wide and per node (what
                                    ``ray status`` prints; filled by the autoscaler monitor a few
                                    seconds after the head starts);
- ``/nodes?view=summary``           per-node hardware stats from the dashboard agents, including a
                                    ``gpus`` list with utilisation (%) and memory (MiB);
- ``/api/jobs/``                    the Jobs API list.

The embedded local cluster (address None) is read in-process with ``ray.nodes()``,
``ray.cluster_resources()`` and ``ray.available_resources()``; it has no dashboard, so no GPU
hardware stats and no Jobs API.

A number Ray does not report is ``None`` (JSON ``null``, shown as "n/a"), never a guess. Reservations are what Ray
counts as "in use" (a GPU reserved by an idle actor is in use); GPU utilisation is the hardware
counter the dashboard agent reads from the driver (NVML), where it reports one.
"""

from __future__ import annotations

import time
from typing import Any

from linegen.cluster.address import ClusterAddress
from linegen.cluster.jobs_api import ClusterError, http_get_json, ray_version

NA = None  # not reported (JSON null): the one spelling of "unknown" in every JSON document
MIB = 1024 * 1024


def _num(x: Any) -> float | None:
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value


def _clean(x: float) -> float | int:
    """Round away float noise; whole numbers as int (8.0 -> 8)."""
    r = round(float(x), 4)
    return int(r) if r == int(r) else r


def _gpu_entry(g: dict) -> dict[str, Any]:
    util = _num(g.get("utilizationGpu"))
    used = _num(g.get("memoryUsed"))
    total = _num(g.get("memoryTotal"))
    return {
        "index": g.get("index"),
        "name": g.get("name") or NA,
        "utilisation_percent": _clean(util) if util is not None else NA,
        "memory_used_bytes": int(used * MIB) if used is not None else NA,
        "memory_total_bytes": int(total * MIB) if total is not None else NA,
    }


def _gpu_aggregate(gpus: list[dict[str, Any]]) -> dict[str, Any]:
    utils = [g["utilisation_percent"] for g in gpus if g["utilisation_percent"] is not NA]
    used = [g["memory_used_bytes"] for g in gpus if g["memory_used_bytes"] is not NA]
    total = [g["memory_total_bytes"] for g in gpus if g["memory_total_bytes"] is not NA]
    return {
        "gpu_utilisation_percent": _clean(sum(utils) / len(utils)) if utils else NA,
        "gpu_memory_used_bytes": sum(used) if used else NA,
        "gpu_memory_total_bytes": sum(total) if total else NA,
    }


def _in_use(usage: dict | None, key: str, total: float) -> Any:
    """Logical amount of ``key`` in use from a ``{key: [used, total]}`` map, else n/a.

    A resource the node does not have at all (total 0) is 0 in use: that is known, not guessed.
    """
    if usage is not None and key in usage:
        pair = usage[key]
        if isinstance(pair, (list, tuple)) and pair:
            used = _num(pair[0])
            if used is not None:
                return _clean(used)
    if total == 0:
        return 0
    return NA


def _totals(nodes: list[dict[str, Any]], usage: dict | None) -> dict[str, Any]:
    alive = [n for n in nodes if n["alive"]]
    out: dict[str, Any] = {}
    for key, name in (("CPU", "cpus"), ("GPU", "gpus")):
        total = sum(n[f"{name}_total"] for n in alive)
        in_use = _in_use(usage, key, total)
        if in_use is NA and alive and all(n[f"{name}_in_use"] is not NA for n in alive):
            in_use = _clean(sum(n[f"{name}_in_use"] for n in alive))
        out[name] = {"total": _clean(total), "in_use": in_use}
    gpus = [g for n in alive for g in (n["gpus"] if isinstance(n["gpus"], list) else [])]
    agg = _gpu_aggregate(gpus)
    out["gpus"].update(
        utilisation_percent=agg["gpu_utilisation_percent"],
        memory_used_bytes=agg["gpu_memory_used_bytes"],
        memory_total_bytes=agg["gpu_memory_total_bytes"],
    )
    return out


def _job_entry(j: dict) -> dict[str, Any]:
    def sec(ms: Any) -> float | None:
        v = _num(ms)
        return v / 1000.0 if v else None

    return {
        "submission_id": j.get("submission_id"),
        "job_id": j.get("job_id"),
        "status": j.get("status"),
        "entrypoint": j.get("entrypoint"),
        "start_time": sec(j.get("start_time")),
        "end_time": sec(j.get("end_time")),
        "message": j.get("message") or "",
        "metadata": j.get("metadata") or {},
    }


def _remote(address: ClusterAddress, timeout: float) -> dict[str, Any]:
    warnings: list[str] = []
    version = ray_version(address, timeout=timeout)

    raw = http_get_json(address, "/api/v0/nodes?limit=10000", timeout=timeout)
    try:
        node_rows = raw["data"]["result"]["result"]
    except (KeyError, TypeError):
        raise ClusterError(f"unexpected answer from {address.display}/api/v0/nodes") from None

    def best_effort(path: str) -> Any:
        try:
            return http_get_json(address, path, timeout=timeout)
        except ClusterError as e:
            warnings.append(f"{path.split('?')[0]}: {e}")
            return None

    status = best_effort("/api/cluster_status")
    usage_all: dict | None = None
    usage_by_node: dict = {}
    try:
        report = status["data"]["clusterStatus"]["loadMetricsReport"]
        usage_all = report.get("usage") or None
        usage_by_node = report.get("usageByNode") or {}
    except (KeyError, TypeError):
        pass
    if status is not None and usage_all is None:
        warnings.append("/api/cluster_status: no resource use reported yet (the head started moments ago?)")

    summary = best_effort("/nodes?view=summary")
    hw_by_node: dict[str, dict] = {}
    try:
        for s in summary["data"]["summary"]:
            node_id = (s.get("raylet") or {}).get("nodeId")
            if node_id:
                hw_by_node[node_id] = s
    except (KeyError, TypeError):
        if summary is not None:
            warnings.append("/nodes?view=summary: unexpected answer")

    nodes = [_node_entry(row, usage_by_node, hw_by_node) for row in node_rows]
    nodes.sort(key=lambda n: (not n["is_head"], not n["alive"], str(n["address"]), str(n["node_id"])))

    jobs_raw = best_effort("/api/jobs/")
    jobs = [_job_entry(j) for j in jobs_raw] if isinstance(jobs_raw, list) else NA

    snap = {
        "cluster": address.display,
        "ray_version": version,
        "time": time.time(),
        "nodes": nodes,
        **_totals(nodes, usage_all),
        "jobs": jobs,
        "warnings": warnings,
    }
    return snap


def _node_entry(row: dict, usage_by_node: dict, hw_by_node: dict[str, dict]) -> dict[str, Any]:
    """One node of the snapshot from its /api/v0/nodes row, Ray's resource use and the hardware summary."""
    node_id = row.get("node_id")
    res = {k: _clean(v) for k, v in (row.get("resources_total") or {}).items() if _num(v) is not None}
    alive = row.get("state") == "ALIVE"
    hw = hw_by_node.get(node_id)
    gpus: Any = [_gpu_entry(g) for g in hw["gpus"]] if hw is not None and isinstance(hw.get("gpus"), list) else NA
    return _node_doc(node_id=node_id, address=row.get("node_ip"),
                     hostname=(hw or {}).get("hostname") or row.get("node_name"), alive=alive,
                     is_head=bool(row.get("is_head_node")), res=res,
                     usage=usage_by_node.get(node_id) if alive else None, gpus=gpus)


def _node_doc(*, node_id, address, hostname, alive: bool, is_head: bool, res: dict, usage, gpus: Any) -> dict[str, Any]:
    """One node of a snapshot: its resources, what is in use (n/a on a dead node), its GPUs."""
    cpus = float(res.get("CPU", 0))
    gpus_total = float(res.get("GPU", 0))
    entry = {
        "node_id": node_id,
        "address": address,
        "hostname": hostname,
        "alive": alive,
        "is_head": is_head,
        "resources_total": res,
        "cpus_total": _clean(cpus),
        "cpus_in_use": _in_use(usage, "CPU", cpus) if alive else NA,
        "gpus_total": _clean(gpus_total),
        "gpus_in_use": _in_use(usage, "GPU", gpus_total) if alive else NA,
        "gpus": gpus,
    }
    entry.update(_gpu_aggregate(gpus) if isinstance(gpus, list) else {
        "gpu_utilisation_percent": NA, "gpu_memory_used_bytes": NA, "gpu_memory_total_bytes": NA})
    return entry


def _local() -> dict[str, Any]:
    import ray

    if not ray.is_initialized():
        raise ClusterError(
            "no cluster address given and no embedded Ray cluster is running in this process; "
            "pass --address http://HEAD:8265 or set RAY_ADDRESS"
        )
    total = ray.cluster_resources()
    available = ray.available_resources()
    alive_nodes = [n for n in ray.nodes() if n.get("Alive")]
    single = len(alive_nodes) == 1
    nodes: list[dict[str, Any]] = []
    for n in ray.nodes():
        res = {k: _clean(v) for k, v in (n.get("Resources") or {}).items() if _num(v) is not None}
        alive = bool(n.get("Alive"))
        # Per-node availability is only public for the whole cluster: exact for one node.
        usage = None
        if alive and single:
            usage = {k: [float(total.get(k, 0)) - float(available.get(k, 0))] for k in ("CPU", "GPU") if k in total}
        nodes.append(_node_doc(node_id=n.get("NodeID"), address=n.get("NodeManagerAddress"),
                               hostname=n.get("NodeManagerHostname"), alive=alive,
                               is_head="node:__internal_head__" in res, res=res, usage=usage, gpus=NA))
    usage_all = {k: [float(total.get(k, 0)) - float(available.get(k, 0))] for k in ("CPU", "GPU") if k in total}
    return {
        "cluster": "local",
        "ray_version": ray.__version__,
        "time": time.time(),
        "nodes": nodes,
        **_totals(nodes, usage_all),
        "jobs": [],
        "warnings": ["embedded local cluster: no dashboard, so no GPU hardware stats and no Jobs API"],
    }


def snapshot(address: ClusterAddress | None, *, timeout: float = 5.0) -> dict[str, Any]:
    """Nodes, CPU/GPU totals and use, GPU utilisation/memory where reported, and Ray jobs.

    ``address`` None reads the embedded cluster of this process. Keys: ``cluster``,
    ``ray_version``, ``time``, ``nodes`` (each: ``node_id``, ``address``, ``hostname``, ``alive``,
    ``is_head``, ``resources_total``, ``cpus_total``, ``cpus_in_use``, ``gpus_total``,
    ``gpus_in_use``, ``gpus`` (per device), ``gpu_utilisation_percent``,
    ``gpu_memory_used_bytes``, ``gpu_memory_total_bytes``), ``cpus`` and ``gpus`` (cluster
    totals), ``jobs``, ``warnings`` (what could not be read). Unknown numbers are ``"n/a"``.
    """
    if address is None:
        return _local()
    return _remote(address, timeout)
