"""`linegen bench`: cache policies side by side on one model (thin over linegen/bench/engine_bench.py)."""
from __future__ import annotations

import json
from typing import Optional

import typer

from linegen.errors import UserError
from linegen.cli.flags import POLICY_NAMES, Json, ModelFlags, opt, option


def bench_command(
    model: str = typer.Option("llamagen-c2i-b-384", "--model", help="Registered model name."),
    random_weights: bool = typer.Option(True, "--random-weights/--weights", help="Random weights (default) or the given checkpoints."),
    checkpoint: Optional[str] = opt(ModelFlags, "checkpoint"),
    policies: str = typer.Option(",".join(POLICY_NAMES), "--policies", help="Comma-separated cache policies."),
    ratio: str = option("1/6", "--cache-ratio", aliases=("--ratio",), help="Cache ratio(s) for the compressing policies, comma-separated (e.g. 1/4,1/6,1/8)."),
    max_batch_ratios: Optional[str] = typer.Option(None, "--max-batch-ratios", help="Only these ratios also get the at-max-batch run (default: all)."),
    batch: int = option(1, "--batch-size", aliases=("--batch",), help="Images per wave for the equal-batch comparison."),
    memory_budget: Optional[str] = typer.Option(None, "--memory-budget", help="Memory budget for max_sequences, e.g. 20GiB (default: a fraction of free memory)."),
    max_batch_cap: Optional[int] = typer.Option(None, "--max-batch-cap", help="Run the at-max-batch wave with at most this many images (CPU time bound)."),
    skip_max_batch: bool = typer.Option(False, "--skip-max-batch", help="Do not run the at-max-batch wave."),
    full_max_batch: bool = typer.Option(True, "--full-max-batch/--no-full-max-batch", help="Run full at its own max batch too (default; it is the slowest run)."),
    cfg_scale: float = typer.Option(4.0, "--cfg-scale", help="Guidance scale (> 1: CFG pairs)."),
    dim: Optional[int] = typer.Option(None, "--dim", help="Override the GPT width (custom size)."),
    layers: Optional[int] = typer.Option(None, "--layers", help="Override the GPT depth."),
    heads: Optional[int] = typer.Option(None, "--heads", help="Override the GPT head count."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Override the image size (grid = size/16)."),
    repeats: int = typer.Option(1, "--repeats", help="Waves per measurement (the fastest counts)."),
    warmup: bool = typer.Option(True, "--warmup/--no-warmup", help="One untimed wave first (GPU: keep it on)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    dtype: Optional[str] = opt(ModelFlags, "dtype"),
    compile: str = typer.Option("off", "--compile", help="Decode path: off (eager reference, the default here), on (static step, compiled / CUDA graphs), auto, static (static step, no compiler)."),
    variants: Optional[str] = typer.Option(None, "--variants", help="Several decode paths side by side, COMPILE[:DTYPE] comma-separated, e.g. off:float32,on:float32,on:auto (overrides --compile/--dtype)."),
    as_json: bool = Json,
) -> None:
    """Measure the cache policies side by side: memory, packing and throughput as ratios to `full`."""
    from linegen.bench.engine_bench import BenchOptions, parse_variants, run_bench
    from linegen.bench.tables import render_bench
    from linegen.settings.model_choice import ModelChoice

    from linegen.settings.cache_choice import check_candidates

    check_candidates([p.strip() for p in policies.split(",") if p.strip()],
                     [r.strip() for r in ratio.split(",") if r.strip()])
    if memory_budget is not None:
        from linegen.workers.sizes import parse_bytes

        try:
            parse_bytes(memory_budget)
        except ValueError as e:
            raise UserError(f"--memory-budget: {e}") from None
    choice = ModelChoice(name=model, random_weights=True, device=device)
    choice.spec()  # an unknown model is a one-line error before anything is built
    choice.resolve_device()
    if not random_weights and checkpoint is None:
        raise UserError("--weights needs --checkpoint")
    overrides = {k: v for k, v in (("dim", dim), ("n_layer", layers), ("n_head", heads)) if v is not None}
    try:
        chosen = parse_variants(variants) if variants else parse_variants(f"{compile}:{dtype or ''}")
    except ValueError as e:
        raise UserError(f"--variants/--compile/--dtype: {e}") from None
    opts = BenchOptions(model=model, checkpoint=None if random_weights else checkpoint,
                        policies=tuple(p.strip() for p in policies.split(",") if p.strip()),
                        ratios=tuple(r.strip() for r in ratio.split(",") if r.strip()),
                        max_batch_ratios=tuple(r.strip() for r in max_batch_ratios.split(",")) if max_batch_ratios else None,
                        batch=batch, memory_budget=memory_budget, device=device, variants=chosen, cfg_scale=cfg_scale,
                        max_batch_cap=max_batch_cap, skip_max_batch=skip_max_batch, full_max_batch=full_max_batch,
                        gpt_overrides=overrides,
                        image_size=image_size, repeats=repeats, warmup=warmup)
    try:
        report = run_bench(opts, log=(lambda m: None) if as_json else (lambda m: typer.echo(m, err=True)))
    except ValueError as e:  # cache settings, memory budget, model size
        raise UserError(str(e)) from None
    if as_json:
        typer.echo(json.dumps(report, indent=2))  # the machine's measured rates and the settings too
        return
    typer.echo(render_bench(report))
