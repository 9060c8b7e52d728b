"""The static, preallocated KV cache: `layers x [rows, heads, capacity, head_dim]`.

All rows of one engine wave advance in lockstep (every item has the same number of tokens), so
every row and head holds the same number of entries and decode attention is a plain fused SDPA
over `[:length]` with no mask (c2i). Entries are laid out as [prefix | kept visual | current line];
keys are stored after RoPE, so compaction (a per-head gather) never changes a kept key's position.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor

from linegen.workers.cache.base import CachePolicy, Layout
from linegen.workers.cache.context import LineContext, line_attention


def cache_bytes_per_row(policy: CachePolicy, layout: Layout, n_layer: int, n_head: int,
                        head_dim: int, dtype_bytes: int) -> int:
    """Bytes one cache row (one sequence, or one half of a CFG pair) needs in this layout."""
    capacity = layout.prefix + policy.visual_capacity(layout)
    kv = 2 * n_layer * n_head * capacity * head_dim * dtype_bytes
    extra = 0
    if policy.needs_queries:
        extra += n_layer * n_head * layout.width * head_dim * dtype_bytes
    if policy.budget(layout) < layout.num_tokens:
        extra += n_layer * n_head * policy.visual_capacity(layout) * 2  # original positions (int16)
    return kv + extra


class KVCache:
    def __init__(self, policy: CachePolicy, layout: Layout, rows: int, n_layer: int, n_head: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device, pairs: int = 0,
                 prefix_mask: Tensor | None = None, score_chunk_rows: int = 64):
        self.policy, self.layout, self.rows, self.pairs = policy, layout, rows, pairs
        self.capacity = layout.prefix + policy.visual_capacity(layout)
        self.budget = policy.budget(layout)
        self.compresses = self.budget < layout.num_tokens
        shape = (rows, n_head, self.capacity, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.length = 0  # entries filled in every row/head (prefix + visual)
        self.visual_seen = 0  # visual tokens consumed so far (absolute visual index of the next one)
        # prefix_mask [rows, prefix] (t2i padding): False entries are never attended to.
        self.prefix_mask = prefix_mask
        self.score_chunk_rows = score_chunk_rows
        self.queries: list[Tensor] | None = None
        if policy.needs_queries:
            self.queries = [torch.zeros(rows, n_head, layout.width, head_dim, dtype=dtype, device=device)
                            for _ in range(n_layer)]
        self.positions: list[Tensor] | None = None
        self.state: list[dict] = []
        if self.compresses:
            vcap = policy.visual_capacity(layout)
            # int16 is enough (grids up to 181x181) and keeps this bookkeeping ~1% of the cache
            self.positions = [torch.zeros(rows, n_head, vcap, dtype=torch.int16, device=device)
                              for _ in range(n_layer)]
            self.state = [{name: torch.zeros(rows, n_head, vcap, dtype=torch.float32, device=device)
                           for name in policy.state_names} for _ in range(n_layer)]
        self._placed = (0, 0)  # (visual entries whose positions are recorded, visual tokens they cover)
        self.compaction_s = 0.0

    # -- accounting -------------------------------------------------------------------------
    def nbytes(self) -> int:
        tensors = self.k + self.v + (self.queries or []) + (self.positions or [])
        tensors += [t for s in self.state for t in s.values() if isinstance(t, Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def visual_length(self) -> int:
        return self.length - self.layout.prefix

    # -- the attention hook the model calls -------------------------------------------------
    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        s = k.shape[2]
        start, end = self.length, self.length + s
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} entries > capacity {self.capacity}")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        if self.queries is not None and start >= self.layout.prefix:
            col = self.visual_seen % self.layout.width
            self.queries[layer][:, :, col:col + s] = q
        keys, values = self.k[layer][:, :, :end], self.v[layer][:, :, :end]
        mask = self._mask(start, end, q.device)
        if mask is None and s > 1:
            return F.scaled_dot_product_attention(q, keys, values, is_causal=True)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)

    def _mask(self, start: int, end: int, device: torch.device) -> Tensor | None:
        s = end - start
        if self.prefix_mask is None:
            return None
        cols = torch.ones(self.rows, end, dtype=torch.bool, device=device)
        p = self.layout.prefix
        cols[:, :p] = self.prefix_mask
        mask = cols[:, None, None, :].expand(self.rows, 1, s, end)
        if s > 1:
            causal = torch.ones(s, end, dtype=torch.bool, device=device).tril(diagonal=start)
            mask = mask & causal
            # LlamaGen forces the diagonal so padded prefix queries still attend to themselves.
            diag = torch.zeros(s, end, dtype=torch.bool, device=device)
            diag[torch.arange(s), torch.arange(start, end)] = True
            mask = mask | diag
        return mask

    # -- step bookkeeping, called by the engine ---------------------------------------------
    def advance(self, s: int) -> None:
        """After a forward of `s` tokens; compacts when a visual line has just been completed."""
        was_prefix = self.length < self.layout.prefix
        self.length += s
        if was_prefix:
            return
        self.visual_seen += s
        if self.visual_seen % self.layout.width == 0:
            self.end_line(self.visual_seen // self.layout.width - 1)

    def _place_positions(self) -> None:
        """Record the original visual index of the entries appended since the last line boundary.

        Done once per line rather than per step: positions are only read when a line is scored, and
        a per-step write would add a small kernel per layer to every decode step.
        """
        start, seen = self._placed
        vl = self.visual_length()
        if vl > start:
            index = torch.arange(seen, seen + vl - start, device=self.positions[0].device)
            for pos in self.positions:
                pos[:, :, start:vl] = index
        self._placed = (vl, self.visual_seen)

    def end_line(self, line: int) -> None:
        if not self.compresses:
            return
        self._place_positions()
        need_scores = self.visual_length() > self.budget
        if not need_scores and not any(self.state):  # H2O accumulates scores even before the first eviction
            return
        t0 = time.perf_counter()
        for layer in range(len(self.k)):
            self._compact_layer(layer, line, compact=need_scores)
        self.compaction_s += time.perf_counter() - t0

    def _line_attention(self, layer: int) -> Tensor | None:
        if self.queries is None:
            return None
        w = self.layout.width
        keys = self.k[layer][:, :, :self.length]
        key_mask = None
        if self.prefix_mask is not None:
            key_mask = torch.ones(self.rows, self.length, dtype=torch.bool, device=keys.device)
            key_mask[:, :self.layout.prefix] = self.prefix_mask
        q = self.queries[layer]
        # Chunk rows so the explicit [R, H, w, L] fp32 scores stay small at large batch.
        chunks = []
        for r0 in range(0, self.rows, self.score_chunk_rows):
            r1 = min(self.rows, r0 + self.score_chunk_rows)
            km = None if key_mask is None else key_mask[r0:r1]
            chunks.append(line_attention(q[r0:r1], keys[r0:r1], w, km))
        return torch.cat(chunks) if len(chunks) > 1 else chunks[0]

    def _compact_layer(self, layer: int, line: int, compact: bool) -> None:
        p, vl = self.layout.prefix, self.visual_length()
        positions = self.positions[layer][:, :, :vl]
        ctx = LineContext(layer=layer, line=line, layout=self.layout, positions=positions,
                          attention=self._line_attention(layer), state=self.state[layer], pairs=self.pairs)
        if self.policy.needs_keys:  # R-KV's key similarity (workers/cache/rkv.py)
            ctx.keys = self.k[layer][:, :, p:p + vl]
        scores = self.policy.score(ctx)  # also updates accumulated state
        if not compact:
            return
        if self.pairs and self.policy.cfg_shared:
            # Shared CFG selection: the unconditional row keeps what its conditional partner keeps.
            scores = scores.clone()
            scores[self.pairs:2 * self.pairs] = scores[:self.pairs]
        keep = scores.topk(self.budget, dim=-1).indices.sort(dim=-1).values  # [R, H, B]
        idx = keep.unsqueeze(-1).expand(-1, -1, -1, self.k[layer].shape[-1])
        for buf in (self.k[layer], self.v[layer]):
            kept = buf[:, :, p:p + vl].gather(2, idx)
            buf[:, :, p:p + self.budget] = kept
        self.positions[layer][:, :, :self.budget] = positions.gather(2, keep)
        for t in self.state[layer].values():
            if isinstance(t, Tensor) and t.dim() == 3:
                t[:, :, :self.budget] = t[:, :, :vl].gather(2, keep)
                t[:, :, self.budget:] = 0
        if layer == len(self.k) - 1:
            self.length = p + self.budget
            self._placed = (self.budget, self.visual_seen)
