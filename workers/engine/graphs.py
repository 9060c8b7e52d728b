"""Compiled and captured decode steps: built once per step shape, reused by every later wave.

A shape (workers/engine/step.py: wave size bucket, guidance, attention span, sampling filters) is
built the first time a wave needs it, and its build time is counted apart from decoding:
  * `inductor` (CPUs): torch.compile of the step, static shapes; the first calls compile.
  * `cuda_graph` (GPUs): the eager step captured into a CUDA graph after a warm-up on a side
    stream; a replay launches the whole step (every layer, guidance, sampling) at once. Capturing
    takes a fraction of a second, where inductor would take minutes on a 36-layer model.
  * `static`: the static step run eagerly (no compiler) — isolates the static path in tests.
Wave sizes are padded up to a few buckets, so a short last wave reuses a graph instead of
building one more.

Graphs of one engine share one CUDA memory pool. That is safe in any replay order because a step
returns nothing: everything it produces is written into the preallocated buffers, and its
temporaries are dead when it ends.
"""
from __future__ import annotations

import functools
import time
from typing import Callable

import torch

from linegen.workers.cache.static import StaticKVCache
from linegen.workers.engine.step import StepShape, StepState, decode_step
from linegen.workers.models.gpt import GPT

BACKENDS = ("inductor", "cuda_graph", "static")
# A full cache fills up over the wave, so its steps attend over the filled part rounded up to a
# span rather than the whole capacity: decode attention is memory-bound, and the full capacity
# reads twice the entries on average. Each span is a separate graph: on a GPU a capture is cheap,
# so spans every 64 entries; inductor takes seconds per layer to build one, so a CPU gets at most 4.
SPAN_STEP = {"cuda_graph": 64, "static": 64}
CPU_SPANS = 4
# Buckets: the wave size, then halvings of it. Inductor builds are slow (seconds per layer), so
# CPUs get fewer.
BUCKETS = {"inductor": 3, "cuda_graph": 6, "static": 6}


def bucket_sizes(max_batch: int, count: int) -> tuple[int, ...]:
    """max_batch and `count - 1` successive halvings of it (rounded up), ascending."""
    sizes, size = {max_batch}, max_batch
    for _ in range(count - 1):
        size = -(-size // 2)
        sizes.add(size)
    return tuple(sorted(sizes))


def bucket_for(n: int, sizes: tuple[int, ...]) -> int:
    return next(s for s in sizes if s >= n)


def spans(capacity: int, compresses: bool, backend: str) -> tuple[int, ...]:
    """The attention spans a wave's steps use, ascending; the last is the whole capacity."""
    if compresses:  # a compressed cache holds B to B + w of B + w entries at every step
        return (capacity,)
    step = SPAN_STEP.get(backend)
    if step is None:  # up to CPU_SPANS spans of >= 64 entries (a multiple of 8): shorter ones do not repay a build
        count = max(1, min(CPU_SPANS, capacity // 64))
        step = -(-(-(-capacity // count)) // 8) * 8
    return tuple(range(step, capacity, step)) + (capacity,)


def span_for(length: int, choices: tuple[int, ...]) -> int:
    """The smallest span holding `length` filled entries plus the one a step writes."""
    return next(s for s in choices if s > length)


class StepGraphs:
    def __init__(self, gpt: GPT, backend: str, warmup: int = 2):
        if backend not in BACKENDS:
            raise ValueError(f"unknown step backend {backend!r}; choose from {', '.join(BACKENDS)}")
        self.gpt, self.backend, self.warmup = gpt, backend, warmup
        self._runners: dict[StepShape, Callable[[], None]] = {}
        self._compiled = torch.compile(decode_step, dynamic=False, fullgraph=True) if backend == "inductor" else None
        self._pool = torch.cuda.graph_pool_handle() if backend == "cuda_graph" else None
        self.build_s = 0.0  # every build so far, in seconds
        self.builds = 0

    def __len__(self) -> int:
        return len(self._runners)

    def has(self, shape: StepShape) -> bool:
        return shape in self._runners

    def runner(self, cache: StaticKVCache, state: StepState, shape: StepShape) -> tuple[Callable[[], None], float]:
        """The step for `shape` on these buffers, and the seconds spent building it now (0 if reused).

        The buffers must be the same storage for every call with one shape (the engine keeps one
        storage per StepGraphs). Building runs the step a few times on them: callers reset the
        wave's state afterwards.
        """
        if shape in self._runners:
            return self._runners[shape], 0.0
        t0 = time.perf_counter()
        cache.lengths.zero_()  # the warm-up steps write at the start of the cache, in bounds
        state.t.zero_()
        run = self._build(cache, state, shape)
        spent = time.perf_counter() - t0
        self._runners[shape] = run
        self.build_s += spent
        self.builds += 1
        return run, spent

    def _build(self, cache: StaticKVCache, state: StepState, shape: StepShape) -> Callable[[], None]:
        if self.backend == "static":
            return functools.partial(decode_step, self.gpt, cache, state, shape)
        if self.backend == "inductor":
            run = functools.partial(self._compiled, self.gpt, cache, state, shape)
            # Each shape is one more compiled entry of the same function; the default limit (8)
            # would silently fall back to eager after a few buckets and spans.
            with torch._dynamo.config.patch(recompile_limit=256, accumulated_recompile_limit=4096):
                for _ in range(self.warmup):
                    run()
            return run
        return self._capture(functools.partial(decode_step, self.gpt, cache, state, shape))

    def _capture(self, step: Callable[[], None]) -> Callable[[], None]:
        # Warm up on a side stream (cuBLAS handles, allocator), as torch.cuda.graphs requires.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the image-decoding thread may allocate or sync while this thread captures
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            step()
        return graph.replay
