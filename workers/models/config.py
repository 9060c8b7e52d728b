"""Typed configs for the LlamaGen GPT, the VQ tokenizer and a registered model (GPT + VQ + size)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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
    default_cfg_scale: float = 4.0
    default_top_k: int = 2000
    default_temperature: float = 1.0

    def sampling(self, cfg_scale: float | None = None, top_k: int | None = None,
                 temperature: float | None = None) -> dict:
        """cfg_scale, top_k and temperature as given, the model's defaults where None."""
        return {"cfg_scale": self.default_cfg_scale if cfg_scale is None else cfg_scale,
                "top_k": self.default_top_k if top_k is None else top_k,
                "temperature": self.default_temperature if temperature is None else temperature}

    @property
    def grid(self) -> int:
        return self.image_size // self.vq.downsample

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def prefix_len(self) -> int:
        return self.gpt.cls_token_num
