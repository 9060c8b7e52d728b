"""`linegen generate`: K images per class into a folder (PNG files + tokens.npy)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import typer

from linegen.cli.flags import BatchFlags, CacheFlags, Config, Json, ModelFlags, SamplingFlags, StoreFlags, settings_of


def generate_command(
    class_id: List[int] = typer.Option(..., "--class-id", help="Class to generate; repeat for several (images come out in this order)."),
    count: int = typer.Option(1, "--count", help="Images per class."),
    out: Path = typer.Option(Path("generated"), "--out", help="Output folder: 000000.png, ... and tokens.npy."),
    model: ModelFlags = None,
    cache: CacheFlags = None,
    sampling: SamplingFlags = None,
    batch: BatchFlags = None,
    store: StoreFlags = None,
    config: str = Config,
    as_json: bool = Json,
) -> None:
    """Generate --count images for each --class-id with one model, into --out."""
    from linegen.settings.config_file import load_config
    from linegen.generate_folder import check_out_folder, check_request, generate_to_folder
    from linegen.generator import Generator
    from linegen.settings.resolve import Settings

    settings = Settings.from_flags(**settings_of(model, cache, sampling, batch, store), config=load_config(config))
    check_request(settings.model.spec(), class_id, count)
    check_out_folder(out)  # before the weights load
    settings.check()  # files, device and cache on the model's grid, before the weights load
    settings.model.resolve_device()
    generator = Generator(settings=settings)
    if as_json:
        typer.echo(json.dumps(generate_to_folder(generator, class_id, count, out), indent=2))
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("generating", total=len(class_id) * count)
        summary = generate_to_folder(generator, class_id, count, out,
                                     progress=lambda done, total: bar.update(task, completed=done))
    console.print(f"[green]{summary['images']['done']} images[/green] -> {summary['out']} "
                  f"({summary['images_per_s']} images/s, {summary['tokens_per_s']} tokens/s, {summary['device']})")
