"""What a wave is made of and what it returns: the requests (one image each), the sampled tokens
and the wave's measurements. Shared by both decode paths (engine.py and static_wave.py)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from linegen.workers.engine.sampling import SamplingParams


@dataclass(frozen=True)
class GenRequest:
    """One image to generate. Exactly one of class_id (c2i) or caption (t2i) is set."""

    seed: int
    class_id: int | None = None
    caption: Tensor | None = None  # [caption_tokens, caption_dim] features, left-padded (Janus: [2, P] ids)
    caption_mask: Tensor | None = None  # [caption_tokens] bool, True = real token
    sampling: SamplingParams = field(default_factory=SamplingParams)


def requests_for(items, text=None) -> tuple[list[GenRequest], list[tuple[int, bool] | None]]:
    """Engine requests for planned items (anything with seed, class_id, prompt and sampling), and
    per item (caption tokens, truncated) or None. ``text``: the TextEncoder of a t2i model."""
    if text is None:
        requests = [GenRequest(seed=it.seed, class_id=it.class_id, sampling=it.sampling) for it in items]
        return requests, [None] * len(items)
    encoded = text.encode([it.prompt for it in items])
    requests = [GenRequest(seed=it.seed, caption=e.features, caption_mask=e.mask, sampling=it.sampling)
                for it, e in zip(items, encoded)]
    return requests, [(e.tokens, e.truncated) for e in encoded]


@dataclass
class WaveStats:
    batch_size: int
    rows: int
    tokens: int
    decode_s: float
    compaction_s: float
    kv_cache_bytes: int
    peak_memory_bytes: int
    compile_s: float = 0.0  # building compiled/captured steps before this wave; never inside decode_s
    path: str = "eager"  # "eager" (the reference path) or the static step's backend
    padded_batch: int = 0  # the bucket the static path ran this wave at (0 on the eager path)
    compile_decision: str = ""


@dataclass
class WaveResult:
    tokens: Tensor  # [n, N] int64 on CPU, raster order
    stats: WaveStats


def peak_memory_bytes(device: torch.device) -> int:
    """The allocator's peak on GPU; the process's peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
