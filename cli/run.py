"""`linegen run` and `linegen validate`: a job on the embedded default, and a manifest check."""
from __future__ import annotations

import json
import sys
from typing import List, Optional

import typer

from linegen.cli.flags import (BatchFlags, CacheFlags, Config, Json, JobFlags, Manifest, ModelFlags, SamplingFlags,
                               StoreFlags, opt, settings_of)


def run_command(
    manifest: str = Manifest,
    out: str = typer.Option(None, "--out", help="Output root: a local folder or s3://bucket/prefix (default: the config's [output] out, else ./out)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and plan only, write nothing: items, shards, what is committed, and time and cost where a throughput was measured."),
    job: JobFlags = None,
    model: ModelFlags = None,
    cache: CacheFlags = None,
    sampling: SamplingFlags = None,
    batch: BatchFlags = None,
    store: StoreFlags = None,
    config: str = Config,
    as_json: bool = Json,
) -> None:
    """Run a job on the embedded local Ray: every manifest item once, resumable, to --out."""
    from linegen.settings.config_file import load_config
    from linegen.jobs.prepare import prepare_job
    from linegen.jobs.run import JobInterrupted, run_embedded
    from linegen.jobs.spec import JobSpec

    spec = JobSpec.from_flags(manifest=manifest, out=out, **vars(job), config=load_config(config),
                              **settings_of(model, cache, sampling, batch, store))
    if dry_run:
        _dry_run(prepare_job(spec, record=False), as_json)
        return
    prepared = prepare_job(spec)  # the whole manifest and every setting, before anything is shown
    try:
        if as_json:
            log = None if sys.stderr.isatty() else _progress_log(spec)  # lines on stderr, the document on stdout
            typer.echo(json.dumps(run_embedded(prepared, progress=log), indent=2))
            return
        _run_with_bar(spec, prepared)
    except JobInterrupted as e:
        _interrupted(e, as_json)


def _run_with_bar(spec, prepared) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from linegen.cli.jobview import duration, money
    from linegen.cli.render import summary_table
    from linegen.jobs.run import run_embedded

    console = Console(stderr=True)
    console.print(f"job [bold]{spec.job_id}[/bold] -> {spec.out}/{spec.job_id}")
    console.print(f"cache {describe_cache(spec.cache)}" + (f" (from {spec.cache_source})" if spec.cache_source else ""),
                  highlight=False)
    if not console.is_terminal:  # nohup, cron, CI: a bar would write nothing readable; plain lines instead
        summary = run_embedded(prepared, progress=_progress_log(spec))
        Console().print(summary_table(summary))
        return
    # transient: an interrupted run leaves one line ("interrupted; ..."), not a half bar
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[eta]}"),
                  TextColumn("{task.fields[cost]}"), console=console, transient=True) as bar:
        task = bar.add_task("images", total=None, rate="", eta="", cost="")

        def show(p):
            bar.update(task, total=p.images_total, completed=p.images_done,
                       description=p.waiting[:70] if p.waiting else "images",
                       rate=f"{p.images_per_s:.2f} img/s" if p.images_per_s else "",
                       eta=f"ETA {duration(p.eta_s)}" if p.eta_s is not None else "",
                       cost=f"{money(p.usd)} so far" if p.usd else "")

        summary = run_embedded(prepared, progress=show)
    Console().print(summary_table(summary))


def _progress_log(spec):
    from linegen.jobs.progress_lines import ProgressLog

    return ProgressLog(spec.job_id, lambda line: print(line, file=sys.stderr, flush=True), every_s=spec.log_every_s)


def describe_cache(cache) -> str:
    """'linear 1/6 (anchor_lines=1, ...)' for the line `run` prints before its bar."""
    from linegen.workers.cache import DEFAULT_RATIO

    if cache.policy == "full":
        return "full"
    budget = cache.ratio or (f"{cache.lines} lines" if cache.lines else None) or DEFAULT_RATIO
    opts = ", ".join(f"{k}={v}" for k, v in cache.options.items())
    return f"{cache.policy} {budget}" + (f" ({opts})" if opts else "")


def _interrupted(e, as_json: bool) -> None:
    """One line, and out at once: Ray's exit hooks would talk to a cluster that is gone."""
    import os
    import sys

    from linegen.jobs.run import INTERRUPTED

    if as_json:
        print(json.dumps({"error": INTERRUPTED}), flush=True)
    print(INTERRUPTED, file=sys.stderr, flush=True)
    os._exit(e.exit_code)


def _dry_run(prepared, as_json: bool) -> None:
    from linegen.cost.estimate import dry_run

    doc = dry_run(prepared)
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    images, shards = doc["images"], doc["shards"]
    typer.echo(f"{doc['manifest']}: {doc['rows']} rows, {images['total']} images in {shards['total']} shards of "
               f"{doc['shard_size']} (plan {doc['fingerprint']}); nothing written")
    typer.echo(f"  job {doc['job_id']} -> {doc['out']}")
    if shards["done"]:
        typer.echo(f"  {shards['done']} shards committed; {doc['images_left']} images left")
    from linegen.cli.jobview import duration, money

    for e in doc["estimates"]:
        cost = money(e["usd"]) if e["usd"] is not None else "no price"
        wall = f", {duration(e['wall_hours'] * 3600)} with {e['workers']} workers" if e["wall_hours"] is not None else ""
        typer.echo(f"  {e['device']}: {e['images_per_device_s']:.3g} images/s per device -> "
                   f"{duration(e['device_hours'] * 3600)} of device time{wall}, {cost} ({e['source']})")
    if doc["estimate_note"]:
        typer.echo(f"  {doc['estimate_note']}")


def validate_command(
    manifest: str = typer.Argument(..., help="Manifest to check (.jsonl, .csv, .parquet; local or s3://)."),
    model: str = typer.Option(None, "--model", help="Check the rows against this model (default: the built-in model, as `run` uses)."),
    text_encoder: str = typer.Option(None, "--text-encoder", help="With a text-to-image --model: also list the prompts its tokenizer will cut (local folder or s3:// prefix)."),
    keep_columns: Optional[List[str]] = opt(JobFlags, "keep_columns"),
    checkpoint: str = typer.Option(None, "--checkpoint", help="With a Janus-Pro --model: its checkpoint folder, to list the prompts it will cut."),
    store: StoreFlags = None,
    as_json: bool = Json,
) -> None:
    """Validate a manifest: every bad row with file, line and field; the item count."""
    from linegen.api import validate
    from linegen.jobs.manifest import ManifestError

    try:
        result = validate(manifest, model=model, text_encoder=text_encoder, s3_endpoint_url=store.s3_endpoint_url,
                          keep_columns=keep_columns, checkpoint=checkpoint)
    except ManifestError as e:
        if as_json:
            typer.echo(json.dumps({"valid": False, "issues": [vars(i) for i in e.issues]}, indent=2))
            raise typer.Exit(1)
        raise
    if as_json:
        doc = result.to_dict()
        if text_encoder is None and checkpoint is None:
            doc.pop("truncated")
        typer.echo(json.dumps(doc))
        return
    typer.echo(f"{manifest}: valid, {result.rows} rows, {result.items} images")
    for t in result.truncated:
        kept = "the middle of the text is cut" if checkpoint else f"only the first {t['limit']} are used"
        typer.echo(f"  warning: {manifest}:{t['line']}: prompt has {t['tokens']} tokens; {kept}", err=True)
