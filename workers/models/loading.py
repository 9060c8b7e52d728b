"""Build a registered model's GPT and VQ, from checkpoints or with random weights."""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import torch

from linegen.workers.models.checkpoint import init_random, load_into, load_vq, read_checkpoint, source_name
from linegen.workers.models.config import ModelSpec
from linegen.workers.models.gpt import GPT
from linegen.workers.models.vq import VQModel

Source = str | Path | BinaryIO | dict


def load_gpt(spec: ModelSpec, source: Source | None, *, random_seed: int = 0) -> GPT:
    if source is None:
        gpt = GPT(spec.gpt)
        init_random(gpt, random_seed)
        return gpt.eval().requires_grad_(False)
    state = read_checkpoint(source)
    with torch.device("meta"):  # every tensor comes from the file: skip the random init
        gpt = GPT(spec.gpt)
    load_into(gpt, state, source_name=source_name(source), assign=True)
    return gpt.eval().requires_grad_(False)


def load_model(spec: ModelSpec, checkpoint: Source | None, vq_checkpoint: Source | None, *,
               device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               random_seed: int = 0) -> tuple[GPT, VQModel]:
    """GPT in `dtype` on `device`; the VQ decoder always in fp32 (as LlamaGen does). A Janus model's
    `checkpoint` is its folder, which holds the VQ too (workers/models/janus_checkpoint.py)."""
    from linegen.workers.models.janus_config import is_janus

    if is_janus(spec):
        from linegen.workers.models.janus_checkpoint import load_janus, random_janus

        if checkpoint is None:
            return random_janus(spec, device=device, dtype=dtype, seed=random_seed)
        return load_janus(spec.name, checkpoint, device=device, dtype=dtype)[1:]
    gpt = load_gpt(spec, checkpoint, random_seed=random_seed).to(device=device, dtype=dtype)
    if vq_checkpoint is None:
        torch.manual_seed(random_seed)
        vq = VQModel(spec.vq)
    else:
        vq = load_vq(spec.vq, vq_checkpoint)
    return gpt, vq.to(device=device, dtype=torch.float32).eval()
