"""The static, preallocated KV cache: per layer, `[rows, heads, capacity, head_dim]` per group of heads.

All rows of one engine wave advance in lockstep (every item has the same number of tokens), so
every row and head of a group holds the same number of entries and decode attention is a plain
fused SDPA over `[:length]` with no mask (c2i). Entries are laid out as [prefix | kept visual |
current line]; keys are stored after RoPE, so compaction (a per-head gather) never changes a kept
key's position.

A group (`Segment`) is the heads of one layer that keep the same budget. With one budget for every
head (the default) each layer is one segment of all its heads, stored and attended to exactly as a
plain cache. With per-head budgets (`head_shares`, workers/cache/head_budgets.py) a layer's heads
fall into a few segments, each with its own capacity (its budget plus one line) and length; a
layer's attention is one SDPA per segment over that segment's heads, put back in head order.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from linegen.workers.cache.base import CachePolicy, Layout
from linegen.workers.cache.context import LineContext, line_attention
from linegen.workers.cache.head_budgets import groups


def _capacity(layout: Layout, budget: int) -> int:
    """Entries a head with this visual budget holds at most: the prefix, its budget and one line."""
    return layout.prefix + min(layout.num_tokens, budget + layout.width)


def cache_capacity(policy: CachePolicy, layout: Layout, n_layer: int, n_head: int) -> int:
    """Entries of the largest head (the widest span a step attends over)."""
    return max(_capacity(layout, b) for layer in policy.head_budgets(layout, n_layer, n_head) for b in layer)


def scored_entries(policy: CachePolicy, layout: Layout, n_layer: int, n_head: int) -> int:
    """heads x entries of the largest group scored at once (a line's explicit attention is
    computed one group of equal-budget heads at a time)."""
    budgets = policy.head_budgets(layout, n_layer, n_head)
    return max(len(heads) * _capacity(layout, b) for layer in budgets for b, heads in groups(layer))


def cache_bytes_per_row(policy: CachePolicy, layout: Layout, n_layer: int, n_head: int,
                        head_dim: int, dtype_bytes: int) -> int:
    """Bytes one cache row (one sequence, or one half of a CFG pair) needs in this layout.

    Summed over every (layer, head) with its own budget: per-head budgets with the same total
    give the same bytes as the uniform budget (each head's capacity is its budget plus one line)."""
    budgets = [b for layer in policy.head_budgets(layout, n_layer, n_head) for b in layer]
    compresses = policy.budget(layout) < layout.num_tokens
    total = 0
    for b in budgets:
        capacity = _capacity(layout, b)
        total += 2 * capacity * head_dim * dtype_bytes  # keys and values
        if compresses:
            vcap = capacity - layout.prefix
            total += vcap * 2  # original positions (int16)
            total += vcap * 4 * len(policy.state_names)  # per-entry fp32 state (accumulated scores)
        if policy.needs_queries:
            total += layout.width * head_dim * dtype_bytes
    return total


@dataclass(frozen=True)
class Segment:
    """The heads of one layer that keep the same budget, stored together."""

    layer: int
    heads: tuple[int, ...]
    budget: int  # visual entries kept after a compaction
    capacity: int  # prefix + the most visual entries held
    level: int  # index of this budget among the cache's distinct budgets (the static cache's length column)


class KVCache:
    def __init__(self, policy: CachePolicy, layout: Layout, rows: int, n_layer: int, n_head: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device, pairs: int = 0,
                 prefix_mask: Tensor | None = None, score_chunk_rows: int = 64):
        self.policy, self.layout, self.rows, self.pairs = policy, layout, rows, pairs
        self.budget = policy.budget(layout)
        self.compresses = self.budget < layout.num_tokens
        self.segments = _segments(policy.head_budgets(layout, n_layer, n_head), layout)
        self.levels = sorted({s.budget for s in self.segments}, reverse=True)
        self.capacity = max(s.capacity for s in self.segments)
        self.by_layer = [[i for i, s in enumerate(self.segments) if s.layer == layer] for layer in range(n_layer)]
        # per layer: head indices of each segment, and the permutation that puts their outputs back in
        # order (none for a layer of one segment: all its heads, in order)
        self.head_index = [torch.tensor(s.heads, dtype=torch.long, device=device) for s in self.segments]
        self.inverse = [None if len(ids) == 1 else
                        torch.argsort(torch.tensor([h for i in ids for h in self.segments[i].heads], device=device))
                        for ids in self.by_layer]
        shapes = [(rows, len(s.heads), s.capacity, head_dim) for s in self.segments]
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for shape in shapes]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for shape in shapes]
        self.lengths_host = [0] * len(self.segments)  # entries filled in every row/head of each segment
        self.visual_seen = 0  # visual tokens consumed so far (absolute visual index of the next one)
        # prefix_mask [rows, prefix] (t2i padding): False entries are never attended to.
        self.prefix_mask = prefix_mask
        self.score_chunk_rows = score_chunk_rows
        self.queries: list[Tensor] | None = None
        if policy.needs_queries:
            self.queries = [torch.zeros(rows, len(s.heads), layout.width, head_dim, dtype=dtype, device=device)
                            for s in self.segments]
        self.positions: list[Tensor] | None = None
        self.state: list[dict] = []
        if self.compresses:
            # int16 is enough (grids up to 181x181) and keeps this bookkeeping ~1% of the cache
            vcaps = [s.capacity - layout.prefix for s in self.segments]
            self.positions = [torch.zeros(rows, len(s.heads), vcap, dtype=torch.int16, device=device)
                              for s, vcap in zip(self.segments, vcaps)]
            self.state = [{name: torch.zeros(rows, len(s.heads), vcap, dtype=torch.float32, device=device)
                           for name in policy.state_names} for s, vcap in zip(self.segments, vcaps)]
        # per segment: (visual entries whose positions are recorded, visual tokens they cover)
        self._placed = [(0, 0)] * len(self.segments)
        self.compaction_s = 0.0

    # -- accounting -------------------------------------------------------------------------
    def nbytes(self) -> int:
        tensors = self.k + self.v + (self.queries or []) + (self.positions or [])
        tensors += [t for s in self.state for t in s.values() if isinstance(t, Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors)

    @property
    def length(self) -> int:
        """Entries filled in the fullest segment (all segments hold the same before the first compaction)."""
        return max(self.lengths_host)

    def visual_length(self, segment: int = 0) -> int:
        return self.lengths_host[segment] - self.layout.prefix

    # -- the attention hook the model calls -------------------------------------------------
    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return self.by_group(layer, q, k, v, self._attend_segment)

    def by_group(self, layer: int, q: Tensor, k: Tensor, v: Tensor, attend_segment) -> Tensor:
        """A layer's attention, one call of `attend_segment(i, q, k, v)` per group of heads with
        those heads' slices, put back in head order (a layer of one group is passed through)."""
        ids = self.by_layer[layer]
        if self.inverse[layer] is None:
            return attend_segment(ids[0], q, k, v)
        outs = []
        for i in ids:
            h = self.head_index[i]
            outs.append(attend_segment(i, q.index_select(1, h), k.index_select(1, h), v.index_select(1, h)))
        return torch.cat(outs, dim=1).index_select(1, self.inverse[layer])

    def _attend_segment(self, i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        s = k.shape[2]
        start = self.lengths_host[i]
        end = start + s
        if end > self.segments[i].capacity:
            raise RuntimeError(f"KV cache overflow: {end} entries > capacity {self.segments[i].capacity}")
        self.k[i][:, :, start:end] = k
        self.v[i][:, :, start:end] = v
        if self.queries is not None and start >= self.layout.prefix:
            col = self.visual_seen % self.layout.width
            self.queries[i][:, :, col:col + s] = q
        keys, values = self.k[i][:, :, :end], self.v[i][:, :, :end]
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
        was_prefix = self.lengths_host[0] < self.layout.prefix
        self.lengths_host = [n + s for n in self.lengths_host]
        if was_prefix:
            return
        self.visual_seen += s
        if self.visual_seen % self.layout.width == 0:
            self.end_line(self.visual_seen // self.layout.width - 1)

    def _place_positions(self, i: int) -> None:
        """Record the original visual index of the segment's entries appended since its last
        compaction.

        Done once per line rather than per step: positions are only read when a line is scored, and
        a per-step write would add a small kernel per layer to every decode step.
        """
        start, seen = self._placed[i]
        vl = self.visual_length(i)
        if vl > start:
            self.positions[i][:, :, start:vl] = torch.arange(seen, seen + vl - start, device=self.positions[i].device)
        self._placed[i] = (vl, self.visual_seen)

    def end_line(self, line: int) -> None:
        if not self.compresses:
            return
        t0 = time.perf_counter()
        for i, seg in enumerate(self.segments):
            self._place_positions(i)
            need_scores = self.visual_length(i) > seg.budget
            # H2O and an accumulating LineAR score every line, even before their first eviction
            if need_scores or self.state[i]:
                self._compact_segment(i, line, compact=need_scores)
        self.compaction_s += time.perf_counter() - t0

    def _line_attention(self, i: int) -> Tensor | None:
        if self.queries is None:
            return None
        w, length = self.layout.width, self.lengths_host[i]
        keys = self.k[i][:, :, :length]
        key_mask = None
        if self.prefix_mask is not None:
            key_mask = torch.ones(self.rows, length, dtype=torch.bool, device=keys.device)
            key_mask[:, :self.layout.prefix] = self.prefix_mask
        q = self.queries[i]
        # Chunk rows so the explicit [R, H, w, L] fp32 scores stay small at large batch.
        chunks = []
        for r0 in range(0, self.rows, self.score_chunk_rows):
            r1 = min(self.rows, r0 + self.score_chunk_rows)
            km = None if key_mask is None else key_mask[r0:r1]
            chunks.append(line_attention(q[r0:r1], keys[r0:r1], w, km))
        return torch.cat(chunks) if len(chunks) > 1 else chunks[0]

    def _compact_segment(self, i: int, line: int, compact: bool) -> None:
        seg, p, vl = self.segments[i], self.layout.prefix, self.visual_length(i)
        positions = self.positions[i][:, :, :vl]
        ctx = LineContext(layer=seg.layer, line=line, layout=self.layout, positions=positions,
                          attention=self._line_attention(i), state=self.state[i], pairs=self.pairs,
                          budget=seg.budget)
        if self.policy.needs_keys:  # R-KV's key similarity (workers/cache/rkv.py)
            ctx.keys = self.k[i][:, :, p:p + vl]
        scores = self.policy.score(ctx)  # also updates accumulated state
        if not compact:
            return
        if self.pairs and self.policy.cfg_shared:
            # Shared CFG selection: the unconditional row keeps what its conditional partner keeps.
            scores = scores.clone()
            scores[self.pairs:2 * self.pairs] = scores[:self.pairs]
        b = seg.budget
        keep = scores.topk(b, dim=-1).indices.sort(dim=-1).values  # [R, Hg, b]
        idx = keep.unsqueeze(-1).expand(-1, -1, -1, self.k[i].shape[-1])
        for buf in (self.k[i], self.v[i]):
            kept = buf[:, :, p:p + vl].gather(2, idx)
            buf[:, :, p:p + b] = kept
        self.positions[i][:, :, :b] = positions.gather(2, keep)
        for t in self.state[i].values():
            if isinstance(t, Tensor) and t.dim() == 3:
                t[:, :, :b] = t[:, :, :vl].gather(2, keep)
                t[:, :, b:] = 0
        self.lengths_host[i] = p + b
        self._placed[i] = (b, self.visual_seen)


def _segments(budgets: list[list[int]], layout: Layout) -> list[Segment]:
    """Each layer's heads grouped by budget (one segment per layer when every head has the same)."""
    levels = sorted({b for layer in budgets for b in layer}, reverse=True)
    out = []
    for layer, heads in enumerate(budgets):
        for b, ids in groups(heads):
            out.append(Segment(layer=layer, heads=ids, budget=b, capacity=_capacity(layout, b),
                               level=levels.index(b)))
    return out
