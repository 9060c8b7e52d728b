"""`linegen submit | list | status | logs | cancel | resume`: jobs on a remote Ray cluster.

Each command resolves where to point (flags, config file, environment: jobs.remote.make_context),
calls one function of jobs.remote and renders its answer (a rich table, or JSON with --json).
"""
from __future__ import annotations

import json
import sys
from typing import List, Optional

import typer

from linegen.cli import options
from linegen.cli.errors import fail, handle_errors
from linegen.cli.main import app


def _context(cluster, token, token_file, header, out, config, price, s3_endpoint_url=None):
    from linegen.jobs.remote import make_context

    return make_context(cluster=cluster, token=token, headers=header, out=out, config_path=config,
                        prices=price, s3_endpoint_url=s3_endpoint_url, token_file=token_file)


def _echo_json(doc) -> None:
    typer.echo(json.dumps(doc, indent=2, default=str))


def _err_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


@app.command("submit")
@handle_errors
def submit_command(
    manifest: str = typer.Argument(..., help="Prompt manifest (.jsonl, .csv, .parquet): local path or s3:// URI."),
    out: Optional[str] = typer.Option(None, "--out", help="Output root the cluster writes to: s3://bucket/prefix (or a folder the cluster's nodes share). Default: [output] out in the config."),
    job_id: Optional[str] = typer.Option(None, "--job-id", help="Job id (also the Ray submission id: submitting the same id again never runs it twice)."),
    at: Optional[str] = typer.Option(None, "--at", help="Start at this local time: 02:00 (next time the clock shows it), 2026-11-23T02:00, or +30m. Waits without holding GPUs."),
    after: Optional[str] = typer.Option(None, "--after", help="Start when job JOB_ID (same --out) has succeeded; cancelled with the reason if it fails."),
    cluster: Optional[str] = options.Cluster,
    token: Optional[str] = options.Token,
    token_file: Optional[str] = options.TokenFile,
    header: Optional[List[str]] = options.Header,
    config: Optional[str] = options.Config,
    price: Optional[List[str]] = options.Price,
    no_ship_code: bool = typer.Option(False, "--no-ship-code", help="Do not ship linegen's code with the job: use the linegen installed on the cluster."),
    driver_cpus: float = typer.Option(0.1, "--driver-cpus", help="CPUs reserved for the job's driver (it holds no GPU)."),
    model: Optional[str] = options.Model,
    checkpoint: Optional[str] = options.Checkpoint,
    vq_checkpoint: Optional[str] = options.VQCheckpoint,
    text_encoder: Optional[str] = options.TextEncoder,
    random_weights: bool = options.RandomWeights,
    cache: Optional[str] = options.JobCache,
    cache_ratio: Optional[str] = options.CacheRatio,
    cache_lines: Optional[int] = options.CacheLines,
    cache_option: Optional[List[str]] = options.CacheOption,
    shard_size: int = typer.Option(1000, "--shard-size", help="Images per shard (the unit of commit and resume)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Model-holding actors (default: one per GPU of the cluster)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images decoded together (default: as many as fit --memory-budget)."),
    memory_budget: Optional[str] = typer.Option(None, "--memory-budget", help="Memory for weights + caches per worker, e.g. 20GiB."),
    seed: int = options.Seed,
    cfg_scale: Optional[float] = options.CfgScale,
    top_k: Optional[int] = options.TopK,
    top_p: float = options.TopP,
    temperature: Optional[float] = options.Temperature,
    device: str = options.Device,
    dtype: Optional[str] = options.DType,
    s3_endpoint_url: Optional[str] = options.S3Endpoint,
    as_json: bool = options.Json,
) -> None:
    """Submit a job to a Ray cluster and return at once (prints the job id)."""
    from linegen.cli.run import build_spec
    from linegen.jobs.remote import submit

    ctx = _context(cluster, token, token_file, header, out, config, price, s3_endpoint_url)
    ctx.require_cluster()
    if ctx.out is None:
        fail("no output root: pass --out s3://bucket/prefix or set [output] out in the config file")
    configured = (ctx.config.models or {}).get(model) if (model and ctx.config) else None
    if configured is not None and checkpoint is None and not random_weights:
        checkpoint, vq_checkpoint = configured.checkpoint, vq_checkpoint or configured.vq_checkpoint
    if configured is not None and text_encoder is None:
        text_encoder = configured.text_encoder
    spec = build_spec(manifest, ctx.out, job_id, model, checkpoint, vq_checkpoint, random_weights, cache, cache_ratio,
                      cache_lines, cache_option, shard_size, workers, batch_size, memory_budget, seed, cfg_scale,
                      top_k, top_p, temperature, device, dtype, ctx.s3_endpoint_url, text_encoder, configured=configured)
    result = submit(ctx, spec, at=at, after=after, ship_code=not no_ship_code, driver_cpus=driver_cpus)
    if as_json:
        _echo_json(result)
        return
    err = _err_console()
    for w in result.get("warnings") or []:
        err.print(f"[yellow]warning:[/yellow] {w}")
    status = result["status"]
    verb = {"submitted": "submitted", "already submitted": "already submitted (not run again)",
            "already complete": "already complete (nothing to run)"}.get(status, status)
    err.print(f"job [bold]{result['job_id']}[/bold] {verb} to {result['cluster']}")
    err.print(f"  output    {result['out'].rstrip('/')}/{result['job_id']}")
    if result.get("ray_status"):
        err.print(f"  Ray says  {result['ray_status']} (attempt {result['submission_id']})")
    if result.get("start_at_text"):
        err.print(f"  starts    {result['start_at_text']}")
    if result.get("after"):
        err.print(f"  after     job {result['after']} succeeds (cancelled if it fails)")
    err.print(f"  follow    linegen status {result['job_id']} --cluster {result['cluster']}")
    typer.echo(result["job_id"])


@app.command("list")
@handle_errors
def list_command(
    cluster: Optional[str] = options.Cluster,
    out: Optional[str] = options.JobOut,
    token: Optional[str] = options.Token,
    token_file: Optional[str] = options.TokenFile,
    header: Optional[List[str]] = options.Header,
    config: Optional[str] = options.Config,
    price: Optional[List[str]] = options.Price,
    s3_endpoint_url: Optional[str] = options.S3Endpoint,
    as_json: bool = options.Json,
) -> None:
    """Scheduled, running and finished jobs with progress (the cluster's, or those under --out)."""
    from linegen.jobs.remote import list_jobs

    ctx = _context(cluster, token, token_file, header, out, config, price, s3_endpoint_url)
    docs = list_jobs(ctx)
    if as_json:
        _echo_json(docs)
        return
    from rich.console import Console

    from linegen.cli.jobview import jobs_table

    from linegen.jobs.remote import shown_url

    where = shown_url(ctx.address.url) if ctx.address else ctx.out
    if not docs:
        typer.echo(f"no linegen jobs on {where}")
        return
    Console().print(jobs_table(docs, title=f"linegen jobs on {where}"))


@app.command("status")
@handle_errors
def status_command(
    job: str = typer.Argument(..., help="Job id."),
    cluster: Optional[str] = options.Cluster,
    out: Optional[str] = options.JobOut,
    token: Optional[str] = options.Token,
    token_file: Optional[str] = options.TokenFile,
    header: Optional[List[str]] = options.Header,
    config: Optional[str] = options.Config,
    price: Optional[List[str]] = options.Price,
    s3_endpoint_url: Optional[str] = options.S3Endpoint,
    as_json: bool = options.Json,
) -> None:
    """State, shards and images done/total, images/s, ETA, errors and cost so far of one job."""
    from linegen.jobs.remote import job_status

    ctx = _context(cluster, token, token_file, header, out, config, price, s3_endpoint_url)
    doc = job_status(ctx, job)
    if as_json:
        _echo_json(doc)
        return
    from rich.console import Console

    from linegen.cli.jobview import status_table

    Console().print(status_table(doc))


@app.command("logs")
@handle_errors
def logs_command(
    job: str = typer.Argument(..., help="Job id."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing the latest attempt's output until it ends."),
    cluster: Optional[str] = options.Cluster,
    token: Optional[str] = options.Token,
    token_file: Optional[str] = options.TokenFile,
    header: Optional[List[str]] = options.Header,
    config: Optional[str] = options.Config,
) -> None:
    """The job driver's output (every attempt, oldest first)."""
    from linegen.jobs.remote import logs

    ctx = _context(cluster, token, token_file, header, None, config, None)
    for chunk in logs(ctx, job, follow=follow):
        sys.stdout.write(chunk)
        sys.stdout.flush()


@app.command("cancel")
@handle_errors
def cancel_command(
    job: str = typer.Argument(..., help="Job id."),
    wait: float = typer.Option(30.0, "--wait", help="Seconds to wait for the job to stop."),
    cluster: Optional[str] = options.Cluster,
    token: Optional[str] = options.Token,
    token_file: Optional[str] = options.TokenFile,
    header: Optional[List[str]] = options.Header,
    config: Optional[str] = options.Config,
    s3_endpoint_url: Optional[str] = options.S3Endpoint,
    as_json: bool = options.Json,
) -> None:
    """Stop a job (also a scheduled or waiting one). Committed shards stay valid; `resume` finishes it."""
    from linegen.jobs.remote import cancel

    ctx = _context(cluster, token, token_file, header, None, config, None, s3_endpoint_url)
    result = cancel(ctx, job, wait_s=wait)
    if as_json:
        _echo_json(result)
        return
    err = _err_console()
    for w in result.get("warnings") or []:
        err.print(f"[yellow]warning:[/yellow] {w}")
    if result["status"] == "cancelled":
        kept = result.get("shards_committed")
        kept_text = f"; {kept} committed shard(s) stay valid" if kept is not None else ""
        typer.echo(f"job {job} cancelled ({', '.join(result['stopped'])} stopped){kept_text}; "
                   f"`linegen resume {job}` finishes it")
    else:
        typer.echo(f"job {job}: {result['status']}; nothing to cancel")


@app.command("resume")
@handle_errors
def resume_command(
    job: str = typer.Argument(..., help="Job id."),
    now: bool = typer.Option(False, "--now", help="Start at once, ignoring the job's --at and --after."),
    cluster: Optional[str] = options.Cluster,
    out: Optional[str] = options.JobOut,
    token: Optional[str] = options.Token,
    token_file: Optional[str] = options.TokenFile,
    header: Optional[List[str]] = options.Header,
    config: Optional[str] = options.Config,
    no_ship_code: bool = typer.Option(False, "--no-ship-code", help="Use the linegen installed on the cluster."),
    driver_cpus: float = typer.Option(0.1, "--driver-cpus", help="CPUs reserved for the job's driver."),
    s3_endpoint_url: Optional[str] = options.S3Endpoint,
    as_json: bool = options.Json,
) -> None:
    """Run the rest of a cancelled, failed or interrupted job (committed shards are skipped)."""
    from linegen.jobs.remote import resume

    ctx = _context(cluster, token, token_file, header, out, config, None, s3_endpoint_url)
    result = resume(ctx, job, now=now, ship_code=not no_ship_code, driver_cpus=driver_cpus)
    if as_json:
        _echo_json(result)
        return
    status = result["status"]
    if status == "submitted":
        typer.echo(f"job {job} resumed as attempt {result['submission_id']} on {result['cluster']}")
    elif status == "already running":
        typer.echo(f"job {job} is already running (attempt {result['submission_id']}); not resubmitted")
    else:
        typer.echo(f"job {job}: {status}; nothing to resume")
