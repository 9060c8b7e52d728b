"""What a policy sees at a line boundary, with the tensor helpers policies share.

The cache (workers/cache/kv.py) builds one `LineContext` per layer when a line has just been
consumed; a policy's `score` reads it and returns a keep-priority per cached visual entry.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from linegen.workers.cache.layout import Layout


@dataclass
class LineContext:
    layer: int
    line: int
    layout: Layout
    positions: Tensor  # [R, H, Lv] original visual index of every cached visual entry (int16)
    attention: Tensor | None  # [R, H, w, L] fp32 attention of the line's queries over all L cached keys
    state: dict  # the policy's per-layer state (`state_names`), kept aligned by the cache
    pairs: int  # rows [0, pairs) are conditional, [pairs, 2*pairs) their unconditional partners; 0 = no CFG
    keys: Tensor | None = None  # [R, H, Lv, d] the cached visual keys (post-RoPE), for key-similarity scores
    budget: int | None = None  # visual entries these heads keep (None: the policy's uniform budget)

    def visual_attention(self) -> Tensor:
        """[R, H, w, Lv]: the line's attention restricted to the visual entries (prefix columns dropped)."""
        return self.attention[..., self.layout.prefix:]

    def pool_1d(self, scores: Tensor, kernel: int) -> Tensor:
        """Max-pool scores along the cache order (kept entries stay in raster order)."""
        if kernel <= 1:
            return scores
        r, h, n = scores.shape
        pooled = torch.nn.functional.max_pool1d(scores.reshape(r * h, 1, n), kernel, stride=1, padding=kernel // 2)
        return pooled.reshape(r, h, n)

    def pool_2d(self, scores: Tensor, kernel: int) -> Tensor:
        """Max-pool scores over the 2-D token grid (missing, evicted cells count as -inf)."""
        if kernel <= 1:
            return scores
        r, h, _ = scores.shape
        g = self.layout.grid
        grid = torch.full((r, h, g * g), float("-inf"), dtype=scores.dtype, device=scores.device)
        positions = self.positions.long()
        grid.scatter_(2, positions, scores)
        pooled = torch.nn.functional.max_pool2d(grid.reshape(r * h, 1, g, g), kernel, stride=1, padding=kernel // 2)
        return pooled.reshape(r, h, g * g).gather(2, positions)

    def accumulate(self, name: str, scores: Tensor, decay: float) -> Tensor:
        """state[name] <- decay * state[name] + scores, per entry; returns a copy of the new total.

        The cache keeps the state aligned with the entries through every compaction, so an
        entry's total is the (decayed) attention it received from every line since it was written.
        """
        acc = self.state[name]
        vl = scores.shape[-1]
        acc[:, :, :vl].mul_(decay).add_(scores)
        return acc[:, :, :vl].clone()

    def from_row_above(self, scores: Tensor) -> Tensor:
        """Each entry gets the score of the token one grid row above it (0 where that one is gone).

        Adjacent lines attend alike *relative to themselves*: what line r gave to (i - 1, c), line
        r + 1 gives to (i, c) if the head looks at fixed offsets (a local head).
        """
        r, h, _ = scores.shape
        g = self.layout.grid
        grid = torch.zeros((r, h, g * g + g), dtype=scores.dtype, device=scores.device)
        positions = self.positions.long()
        grid.scatter_(2, positions + g, scores)  # slot p + g holds the score of token p
        return grid.gather(2, positions)

    def pair_sum(self, scores: Tensor) -> Tensor:
        """Conditional rows get their pair's summed scores (for one selection per CFG pair)."""
        if not self.pairs:
            return scores
        out = scores.clone()
        out[:self.pairs] += scores[self.pairs:2 * self.pairs]
        return out

    def key_redundancy(self, threshold: float) -> Tensor:
        """[R, H, Lv] R-KV's redundancy of each cached visual key (workers/cache/rkv.py).

        Cosine similarity between keys, self excluded; for each key its most recent neighbour
        above `threshold` is not counted against it (R-KV keeps the newest of near-duplicates);
        the mean similarity each key receives, softmax-normalised over the keys.
        """
        k = self.keys.float()
        k = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        sim = torch.matmul(k, k.transpose(-1, -2))  # [R, H, Lv, Lv]
        n = sim.shape[-1]
        eye = torch.eye(n, dtype=torch.bool, device=sim.device)
        sim = sim.masked_fill(eye, 0.0)
        # entries are in raster order, so the largest similar column index is the most recent one
        cols = torch.arange(n, device=sim.device).expand_as(sim)
        last = torch.where(sim > threshold, cols, torch.zeros_like(cols)).amax(dim=-1, keepdim=True)
        sim = sim.scatter(-1, last, 0.0)
        return sim.mean(dim=-2).softmax(dim=-1)

    @staticmethod
    def protect(scores: Tensor, keep: Tensor) -> Tensor:
        """Entries where `keep` is True score +inf: the cache always keeps them."""
        return scores.masked_fill(keep, float("inf"))


def line_attention(q: Tensor, k: Tensor, line_len: int, key_mask: Tensor | None) -> Tensor:
    """Explicit fp32 softmax(q k^T / sqrt(d)) of a line's queries over all cached keys.

    q: [R, H, w, d]; k: [R, H, L, d] where the last `line_len` keys are the line's own tokens
    (the causal mask applies only among them); key_mask: [R, L] bool (False = padded prefix) or None.
    """
    w, length = q.shape[2], k.shape[2]
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    # query j of the line may see line keys 0..j; everything before the line is visible.
    qi = torch.arange(w, device=q.device)[:, None] + (length - line_len)
    kj = torch.arange(length, device=q.device)[None, :]
    visible = kj <= qi  # [w, L]
    allowed = visible[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]
    logits = logits.masked_fill(~allowed, float("-inf"))
    return torch.softmax(logits, dim=-1)
