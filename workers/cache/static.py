"""The KV cache as a captured decode step needs it: fixed addresses, validity in tensors.

`KVCache` (kv.py) attends over `[:length]` with `length` a Python int, so every step has a new
shape. `StaticKVCache` keeps the same storage layout and the same line-boundary compaction, but a
decode step
  * writes the new key/value at `lengths[row, head]` (a device tensor),
  * attends over a fixed `span` of entries, masking those at or beyond `lengths` (and padded
    caption entries), so the step has one shape for a whole wave and can be compiled or captured.
`lengths` is per (row, head) although every row and head holds the same count today: a policy with
per-head budgets only has to write its kept counts there.

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
        self.lengths = torch.zeros(rows, n_head, dtype=torch.long, device=device)
        # False = a padded caption entry of that row: never attended to (t2i)
        self.prefix_valid = torch.ones(rows, 1, self.capacity, dtype=torch.bool, device=device)
        self.row_index = torch.arange(rows, device=device)[:, None]
        self.head_index = torch.arange(n_head, device=device)[None, :]
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
        self.length, self.visual_seen, self._placed, self.compaction_s = 0, 0, (0, 0), 0.0
        self.lengths.zero_()
        self.prefix_valid.fill_(True)
        if prefix_mask is not None:
            self.prefix_valid[:, 0, :self.layout.prefix] = prefix_mask
        for s in self.state:
            for t in s.values():
                t.zero_()

    # -- host-side bookkeeping, between captured steps --------------------------------------
    def sync_lengths(self) -> None:
        """Device lengths <- the host's count (after prefill and after every compaction)."""
        self.lengths.fill_(self.length)

    def end_line(self, line: int) -> None:
        before = self.length
        super().end_line(line)
        if self.length != before:
            self.sync_lengths()

    # -- inside the captured step -----------------------------------------------------------
    def decode_attention(self, t: Tensor, span: int) -> "DecodeAttention":
        """What one captured step's layers attend through; `t` [1] is the fed token's visual index."""
        valid = self.entry_index[:span] <= self.lengths[:, :, None]  # filled entries + the one written now
        mask = (valid & self.prefix_valid[:, :, :span])[:, :, None, :]  # [R, H, 1, span]
        column = torch.remainder(t, self.layout.width).expand(self.rows, self.k[0].shape[1])
        return DecodeAttention(self, span, mask, column)


@dataclass
class DecodeAttention:
    """The per-step view the model's layers call (`attend`), local to one step so no step leaves
    tensors behind on the cache (a CUDA graph's temporaries must die with the step)."""

    cache: StaticKVCache
    span: int
    mask: Tensor  # [R, H, 1, span] bool
    column: Tensor  # [R, H]: where in the line's query stash this token's query goes

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        c = self.cache
        slot = (c.row_index, c.head_index, c.lengths)
        c.k[layer].index_put_(slot, k[:, :, 0])
        c.v[layer].index_put_(slot, v[:, :, 0])
        if c.queries is not None:
            c.queries[layer].index_put_((c.row_index, c.head_index, self.column), q[:, :, 0])
        keys, values = c.k[layer][:, :, :self.span], c.v[layer][:, :, :self.span]
        return masked_attention(q, keys, values, self.mask)


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
