"""Registered models by name: which GPT config, image size and VQ tokenizer each one is."""
from __future__ import annotations

from workers.models.config import ModelSpec, VQ16, VQConfig, gpt_config, GPTConfig


class UnknownModel(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def _llamagen(size: str, image: int, cond: str = "c2i", **kw) -> ModelSpec:
    tag = size.lower()
    name = f"llamagen-{cond}-{tag}-{image}"
    gpt = gpt_config(size, cond=cond)
    desc = f"LlamaGen GPT-{size} {cond} at {image}px ({(image // 16) ** 2} tokens), VQ-16"
    return ModelSpec(name=name, gpt=gpt, image_size=image, vq=VQ16, description=desc, **kw)


# A tiny random-weight model that keeps end-to-end tests fast on a CPU.
TINY_VQ = VQConfig(codebook_size=256, codebook_embed_dim=8, z_channels=32, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1)
TINY_GPT = GPTConfig(dim=64, n_layer=2, n_head=4, vocab_size=256, caption_dim=32, caption_tokens=8)

MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        _llamagen("B", 256), _llamagen("B", 384),
        _llamagen("L", 256), _llamagen("L", 384),
        _llamagen("XL", 384), _llamagen("XXL", 384), _llamagen("3B", 384),
        _llamagen("XL", 256, "t2i", default_cfg_scale=7.5, default_top_k=1000),
        _llamagen("XL", 512, "t2i", default_cfg_scale=7.5, default_top_k=1000),
        ModelSpec(name="test-tiny", gpt=TINY_GPT, image_size=32, vq=TINY_VQ,
                  description="tiny random-weight c2i model for tests (8x8 tokens, 32px)", random_by_design=True,
                  default_cfg_scale=2.0, default_top_k=0),
        ModelSpec(name="test-tiny-t2i", gpt=GPTConfig(**{**TINY_GPT.__dict__, "cond": "t2i"}), image_size=32,
                  vq=TINY_VQ, description="tiny random-weight t2i model for tests (8 caption tokens)", random_by_design=True,
                  default_cfg_scale=2.0, default_top_k=0),
    ]
}

DEFAULT_MODEL = "test-tiny"


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise UnknownModel(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    return MODELS[name]


def custom_spec(base: ModelSpec, **gpt_overrides) -> ModelSpec:
    """A registered model with a different GPT size (benchmarks: 'width 256, 8 layers')."""
    from dataclasses import replace

    return replace(base, name=f"{base.name}+custom", gpt=replace(base.gpt, **gpt_overrides))
