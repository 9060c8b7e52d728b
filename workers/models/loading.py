"""Build a registered model's GPT and VQ, from checkpoints or with random weights."""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Callable

import torch
from torch import nn

from linegen.workers.models.checkpoint import init_random, load_into, load_vq, read_checkpoint, source_name
from linegen.workers.models.config import ModelSpec
from linegen.workers.models.gpt import GPT
from linegen.workers.models.janus_config import is_janus
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


def load_named(spec: ModelSpec, checkpoint: str | None, vq_checkpoint: str | None, *,
               fetch_file: Callable[[str], Path], fetch_folder: Callable[[str], Path],
               device, dtype, random_weights: bool = False, random_seed: int = 0) -> tuple[ModelSpec, nn.Module, nn.Module]:
    """A registered model's (spec, GPT, VQ) from the user's checkpoints, else the weights the model
    ships, else random ones. Where a checkpoint lives (a path, S3, a cache) is the caller's: it
    hands the fetchers that turn a location into a local file or folder. A Janus-Pro checkpoint is
    a folder whose own config decides the dimensions, so the spec returned is the checkpoint's."""

    if is_janus(spec):
        from linegen.workers.models.janus_checkpoint import load_janus, random_janus

        if checkpoint is None or random_weights:
            return (spec, *random_janus(spec, device=device, dtype=dtype, seed=random_seed))
        return load_janus(spec.name, fetch_folder(checkpoint), device=device, dtype=dtype)
    gpt_src, vq_src = checkpoint, vq_checkpoint
    if spec.builtin_weights is not None and not random_weights:
        # The shipped (GPT, VQ) pair fills in whichever file the user did not give.
        gpt_src = gpt_src if gpt_src is not None else spec.builtin_weights[0]
        vq_src = vq_src if vq_src is not None else spec.builtin_weights[1]
    if spec.random_by_design and gpt_src is None:
        gpt_src = vq_src = None
    gpt_path = None if random_weights or gpt_src is None else fetch_file(gpt_src)
    vq_path = None if random_weights or vq_src is None else fetch_file(vq_src)
    return (spec, *load_model(spec, gpt_path, vq_path, device=device, dtype=dtype, random_seed=random_seed))
