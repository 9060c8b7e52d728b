"""`linegen eval` (quality of cache policies on the built-in model) and `linegen grid` (samples side by side)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from linegen.cli.flags import Json, ModelFlags, SamplingFlags, WeightsFlags, opt, option
from linegen.quality.evaluate import DEFAULT_POLICIES


def _choice(weights: WeightsFlags, compile: str = "off"):
    from linegen.settings.resolve import Settings

    return Settings.from_flags(**vars(weights), compile=compile).model


def _split(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def eval_command(
    policies: str = typer.Option(",".join(DEFAULT_POLICIES), "--policies", help="Comma-separated cache policies, or POLICY/PRESET for a named option set (linear/paper: LineAR as specified); a +heads suffix (linear+heads) gives the setting per-head budgets measured on the model, the same bytes; full is always run: it is the reference."),
    ratios: str = option("1/4,1/6,1/8", "--cache-ratio", aliases=("--ratios",), help="Comma-separated cache ratios for the compressing policies."),
    samples: int = typer.Option(500, "--samples", help="Generated images per policy and ratio (classes in turn, same seeds for every policy)."),
    fidelity_samples: int = typer.Option(64, "--fidelity-samples", help="Teacher-forced fidelity (KL, top-1) on the first K samples (0: skip)."),
    real_samples: int = typer.Option(2000, "--real-samples", help="Real held-out images for the Fréchet-distance reference."),
    max_batch: int = option(64, "--batch-size", aliases=("--max-batch",), help="Images per engine wave."),
    seed: int = opt(SamplingFlags, "seed"),
    cfg_scale: Optional[float] = opt(SamplingFlags, "cfg_scale"),
    top_k: Optional[int] = opt(SamplingFlags, "top_k"),
    weights: WeightsFlags = None,
    classifier: Optional[str] = typer.Option(None, "--classifier", help="Evaluator classifier (default: the one shipped for the model)."),
    compile: str = opt(ModelFlags, "compile"),
    as_json: bool = Json,
) -> None:
    """Quality of each cache policy and ratio vs the full cache: class accuracy, FD, token match, KL, top-1."""
    from linegen.quality.evaluate import EvalOptions, evaluate, render_table
    from linegen.settings.cache_choice import check_candidates

    check_candidates(_split(policies), _split(ratios))  # before the model loads
    opts = EvalOptions(model=_choice(weights, compile), policies=_split(policies),
                       ratios=_split(ratios), samples=samples, fidelity_samples=fidelity_samples,
                       real_samples=real_samples, seed=seed, cfg_scale=cfg_scale, top_k=top_k, max_batch=max_batch,
                       classifier=classifier)
    report = evaluate(opts, log=lambda m: typer.echo(m, err=True))  # progress on stderr, even with --json
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(render_table(report))


def grid_command(
    out: Path = typer.Option(Path("grid.png"), "--out", help="PNG to write."),
    policies: str = typer.Option("full,linear", "--policies", help="Comma-separated cache policies, one block each, side by side."),
    ratio: str = option("1/6", "--cache-ratio", aliases=("--ratio",), help="Cache ratio of the compressing policies."),
    per_class: int = typer.Option(4, "--per-class", help="Samples per class (columns of each block)."),
    seed: int = opt(SamplingFlags, "seed"),
    cfg_scale: Optional[float] = opt(SamplingFlags, "cfg_scale"),
    top_k: Optional[int] = opt(SamplingFlags, "top_k"),
    weights: WeightsFlags = None,
    as_json: bool = Json,
) -> None:
    """A PNG grid of samples per class (rows) for several cache policies side by side (same seeds)."""
    from linegen.quality.evaluate import GridOptions, make_grid
    from linegen.settings.cache_choice import check_candidates

    check_candidates(_split(policies), [ratio])
    opts = GridOptions(model=_choice(weights), out=out,
                       policies=_split(policies), ratio=ratio, per_class=per_class, seed=seed,
                       cfg_scale=cfg_scale, top_k=top_k)
    summary = make_grid(opts, log=(lambda m: None) if as_json else (lambda m: typer.echo(m, err=True)))
    typer.echo(json.dumps(summary, indent=2) if as_json else f"wrote {summary['out']} ({summary['width']}x{summary['height']})")
