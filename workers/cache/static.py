"""The KV cache as a captured decode step needs it: fixed addresses, validity in tensors.

`KVCache` (kv.py) attends over `[:length]` with `length` a Python int, so every step has a new
shape. `StaticKVCache` keeps the same storage layout and the same line-boundary compaction, but a
decode step
  * writes the new key/value at `lengths[row, level]` (a device tensor),
  * attends over a fixed `span` of entries, masking those at or beyond `lengths` (and padded
    caption entries), so the step has one shape for a whole wave and can be compiled or captured.
`lengths` has one column per distinct budget (`level`): with per-head budgets the segments of
equal budget hold the same count, whatever their layer; a compressed cache's segments each
attend over their own capacity.

Storage is allocated once for the largest wave; `view(rows)` gives a smaller wave the leading rows
of the same tensors, so a graph captured on a view stays valid for every later wave of that size.
Prefill and compaction run outside the captured step (the parent class's code, on the host's
Python-int bookkeeping); after a compaction the device lengths are set from it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from linegen.workers.cache.base import CachePolicy, Layout
from linegen.workers.cache.kv import KVCache


class StaticKVCache(KVCache):
    def __init__(self, policy: CachePolicy, layout: Layout, rows: int, n_layer: int, n_head: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device, score_chunk_rows: int = 64):
        super().__init__(policy, layout, rows, n_layer, n_head, head_dim, dtype, device,
                         score_chunk_rows=score_chunk_rows)
        self.lengths = torch.zeros(rows, len(self.levels), dtype=torch.long, device=device)
        # False = a padded caption entry of that row: never attended to (t2i)
        self.prefix_valid = torch.ones(rows, 1, self.capacity, dtype=torch.bool, device=device)
        self.row_index = torch.arange(rows, device=device)[:, None]
        self.segment_heads = [torch.arange(len(s.heads), device=device)[None, :] for s in self.segments]
        self.entry_index = torch.arange(self.capacity, device=device)

    def view(self, rows: int) -> "StaticKVCache":
        """The leading `rows` rows of this storage, as a cache of their own (no copy)."""
        if rows > self.rows:
            raise ValueError(f"a view of {rows} rows exceeds the {self.rows} allocated")
        v = copy.copy(self)
        v.rows = rows
        v.k, v.v = [t[:rows] for t in self.k], [t[:rows] for t in self.v]
        v.queries = None if self.queries is None else [t[:rows] for t in self.queries]
        v.positions = None if self.positions is None else [t[:rows] for t in self.positions]
        v.state = [{name: t[:rows] for name, t in s.items()} for s in self.state]
        v.lengths, v.prefix_valid, v.row_index = self.lengths[:rows], self.prefix_valid[:rows], self.row_index[:rows]
        return v

    def start_wave(self, pairs: int, prefix_mask: Tensor | None) -> None:
        """Reset the bookkeeping for a new wave in place (addresses stay what graphs captured)."""
        self.pairs, self.prefix_mask = pairs, prefix_mask
        self.lengths_host, self._placed = [0] * len(self.segments), [(0, 0)] * len(self.segments)
        self.visual_seen, self.compaction_s = 0, 0.0
        self.lengths.zero_()
        self.prefix_valid.fill_(True)
        if prefix_mask is not None:
            self.prefix_valid[:, 0, :self.layout.prefix] = prefix_mask
        for s in self.state:
            for t in s.values():
                t.zero_()

    # -- host-side bookkeeping, between captured steps --------------------------------------
    def sync_lengths(self) -> None:
        """Device lengths <- the host's counts (after prefill and after every compaction)."""
        done = set()
        for seg, n in zip(self.segments, self.lengths_host):
            if seg.level not in done:
                self.lengths[:, seg.level].fill_(n)
                done.add(seg.level)

    def end_line(self, line: int) -> None:
        before = list(self.lengths_host)
        super().end_line(line)
        if self.lengths_host != before:
            self.sync_lengths()

    # -- inside the captured step -----------------------------------------------------------
    def decode_attention(self, t: Tensor, span: int) -> "DecodeAttention":
        """What one captured step's layers attend through; `t` [1] is the fed token's visual index.

        `span` bounds an uncompressed cache's attention (it grows through the wave); a compressed
        cache's segments always hold between their budget and their capacity, so each attends
        over its whole capacity."""
        spans = [s.capacity if self.compresses else min(span, s.capacity) for s in self.segments]
        masks = {}
        for seg, n in zip(self.segments, spans):
            if (seg.level, n) not in masks:
                # filled entries + the one written now
                valid = self.entry_index[:n] <= self.lengths[:, seg.level, None, None]
                masks[(seg.level, n)] = (valid & self.prefix_valid[:, :, :n])[:, :, None, :]  # [R, 1, 1, n]
        column = torch.remainder(t, self.layout.width).expand(self.rows, 1)
        return DecodeAttention(self, spans, [masks[(s.level, n)] for s, n in zip(self.segments, spans)], column)

    def step_done(self) -> None:
        """Inside the captured step: every segment holds one more entry."""
        self.lengths.add_(1)


@dataclass
class DecodeAttention:
    """The per-step view the model's layers call (`attend`), local to one step so no step leaves
    tensors behind on the cache (a CUDA graph's temporaries must die with the step)."""

    cache: StaticKVCache
    spans: list[int]  # per segment: entries attended over
    masks: list[Tensor]  # per segment: [R, 1, 1, span] bool
    column: Tensor  # [R, 1]: where in the line's query stash this token's query goes

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return self.cache.by_group(layer, q, k, v, self._segment)

    def _segment(self, i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        c, level, span = self.cache, self.cache.segments[i].level, self.spans[i]
        heads = c.segment_heads[i]
        slot = (c.row_index, heads, c.lengths[:, level:level + 1])
        c.k[i].index_put_(slot, k[:, :, 0])
        c.v[i].index_put_(slot, v[:, :, 0])
        if c.queries is not None:
            c.queries[i].index_put_((c.row_index, heads, self.column), q[:, :, 0])
        keys, values = c.k[i][:, :, :span], c.v[i][:, :, :span]
        return masked_attention(q, keys, values, self.masks[i])


def masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Decode attention of one query per row and head over a fixed span, `mask` True = attend.

    On GPUs the fused SDPA kernel takes the mask and accumulates in fp32. On CPUs its kernel is
    slow for one query (4-10x the explicit form at decode shapes, worst in bf16), so the scores,
    softmax and weighted sum are written out in fp32, which inductor fuses into two reductions.
    """
    if q.device.type == "cuda":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    probs = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    return torch.matmul(probs, v.float()).to(q.dtype)
