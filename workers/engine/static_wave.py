"""A wave on the static path: prefill and compaction eager, every decode step a built step.

The wave is padded up to a bucket size with copies of its last request (their tokens are
dropped), so a short wave reuses the bucket's graph. Storage (cache and step buffers) is allocated
once for the engine's largest wave; smaller buckets use its leading rows.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from linegen.workers.cache.kv import cache_capacity
from linegen.workers.cache.static import StaticKVCache
from linegen.workers.engine.graphs import BUCKETS, StepGraphs, bucket_for, bucket_sizes, span_for, spans
from linegen.workers.engine.sampling import BatchSampling, guide, sample, top_k_bound
from linegen.workers.engine.step import StepShape, StepState
from linegen.workers.engine.wave import GenRequest, WaveResult, WaveStats, peak_memory_bytes

if TYPE_CHECKING:  # the engine owns this decoder; typing only, never imported from here at run time
    from linegen.workers.engine.engine import Engine


class StaticDecoder:
    def __init__(self, engine: "Engine", backend: str):
        self.engine, self.backend = engine, backend
        self.graphs = StepGraphs(engine.gpt, backend)
        self._storage: tuple[int, StaticKVCache, StepState] | None = None

    # -- what a wave will need --------------------------------------------------------------
    def buckets(self) -> tuple[int, ...]:
        return bucket_sizes(self.engine.max_batch, BUCKETS[self.backend])

    def shapes(self, requests: list[GenRequest]) -> list[StepShape]:
        e = self.engine
        n = bucket_for(len(requests), self.buckets())
        params = [r.sampling for r in requests]
        guided = any(p.cfg_scale > 1 for p in params)
        capacity = cache_capacity(e.policy, e.layout, e.gpt.config.n_layer, e.gpt.config.n_head)
        compresses = e.policy.budget(e.layout) < e.layout.num_tokens
        return [StepShape(items=n, guided=guided, span=span, k_bound=top_k_bound(params, e.gpt.config.vocab_size),
                          use_top_p=any(p.top_p < 1 for p in params))
                for span in spans(capacity, compresses, self.backend)]

    def missing(self, requests: list[GenRequest]) -> int:
        """How many step shapes this wave would have to build first."""
        storage_ok = self._storage is not None and self._storage[0] == self.engine.max_batch
        return sum(1 for s in self.shapes(requests) if not storage_ok or not self.graphs.has(s))

    def _buffers(self) -> tuple[StaticKVCache, StepState]:
        e = self.engine
        if self._storage is None or self._storage[0] != e.max_batch:
            self._storage = None  # free the old storage before allocating the new one
            c = e.gpt.config
            cache = StaticKVCache(e.policy, e.layout, 2 * e.max_batch, c.n_layer, c.n_head, c.head_dim,
                                  e.dtype, e.device)
            state = StepState.allocate(e.max_batch, e.spec.num_tokens, e.gpt.rope_table(e.spec.grid, e.device), e.device)
            self._storage = (e.max_batch, cache, state)
            self.graphs = StepGraphs(e.gpt, self.backend)  # graphs captured on the old storage are void
        return self._storage[1], self._storage[2]

    # -- one wave ---------------------------------------------------------------------------
    def run(self, requests: list[GenRequest], reason: str) -> WaveResult:

        e, n = self.engine, len(requests)
        shapes = self.shapes(requests)
        items, guided = shapes[0].items, shapes[0].guided
        padded = requests + [requests[-1]] * (items - n)
        rows = 2 * items if guided else items
        storage_cache, storage_state = self._buffers()
        cache, state = storage_cache.view(rows), storage_state.view(items, rows)
        runners, build_s = {}, 0.0
        for shape in shapes:
            runners[shape.span], spent = self.graphs.runner(cache, state, shape)
            build_s += spent

        t0 = time.perf_counter()
        N, C, gpt = e.spec.num_tokens, e.layout.prefix, e.gpt
        host = BatchSampling.build([r.sampling for r in padded], [r.seed for r in padded], N, torch.device("cpu"))
        if e.device.type == "cuda":
            host = BatchSampling(**{k: v.pin_memory() for k, v in host.__dict__.items()})
        state.load(host)
        sampling = BatchSampling(cfg_scale=state.cfg_scale, temperature=state.temperature, top_k=state.top_k,
                                 top_p=state.top_p, uniforms=state.uniforms)
        x, prefix_mask = e._prefix(padded, guided)
        cache.start_wave(pairs=items if guided else 0, prefix_mask=prefix_mask)
        logits = gpt(x, torch.arange(C, device=e.device), e.spec.grid, cache)
        cache.advance(C)
        cache.sync_lengths()
        first = sample(guide(logits[:, -1], items, sampling.cfg_scale, guided), sampling, 0)
        state.tokens[:, 0] = first
        state.prev.copy_(torch.cat([first, first]) if guided else first)
        choices = tuple(runners)
        for _ in range(1, N):
            runners[span_for(cache.length, choices)]()
            cache.advance(1)
        tokens = _to_host(state.tokens[:n])
        stats = WaveStats(batch_size=n, rows=2 * n if guided else n, tokens=n * N, decode_s=time.perf_counter() - t0,
                          compaction_s=cache.compaction_s, kv_cache_bytes=cache.nbytes(),
                          peak_memory_bytes=peak_memory_bytes(e.device), compile_s=build_s, path=self.backend,
                          padded_batch=items, compile_decision=reason)
        return WaveResult(tokens=tokens, stats=stats)


def _to_host(tokens: torch.Tensor) -> torch.Tensor:
    """Device tokens -> CPU int64, the only device-to-host copy of a wave (pinned, non-blocking)."""
    if tokens.device.type != "cuda":
        return tokens.clone()
    out = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
    out.copy_(tokens, non_blocking=True)
    torch.cuda.current_stream(tokens.device).synchronize()
    return out
