"""Typed configs for the LlamaGen GPT, the VQ tokenizer, sampling and a registered model.

No torch here: jobs (on a laptop) validate manifests and settings against these.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Literal

# What the engine accepts for each sampling setting: (test, what the value must be). Manifest
# rows, job defaults and the engine's own requests are all checked against these, so a value
# that passes validation always decodes. top_k at or above the vocabulary keeps every token.
MAX_CFG_SCALE = 1000.0
MAX_TOP_K = 2**31 - 1
SAMPLING_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "cfg_scale": (lambda v: math.isfinite(v) and 0 <= v <= MAX_CFG_SCALE,
                  f"a number in 0..{MAX_CFG_SCALE:g} (<= 1 means no guidance)"),
    "temperature": (lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    "top_k": (lambda v: 0 <= v <= MAX_TOP_K, f"an integer in 0..{MAX_TOP_K} (0 disables top-k)"),
    "top_p": (lambda v: math.isfinite(v) and 0 < v <= 1, "a number in (0, 1]"),
}


@dataclass(frozen=True)
class SamplingParams:
    """How one image's tokens are drawn: guidance scale, temperature, top-k, top-p. A value that
    breaks SAMPLING_RULES is a ValueError naming the setting."""

    cfg_scale: float = 4.0
    temperature: float = 1.0
    top_k: int = 2000
    top_p: float = 1.0

    def __post_init__(self) -> None:
        problems = sampling_problems(**self.__dict__)
        if problems:
            raise ValueError("; ".join(problems))

    def with_overrides(self, **values) -> "SamplingParams":
        """These settings with every given (non-None) value replaced."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})


def sampling_problems(**values) -> list[str]:
    """'name must be ...' for every value that breaks its rule (bools and non-numbers included)."""
    problems = []
    for name, value in values.items():
        test, expect = SAMPLING_RULES[name]
        numeric = isinstance(value, int) if name == "top_k" else isinstance(value, (int, float))
        try:
            ok = not isinstance(value, bool) and numeric and test(value)
        except OverflowError:  # an int beyond any float (10**400) is outside every range
            ok = False
        if not ok:
            # repr() of a huge int is itself refused (over 4300 digits) or a screenful
            shown = f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits" \
                if isinstance(value, int) and value.bit_length() > 128 else repr(value)
            problems.append(f"{name} must be {expect}, got {shown}")
    return problems


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - (n % k)


@dataclass(frozen=True)
class GPTConfig:
    dim: int
    n_layer: int
    n_head: int
    cond: Literal["c2i", "t2i"] = "c2i"
    vocab_size: int = 16384
    num_classes: int = 1000
    caption_dim: int = 2048
    caption_tokens: int = 120
    multiple_of: int = 256
    rope_base: float = 10000.0
    norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def ffn_dim(self) -> int:
        # LlamaGen: 8D/3 truncated, then rounded up to a multiple of `multiple_of`.
        return find_multiple(int(2 * 4 * self.dim / 3), self.multiple_of)

    @property
    def cls_token_num(self) -> int:
        """Condition prefix length C: one class token (c2i) or 120 caption tokens (t2i)."""
        return 1 if self.cond == "c2i" else self.caption_tokens

    @property
    def null_class(self) -> int:
        return self.num_classes


GPT_CONFIGS: dict[str, dict] = {
    "B": dict(n_layer=12, n_head=12, dim=768),
    "L": dict(n_layer=24, n_head=16, dim=1024),
    "XL": dict(n_layer=36, n_head=20, dim=1280),
    "XXL": dict(n_layer=48, n_head=24, dim=1536),
    "XXXL": dict(n_layer=48, n_head=40, dim=2560),
    "1B": dict(n_layer=22, n_head=32, dim=2048),
    "3B": dict(n_layer=24, n_head=32, dim=3200),
    "7B": dict(n_layer=32, n_head=32, dim=4096),
}


def gpt_config(size: str, **overrides) -> GPTConfig:
    return GPTConfig(**{**GPT_CONFIGS[size], **overrides})


@dataclass(frozen=True)
class VQConfig:
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    z_channels: int = 256
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    norm_groups: int = 32

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


VQ16 = VQConfig()
VQ8 = VQConfig(ch_mult=(1, 2, 2, 4))


@dataclass(frozen=True)
class CacheSetting:
    """A cache setting measured to keep a model's quality (benchmarks/RESULTS.md): `--cache auto`."""

    policy: str
    ratio: str
    preset: str | None = None  # a named option set (workers/cache/presets.py); None: the policy's defaults
    head_shares: str = ""  # per-head budgets measured on this model (workers/cache/head_budgets.py); "": uniform


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: which GPT, at which image size, decoded by which VQ."""

    name: str
    gpt: GPTConfig
    image_size: int
    vq: VQConfig = field(default=VQ16)
    description: str = ""
    # Where the weights come from when the user gives no checkpoint (shipped models only):
    # a (GPT file, VQ file) pair of local paths in the official LlamaGen layout.
    builtin_weights: tuple[str, str] | None = None
    # A model that is random by design (test models): runs without checkpoints or --random-weights.
    random_by_design: bool = False
    default_sampling: SamplingParams = field(default_factory=SamplingParams)
    recommended_cache: CacheSetting | None = None  # measured on this model; None: not tuned here
    # What each class id means, where the model's training data names its classes (the built-in
    # model); outputs carry them as a Hugging Face ClassLabel.
    class_names: tuple[str, ...] | None = None

    def sampling(self, *, cfg_scale: float | None = None, top_k: int | None = None,
                 temperature: float | None = None, top_p: float | None = None) -> SamplingParams:
        """The model's sampling defaults, with every value given here replacing its default."""
        return self.default_sampling.with_overrides(cfg_scale=cfg_scale, top_k=top_k,
                                                    temperature=temperature, top_p=top_p)

    @property
    def grid(self) -> int:
        return self.image_size // self.vq.downsample

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def prefix_len(self) -> int:
        return self.gpt.cls_token_num
