"""Load a Janus-Pro checkpoint folder (either layout) into JanusLM + the LlamaGen-layout VQModel.

Two layouts hold the same tensors under different names (docs/janus.md, "Checkpoint layouts"):

  transformers (JanusForConditionalGeneration)   DeepSeek (MultiModalityCausalLM)        here
  model.language_model.X                         language_model.model.X                  X (text_embed for embed_tokens)
  model.generation_embeddings.weight             gen_embed.weight                        tok_embeddings.embedding.weight
  model.generation_aligner.fc1 / hidden_layers.0 gen_aligner.layers.0 / layers.2         tok_embeddings.fc1 / fc2
  model.generation_head.proj_out / vision_head   gen_head.output_mlp_projector / vision_head  output.proj_out / vision_head
  model.vqmodel.decoder.up.I.block.J / attn.J    gen_vision_model.decoder.conv_blocks.I.res.J / attn.J (LlamaGen's names)
  model.vqmodel.decoder.mid.block_1/attn_1/block_2   gen_vision_model.decoder.mid.0/1/2

The understanding half (vision encoder, its aligner, the text lm_head) and the VQ encoder are not
needed to generate and are skipped without being read into memory where the format allows it.
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from linegen.workers.models.checkpoint import JUNK_KEYS, CheckpointError, init_random, load_into
from linegen.workers.models.config import ModelSpec, VQConfig
from linegen.workers.models.janus import JanusLM
from linegen.workers.models.janus_config import JanusConfigError, folder_layout, read_config, spec_from_config
from linegen.workers.models.vq import VQModel

HF_SKIP = ("lm_head.", "model.vision_model.", "model.aligner.", "model.vqmodel.encoder.", "model.vqmodel.quant_conv.")
DS_SKIP = ("language_model.lm_head.", "vision_model.", "aligner.", "gen_vision_model.encoder.",
           "gen_vision_model.quant_conv.")

# (transformers name, DeepSeek name) of the generation modules, by prefix
GEN_NAMES = (("model.generation_embeddings.", "gen_embed."),
             ("model.generation_aligner.fc1.", "gen_aligner.layers.0."),
             ("model.generation_aligner.hidden_layers.0.", "gen_aligner.layers.2."),
             ("model.generation_head.proj_out.", "gen_head.output_mlp_projector."),
             ("model.generation_head.vision_head.", "gen_head.vision_head."))
HERE = {"model.generation_embeddings.": "tok_embeddings.embedding.", "model.generation_aligner.fc1.": "tok_embeddings.fc1.",
        "model.generation_aligner.hidden_layers.0.": "tok_embeddings.fc2.",
        "model.generation_head.proj_out.": "output.proj_out.", "model.generation_head.vision_head.": "output.vision_head."}
VQ_MID = {"block_1": "0", "attn_1": "1", "block_2": "2"}


def hf_vq_to_llamagen(key: str) -> str:
    """A transformers VQ key (after `model.vqmodel.`) -> LlamaGen's name for the same tensor."""
    key = re.sub(r"^decoder\.up\.(\d+)\.block\.", r"decoder.conv_blocks.\1.res.", key)
    key = re.sub(r"^decoder\.up\.(\d+)\.(attn|upsample)\.", r"decoder.conv_blocks.\1.\2.", key)
    return re.sub(r"^decoder\.mid\.(block_1|attn_1|block_2)\.", lambda m: f"decoder.mid.{VQ_MID[m.group(1)]}.", key)


def split_state(state: dict[str, Tensor], layout: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A checkpoint's tensors -> (JanusLM state, VQModel state) under this module's names."""
    lm, vq = {}, {}
    for key, value in state.items():
        if layout == "deepseek":
            if key.startswith(DS_SKIP):
                continue
            if key.startswith("gen_vision_model."):
                vq[key[len("gen_vision_model."):]] = value
                continue
            key = _ds_to_hf(key)
        elif key.startswith(HF_SKIP):
            continue
        if key.startswith("model.vqmodel."):
            vq[hf_vq_to_llamagen(key[len("model.vqmodel."):])] = value
        elif key.startswith("model.language_model."):
            name = key[len("model.language_model."):]
            lm["text_embed." + name[len("embed_tokens."):] if name.startswith("embed_tokens.") else name] = value
        else:
            prefix = next((p for p in HERE if key.startswith(p)), None)
            lm[HERE[prefix] + key[len(prefix):] if prefix else key] = value  # unknown keys stay: load_into names them
    return lm, vq


def _ds_to_hf(key: str) -> str:
    if key.startswith("language_model.model."):
        return "model.language_model." + key[len("language_model.model."):]
    for hf, ds in GEN_NAMES:
        if key.startswith(ds):
            return hf + key[len(ds):]
    return key


def to_deepseek(hf_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """transformers' Janus keys -> DeepSeek's (the inverse of transformers' conversion script)."""
    out = {}
    for key, value in hf_state.items():
        if key.startswith("model.language_model."):
            out["language_model.model." + key[len("model.language_model."):]] = value
        elif key == "lm_head.weight":
            out["language_model.lm_head.weight"] = value
        elif key.startswith("model.vqmodel."):
            out["gen_vision_model." + hf_vq_to_llamagen(key[len("model.vqmodel."):])] = value
        elif key.startswith(("model.vision_model.", "model.aligner.")):
            out[key[len("model."):]] = value
        else:
            hf = next((h for h, _ in GEN_NAMES if key.startswith(h)), None)
            if hf is None:
                raise KeyError(f"no DeepSeek name for {key}")
            out[dict(GEN_NAMES)[hf] + key[len(hf):]] = value
    return out


def read_weights(folder: Path, skip: tuple[str, ...]) -> dict[str, Tensor]:
    """Every tensor of the folder's *.safetensors (else pytorch_model*.bin) except `skip` prefixes."""
    files = sorted(folder.glob("*.safetensors"))
    state: dict[str, Tensor] = {}
    if files:
        from safetensors import safe_open

        for f in files:
            with safe_open(str(f), framework="pt") as sf:
                for key in sf.keys():
                    if not key.startswith(skip):
                        state[key] = sf.get_tensor(key)
        return state
    files = sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise CheckpointError(f"{folder}: no weights (*.safetensors or pytorch_model*.bin)")
    for f in files:
        obj = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        state.update({k: v for k, v in obj.items() if not k.startswith(skip)})
    return state


def vq_config_from_weights(vq: dict[str, Tensor], base: VQConfig) -> VQConfig:
    """The VQ's widths read off its decoder tensors (DeepSeek's config only names it "VQ-16")."""
    try:
        codes, code_dim = vq["quantize.embedding.weight"].shape
        z = vq["post_quant_conv.weight"].shape[0]
        levels = sorted({int(m.group(1)) for k in vq if (m := re.match(r"decoder\.conv_blocks\.(\d+)\.", k))})
        widths = [vq[f"decoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0] for i in levels]
        res = len({k.split(".")[4] for k in vq if k.startswith("decoder.conv_blocks.0.res.")})
    except KeyError as e:
        raise CheckpointError(f"gen_vision_model: missing {e.args[0]}") from None
    ch = widths[-1]  # the highest-resolution level has multiplier 1 in every LlamaGen VQ
    return replace(base, codebook_size=codes, codebook_embed_dim=code_dim, z_channels=z, ch=ch,
                   ch_mult=tuple(w // ch for w in reversed(widths)), num_res_blocks=res - 1)


def load_janus(name: str, folder: str | Path, *, device="cpu", dtype=torch.float32) -> tuple[ModelSpec, JanusLM, VQModel]:
    """(spec from the folder's config, JanusLM in `dtype`, VQ decoder in fp32), strictly loaded."""
    folder = Path(folder)
    try:
        config = read_config(folder)
        layout = folder_layout(config)
        spec = spec_from_config(name, config)
    except JanusConfigError as e:
        raise CheckpointError(f"--checkpoint {folder}: {e}") from None
    state = read_weights(folder, DS_SKIP if layout == "deepseek" else HF_SKIP)
    lm_state, vq_state = split_state(state, layout)
    if layout == "deepseek":
        vq_cfg = vq_config_from_weights(vq_state, spec.vq)
        spec = replace(spec, vq=vq_cfg, image_size=spec.grid * vq_cfg.downsample)
    with torch.device("meta"):  # every tensor comes from the files; the LM is cast once, as it loads
        lm = JanusLM(spec.gpt, spec.num_tokens).to(dtype)
        vq = VQModel(spec.vq)
    load_into(lm, lm_state, source_name=f"{folder} (language model)", assign=True)
    # LlamaGen-code VQs may carry a codebook-usage counter; it is training bookkeeping, not weights.
    load_into(vq, vq_state, source_name=f"{folder} (VQ decoder)", assign=True,
              ignore_patterns=JUNK_KEYS + ("quantize.codebook_used",))
    vq.quantize.codebook_used = torch.zeros(vq.quantize.codebook_used.shape)
    return spec, _ready(lm, device, dtype), _ready(vq, device, torch.float32)


def random_janus(spec: ModelSpec, *, device="cpu", dtype=torch.float32, seed: int = 0) -> tuple[JanusLM, VQModel]:
    """Random weights of a registered size (pipeline trials, bench): normal(0.02) like LlamaGen's init."""

    lm = JanusLM(spec.gpt, spec.num_tokens)
    init_random(lm, seed)
    torch.manual_seed(seed)
    vq = VQModel(spec.vq)
    return _ready(lm, device, dtype), _ready(vq, device, torch.float32)


def _ready(module, device, dtype):
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)
