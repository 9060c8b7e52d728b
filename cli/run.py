"""`linegen run` and `linegen validate`: a job on the embedded default, and a manifest check."""
from __future__ import annotations

import json
from typing import List, Optional

import typer

from linegen.cli import options
from linegen.cli.errors import fail, handle_errors
from linegen.cli.main import app


def build_spec(manifest: str, out: str, job_id: Optional[str], model: Optional[str], checkpoint: Optional[str],
               vq_checkpoint: Optional[str], random_weights: bool, cache: Optional[str], cache_ratio: Optional[str],
               cache_lines: Optional[int], cache_option: Optional[List[str]], shard_size: int, workers: Optional[int], batch_size: Optional[int],
               memory_budget: Optional[str], seed: int, cfg_scale: Optional[float], top_k: Optional[int],
               top_p: float, temperature: Optional[float], device: str, dtype: Optional[str],
               s3_endpoint_url: Optional[str], text_encoder: Optional[str] = None, configured=None):
    """The JobSpec a `run`/`submit` command line describes (shared so both spell it the same).

    `configured`: the model's config-file entry (cluster.config.ModelConfig) or None; its cache
    setting applies when no --cache is given (jobs.cache_choice.resolve_cache).
    """
    from linegen.jobs.cache_choice import resolve_cache
    from linegen.jobs.models import ModelChoice
    from linegen.jobs.spec import JobSpec, check_job_id, new_job_id
    from linegen.workers.models.registry import DEFAULT_MODEL

    choice = ModelChoice(name=model or DEFAULT_MODEL, checkpoint=checkpoint, vq_checkpoint=vq_checkpoint,
                         random_weights=random_weights, device=device, dtype=dtype, s3_endpoint_url=s3_endpoint_url,
                         text_encoder=text_encoder)
    spec_model = choice.spec()
    try:
        sampling = spec_model.sampling(cfg_scale=cfg_scale, top_k=top_k, temperature=temperature, top_p=top_p)
    except ValueError as e:
        fail(str(e))
    if workers is not None and workers < 1:
        fail(f"--workers must be >= 1, got {workers}")
    if batch_size is not None and batch_size < 1:
        fail(f"--batch-size must be >= 1, got {batch_size}")
    if memory_budget is not None:
        from linegen.workers.sizes import parse_bytes

        try:
            parse_bytes(memory_budget)
        except ValueError as e:
            fail(str(e))
    return JobSpec(job_id=check_job_id(job_id) if job_id else new_job_id(), manifest=manifest, out=out,
                   model=choice, cache=resolve_cache(cache, cache_ratio, cache_lines, cache_option, spec_model, configured).choice,
                   sampling=sampling, seed=seed,
                   shard_size=shard_size, workers=workers, batch_size=batch_size, memory_budget=memory_budget,
                   s3_endpoint_url=s3_endpoint_url)


@app.command("run")
@handle_errors
def run_command(
    manifest: str = typer.Argument(..., help="Prompt manifest (.jsonl, .csv, .parquet): local path or s3:// URI."),
    out: str = typer.Option("out", "--out", help="Output root: a local folder or s3://bucket/prefix."),
    job_id: Optional[str] = typer.Option(None, "--job-id", help="Job id (re-run with the same id and --out to resume)."),
    model: Optional[str] = options.Model,
    checkpoint: Optional[str] = options.Checkpoint,
    vq_checkpoint: Optional[str] = options.VQCheckpoint,
    text_encoder: Optional[str] = options.TextEncoder,
    random_weights: bool = options.RandomWeights,
    cache: Optional[str] = options.JobCache,
    cache_ratio: Optional[str] = options.CacheRatio,
    cache_lines: Optional[int] = options.CacheLines,
    cache_option: Optional[List[str]] = options.CacheOption,
    config: Optional[str] = options.Config,
    shard_size: int = typer.Option(1000, "--shard-size", help="Images per shard (the unit of commit and resume)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Model-holding actors (default: one per GPU, or 1 on CPU)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images decoded together (default: as many as fit --memory-budget)."),
    memory_budget: Optional[str] = typer.Option(None, "--memory-budget", help="Memory for weights + caches per worker, e.g. 20GiB (default: 85% of free memory)."),
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
    """Run a job on the embedded local Ray: every manifest item once, resumable, to --out."""
    from linegen.jobs.driver import prepare_job
    from linegen.jobs.run import run_embedded

    configured = configured_model(config, model)
    if configured is not None and checkpoint is None and not random_weights:  # as `submit` applies it
        checkpoint, vq_checkpoint = configured.checkpoint, vq_checkpoint or configured.vq_checkpoint
    if configured is not None and text_encoder is None:
        text_encoder = configured.text_encoder
    spec = build_spec(manifest, out, job_id, model, checkpoint, vq_checkpoint, random_weights, cache, cache_ratio,
                      cache_lines, cache_option, shard_size, workers, batch_size, memory_budget, seed, cfg_scale, top_k, top_p,
                      temperature, device, dtype, s3_endpoint_url, text_encoder, configured=configured)
    prepared = prepare_job(spec)  # the whole manifest and every setting, before anything is shown
    if as_json:
        summary = run_embedded(spec, prepared=prepared)
        typer.echo(json.dumps(summary, indent=2))
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    console.print(f"job [bold]{spec.job_id}[/bold] -> {spec.out}/{spec.job_id}")
    console.print(f"cache {describe_cache(spec.cache)}", highlight=False)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("images", total=None, rate="")

        def show(p):
            bar.update(task, total=p.images_total, completed=p.images_done,
                       rate=f"{p.images_per_s:.2f} img/s" if p.images_per_s else "")

        summary = run_embedded(spec, progress=show, prepared=prepared)
    from linegen.cli.render import summary_table

    Console().print(summary_table(summary))


def configured_model(config: Optional[str], model: Optional[str]):
    """The config file's [models] entry for the model (None without one); a broken file is an error."""
    from linegen.cluster.config import ConfigError, load_config
    from linegen.workers.models.registry import DEFAULT_MODEL

    try:
        return load_config(config).models.get(model or DEFAULT_MODEL)
    except ConfigError as e:
        fail(str(e))


def describe_cache(cache) -> str:
    """'linear 1/6 (anchor_lines=1, ...)' for a progress line."""
    from linegen.workers.cache import DEFAULT_RATIO

    if cache.policy == "full":
        return "full"
    budget = cache.ratio or (f"{cache.lines} lines" if cache.lines else None) or DEFAULT_RATIO
    opts = ", ".join(f"{k}={v}" for k, v in cache.options.items())
    return f"{cache.policy} {budget}" + (f" ({opts})" if opts else "")


@app.command("validate")
@handle_errors
def validate_command(
    manifest: str = typer.Argument(..., help="Manifest to check (.jsonl, .csv, .parquet; local or s3://)."),
    model: Optional[str] = typer.Option(None, "--model", help="Also check the rows against this model."),
    text_encoder: Optional[str] = typer.Option(None, "--text-encoder", help="With a text-to-image --model: also list the prompts its tokenizer will cut (local folder or s3:// prefix)."),
    s3_endpoint_url: Optional[str] = options.S3Endpoint,
    as_json: bool = options.Json,
) -> None:
    """Validate a manifest: every bad row with file, line and field; the item count."""
    from linegen.jobs.manifest import Conditioning, ManifestError, read_manifest, total_items

    conditioning, spec = None, None
    if model is not None:
        from linegen.jobs.models import ModelChoice

        spec = ModelChoice(name=model, random_weights=True).spec()
        conditioning = (Conditioning(kind="text") if spec.gpt.cond == "t2i"
                        else Conditioning(kind="class", num_classes=spec.gpt.num_classes))
    if text_encoder is not None and (spec is None or spec.gpt.cond != "t2i"):
        fail("--text-encoder needs --model with a text-to-image model")
    try:
        rows = read_manifest(manifest, conditioning, endpoint_url=s3_endpoint_url)
    except ManifestError as e:
        if as_json:
            typer.echo(json.dumps({"valid": False, "issues": [vars(i) for i in e.issues]}, indent=2))
            raise typer.Exit(1)
        raise
    result = {"valid": True, "rows": len(rows), "items": total_items(rows)}
    if text_encoder is not None:
        result["truncated"] = _truncated_prompts(rows, text_encoder, spec.gpt.caption_tokens, s3_endpoint_url)
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"{manifest}: valid, {result['rows']} rows, {result['items']} images")
    for t in result.get("truncated", []):
        typer.echo(f"  warning: {manifest}:{t['line']}: prompt has {t['tokens']} tokens; only the first "
                   f"{t['limit']} are used", err=True)


def _truncated_prompts(rows, text_encoder: str, limit: int, endpoint_url: Optional[str]) -> list[dict]:
    from linegen.jobs.storage import StorageError, fetch_folder_to_local
    from linegen.workers.models.text import TextEncoderError, load_tokenizer, prepare_texts, token_counts

    try:
        tokenizer = load_tokenizer(fetch_folder_to_local(text_encoder, endpoint_url=endpoint_url))
    except (StorageError, TextEncoderError) as e:
        fail(f"--text-encoder {text_encoder}: {e}")
    prompt_rows = [r for r in rows if r.prompt is not None]
    counts = token_counts(tokenizer, prepare_texts([r.prompt for r in prompt_rows]))
    return [{"line": r.line, "tokens": n, "limit": limit} for r, n in zip(prompt_rows, counts) if n > limit]
