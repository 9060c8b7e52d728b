"""Every flag, declared once, so every command spells and explains it the same way.

Flags that travel together are groups (a dataclass of flags); a command takes a group as one
parameter annotated with its class, and `@with_flags` turns the group into the command's flags
and hands the command one filled-in instance. Field names are the keywords of the Python API
(`linegen.run(..., cache_ratio="1/6")` is `--cache-ratio 1/6`), so `vars(group)` goes straight in.
An old spelling stays accepted as a hidden alias.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, List, Optional

import typer

from linegen.jobs.spec import DEFAULT_MAX_ATTEMPTS, DEFAULT_SHARD_SIZE
from linegen.settings.cache_choice import POLICY_NAMES
from linegen.workers.cache.options import options_help


def option(default: Any, *names: str, help: str, aliases: tuple[str, ...] = (), **kw: Any) -> Any:
    """A Typer option; ``aliases``: old spellings, accepted but hidden (used by `@with_flags`)."""
    info = typer.Option(default, *names, help=help, **kw)
    info.linegen_aliases = tuple(aliases)
    return info


def flag(default: Any, *names: str, help: str, aliases: tuple[str, ...] = (), **kw: Any) -> Any:
    """A group field: its value's default, and the option that sets it."""
    return field(default=default, metadata={"option": option(default, *names, help=help, aliases=aliases, **kw)})


def opt(group_cls: type, name: str) -> Any:
    """One group's option on its own, for a command that takes only that flag of the group."""
    return next(f.metadata["option"] for f in dataclasses.fields(group_cls) if f.name == name)


def group(cls):
    """Marks a dataclass of flags as a group `@with_flags` expands."""
    cls = dataclass(cls)
    cls.__flag_group__ = True
    return cls


def _is_group(t: Any) -> bool:
    return isinstance(t, type) and getattr(t, "__flag_group__", False)


CONFIG_HELP = "Config file (default: $LINEGEN_CONFIG, else ~/.config/linegen/config.toml)."


# --------------------------------------------------------------------------- groups

@group
class ModelFlags:
    """Which model, its weights, and where it runs."""

    model: Optional[str] = flag(None, "--model", help="Registered model name (see `linegen models`; default: the built-in model).")
    checkpoint: Optional[str] = flag(None, "--checkpoint", help="GPT checkpoint: local path or s3:// URI (official LlamaGen layout).")
    vq_checkpoint: Optional[str] = flag(None, "--vq-checkpoint", help="VQ tokenizer checkpoint: local path or s3:// URI.")
    text_encoder: Optional[str] = flag(None, "--text-encoder", help="Text-to-image models: T5 encoder folder in the Hugging Face layout (config.json, weights, tokenizer), local path or s3:// prefix.")
    random_weights: bool = flag(False, "--random-weights", help="Run without checkpoints (noise images; for trying the pipeline).")
    device: str = flag("auto", "--device", help="auto, cpu, cuda or cuda:N.")
    dtype: Optional[str] = flag(None, "--dtype", help="auto, float32, bfloat16 or float16 (default: bfloat16 on GPU, float32 on CPU; auto: bfloat16 also on CPUs with native bf16).")
    compile: str = flag("auto", "--compile", help="Decode path: auto (CUDA graphs on GPU; on CPU the compiled step only when the job repays its compile time), on, or off (the eager reference).")


def _same(group_cls: type, name: str) -> Any:
    """A field declared in another group, shared as it is (one option, one help text)."""
    f = next(f for f in dataclasses.fields(group_cls) if f.name == name)
    return field(default=f.default, metadata=f.metadata)


@group
class WeightsFlags:
    """The model flags of the commands that measure a model here (eval, grid, tune)."""

    model: Optional[str] = _same(ModelFlags, "model")
    checkpoint: Optional[str] = _same(ModelFlags, "checkpoint")
    vq_checkpoint: Optional[str] = _same(ModelFlags, "vq_checkpoint")
    device: str = _same(ModelFlags, "device")
    dtype: Optional[str] = _same(ModelFlags, "dtype")


@group
class CacheFlags:
    """The KV cache policy and its memory budget."""

    cache: Optional[str] = flag(None, "--cache", help=f"KV cache policy: {', '.join(POLICY_NAMES)}, or auto (the setting measured for the model: `linegen tune`'s in the config, else the one shipped with it). Default: the config's [models] entry for the model, else full.")
    cache_ratio: Optional[str] = flag(None, "--cache-ratio", help="Visual cache budget as a fraction of the tokens, e.g. 1/6 or 0.25 (default 1/6); needs a compressing --cache.")
    cache_lines: Optional[int] = flag(None, "--cache-lines", help="Visual cache budget in token lines (instead of --cache-ratio).")
    cache_options: Optional[List[str]] = flag(None, "--cache-option", help="Policy switch KEY=VALUE, repeatable; needs a compressing --cache. preset=NAME picks a named option set. " + options_help() + ".")


@group
class SamplingFlags:
    """The job seed and the sampling defaults (a manifest row's own values win)."""

    seed: int = flag(0, "--seed", help="Job seed; each image's seed derives from (seed, row, replica).")
    cfg_scale: Optional[float] = flag(None, "--cfg-scale", help="Classifier-free guidance scale (<= 1 disables guidance). Default: the model's.")
    top_k: Optional[int] = flag(None, "--top-k", help="Top-k filtering (0 = off). Default: the model's.")
    top_p: Optional[float] = flag(None, "--top-p", help="Nucleus filtering, in (0, 1]. Default: the model's (1 = off).")
    temperature: Optional[float] = flag(None, "--temperature", help="Sampling temperature, > 0. Default: the model's.")


@group
class BatchFlags:
    """How many images decode together."""

    batch_size: Optional[int] = flag(None, "--batch-size", aliases=("--batch", "--max-batch"),
                                     help="Images decoded together; a CFG pair counts once (default: as many as fit --memory-budget).")
    memory_budget: Optional[str] = flag(None, "--memory-budget", help="Memory for weights + caches per worker, e.g. 20GiB (default: 85% of free memory).")


@group
class JobFlags:
    """A job's identity and how it is cut into work."""

    job_id: Optional[str] = flag(None, "--job-id", help="Job id (re-run with the same id and --out to resume; on a cluster also the Ray submission id).")
    shard_size: int = flag(DEFAULT_SHARD_SIZE, "--shard-size", help="Images per shard (the unit of commit and resume).")
    workers: Optional[int] = flag(None, "--workers", help="Exactly N model-holding workers (--min-workers N --max-workers N).")
    min_workers: Optional[int] = flag(None, "--min-workers", help="Workers always requested; fewer placed for longer than --wait-for-resources fails the job (default 1).")
    max_workers: Optional[int] = flag(None, "--max-workers", help="At most this many workers (default: as many as the cluster places for a GPU run; 1 on CPU).")
    gpus_per_worker: Optional[float] = flag(None, "--gpus-per-worker", help="GPUs each worker asks Ray for (default 1 for a GPU run, 0 with --device cpu). Pending workers are the autoscaler's demand; a GPU run never falls back to CPU.")
    wait_for_resources: Optional[str] = flag(None, "--wait-for-resources", help="How long the job may wait with fewer than --min-workers placed before it fails, e.g. 10m, 1h or forever (default: forever when submitted, 5m for `linegen run`).")
    max_attempts: int = flag(DEFAULT_MAX_ATTEMPTS, "--max-attempts", help="Attempts per shard; a lost node (preemption) does not spend one, a crash or error does.")
    storage_outage_budget: Optional[str] = flag(None, "--storage-outage-budget", help="How long the output storage may be unreachable before a shard's commit counts as a failed attempt, e.g. 90s, 15m (default 15m); meanwhile the commit waits and retries.")
    log_every: float = flag(30.0, "--log-every", help="When the output is not a terminal (nohup, cron, CI, a submitted job's Ray log): one plain progress line every this many seconds (images done/total, images/s, ETA, cost).")
    image_format: str = flag("png", "--image-format", help="How each image is encoded: png (lossless), jpeg or webp.")
    image_quality: Optional[int] = flag(None, "--image-quality", help="jpeg/webp quality 1..100 (default 75; webp at 100 is lossless).")
    keep_columns: Optional[List[str]] = flag(None, "--keep-columns", help="Manifest columns to carry into every image row, comma-separated or repeated (each one type: text, number or boolean); '*' keeps every column that is not a manifest field.")
    format: str = flag("parquet", "--format", help="Image shards: parquet (images/SHARD.parquet, Hugging Face datasets) or webdataset (images/SHARD.tar: KEY.png, KEY.json, KEY.tokens.npy).")


@group
class StoreFlags:
    """Where S3 is, for S3-compatible stores."""

    s3_endpoint_url: Optional[str] = flag(None, "--s3-endpoint-url", envvar="LINEGEN_S3_ENDPOINT_URL", help="Endpoint of an S3-compatible store.")


@group
class ConnectionFlags:
    """Where a remote command points: the cluster, its auth, the config file."""

    cluster: Optional[str] = flag(None, "--cluster", help="Ray cluster: its dashboard / Jobs API URL, e.g. http://HEAD:8265 (default: RAY_ADDRESS, or the config's [cluster] address).")
    token: Optional[str] = flag(None, "--token", help="Ray auth token (better: LINEGEN_RAY_TOKEN, RAY_AUTH_TOKEN, --token-file or RAY_AUTH_MODE=token with Ray's token file; a flag shows in the process list).")
    token_file: Optional[str] = flag(None, "--token-file", help="File holding the Ray auth token (default: the config's [cluster] token_file).")
    headers: Optional[List[str]] = flag(None, "--header", help="Extra HTTP header NAME=VALUE sent to the cluster (e.g. for a proxy); repeatable.")
    config: Optional[str] = flag(None, "--config", help=CONFIG_HELP)
    timeout: Optional[float] = flag(None, "--timeout", help="Seconds one request to the cluster may take in all: connecting and the whole answer (default 30; uploads of the code get 1 s more per MiB).")


@group
class PriceFlags:
    """What a device-hour costs, for cost so far and estimates."""

    prices: Optional[List[str]] = flag(None, "--price", help="Price override DEVICE=DOLLARS_PER_HOUR, e.g. H100=3.29; repeatable (default: the config's [prices], else built-in).")


# Single flags several commands share.
Json = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables (errors too).")
Config = typer.Option(None, "--config", help=CONFIG_HELP)
JobOut = typer.Option(None, "--out", help="Output root holding the job: a local folder or s3://bucket/prefix (default: from the job's metadata on the cluster, else the config's [output] out, else ./out as for `linegen run`).")
FileOut = typer.Option(None, "--out", help="File to write (default: print to stdout).")
HtmlOut = typer.Option(None, "--html", help="HTML file to write (default: report-JOB.html in the current folder).")
Manifest = typer.Argument(..., help="Prompt manifest (.jsonl, .csv, .parquet): local path or s3:// URI.")
Job = typer.Argument(..., help="Job id.")


# --------------------------------------------------------------------------- the decorator

def with_flags(fn):
    """Expand every group-annotated parameter of a command into its flags (and every option's
    hidden aliases); call the command with one filled-in instance per group."""
    hints = typing.get_type_hints(fn)
    params: list[inspect.Parameter] = []
    groups: dict[str, type] = {}
    aliased: dict[str, tuple[Any, int]] = {}  # parameter -> (its default, number of aliases)

    def add(name: str, default: Any, annotation: Any) -> None:
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=annotation))
        for i, alias in enumerate(getattr(default, "linegen_aliases", ())):
            params.append(inspect.Parameter(f"{name}__alias{i}", inspect.Parameter.KEYWORD_ONLY,
                                            default=typer.Option(None, alias, hidden=True),
                                            annotation=Optional[annotation]))
            aliased[name] = (default.default, i + 1)

    for p in inspect.signature(fn).parameters.values():
        annotation = hints.get(p.name, p.annotation)
        if not _is_group(annotation):
            add(p.name, p.default, annotation)
            continue
        groups[p.name] = annotation
        field_types = typing.get_type_hints(annotation)
        for f in dataclasses.fields(annotation):
            add(f.name, f.metadata["option"], field_types[f.name])

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        for name, (default, count) in aliased.items():
            for i in range(count):
                value = kwargs.pop(f"{name}__alias{i}")
                if value is not None and kwargs[name] == default:
                    kwargs[name] = value
        for name, cls in groups.items():
            kwargs[name] = cls(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(cls)})
        return fn(**kwargs)

    wrapper.__signature__ = inspect.Signature(params)
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


def settings_of(*groups: Any) -> dict[str, Any]:
    """The keywords of `Settings.from_flags` from filled-in groups."""
    out: dict[str, Any] = {}
    for g in groups:
        out.update(vars(g))
    return out
