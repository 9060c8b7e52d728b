"""Janus-Pro's image-generation model, shaped like the LlamaGen GPT so the engine decodes it unchanged.

What the engine calls (workers/engine/engine.py, step.py): `tok_embeddings(image ids)` (here the
generation embedding followed by the aligner MLP), `layers` (blocks taking (x, rope, cache, mask)),
`norm`, `output` (the generation head), `rope_table`, `forward`, and `embed_prompt` for the prefix.
The prompt's own tokens go through the text embedding `text_embed`; the text `lm_head` is never
needed for images and is not built.

RoPE is LLaMA's 1-D "rotate half" form (pairs i and i + head_dim/2), computed as transformers does,
so fp32 logits match transformers' within rounding; positions are the row's index in its
left-padded sequence, as in transformers' generate with an attention mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from linegen.workers.models.gpt import LayerCache, RMSNorm
from linegen.workers.models.janus_config import JanusLMConfig


def precompute_rope_1d(length: int, head_dim: int, base: float) -> Tensor:
    """[length, head_dim/2, 2] cos/sin of position x inverse frequency (fp32, as transformers)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return torch.stack([angles.cos(), angles.sin()], dim=-1)


def apply_rope_half(x: Tensor, rope: Tensor) -> Tensor:
    """x: [B, S, H, hd]; rope: [1, S, hd/2, 2]. LLaMA's x*cos + rotate_half(x)*sin, in x's dtype."""
    half = x.shape[-1] // 2
    cos, sin = rope[..., 0].unsqueeze(2).to(x.dtype), rope[..., 1].unsqueeze(2).to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class JanusAttention(nn.Module):
    def __init__(self, cfg: JanusLMConfig, layer: int):
        super().__init__()
        self.layer, self.n_head, self.head_dim = layer, cfg.n_head, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.o_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x: Tensor, rope: Tensor, cache: LayerCache | None, mask: Tensor | None) -> Tensor:
        b, s, d = x.shape
        shape = (b, s, self.n_head, self.head_dim)
        q = apply_rope_half(self.q_proj(x).view(shape), rope).transpose(1, 2)
        k = apply_rope_half(self.k_proj(x).view(shape), rope).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        if cache is not None:
            y = cache.attend(self.layer, q, k, v)
        elif mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, s, d))


class JanusMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class JanusBlock(nn.Module):
    def __init__(self, cfg: JanusLMConfig, layer: int):
        super().__init__()
        self.self_attn = JanusAttention(cfg, layer)
        self.mlp = JanusMLP(cfg.dim, cfg.ffn_dim)
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x: Tensor, rope: Tensor, cache: LayerCache | None, mask: Tensor | None) -> Tensor:
        h = x + self.self_attn(self.input_layernorm(x), rope, cache, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class GenerationInput(nn.Module):
    """Image id -> the decoder's input: generation embedding (code width), then a 2-layer GELU MLP."""

    def __init__(self, cfg: JanusLMConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.image_embed_dim)
        self.fc1 = nn.Linear(cfg.image_embed_dim, cfg.dim)
        self.fc2 = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, ids: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(self.embedding(ids))))


class GenerationHead(nn.Module):
    """Hidden state -> image-code logits: Linear, GELU, Linear."""

    def __init__(self, cfg: JanusLMConfig):
        super().__init__()
        self.proj_out = nn.Linear(cfg.dim, cfg.head_hidden)
        self.vision_head = nn.Linear(cfg.head_hidden, cfg.vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.vision_head(F.gelu(self.proj_out(x)))


class JanusLM(nn.Module):
    def __init__(self, cfg: JanusLMConfig, num_tokens: int):
        super().__init__()
        self.config = cfg
        self.num_tokens = num_tokens  # image tokens after the prompt: sizes the rotary table
        self.text_embed = nn.Embedding(cfg.text_vocab_size, cfg.dim)
        self.layers = nn.ModuleList(JanusBlock(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.tok_embeddings = GenerationInput(cfg)
        self.output = GenerationHead(cfg)
        self._rope: dict[str, Tensor] = {}

    def rope_table(self, grid: int, device: torch.device) -> Tensor:
        """[prompt entries + N, hd/2, 2]; `grid` is unused (1-D positions), kept for the engine."""
        key = str(device)
        if key not in self._rope:
            c = self.config
            self._rope[key] = precompute_rope_1d(c.caption_tokens + self.num_tokens, c.head_dim, c.rope_base).to(device)
        return self._rope[key]

    def embed_tokens(self, ids: Tensor) -> Tensor:
        """Image ids -> decoder inputs (the engine's name for it)."""
        return self.tok_embeddings(ids)

    def embed_prompt(self, requests, guided: bool, device: torch.device) -> tuple[Tensor, Tensor]:
        """The prefix of a wave: each request's `caption` holds [2, P] token ids (the prompt, then
        its unconditional copy) and `caption_mask` [P] its real entries (left padding False)."""
        ids = torch.stack([r.caption for r in requests]).to(device)
        mask = torch.stack([r.caption_mask for r in requests]).to(device, torch.bool)
        tokens = torch.cat([ids[:, 0], ids[:, 1]]) if guided else ids[:, 0]
        if guided:
            mask = torch.cat([mask, mask])
        return self.text_embed(tokens), mask

    def forward(self, x: Tensor, positions: Tensor, grid: int, cache: LayerCache | None = None,
                mask: Tensor | None = None, last_only: bool = True) -> Tensor:
        rope = self.rope_table(grid, x.device)[positions].unsqueeze(0)
        for block in self.layers:
            x = block(x, rope, cache, mask)
        if last_only:
            x = x[:, -1:]
        return self.output(self.norm(x)).float()
