"""Janus-Pro's image-generation path as a config (docs/janus.md): no torch here, so jobs validate
manifests and plan packing against it on a laptop.

The language model is a LLaMA-style decoder; for images it reads its input through the generation
embedding + aligner and predicts through the generation head, so from the engine's side it is one
more GPT: `vocab_size` is the image codebook, `dim`/`n_layer`/`n_head` size the KV cache, and the
condition prefix is the chat-templated prompt, left-padded to `caption_tokens` entries.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from linegen.workers.models.config import GPTConfig, ModelSpec, SamplingParams, VQConfig, VQ16

# Prompt entries every Janus row holds (template + prompt + begin-of-image), left-padded; a longer
# prompt is cut in its middle and flagged. Like LlamaGen's 120 caption tokens, a fixed size keeps
# the compiled step's shapes static and the packing arithmetic exact.
PROMPT_TOKENS = 120
# DeepSeek's published sampling: guidance 5, temperature 1, no top-k/top-p.
JANUS_SAMPLING = SamplingParams(cfg_scale=5.0, temperature=1.0, top_k=0, top_p=1.0)
IMAGE_SIZE, PATCH = 384, 16


class JanusConfigError(ValueError):
    """A checkpoint folder whose config does not describe a Janus model we can run."""


@dataclass(frozen=True)
class JanusLMConfig(GPTConfig):
    """The LLaMA decoder + generation head/embedding; `vocab_size` is the image codebook."""

    intermediate_size: int = 5632
    text_vocab_size: int = 102400
    image_embed_dim: int = 8  # the generation embedding's width (the VQ code dimension)
    head_hidden: int = 2048  # the generation head's hidden width

    @property
    def ffn_dim(self) -> int:
        return self.intermediate_size


def janus_lm(dim: int, n_layer: int, n_head: int, intermediate: int, **kw) -> JanusLMConfig:
    kw.setdefault("head_hidden", dim)
    return JanusLMConfig(dim=dim, n_layer=n_layer, n_head=n_head, intermediate_size=intermediate, cond="t2i",
                         vocab_size=kw.pop("vocab_size", 16384), caption_tokens=PROMPT_TOKENS,
                         norm_eps=kw.pop("norm_eps", 1e-6), **kw)


JANUS_1B = janus_lm(2048, 24, 16, 5632)
JANUS_7B = janus_lm(4096, 30, 32, 11008)


def is_janus(spec: ModelSpec) -> bool:
    return isinstance(spec.gpt, JanusLMConfig)


def janus_spec(name: str, lm: JanusLMConfig, description: str, image_size: int = IMAGE_SIZE,
               vq: VQConfig = VQ16) -> ModelSpec:
    return ModelSpec(name=name, gpt=lm, image_size=image_size, vq=vq, description=description,
                     default_sampling=JANUS_SAMPLING)


# -- a checkpoint folder's config.json -----------------------------------------------------------
def folder_layout(config: dict) -> str:
    """'transformers' (JanusForConditionalGeneration) or 'deepseek' (MultiModalityCausalLM)."""
    if "text_config" in config and "vq_config" in config:
        return "transformers"
    if "language_config" in config and "gen_head_config" in config:
        return "deepseek"
    raise JanusConfigError("config.json is neither transformers' Janus layout (text_config, vq_config) "
                           "nor DeepSeek's (language_config, gen_head_config)")


def read_config(folder: str | Path) -> dict:
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise JanusConfigError("no config.json (a Janus checkpoint folder holds one)") from None
    except (OSError, ValueError) as e:
        raise JanusConfigError(f"config.json is not readable JSON ({e})") from None


def _need(d: dict, key: str, where: str):
    if key not in d:
        raise JanusConfigError(f"config.json: {where} has no {key!r}")
    return d[key]


def spec_from_config(name: str, config: dict) -> ModelSpec:
    """The model a checkpoint's config.json describes (either layout)."""
    layout = folder_layout(config)
    if layout == "transformers":
        text, vq, vision = config["text_config"], config["vq_config"], config.get("vision_config", {})
        where = "text_config"
        head_hidden = vq.get("projection_dim", 2048)
        codes, code_dim = vq.get("num_embeddings", 16384), vq.get("embed_dim", 8)
        vq_cfg = VQConfig(codebook_size=codes, codebook_embed_dim=code_dim, z_channels=vq.get("latent_channels", 256),
                          ch=vq.get("base_channels", 128), ch_mult=tuple(vq.get("channel_multiplier", (1, 1, 2, 2, 4))),
                          num_res_blocks=vq.get("num_res_blocks", 2))
        grid = vision.get("image_size", IMAGE_SIZE) // vision.get("patch_size", PATCH)
    else:
        text, where = config["language_config"], "language_config"
        head = config["gen_head_config"].get("params", {})
        codes = head.get("image_token_size", 16384)
        head_hidden = head.get("image_token_embed", 2048)
        code_dim = config.get("gen_vision_config", {}).get("params", {}).get("n_embed", 8)
        # DeepSeek's config only names the VQ ("VQ-16"); the loader reads its widths off the weights.
        vq_cfg = replace(VQ16, codebook_size=codes, codebook_embed_dim=code_dim)
        vision = config.get("vision_config", {}).get("params", {})
        grid = vision.get("image_size", IMAGE_SIZE) // vision.get("patch_size", PATCH)
    heads = _need(text, "num_attention_heads", where)
    kv_heads = text.get("num_key_value_heads") or heads
    if kv_heads != heads:
        raise JanusConfigError(f"config.json: {where}.num_key_value_heads {kv_heads} != num_attention_heads {heads}: "
                               "grouped-query attention is not supported (every Janus-Pro model has full heads)")
    lm = janus_lm(_need(text, "hidden_size", where), _need(text, "num_hidden_layers", where), heads,
                  _need(text, "intermediate_size", where), vocab_size=codes, image_embed_dim=code_dim,
                  head_hidden=head_hidden, text_vocab_size=text.get("vocab_size", 102400),
                  norm_eps=float(text.get("rms_norm_eps", 1e-6)), rope_base=float(text.get("rope_theta") or (text.get("rope_parameters") or {}).get("rope_theta", 10000.0)))
    image = grid * vq_cfg.downsample
    return janus_spec(name, lm, f"Janus-Pro from a {layout} checkpoint ({lm.n_layer} layers, dim {lm.dim}, "
                                f"{grid}x{grid} tokens, {image}px)", image_size=image, vq=vq_cfg)
