"""The LlamaGen GPT (class- and text-conditional), computing what docs/llamagen.md describes.

Module and parameter names follow the official checkpoints, so their state dicts load as they are.
The model itself holds no cache: decoding passes a cache object (workers/cache) into `forward`,
which lets the engine swap cache policies without touching the model.
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from linegen.workers.models.config import GPTConfig


class LayerCache(Protocol):
    """What an attention layer needs from a KV cache (see workers/cache/base.py)."""

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor: ...


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Statistics in fp32, then back to the input dtype before the (possibly bf16) weight.
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def precompute_rope_2d(grid: int, head_dim: int, prefix_len: int, base: float = 10000.0) -> Tensor:
    """[prefix_len + grid*grid, head_dim/2, 2] cos/sin table; condition rows are all zero.

    The zero rows are deliberate: LlamaGen was trained with them, so q and k at condition
    positions become zero vectors (docs/llamagen.md, "2-D RoPE" — do not "fix" them to identity).
    """
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    idx = torch.arange(grid, dtype=torch.float32)
    ang = torch.outer(idx, freqs)  # [grid, half/2]
    rows = ang[:, None, :].expand(grid, grid, -1)  # row index for every (row, col)
    cols = ang[None, :, :].expand(grid, grid, -1)  # column index
    angles = torch.cat([rows, cols], dim=-1).reshape(grid * grid, half)
    table = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    return torch.cat([torch.zeros(prefix_len, half, 2), table], dim=0)


def apply_rope(x: Tensor, rope: Tensor) -> Tensor:
    """x: [B, S, H, hd]; rope: [B or 1, S, hd/2, 2]. Interleaved pairs (2i, 2i+1), in fp32."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    rope = rope.unsqueeze(2)  # broadcast over heads
    x0, x1 = xs[..., 0], xs[..., 1]
    c, s = rope[..., 0], rope[..., 1]
    out = torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1)
    return out.flatten(3).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head = cfg.n_head
        self.head_dim = cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x: Tensor, rope: Tensor, cache: LayerCache | None, mask: Tensor | None) -> Tensor:
        b, s, d = x.shape
        q, k, v = self.wqkv(x).split(d, dim=-1)
        q = apply_rope(q.view(b, s, self.n_head, self.head_dim), rope).transpose(1, 2)
        k = apply_rope(k.view(b, s, self.n_head, self.head_dim), rope).transpose(1, 2)
        v = v.view(b, s, self.n_head, self.head_dim).transpose(1, 2)
        if cache is not None:
            y = cache.attend(self.layer, q, k, v)
        elif mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(b, s, d))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.attention = Attention(cfg, layer)
        self.feed_forward = FeedForward(cfg.dim, cfg.ffn_dim)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x: Tensor, rope: Tensor, cache: LayerCache | None, mask: Tensor | None) -> Tensor:
        h = x + self.attention(self.attention_norm(x), rope, cache, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        # Row num_classes is the null class used for classifier-free guidance.
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: Tensor) -> Tensor:
        return self.embedding_table(labels).unsqueeze(1)


class CaptionMLP(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, dim, bias=False)
        self.fc2 = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class CaptionEmbedder(nn.Module):
    def __init__(self, caption_dim: int, dim: int, tokens: int):
        super().__init__()
        self.cap_proj = CaptionMLP(caption_dim, dim)
        # A learned null caption, stored as a buffer in the official checkpoints.
        self.register_buffer("uncond_embedding", torch.randn(tokens, caption_dim) / caption_dim**0.5)

    def forward(self, captions: Tensor) -> Tensor:
        return self.cap_proj(captions)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        if cfg.cond == "c2i":
            self.cls_embedding: nn.Module = LabelEmbedder(cfg.num_classes, cfg.dim)
        else:
            self.cls_embedding = CaptionEmbedder(cfg.caption_dim, cfg.dim, cfg.caption_tokens)
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self._rope: dict[tuple[int, str], Tensor] = {}

    def rope_table(self, grid: int, device: torch.device) -> Tensor:
        key = (grid, str(device))
        if key not in self._rope:
            c = self.config
            self._rope[key] = precompute_rope_2d(grid, c.head_dim, c.cls_token_num, c.rope_base).to(device)
        return self._rope[key]

    def embed_condition(self, cond: Tensor) -> Tensor:
        """Class ids [B] -> [B,1,D]; caption features [B,120,caption_dim] -> [B,120,D]."""
        dtype = self.tok_embeddings.weight.dtype
        if self.config.cond == "t2i":
            cond = cond.to(dtype)
        return self.cls_embedding(cond).to(dtype)

    def null_condition(self, batch: int, device: torch.device) -> Tensor:
        if self.config.cond == "c2i":
            return torch.full((batch,), self.config.null_class, dtype=torch.long, device=device)
        null = self.cls_embedding.uncond_embedding
        return null.unsqueeze(0).expand(batch, -1, -1)

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        grid: int,
        cache: LayerCache | None = None,
        mask: Tensor | None = None,
        last_only: bool = True,
    ) -> Tensor:
        """x: input embeddings [B,S,D] at absolute `positions` [S] -> fp32 logits.

        `mask` (bool, True = attend) is only used without a cache; with a cache, the cache
        decides what each query sees.
        """
        rope = self.rope_table(grid, x.device)[positions].unsqueeze(0)
        for block in self.layers:
            x = block(x, rope, cache, mask)
        if last_only:
            x = x[:, -1:]
        return self.output(self.norm(x)).float()

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        return self.tok_embeddings(tokens)
