"""Read official LlamaGen checkpoint files (GPT and VQ) and load them strictly.

Layouts (docs/llamagen.md, "Checkpoint files"): a `torch.save` pickle holding either a dict with the state
dict under `model` / `module` / `state_dict` / `ema` plus training extras, or the state dict
itself (FSDP `consolidated.pth`). S3 and other remote sources are resolved to a local file by
the caller; this module only reads local paths, file objects and already-loaded dicts.
"""
from __future__ import annotations

import fnmatch
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Union

import torch
import torch.nn as nn
from torch import Tensor

from linegen.workers.models.config import VQConfig
from linegen.workers.models.vq import VQModel

Source = Union[str, os.PathLike, IO[bytes], Mapping]

# The official GPT sample scripts take `model` (DDP), else `module` (DeepSpeed), else
# `state_dict`; they never read `ema`, so it is only a last resort here. (The VQ demo scripts
# prefer `ema`, but generation uses `model`, and parity with generation is what we want.)
STATE_KEYS = ("model", "module", "state_dict", "ema")

# Wrapper prefixes: DDP/DeepSpeed (`module.`) and torch.compile (`_orig_mod.`).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

# Buffers that sampling code may leave in a saved state dict; they hold no learned weights.
JUNK_KEYS = ("freqs_cis", "causal_mask", "*.kv_cache.k_cache", "*.kv_cache.v_cache")

# A VQ file always carries the encoder; a decoder-only VQModel does not need it.
VQ_ENCODER_PREFIXES = ("encoder.", "quant_conv.")


class CheckpointError(Exception):
    """A checkpoint that cannot be read, or that does not fit the model."""


def source_name(source: Source) -> str:
    """A human-readable name for error messages."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, Mapping):
        return "<in-memory state dict>"
    return str(getattr(source, "name", "<file object>"))


def read_checkpoint(source: Source) -> dict[str, Tensor]:
    """Load a checkpoint and return its model state dict, wrapper prefixes stripped.

    Only load trusted files: the official files may pickle an `argparse.Namespace` under `args`,
    which torch >= 2.6 refuses with `weights_only=True`, so full unpickling is used.
    """
    name = source_name(source)
    obj = source if isinstance(source, Mapping) else _torch_load(source, name)
    return _strip_prefixes(_find_state_dict(obj, name), name)


def _torch_load(source: str | os.PathLike | IO[bytes], name: str) -> Any:
    try:
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise CheckpointError(f"{name}: no such checkpoint file")
            # Zip-format files (torch >= 1.6) can be memory-mapped: a multi-GB fp32 GPT then
            # does not have to sit in RAM next to its bf16 copy. Legacy files cannot.
            mmap = zipfile.is_zipfile(path)
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        return torch.load(source, map_location="cpu", weights_only=False)
    except (CheckpointError, MemoryError):
        raise
    except Exception as e:  # torch.load fails with many types (UnpicklingError, RuntimeError, EOFError, ...)
        first_line = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{name}: not a readable torch checkpoint ({type(e).__name__}: {first_line})") from e


def _tensors(d: Mapping | nn.Module) -> dict[str, Tensor]:
    if isinstance(d, nn.Module):
        return dict(d.state_dict())
    return {k: v for k, v in d.items() if isinstance(k, str) and isinstance(v, Tensor)}


def _find_state_dict(obj: Any, name: str) -> dict[str, Tensor]:
    if isinstance(obj, nn.Module):  # someone saved the whole module
        return _tensors(obj)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{name}: expected a dict in the checkpoint, found {type(obj).__name__}")
    for key in STATE_KEYS:
        entry = obj.get(key)
        if isinstance(entry, (Mapping, nn.Module)):
            state = _tensors(entry)
            if not state:
                raise CheckpointError(f"{name}: entry {key!r} holds no tensors")
            return state
    # FSDP consolidated.pth: the file is the state dict itself.
    state = _tensors(obj)
    if not state:
        entries = ", ".join(map(str, list(obj)[:8])) or "nothing"
        raise CheckpointError(
            f"{name}: no state dict found (no {'/'.join(STATE_KEYS)} entry and no tensors; has {entries})"
        )
    return state


def _strip_prefixes(state: dict[str, Tensor], name: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        clean = key
        while clean.startswith(WRAPPER_PREFIXES):
            clean = clean.split(".", 1)[1]
        if clean in out:
            raise CheckpointError(f"{name}: key {clean!r} appears twice once wrapper prefixes are removed")
        out[clean] = value
    return out


def _listing(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{len(keys)} {'key' if len(keys) == 1 else 'keys'}: {shown}{more}"


def load_into(
    module: nn.Module,
    state: Mapping[str, Tensor],
    *,
    source_name: str,
    optional_prefixes: tuple[str, ...] = (),
    ignore_patterns: tuple[str, ...] = JUNK_KEYS,
    assign: bool = False,
) -> None:
    """Load `state` into `module`, strictly.

    Keys matching `ignore_patterns` (fnmatch, on either side) are skipped, and so are keys under
    an `optional_prefixes` entry that the module has nothing under. Everything else must match
    one to one with equal shapes, or CheckpointError names the file and the offending keys.
    Floating tensors end up in the module's dtype. With `assign=True` the module's tensors are
    replaced by the checkpoint's (build the module on the meta device to skip random init);
    they may then share memory with `state`, and the module's own ignored buffers are left
    as they were (still on meta if built there: the caller must materialise them).
    """
    expected = module.state_dict()

    def ignored(key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, p) for p in ignore_patterns)

    absent = tuple(p for p in optional_prefixes if not any(k.startswith(p) for k in expected))
    have = {k for k in state if not ignored(k) and not (absent and k.startswith(absent))}
    need = {k for k in expected if not ignored(k)}

    # Module order for missing keys and file order for the rest reads better than sorted order.
    missing = [k for k in expected if k in need and k not in have]
    unexpected = [k for k in state if k in have and k not in need]
    wrong = [k for k in expected if k in need and k in have and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        problems = []
        if missing:
            problems.append("missing " + _listing(missing))
        if unexpected:
            problems.append("unexpected " + _listing(unexpected))
        if wrong:
            shapes = [f"{k} (expected {list(expected[k].shape)}, found {list(state[k].shape)})" for k in wrong]
            problems.append("wrong shape for " + _listing(shapes, limit=3))
        raise CheckpointError(
            f"{source_name} does not fit {type(module).__name__}: " + "; ".join(problems)
        )

    to_load: dict[str, Tensor] = {}
    for key in need:
        value, target = state[key], expected[key]
        # load_state_dict's in-place copy already casts; assignment would keep the file's dtype.
        if assign and value.is_floating_point() and value.dtype != target.dtype:
            value = value.to(target.dtype)
        to_load[key] = value
    # The module's own ignored buffers (e.g. a KV cache) keep their current values.
    to_load.update({k: v for k, v in expected.items() if k not in need})
    module.load_state_dict(to_load, strict=True, assign=assign)


def load_vq(config: VQConfig, source: Source, *, with_encoder: bool = False) -> VQModel:
    """Build a VQModel from an official (or same-layout) checkpoint, in eval mode, no grads."""
    state = read_checkpoint(source)
    with torch.device("meta"):  # every tensor comes from the file: skip the random init
        model = VQModel(config, with_encoder=with_encoder)
    load_into(model, state, source_name=source_name(source), optional_prefixes=VQ_ENCODER_PREFIXES, assign=True)
    return model.eval().requires_grad_(False)


def init_random(module: nn.Module, seed: int) -> None:
    """LlamaGen's training init (normal 0.02), seeded; gives noise images for pipeline trials."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            m.weight.data = torch.randn(m.weight.shape, generator=g) * 0.02
