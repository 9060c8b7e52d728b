"""`linegen dashboard` (the Grafana dashboard JSON) and `linegen report JOB` (a job's HTML report)."""
from __future__ import annotations

import json
from typing import Optional

import typer

from linegen.cli.flags import ConnectionFlags, FileOut, HtmlOut, Job, JobOut, Json, PriceFlags, StoreFlags


def dashboard_command(
    out: Optional[str] = FileOut,
    as_json: bool = Json,
) -> None:
    """linegen's Grafana dashboard (JSON model, generated from the metrics registry): import it in
    Grafana or provision it next to Ray's dashboards. Without --out the JSON goes to stdout."""
    from linegen.api import dashboard

    doc = dashboard(out)
    if out is None:
        typer.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    titles = [p["title"] for p in doc["panels"] if p["type"] != "row"]
    if as_json:
        typer.echo(json.dumps({"out": out, "uid": doc["uid"], "panels": titles}))
    else:
        typer.echo(f"wrote {out}: Grafana dashboard '{doc['title']}' (uid {doc['uid']}), {len(titles)} panels")


def report_command(
    job: str = Job,
    out: Optional[str] = JobOut,
    html: Optional[str] = HtmlOut,
    conn: ConnectionFlags = None,
    price: PriceFlags = None,
    store: StoreFlags = None,
    as_json: bool = Json,
) -> None:
    """One self-contained HTML file about a job (finished or running so far): images/s over time per
    worker, KV-cache and peak memory, shards, retries and node losses, cost, settings, sample images."""
    from linegen.api import report

    path = report(job, html=html, out=out, prices=price.prices, s3_endpoint_url=store.s3_endpoint_url, **vars(conn))
    if as_json:
        typer.echo(json.dumps({"job_id": job, "html": path}))
    else:
        typer.echo(f"wrote {path}")
