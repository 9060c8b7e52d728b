"""`linegen cost JOB` (from the job's stats) and `linegen cost --estimate MANIFEST ...` (before running)."""
from __future__ import annotations

import json
from typing import Optional

import typer

from linegen.cli.errors import fail
from linegen.cli.flags import CacheFlags, ConnectionFlags, JobOut, Json, PriceFlags, StoreFlags, opt


def cost_command(
    job: Optional[str] = typer.Argument(None, help="Job id (omit with --estimate)."),
    estimate_manifest: Optional[str] = typer.Option(None, "--estimate", help="Estimate the cost of this manifest instead of a job's."),
    model: Optional[str] = typer.Option(None, "--model", help="Model for --estimate."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="Device for --estimate: H100, A100-80GB, L4, CPU, ..."),
    gpus: int = typer.Option(1, "--gpus", help="Devices working in parallel (--estimate: wall time)."),
    cache: Optional[str] = opt(CacheFlags, "cache"),
    cache_ratio: Optional[str] = opt(CacheFlags, "cache_ratio"),
    from_job: Optional[str] = typer.Option(None, "--from-job", help="--estimate from this job's measured throughput."),
    out: Optional[str] = JobOut,
    conn: ConnectionFlags = None,
    price: PriceFlags = None,
    store: StoreFlags = None,
    as_json: bool = Json,
) -> None:
    """A job's cost (device-seconds from its stats x $/device-hour, $/1k images), or --estimate a manifest's."""
    from linegen.api import connect

    from linegen.jobs.spec import DEFAULT_OUT

    ctx = connect(**vars(conn), out=out, prices=price.prices, s3_endpoint_url=store.s3_endpoint_url,
                  default_out=DEFAULT_OUT)
    if estimate_manifest is not None:
        if job is not None:
            fail("give either a job id or --estimate MANIFEST, not both", as_json=as_json)
        if not model or not gpu:
            fail("--estimate needs --model NAME and --gpu DEVICE (e.g. --gpu H100)", as_json=as_json)
        _estimate(ctx, estimate_manifest, model, gpu, gpus, cache, cache_ratio, from_job, as_json)
        return
    if job is None:
        fail("give a job id, or --estimate MANIFEST --model NAME --gpu DEVICE", as_json=as_json)
    from linegen.jobs.remote import job_cost_report

    doc = job_cost_report(ctx, job)
    if as_json:
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    from linegen.cli.jobview import money

    t = Table(title=f"cost of job {job}" + ("" if doc["complete"] else " (so far)"), show_header=True)
    for name in ("device", "device-seconds", "$/hour", "priced as", "$"):
        t.add_column(name)
    for dev, secs in sorted(doc["device_seconds_by_device"].items()):
        p = doc["prices"].get(dev)
        if p is None:
            t.add_row(dev, f"{secs:.1f}", "n/a", "no price (use --price)", "n/a")
        else:
            t.add_row(dev, f"{secs:.1f}", f"{p['usd_per_hour']:g} per {p['unit']}", p["priced_as"],
                      money(secs / 3600 * p["usd_per_hour"]))
    console = Console()
    console.print(t)
    images = doc["images"]
    console.print(f"total {money(doc['usd'])} for {images['done']}/{images['total']} images; "
                  f"{money(doc['usd_per_1k_images'])} per 1k images")
    if doc.get("projected_usd") is not None and not doc["complete"]:
        console.print(f"projected for the whole job: {money(doc['projected_usd'])}")
    if doc.get("unpriced_devices"):
        console.print(f"[yellow]no price for {', '.join(doc['unpriced_devices'])}: give one with --price[/yellow]")


def _estimate(ctx, manifest, model, gpu, gpus, cache, cache_ratio, from_job, as_json) -> None:
    from linegen.cost.estimate import estimate

    cache = cache or "full"
    storage = None
    if ctx.out is not None:
        from linegen.jobs.storage import open_storage

        storage = open_storage(ctx.out, endpoint_url=ctx.s3_endpoint_url)
    doc = estimate(manifest, model, gpu, cache=cache, cache_ratio=cache_ratio, gpus=gpus,
                   prices=ctx.prices(), storage=storage, from_job_id=from_job,
                   s3_endpoint_url=ctx.s3_endpoint_url)
    if as_json:
        typer.echo(json.dumps(doc, indent=2, default=str))
        if doc["throughput"] is None:
            raise typer.Exit(1)
        return
    if doc["throughput"] is None:
        fail(doc["reason"], as_json=as_json)
    from linegen.cli.jobview import duration, money

    tp = doc["throughput"]
    typer.echo(f"{doc['images']['total']} images with {model} on {doc['device']} (cache {cache}"
               f"{' ' + doc['cache_ratio'] if doc['cache_ratio'] else ''})")
    typer.echo(f"  throughput  {tp['images_per_device_s']:.3f} images per device-second ({tp['source']})")
    typer.echo(f"  price       ${doc['price']['usd_per_hour']:g} per {doc['price']['unit']} ({doc['price']['source']})")
    typer.echo(f"  device time {doc['device_hours']:.3f} device-hours; wall {duration(doc['wall_hours'] * 3600)} on {gpus} device(s), "
               "excluding startup")
    typer.echo(f"  cost        {money(doc['usd'])} ({money(doc['usd_per_1k_images'])} per 1k images)")
