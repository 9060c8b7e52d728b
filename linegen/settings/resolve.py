"""What decides the images: the model, the cache, the sampling defaults, the job seed, and how many
images decode together. Every entry point (the CLI, `linegen.run`, `linegen.submit`,
`linegen.Generator`) builds them with `Settings.from_flags`, so they validate alike and spell
every setting the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from linegen.settings.cache_choice import AUTO, CacheChoice, recommended
from linegen.errors import UserError
from linegen.settings.model_choice import ModelChoice
from linegen.workers.models.config import SamplingParams


@dataclass(frozen=True)
class Settings:
    model: ModelChoice
    cache: CacheChoice = field(default_factory=CacheChoice)
    sampling: SamplingParams = field(default_factory=SamplingParams)  # job defaults; a row's own values win
    seed: int = 0  # each image's seed derives from (seed, row, replica) unless its row gives one
    batch_size: int | None = None  # None: as many as fit the memory budget
    memory_budget: str | None = None  # e.g. "20GiB"; None: a fraction of free device memory
    s3_endpoint_url: str | None = field(default=None, repr=False)  # may hold credentials: never shown
    # Where the cache setting came from, in words `run` prints: "flag", "config entry <path>",
    # "model default" (the setting shipped with the model), "default" (no cache flag: full).
    cache_source: str = "default"

    @classmethod
    def from_flags(cls, *, model: str | None = None, checkpoint: str | None = None,
                   vq_checkpoint: str | None = None, text_encoder: str | None = None,
                   random_weights: bool = False, device: str = "auto", dtype: str | None = None,
                   compile: str = "auto",
                   cache: str | None = None, cache_ratio: str | float | None = None, cache_lines: int | None = None,
                   cache_options: Mapping[str, Any] | Sequence[str] | None = None, seed: int = 0,
                   cfg_scale: float | None = None, top_k: int | None = None, top_p: float | None = None,
                   temperature: float | None = None, batch_size: int | None = None,
                   memory_budget: str | None = None, s3_endpoint_url: str | None = None,
                   config: Any = None) -> "Settings":
        """Settings from flag values (None: the model's or the config file's default).

        ``cache_options``: a dict, or ``KEY=VALUE`` strings as `--cache-option` gives them.
        ``config``: a loaded config (linegen.settings.config_file.Config) whose ``[models]`` entry for the
        model supplies checkpoints the flags leave out, and the cache when no cache flag is given
        (``cache`` None means "the entry's cache, else full").
        """
        from linegen.workers.models.registry import DEFAULT_MODEL

        name = model or DEFAULT_MODEL
        entry = (config.models or {}).get(name) if config is not None else None
        if entry is not None and not random_weights:
            checkpoint = checkpoint or entry.checkpoint
            vq_checkpoint = vq_checkpoint or entry.vq_checkpoint
        if entry is not None and text_encoder is None:
            text_encoder = entry.text_encoder
        no_cache_flags = cache is None and cache_ratio is None and cache_lines is None and not cache_options
        configured = None  # the entry's cache: used with no cache flag, and as `--cache auto`'s first choice
        if entry is not None and entry.cache is not None and (no_cache_flags or cache == AUTO):
            try:
                configured = _cache_choice(entry.cache, entry.cache_ratio, None, entry.cache_options)
                configured.build()
            except UserError as e:
                raise UserError(f"{config.path}: [models] {name}: {e}") from None
        choice = ModelChoice(name=name, checkpoint=checkpoint, vq_checkpoint=vq_checkpoint,
                             random_weights=random_weights, device=device, dtype=dtype, compile=compile,
                             s3_endpoint_url=s3_endpoint_url, text_encoder=text_encoder)
        try:
            sampling = choice.spec().sampling(cfg_scale=cfg_scale, top_k=top_k, temperature=temperature, top_p=top_p)
        except ValueError as e:
            raise UserError(str(e)) from None
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise UserError(f"--seed must be an integer in 0..2**63-1, got {seed!r}")
        if batch_size is not None and batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {batch_size}")
        if memory_budget is not None:
            from linegen.workers.sizes import parse_bytes

            try:
                parse_bytes(memory_budget)
            except ValueError as e:
                raise UserError(f"--memory-budget: {e}") from None
        _check_cache_flags(cache, cache_ratio, cache_lines, cache_options)
        source = "flag"
        if no_cache_flags and configured is not None:
            cache_choice, source = configured, f"config entry {config.path}"
        elif cache == AUTO:  # the setting measured for this model, adjusted by any other cache flag
            base = configured or recommended(choice.spec())
            source = f"--cache auto: config entry {config.path}" if configured is not None else "--cache auto: model default"
            given = _cache_choice(base.policy, None, None, cache_options)
            cache_choice = CacheChoice(base.policy, cache_ratio if (cache_ratio or cache_lines) else base.ratio,
                                       cache_lines, {**base.options, **given.options})
        else:
            cache_choice = _cache_choice(cache or "full", cache_ratio, cache_lines, cache_options)
            source = "flag" if cache else "default"
        cache_choice.build()  # every option typed and in range, before any work (the grid: `check`)
        return cls(model=choice, cache=cache_choice, sampling=sampling, seed=seed, batch_size=batch_size,
                   memory_budget=memory_budget, s3_endpoint_url=s3_endpoint_url, cache_source=source)

    def check(self) -> None:
        """Everything that can be checked without loading weights: model, files, cache on its grid."""
        self.model.check()
        spec = self.model.spec()
        self.cache.build(spec.prefix_len, spec.grid, (spec.gpt.n_layer, spec.gpt.n_head))


def _check_cache_flags(cache: str | None, ratio, lines, options) -> None:
    """No cache flag is silently ignored: a budget or an option needs a compressing policy.

    Without ``--cache`` the cache is the config entry's or full, and neither would use a lone
    ``--cache-ratio`` or ``--cache-option``; rather than guess which policy was meant, say how to
    ask for it."""
    given = [name for name, value in (("--cache-ratio", ratio), ("--cache-lines", lines),
                                      ("--cache-option", options)) if value]
    if not given:
        return
    if cache is None:
        raise UserError(f"{' and '.join(given)} needs a compressing --cache: add --cache linear (or another "
                        "policy), or --cache auto to adjust the setting measured for the model")
    if cache == "full":
        raise UserError(f"--cache full keeps every token and takes no {' or '.join(given)}; drop "
                        f"{'it' if len(given) == 1 else 'them'} or pick a compressing --cache (e.g. linear)")


def _cache_choice(cache: str, ratio, lines: int | None, options) -> CacheChoice:
    """``options``: a dict, or ``KEY=VALUE`` strings as `--cache-option` gives them."""
    ratio = None if ratio is None else str(ratio)
    if isinstance(options, Mapping):
        return CacheChoice(cache, ratio, lines, dict(options))
    return CacheChoice.from_flags(cache, ratio, lines, list(options or []))
