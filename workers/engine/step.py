"""One decode step with static shapes: the unit torch.compile compiles and a CUDA graph captures.

Everything a step reads or writes lives in preallocated device buffers (`StepState`, the
`StaticKVCache`): the token fed, the visual index `t`, the sampling settings and uniforms, the
output token grid. The host's loop only replays the step and, once per line, compacts the cache.
No step reads a tensor's value on the host, so nothing in it waits for the device.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from linegen.workers.cache.static import StaticKVCache
from linegen.workers.engine.sampling import BatchSampling, draw, guide
from linegen.workers.models.gpt import GPT


@dataclass(frozen=True)
class StepShape:
    """What a captured step is specialised on: every field is part of its graph's key."""

    items: int  # items in the wave, padding included (rows = 2*items with guidance)
    guided: bool
    span: int  # cache entries attended over (the cache capacity, or a smaller bucket of it)
    k_bound: int  # top-k over this many logits (0: no top-k); see sampling.top_k_bound
    use_top_p: bool

    @property
    def rows(self) -> int:
        return 2 * self.items if self.guided else self.items


@dataclass
class StepState:
    """The device buffers of one wave that are not the cache, sized for the largest wave."""

    prev: Tensor  # [rows] int64: the token fed at this step (the same for both rows of a CFG pair)
    t: Tensor  # [1] int64: visual index of the fed token
    tokens: Tensor  # [items, N] int64: the wave's output, raster order
    cfg_scale: Tensor  # [items] fp32
    temperature: Tensor
    top_k: Tensor  # [items] int64
    top_p: Tensor
    uniforms: Tensor  # [items, N] fp32
    rope: Tensor  # [prefix + N, head_dim/2, 2]: the model's rotary table

    @classmethod
    def allocate(cls, items: int, num_tokens: int, rope: Tensor, device: torch.device) -> "StepState":
        f32, i64 = dict(dtype=torch.float32, device=device), dict(dtype=torch.long, device=device)
        return cls(prev=torch.zeros(2 * items, **i64), t=torch.zeros(1, **i64),
                   tokens=torch.zeros(items, num_tokens, **i64), cfg_scale=torch.ones(items, **f32),
                   temperature=torch.ones(items, **f32), top_k=torch.zeros(items, **i64),
                   top_p=torch.ones(items, **f32), uniforms=torch.zeros(items, num_tokens, **f32), rope=rope)

    def view(self, items: int, rows: int) -> "StepState":
        v = copy.copy(self)
        v.prev, v.tokens, v.uniforms = self.prev[:rows], self.tokens[:items], self.uniforms[:items]
        v.cfg_scale, v.temperature = self.cfg_scale[:items], self.temperature[:items]
        v.top_k, v.top_p = self.top_k[:items], self.top_p[:items]
        return v

    def load(self, sampling: BatchSampling) -> None:
        """This wave's settings into the buffers (in place: graphs hold these addresses)."""
        for dst, src in ((self.cfg_scale, sampling.cfg_scale), (self.temperature, sampling.temperature),
                         (self.top_k, sampling.top_k), (self.top_p, sampling.top_p),
                         (self.uniforms, sampling.uniforms)):
            dst.copy_(src, non_blocking=True)
        self.t.zero_()


def decode_step(gpt: GPT, cache: StaticKVCache, state: StepState, shape: StepShape) -> None:
    """Feed `state.prev` at visual index t, sample token t+1 for every item, advance t."""
    x = gpt.tok_embeddings(state.prev[:, None])
    rope = state.rope.index_select(0, state.t + cache.layout.prefix)[None]
    attention = cache.decode_attention(state.t, shape.span)
    for block in gpt.layers:
        x = block(x, rope, attention, None)
    logits = gpt.output(gpt.norm(x[:, -1])).float()
    guided = guide(logits, shape.items, state.cfg_scale, shape.guided)
    nxt = state.t + 1
    token = draw(guided, state.temperature, state.top_k, state.top_p, state.uniforms.index_select(1, nxt),
                 k_bound=shape.k_bound, use_top_p=shape.use_top_p)
    state.tokens.index_copy_(1, nxt, token[:, None])
    state.prev.copy_(torch.cat([token, token]) if shape.guided else token)
    cache.step_done()
    state.t.add_(1)
