"""`linegen monitor`: a live view of a Ray cluster and its linegen jobs (or one JSON snapshot)."""
from __future__ import annotations

import json
import time
import typer

from linegen.cli.flags import ConnectionFlags, Json, PriceFlags, StoreFlags
from linegen.errors import UserError

NA = "n/a"


def _num(x, unit: str = "", digits: int = 0) -> str:
    if x is None:
        return NA
    return f"{float(x):.{digits}f}{unit}"


def _gib(x) -> str:
    if x is None:
        return NA
    return f"{float(x) / 2**30:.1f} GiB"


def _txt(x) -> str:
    return NA if x is None else str(x)  # JSON keeps unknowns as null; a person reads "n/a"


def _used(pair: dict) -> str:
    return f"{_txt(pair.get('in_use'))}/{_txt(pair.get('total'))}"


def render(snap: dict):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from linegen.cli.jobview import jobs_table

    cpus, gpus = snap.get("cpus") or {}, snap.get("gpus") or {}
    head = Text.assemble(
        ("linegen monitor ", "bold"), (str(snap.get("cluster") or ""), "cyan"),
        f"  Ray {_txt(snap.get('ray_version'))}  ",
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap.get("time") or time.time())),
    )
    totals = Text(
        f"CPUs in use {_used(cpus)}   GPUs in use {_used(gpus)}   "
        f"GPU utilisation {_num(gpus.get('utilisation_percent'), '%')}   "
        f"GPU memory {_gib(gpus.get('memory_used_bytes'))} / {_gib(gpus.get('memory_total_bytes'))}"
    )
    nodes = Table(title="nodes", expand=False)
    for name in ("node", "address", "state", "CPUs used/total", "GPUs used/total", "GPU util", "GPU memory"):
        nodes.add_column(name)
    for n in snap.get("nodes") or []:
        nodes.add_row(
            ("head " if n.get("is_head") else "") + str(n.get("hostname") or n.get("node_id") or "")[:24],
            str(n.get("address") or ""),
            "alive" if n.get("alive") else "dead",
            f"{_txt(n.get('cpus_in_use'))}/{_txt(n.get('cpus_total'))}",
            f"{_txt(n.get('gpus_in_use'))}/{_txt(n.get('gpus_total'))}",
            _num(n.get("gpu_utilisation_percent"), "%"),
            f"{_gib(n.get('gpu_memory_used_bytes'))} / {_gib(n.get('gpu_memory_total_bytes'))}",
        )
    docs = snap.get("linegen_jobs") or []
    active = [d for d in docs if d.get("state") in ("RUNNING", "PENDING", "SCHEDULED", "WAITING")]
    recent = [d for d in docs if d not in active][-5:]
    parts = [head, totals, nodes]
    parts.append(jobs_table(active, title="running and scheduled jobs") if active else Text("no running or scheduled linegen jobs"))
    if active:
        parts.append(headline_table(active))
    if recent:
        parts.append(jobs_table(recent, title="recently finished"))
    for w in snap.get("warnings") or []:
        parts.append(Text(f"note: {w}", style="dim"))
    return Group(*parts)


def headline_table(docs: list[dict]):
    """The Grafana dashboard's headline row, per job: the same figures by the same formulas
    (jobs/headline.py)."""
    from rich.table import Table

    from linegen.cli.jobview import format_figure
    from linegen.jobs.headline import FIGURES, figures

    t = Table(title="headline (as on the Grafana dashboard)", expand=False)
    t.add_column("job", no_wrap=True)
    for f in FIGURES:
        t.add_column(f.title, no_wrap=True)
    for d in docs:
        values = d.get("headline") or figures(d)
        t.add_row(str(d.get("job_id")), *(format_figure(f, values.get(f.key)) for f in FIGURES))
    return t


def monitor_command(
    interval: float = typer.Option(5.0, "--interval", help="Seconds between refreshes."),
    once: bool = typer.Option(False, "--once", help="Print one snapshot and exit."),
    conn: ConnectionFlags = None,
    price: PriceFlags = None,
    store: StoreFlags = None,
    as_json: bool = Json,
) -> None:
    """Live view of a cluster: nodes, CPUs/GPUs, GPU use ("n/a" if unreported), jobs with progress, ETA, cost."""
    from linegen.api import connect
    from linegen.jobs.remote import monitor_snapshot
    from linegen.jobs.stats import StatsCache

    ctx = connect(**vars(conn), prices=price.prices, s3_endpoint_url=store.s3_endpoint_url)
    ctx.require_cluster()
    cache = StatsCache()
    if once or as_json:
        snap = monitor_snapshot(ctx, cache=cache)
        if as_json:
            typer.echo(json.dumps(snap, indent=2, default=str))
        else:
            from rich.console import Console

            Console().print(render(snap))
        return
    if interval <= 0:
        raise UserError("--interval must be > 0")
    from rich.console import Console
    from rich.live import Live

    from rich.console import Group
    from rich.text import Text

    console = Console()
    view = render(monitor_snapshot(ctx, cache=cache))  # a first failure is an error, as for --once
    try:
        with Live(view, console=console, refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(interval)
                try:
                    view = render(monitor_snapshot(ctx, cache=cache))
                    live.update(view)
                except UserError as e:  # keep watching through a blip; say so
                    stamp = time.strftime("%H:%M:%S")
                    live.update(Group(view, Text(f"{stamp} refresh failed: {e}", style="red")))
    except KeyboardInterrupt:
        pass
