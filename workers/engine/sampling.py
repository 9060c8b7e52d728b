"""Classifier-free guidance and token sampling, per row, as LlamaGen does it (docs/llamagen.md).

Randomness: every item draws its uniforms from its own generator seeded by the item's seed, and a
token is picked by inverse-CDF sampling of its filtered distribution. An item's tokens therefore do
not depend on which other items share its batch, or on its row.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from linegen.workers.models.config import SamplingParams


@dataclass
class BatchSampling:
    """Per-row sampling settings of one wave, as tensors on the decode device."""

    cfg_scale: Tensor  # [n] fp32
    temperature: Tensor  # [n] fp32
    top_k: Tensor  # [n] int64, 0 = off
    top_p: Tensor  # [n] fp32
    uniforms: Tensor  # [n, num_tokens] fp32 in [0, 1), one per token to sample

    @classmethod
    def build(cls, params: list[SamplingParams], seeds: list[int], num_tokens: int,
              device: torch.device) -> "BatchSampling":
        uniforms = torch.stack([
            torch.rand(num_tokens, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64).float()
            for s in seeds])
        f32 = dict(dtype=torch.float32, device=device)
        return cls(
            cfg_scale=torch.tensor([p.cfg_scale for p in params], **f32),
            temperature=torch.tensor([max(p.temperature, 1e-5) for p in params], **f32),
            top_k=torch.tensor([p.top_k for p in params], dtype=torch.long, device=device),
            top_p=torch.tensor([p.top_p for p in params], **f32),
            uniforms=uniforms.to(device),
        )


def guide(logits: Tensor, n: int, cfg_scale: Tensor, guided: bool) -> Tensor:
    """logits [2n or n, V] fp32 -> [n, V]: uncond + s*(cond - uncond); rows with s <= 1 use cond only."""
    if not guided:
        return logits[:n]
    cond, uncond = logits[:n], logits[n:2 * n]
    s = cfg_scale[:, None]
    mixed = uncond + s * (cond - uncond)
    return torch.where(s > 1, mixed, cond)


def filter_logits(logits: Tensor, top_k: Tensor, top_p: Tensor, *, k_bound: int | None = None,
                  use_top_p: bool | None = None) -> Tensor:
    """Top-k (ties kept) then HF-style top-p, per row. logits [n, V] fp32 (already temperature-scaled).

    k_bound / use_top_p: what the wave needs, known on the host (a captured step cannot look at
    the data): top-k runs over the k_bound largest (>= every row's k; 0 = no row uses top-k), top-p
    runs for every row when use_top_p. None: decided from the tensors (the eager reference path).
    """
    vocab = logits.shape[-1]
    k = torch.where((top_k > 0) & (top_k < vocab), top_k, torch.zeros_like(top_k))
    if k_bound is None:
        k_bound = int(k.max()) if bool((k > 0).any()) else 0
    if use_top_p is None:
        use_top_p = bool((top_p < 1).any())
    if k_bound > 0:
        kth = logits.topk(min(k_bound, vocab), dim=-1).values.gather(1, (k.clamp(min=1) - 1)[:, None])
        drop = (logits < kth) & (k > 0)[:, None]
        logits = logits.masked_fill(drop, float("-inf"))
    if use_top_p:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cum > top_p[:, None]
        # shift right: keep the first token that crosses the threshold
        remove = torch.cat([torch.zeros_like(remove[:, :1]), remove[:, :-1]], dim=1)
        remove = torch.zeros_like(remove).scatter(1, order, remove)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def top_k_bound(params: list[SamplingParams], vocab: int) -> int:
    """The k_bound a wave's captured step uses: a power of two >= every row's top-k, so waves
    with different k share one graph; 0 when no row filters by top-k."""
    ks = [p.top_k for p in params if 0 < p.top_k < vocab]
    if not ks:
        return 0
    return min(vocab, 1 << (max(ks) - 1).bit_length())


def draw(logits: Tensor, temperature: Tensor, top_k: Tensor, top_p: Tensor, u: Tensor, *,
         k_bound: int | None = None, use_top_p: bool | None = None) -> Tensor:
    """Guided logits [n, V] and one uniform per row u [n, 1] -> tokens [n] (inverse-CDF sampling)."""
    scaled = logits / temperature[:, None]
    probs = filter_logits(scaled, top_k, top_p, k_bound=k_bound, use_top_p=use_top_p).softmax(dim=-1)
    cdf = probs.cumsum(dim=-1)
    # right=True: the first index whose cdf exceeds u, which can never be a zero-probability token
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=logits.shape[-1] - 1).squeeze(1)


def sample(logits: Tensor, sampling: BatchSampling, step: int) -> Tensor:
    """Guided logits [n, V] -> tokens [n] for token index `step` of every item."""
    return draw(logits, sampling.temperature, sampling.top_k, sampling.top_p, sampling.uniforms[:, step:step + 1])
