"""Registered models by name: which GPT config, image size and VQ tokenizer each one is."""
from __future__ import annotations

from linegen.workers.builtin.photos import CLASS_NAMES as PHOTOS_CLASS_NAMES
from linegen.workers.builtin.shapes import CLASS_NAMES as SHAPES_CLASS_NAMES
from linegen.workers.builtin.weights import WEIGHTS
from linegen.workers.models.config import CacheSetting, GPTConfig, ModelSpec, SamplingParams, VQ16, VQConfig, gpt_config
from linegen.workers.models.janus_config import JANUS_1B, JANUS_7B, janus_spec


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

# The built-in model, trained here on procedural shapes (workers/builtin; weights shipped in the
# package): 10 classes, 96px images, a downsample-4 VQ, so a 24x24 grid (N = 576) like LlamaGen-384.
SHAPES_VQ = VQConfig(codebook_size=512, codebook_embed_dim=8, z_channels=64, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1)
SHAPES_GPT = GPTConfig(dim=192, n_layer=4, n_head=4, vocab_size=512, num_classes=10)
# each head's share of the budget, from its attention on the calibration items (`linegen tune`)
SHAPES_HEAD_SHARES = "0.625,1.5,2.375,0.625/0.25,0.375,0.625,0.5/0.75,1,1.375,0.375/1.375,1.25,1.75,1.25"
SHAPES = ModelSpec(name="linegen-shapes-c2i", gpt=SHAPES_GPT, image_size=96, vq=SHAPES_VQ,
                   description="built-in c2i model trained on procedural shapes (10 classes, 24x24 tokens, 96px)",
                   builtin_weights=(str(WEIGHTS / "shapes_gpt.pt"), str(WEIGHTS / "shapes_vq.pt")),
                   default_sampling=SamplingParams(cfg_scale=2.0, top_k=0, temperature=0.9),
                   class_names=SHAPES_CLASS_NAMES,
                   # `--cache auto`: LineAR's defaults at 1/6 with per-head budgets, what `linegen tune`
                   # measures and picks on this model (benchmarks/RESULTS.md)
                   recommended_cache=CacheSetting(policy="linear", ratio="1/6", head_shares=SHAPES_HEAD_SHARES))

# The second built-in model, to keep defaults honest: patches of ten natural photographs
# (workers/builtin/photos.py), 64px, the same downsample-4 VQ family with a larger codebook for
# texture, so a 16x16 grid (N = 256) like LlamaGen-256; 6 heads per layer.
PHOTOS_VQ = VQConfig(codebook_size=1024, codebook_embed_dim=8, z_channels=64, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1)
PHOTOS_GPT = GPTConfig(dim=192, n_layer=4, n_head=6, vocab_size=1024, num_classes=10)
PHOTOS_HEAD_SHARES = ("1.48837,0.930233,1.30233,1.11628,1.11628,1.30233/0.55814,0.55814,0.930233,0.930233,1.11628,"
                      "0.930233/0.930233,1.11628,1.11628,0.930233,0.930233,0.930233/1.11628,0.930233,0.930233,"
                      "0.930233,0.930233,0.930233")
PHOTOS = ModelSpec(name="linegen-photos-c2i", gpt=PHOTOS_GPT, image_size=64, vq=PHOTOS_VQ,
                   description="built-in c2i model trained on patches of 10 photographs (16x16 tokens, 64px)",
                   builtin_weights=(str(WEIGHTS / "photos_gpt.pt"), str(WEIGHTS / "photos_vq.pt")),
                   # cfg 1.5 was best of 1.0-4.0 on 200 held-out seeds (benchmarks/RESULTS.md)
                   default_sampling=SamplingParams(cfg_scale=1.5, top_k=0, temperature=0.9),
                   class_names=PHOTOS_CLASS_NAMES,
                   # `--cache auto`: what `linegen tune` picks here, LineAR as specified with one
                   # selection per CFG pair and per-head budgets (the shapes' defaults spend this
                   # grid's small budgets on whole protected lines: benchmarks/RESULTS.md)
                   recommended_cache=CacheSetting(policy="linear", ratio="1/6", preset="cfg-pair",
                                                  head_shares=PHOTOS_HEAD_SHARES))

# LlamaGen's own sampling defaults for its text-to-image models; tests sample the tiny models gently.
T2I_SAMPLING = SamplingParams(cfg_scale=7.5, top_k=1000)
TINY_SAMPLING = SamplingParams(cfg_scale=2.0, top_k=0)

MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        SHAPES, PHOTOS,
        _llamagen("B", 256), _llamagen("B", 384),
        _llamagen("L", 256), _llamagen("L", 384),
        _llamagen("XL", 384), _llamagen("XXL", 384), _llamagen("3B", 384),
        _llamagen("XL", 256, "t2i", default_sampling=T2I_SAMPLING),
        _llamagen("XL", 512, "t2i", default_sampling=T2I_SAMPLING),
        # Janus-Pro (docs/janus.md): the published sizes, so --random-weights, bench and packing work
        # without files; with --checkpoint DIR the folder's config.json decides the dimensions.
        janus_spec("janus-pro", JANUS_1B, "Janus-Pro text-to-image (dimensions from --checkpoint DIR; 1B without one)"),
        janus_spec("janus-pro-1b", JANUS_1B, "Janus-Pro-1B text-to-image at 384px (576 tokens), VQ-16"),
        janus_spec("janus-pro-7b", JANUS_7B, "Janus-Pro-7B text-to-image at 384px (576 tokens), VQ-16"),
        ModelSpec(name="test-tiny", gpt=TINY_GPT, image_size=32, vq=TINY_VQ,
                  description="tiny random-weight c2i model for tests (8x8 tokens, 32px)", random_by_design=True,
                  default_sampling=TINY_SAMPLING),
        ModelSpec(name="test-tiny-t2i", gpt=GPTConfig(**{**TINY_GPT.__dict__, "cond": "t2i", "caption_tokens": 120}), image_size=32,
                  vq=TINY_VQ, description="tiny random-weight t2i model for tests (120 caption tokens, like LlamaGen)", random_by_design=True,
                  default_sampling=TINY_SAMPLING),
    ]
}

DEFAULT_MODEL = "linegen-shapes-c2i"


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise UnknownModel(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    return MODELS[name]


