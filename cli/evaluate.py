"""`linegen eval` (quality of cache policies on the built-in model) and `linegen grid` (samples side by side)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from linegen.cli import options
from linegen.cli.errors import handle_errors
from linegen.cli.main import app


def _choice(model, checkpoint, vq_checkpoint, device, dtype):
    from linegen.jobs.models import ModelChoice
    from linegen.workers.models.registry import DEFAULT_MODEL

    return ModelChoice(name=model or DEFAULT_MODEL, checkpoint=checkpoint, vq_checkpoint=vq_checkpoint,
                       device=device, dtype=dtype)


def _split(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


@app.command("eval")
@handle_errors
def eval_command(
    policies: str = typer.Option("full,linear,linear/paper,streaming,h2o,snapkv,rkv", "--policies", help="Comma-separated cache policies, or POLICY/PRESET for a named option set (linear/paper: LineAR as specified); full is always run: it is the reference."),
    ratios: str = typer.Option("1/4,1/6,1/8", "--ratios", help="Comma-separated cache ratios for the compressing policies."),
    samples: int = typer.Option(500, "--samples", help="Generated images per policy and ratio (classes in turn, same seeds for every policy)."),
    fidelity_samples: int = typer.Option(64, "--fidelity-samples", help="Teacher-forced fidelity (KL, top-1) on the first K samples (0: skip)."),
    real_samples: int = typer.Option(2000, "--real-samples", help="Real held-out images for the Fréchet-distance reference."),
    max_batch: int = typer.Option(64, "--max-batch", help="Images per engine wave."),
    seed: int = options.Seed,
    cfg_scale: Optional[float] = options.CfgScale,
    top_k: Optional[int] = options.TopK,
    model: Optional[str] = options.Model,
    checkpoint: Optional[str] = options.Checkpoint,
    vq_checkpoint: Optional[str] = options.VQCheckpoint,
    classifier: Optional[str] = typer.Option(None, "--classifier", help="Evaluator classifier (default: the shipped one)."),
    device: str = options.Device,
    dtype: Optional[str] = options.DType,
    as_json: bool = options.Json,
) -> None:
    """Quality of each cache policy and ratio vs the full cache: class accuracy, FD, token match, KL, top-1."""
    from linegen.jobs.evaluate import EvalOptions, default_classifier, evaluate, render_table

    opts = EvalOptions(model=_choice(model, checkpoint, vq_checkpoint, device, dtype), policies=_split(policies),
                       ratios=_split(ratios), samples=samples, fidelity_samples=fidelity_samples,
                       real_samples=real_samples, seed=seed, cfg_scale=cfg_scale, top_k=top_k, max_batch=max_batch,
                       classifier=classifier or default_classifier())
    report = evaluate(opts, log=lambda m: typer.echo(m, err=True))  # progress on stderr, even with --json
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(render_table(report))


@app.command("grid")
@handle_errors
def grid_command(
    out: Path = typer.Option(Path("grid.png"), "--out", help="PNG to write."),
    policies: str = typer.Option("full,linear", "--policies", help="Comma-separated cache policies, one block each, side by side."),
    ratio: str = typer.Option("1/6", "--ratio", help="Cache ratio of the compressing policies."),
    per_class: int = typer.Option(4, "--per-class", help="Samples per class (columns of each block)."),
    seed: int = options.Seed,
    cfg_scale: Optional[float] = options.CfgScale,
    top_k: Optional[int] = options.TopK,
    model: Optional[str] = options.Model,
    checkpoint: Optional[str] = options.Checkpoint,
    vq_checkpoint: Optional[str] = options.VQCheckpoint,
    device: str = options.Device,
    dtype: Optional[str] = options.DType,
    as_json: bool = options.Json,
) -> None:
    """A PNG grid of samples per class (rows) for several cache policies side by side (same seeds)."""
    from linegen.jobs.evaluate import GridOptions, make_grid

    opts = GridOptions(model=_choice(model, checkpoint, vq_checkpoint, device, dtype), out=out,
                       policies=_split(policies), ratio=ratio, per_class=per_class, seed=seed,
                       cfg_scale=cfg_scale, top_k=top_k)
    summary = make_grid(opts, log=(lambda m: None) if as_json else (lambda m: typer.echo(m, err=True)))
    typer.echo(json.dumps(summary, indent=2) if as_json else f"wrote {summary['out']} ({summary['width']}x{summary['height']})")
