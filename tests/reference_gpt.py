"""An independent, deliberately plain LlamaGen forward written from docs/llamagen.md, used only to
check workers/models/gpt.py: explicit loops over layers, explicit 2-D RoPE angles per position,
explicit softmax attention over the whole sequence. No caches, no shared code with the package."""
from __future__ import annotations

import math

import torch


def rope_angles(prefix: int, grid: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    quarter = head_dim // 4
    n = prefix + grid * grid
    cos = torch.zeros(n, head_dim // 2)
    sin = torch.zeros(n, head_dim // 2)
    for pos in range(prefix, n):
        k = pos - prefix
        row, col = k // grid, k % grid
        for j in range(quarter):
            f = base ** (-4.0 * j / head_dim)
            cos[pos, j], sin[pos, j] = math.cos(row * f), math.sin(row * f)
            cos[pos, quarter + j], sin[pos, quarter + j] = math.cos(col * f), math.sin(col * f)
    return cos, sin


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [S, H, hd]; pairs are (2i, 2i+1)
    a, b = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, None, :], sin[:, None, :]
    out = torch.empty_like(x)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = b * c + a * s
    return out


def rmsnorm(x, w, eps=1e-5):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def forward(sd: dict, n_head: int, cond_emb: torch.Tensor, tokens: torch.Tensor, grid: int,
            pad_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One sequence. cond_emb [C, D] (already embedded); tokens [T] image tokens fed after the prefix.
    Returns fp32 logits [C + T, V]."""
    x = torch.cat([cond_emb, sd["tok_embeddings.weight"][tokens]], dim=0).double()
    S, D = x.shape
    C = cond_emb.shape[0]
    hd = D // n_head
    cos, sin = rope_angles(C, grid, hd)
    cos, sin = cos[:S].double(), sin[:S].double()
    allowed = torch.tril(torch.ones(S, S, dtype=torch.bool))
    if pad_mask is not None:
        allowed[:, :C] &= pad_mask[None, :]
        allowed |= torch.eye(S, dtype=torch.bool)
    layer = 0
    while f"layers.{layer}.attention.wqkv.weight" in sd:
        p = lambda name: sd[f"layers.{layer}.{name}"].double()
        h = rmsnorm(x, p("attention_norm.weight"))
        qkv = h @ p("attention.wqkv.weight").T
        q, k, v = qkv[:, :D], qkv[:, D:2 * D], qkv[:, 2 * D:]
        q = rotate(q.view(S, n_head, hd), cos, sin)
        k = rotate(k.view(S, n_head, hd), cos, sin)
        v = v.view(S, n_head, hd)
        out = torch.zeros(S, n_head, hd, dtype=torch.float64)
        for head in range(n_head):
            scores = q[:, head] @ k[:, head].T / math.sqrt(hd)
            scores = scores.masked_fill(~allowed, float("-inf"))
            out[:, head] = torch.softmax(scores, dim=-1) @ v[:, head]
        x = x + out.reshape(S, D) @ p("attention.wo.weight").T
        h = rmsnorm(x, p("ffn_norm.weight"))
        gate = h @ p("feed_forward.w1.weight").T
        up = h @ p("feed_forward.w3.weight").T
        x = x + (torch.nn.functional.silu(gate) * up) @ p("feed_forward.w2.weight").T
        layer += 1
    x = rmsnorm(x, sd["norm.weight"].double())
    return (x @ sd["output.weight"].double().T).float()


def embed_class(sd: dict, class_id: int) -> torch.Tensor:
    return sd["cls_embedding.embedding_table.weight"][class_id][None]


def embed_caption(sd: dict, caption: torch.Tensor) -> torch.Tensor:
    h = caption.double() @ sd["cls_embedding.cap_proj.fc1.weight"].double().T
    h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
    return (h @ sd["cls_embedding.cap_proj.fc2.weight"].double().T).float()
