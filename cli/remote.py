"""`linegen submit | list | status | logs | cancel | resume`: jobs on a remote Ray cluster.

Each command resolves where to point (flags, config file, environment: linegen.api.connect), calls
one function of the API and renders its answer (a rich table, or JSON with --json).
"""
from __future__ import annotations

import json
import sys

import typer

from linegen.cli.flags import (BatchFlags, CacheFlags, ConnectionFlags, Job, JobFlags, JobOut, Json, Manifest,
                               ModelFlags, PriceFlags, SamplingFlags, StoreFlags, settings_of)

DriverCpus = typer.Option(0.1, "--driver-cpus", help="CPUs reserved for the job's driver (it holds no GPU).")
NoShipCode = typer.Option(False, "--no-ship-code", help="Do not ship linegen's code with the job: use the linegen installed on the cluster.")


def _connect(conn: ConnectionFlags, store: StoreFlags | None = None, out: str | None = None,
             price: PriceFlags | None = None, *, local_default: bool = False):
    """Where the command points; ``local_default``: without --out or a config, the output root is
    the one `linegen run` writes to."""
    from linegen.api import connect
    from linegen.jobs.spec import DEFAULT_OUT

    return connect(**vars(conn), out=out, s3_endpoint_url=store.s3_endpoint_url if store else None,
                   prices=price.prices if price else None, default_out=DEFAULT_OUT if local_default else None)


def _echo_json(doc) -> None:
    typer.echo(json.dumps(doc, indent=2, default=str))


def _err_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def submit_command(
    manifest: str = Manifest,
    out: str = typer.Option(None, "--out", help="Output root the cluster writes to: s3://bucket/prefix (or a folder the cluster's nodes share). Default: the config's [output] out."),
    at: str = typer.Option(None, "--at", help="Start at this local time: 02:00 (next time the clock shows it), 2026-11-23T02:00, or +30m. Waits without holding GPUs."),
    after: str = typer.Option(None, "--after", help="Start when job JOB_ID (same --out) has succeeded; cancelled with the reason if it fails."),
    no_ship_code: bool = NoShipCode,
    driver_cpus: float = DriverCpus,
    job: JobFlags = None,
    model: ModelFlags = None,
    cache: CacheFlags = None,
    sampling: SamplingFlags = None,
    batch: BatchFlags = None,
    conn: ConnectionFlags = None,
    price: PriceFlags = None,
    store: StoreFlags = None,
    as_json: bool = Json,
) -> None:
    """Submit a job to a Ray cluster and return at once (prints the job id)."""
    from linegen.api import submit

    result = submit(manifest, out=out, at=at, after=after, ship_code=not no_ship_code, driver_cpus=driver_cpus,
                    **vars(job), **vars(conn), **vars(price), **settings_of(model, cache, sampling, batch, store))
    if as_json:
        _echo_json(result.to_dict())
        return
    err = _err_console()
    for w in result.warnings:
        err.print(f"[yellow]warning:[/yellow] {w}")
    verb = {"submitted": "submitted", "already submitted": "already submitted (not run again)",
            "already complete": "already complete (nothing to run)"}[result.status]
    err.print(f"job [bold]{result.job_id}[/bold] {verb} to {result.cluster}")
    err.print(f"  output    {result.out.rstrip('/')}/{result.job_id}")
    if result.ray_status:
        err.print(f"  Ray says  {result.ray_status} (attempt {result.submission_id})")
    if result.start_at_text:
        err.print(f"  starts    {result.start_at_text}")
    if result.after:
        err.print(f"  after     job {result.after} succeeds (cancelled if it fails)")
    err.print(f"  follow    linegen status {result.job_id} --cluster {result.cluster}")
    typer.echo(result.job_id)


def list_command(
    out: str = JobOut,
    conn: ConnectionFlags = None,
    price: PriceFlags = None,
    store: StoreFlags = None,
    wide: bool = typer.Option(False, "--wide", help="Also a progress bar, images/s and notes in a column (wider than 80 columns)."),
    as_json: bool = Json,
) -> None:
    """Scheduled, running and finished jobs with progress (the cluster's, or those under --out)."""
    from linegen.jobs.remote import list_jobs

    ctx = _connect(conn, store, out, price, local_default=True)
    docs = [d.to_dict() for d in list_jobs(ctx)]
    if as_json:
        _echo_json(docs)
        return
    from linegen.cli.jobview import jobs_table
    from linegen.cli.render import print_whole

    where = ctx.cluster_text() or ctx.out
    if not docs:
        typer.echo(f"no linegen jobs on {where}")
        return
    print_whole(jobs_table(docs, title=f"linegen jobs on {where}", wide=wide))


def status_command(
    job: str = Job,
    out: str = JobOut,
    conn: ConnectionFlags = None,
    price: PriceFlags = None,
    store: StoreFlags = None,
    as_json: bool = Json,
) -> None:
    """State, shards and images done/total, images/s, ETA, errors and cost so far of one job."""
    from linegen.jobs.remote import job_status

    doc = job_status(_connect(conn, store, out, price, local_default=True), job).to_dict()
    if as_json:
        _echo_json(doc)
        return
    from rich.console import Console

    from linegen.cli.jobview import status_table

    Console().print(status_table(doc))


def logs_command(
    job: str = Job,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing the latest attempt's output until it ends."),
    conn: ConnectionFlags = None,
    raw: bool = typer.Option(False, "--json", help="The log as the driver wrote it: its progress and summary events as JSON lines."),
) -> None:
    """The job driver's output (every attempt, oldest first), progress as plain lines."""
    from linegen.jobs.progress_lines import readable
    from linegen.jobs.remote import logs

    chunks = logs(_connect(conn), job, follow=follow)
    for chunk in (chunks if raw else readable(chunks, job)):
        sys.stdout.write(chunk)
        sys.stdout.flush()


def cancel_command(
    job: str = Job,
    wait: float = typer.Option(30.0, "--wait", help="Seconds to wait for the job to stop."),
    conn: ConnectionFlags = None,
    store: StoreFlags = None,
    as_json: bool = Json,
) -> None:
    """Stop a job (also a scheduled or waiting one). Committed shards stay valid; `resume` finishes it."""
    from linegen.jobs import hints
    from linegen.jobs.remote import cancel

    result = cancel(_connect(conn, store), job, wait_s=wait)
    if as_json:
        _echo_json(result.to_dict())
        return
    err = _err_console()
    for w in result.warnings:
        err.print(f"[yellow]warning:[/yellow] {w}")
    if result.status == "cancelled":
        kept = result.shards_committed
        kept_text = f"; {kept} committed shard(s) stay valid" if kept is not None else ""
        typer.echo(f"job {job} cancelled ({', '.join(result.stopped)} stopped){kept_text}; "
                   f"`{hints.resume(job, cluster=result.cluster, out=result.out)}` finishes it")
    elif result.status == "not running":
        typer.echo(f"job {job}: not running ({result.last_ray_status}); nothing to cancel")
    else:
        typer.echo(f"job {job}: {result.status}; nothing to cancel")


def resume_command(
    job: str = Job,
    now: bool = typer.Option(False, "--now", help="Start at once, ignoring the job's --at and --after."),
    out: str = JobOut,
    no_ship_code: bool = NoShipCode,
    driver_cpus: float = DriverCpus,
    conn: ConnectionFlags = None,
    store: StoreFlags = None,
    as_json: bool = Json,
) -> None:
    """Run the rest of a cancelled, failed or interrupted job (committed shards are skipped): as a
    new attempt on the cluster, or, with no cluster given, here on the embedded local Ray."""
    from linegen.jobs.remote import resume

    result = resume(_connect(conn, store, out, local_default=True), job, now=now, ship_code=not no_ship_code,
                    driver_cpus=driver_cpus)
    if as_json:
        _echo_json(result.to_dict())
        return
    if result.status == "finished":
        from rich.console import Console

        from linegen.cli.render import summary_table

        Console().print(summary_table(result.summary))
    elif result.status == "submitted":
        typer.echo(f"job {job} resumed as attempt {result.submission_id} on {result.cluster}")
    elif result.status == "already running":
        typer.echo(f"job {job} is already running (attempt {result.submission_id}); not resubmitted")
    else:
        typer.echo(f"job {job}: {result.status}; nothing to resume")
