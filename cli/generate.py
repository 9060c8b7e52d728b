"""`linegen generate`: K images per class into a folder (PNG files + tokens.npy)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from linegen.cli import options
from linegen.cli.errors import fail, handle_errors
from linegen.cli.main import app


@app.command("generate")
@handle_errors
def generate_command(
    class_id: List[int] = typer.Option(..., "--class-id", help="Class to generate; repeat for several (images come out in this order)."),
    count: int = typer.Option(1, "--count", help="Images per class."),
    out: Path = typer.Option(Path("generated"), "--out", help="Output folder: 000000.png, ... and tokens.npy."),
    model: Optional[str] = options.Model,
    checkpoint: Optional[str] = options.Checkpoint,
    vq_checkpoint: Optional[str] = options.VQCheckpoint,
    random_weights: bool = options.RandomWeights,
    seed: int = options.Seed,
    cfg_scale: Optional[float] = options.CfgScale,
    top_k: Optional[int] = options.TopK,
    top_p: float = options.TopP,
    temperature: Optional[float] = options.Temperature,
    cache: str = options.Cache,
    cache_ratio: Optional[str] = options.CacheRatio,
    cache_lines: Optional[int] = options.CacheLines,
    cache_option: Optional[List[str]] = options.CacheOption,
    batch_size: int = typer.Option(16, "--batch-size", help="Images decoded together (a CFG pair counts once)."),
    device: str = options.Device,
    dtype: Optional[str] = options.DType,
    s3_endpoint_url: Optional[str] = options.S3Endpoint,
    as_json: bool = options.Json,
) -> None:
    """Generate --count images for each --class-id with one model, into --out."""
    from linegen.jobs.cache_choice import resolve_cache
    from linegen.jobs.generate import GenerateOptions, check_options, generate_to_folder, load_engine
    from linegen.jobs.models import ModelChoice
    from linegen.workers.models.registry import DEFAULT_MODEL

    choice = ModelChoice(name=model or DEFAULT_MODEL, checkpoint=checkpoint, vq_checkpoint=vq_checkpoint,
                         random_weights=random_weights, device=device, dtype=dtype,
                         s3_endpoint_url=s3_endpoint_url)
    spec = choice.spec()
    try:
        sampling = spec.sampling(cfg_scale=cfg_scale, top_k=top_k, temperature=temperature, top_p=top_p)
    except ValueError as e:
        fail(str(e))
    opts = GenerateOptions(model=choice, class_ids=tuple(class_id), count=count, out=out, seed=seed,
                           sampling=sampling, cache=resolve_cache(cache, cache_ratio, cache_lines, cache_option, spec).choice,
                           batch_size=batch_size)
    check_options(opts)
    engine = load_engine(opts)
    if as_json:
        summary = generate_to_folder(opts, engine=engine)
        typer.echo(json.dumps(summary, indent=2))
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("generating", total=len(class_id) * count)
        summary = generate_to_folder(opts, progress=lambda done, total: bar.update(task, completed=done),
                                     engine=engine)
    console.print(f"[green]{summary['images']} images[/green] -> {summary['out']} "
                  f"({summary['images_per_s']} images/s, {summary['tokens_per_s']} tokens/s, {summary['device']})")
