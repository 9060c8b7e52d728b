"""`linegen tune`: measure the cache candidates on a model, pick the best at a ratio, record it in the config."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from linegen.cli.flags import Config, Json, ModelFlags, SamplingFlags, StoreFlags, WeightsFlags, opt, option
from linegen.errors import UserError


def tune_command(
    ratio: str = option("1/6", "--cache-ratio", aliases=("--ratio",), help="Memory ratio to tune for: visual tokens kept / all, e.g. 1/6."),
    samples: int = typer.Option(32, "--samples", help="Calibration items (classes in turn), teacher-forced on the full cache's samples."),
    seed: int = typer.Option(1, "--seed", help="Calibration seed (linegen eval judges on seed 0: keep them apart)."),
    max_batch: int = option(32, "--batch-size", aliases=("--max-batch",), help="Items per engine wave."),
    write: bool = typer.Option(True, "--write/--no-write", help="Record the choice in the config file's [models] entry."),
    finalists: int = typer.Option(3, "--finalists", help="The lowest-KL candidates that also generate the items and are judged on their images against the full cache's; the lowest-KL one wins unless another's samples are closer by more than twice the paired standard error. 0: choose by KL alone."),
    policies: Optional[str] = typer.Option(None, "--policies", help="Comma-separated candidates: POLICY, POLICY/PRESET, either with +heads for per-head budgets measured on the model (same bytes), e.g. linear,linear+heads,h2o. Default: every shipped candidate."),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="Text-to-image models: a manifest (JSON Lines, CSV or Parquet; local or s3://) whose prompts, in turn, are the calibration items. Default: 32 varied prompts shipped with linegen."),
    config: Optional[str] = Config,
    weights: WeightsFlags = None,
    text_encoder: Optional[str] = opt(ModelFlags, "text_encoder"),
    cfg_scale: Optional[float] = opt(SamplingFlags, "cfg_scale"),
    top_k: Optional[int] = opt(SamplingFlags, "top_k"),
    temperature: Optional[float] = opt(SamplingFlags, "temperature"),
    s3_endpoint_url: Optional[str] = opt(StoreFlags, "s3_endpoint_url"),
    as_json: bool = Json,
) -> None:
    """Pick the cache setting closest to the full cache at --cache-ratio on this model; `run` and `submit` then use it."""
    from linegen.settings.config_file import Config, ConfigError, default_config_path, load_config
    from linegen.settings.config_edit import write_model_keys
    from linegen.settings.model_choice import ModelChoice
    from linegen.settings.candidates import Candidate
    from linegen.quality.tune import CANDIDATES, TuneOptions, check_prompts_allowed, render_table, tune
    from linegen.workers.models.registry import DEFAULT_MODEL
    from linegen.jobs.manifest import Conditioning, read_manifest
    from linegen.settings.cache_choice import check_candidates

    entries = [p.strip() for p in (policies or "").split(",") if p.strip()]
    check_candidates(entries, [ratio])  # before the model loads
    candidates = tuple(Candidate.parse(e) for e in entries) or CANDIDATES
    name, checkpoint, vq_checkpoint = weights.model or DEFAULT_MODEL, weights.checkpoint, weights.vq_checkpoint
    target = Path(config).expanduser() if config is not None else default_config_path()
    try:  # a config file that does not exist yet is created when the choice is written
        cfg = load_config(target) if target.exists() else Config(path=target)
    except ConfigError as e:
        raise UserError(str(e)) from None
    configured = cfg.models.get(name)
    if configured is not None and checkpoint is None:  # tune the weights `run --model NAME` would load
        checkpoint, vq_checkpoint = configured.checkpoint, vq_checkpoint or configured.vq_checkpoint
    if configured is not None and text_encoder is None:
        text_encoder = configured.text_encoder
    endpoint = s3_endpoint_url or cfg.s3.endpoint_url
    choice = ModelChoice(name=name, checkpoint=checkpoint, vq_checkpoint=vq_checkpoint, text_encoder=text_encoder,
                         device=weights.device, dtype=weights.dtype, s3_endpoint_url=endpoint)
    calibration = ()
    if prompts is not None:
        check_prompts_allowed(choice.spec())  # before reading the file against the wrong conditioning
        calibration = tuple(r.prompt for r in read_manifest(prompts, Conditioning("text"), endpoint_url=endpoint))
    opts = TuneOptions(model=choice, ratio=ratio, samples=samples, seed=seed, max_batch=max_batch,
                       cfg_scale=cfg_scale, top_k=top_k, temperature=temperature, prompts=calibration,
                       finalists=finalists, candidates=candidates)
    result = tune(opts, log=lambda m: typer.echo(m, err=True))
    pick = result.choice()
    doc = result.to_dict()
    if write:
        values = {"cache": pick.policy, "cache_ratio": pick.ratio, "cache_options": pick.options}
        # An entry that names no weights yet gets the ones just tuned, so `run --model NAME` loads them.
        if checkpoint is not None and (configured is None or configured.checkpoint is None):
            values["checkpoint"] = checkpoint
            if vq_checkpoint is not None:
                values["vq_checkpoint"] = vq_checkpoint
        if text_encoder is not None and (configured is None or configured.text_encoder is None):
            values["text_encoder"] = text_encoder
        try:
            doc["config"] = str(write_model_keys(target, name, values))
        except ConfigError as e:
            raise UserError(str(e)) from None
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    typer.echo(render_table(result))
    opts_text = " ".join(f"--cache-option {k}={_flag(v)}" for k, v in pick.options.items() if v != "")
    typer.echo(f"\nchosen: {result.best.label} at {result.ratio}  (--cache {pick.policy} --cache-ratio {pick.ratio} {opts_text})")
    if write:
        typer.echo(f"recorded in {doc['config']} [models] {name}: `linegen run --model {name}` and `submit` use it "
                   "when no --cache flag is given")


def _flag(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
