"""The batched decoding engine: prefill the condition, then one token per step for every row.

Items are decoded in waves: every item has exactly N tokens, so items admitted together finish
together and all rows of a wave share one cache length. A caller that keeps feeding waves
(workers/actor.py) keeps the slots full across shard boundaries. With guidance, a wave holds 2n
rows: n conditional rows, then their n null-condition partners; the token sampled from the guided
logits of item i feeds both of its rows.

Two decode paths (`compile`, workers/engine/compile_choice.py): the eager reference below (a new
cache per wave, attention over exactly the filled entries; bit-exact, and the only path for
teacher forcing and logit hooks), and the static path (static_wave.py: one compiled or captured
step over preallocated buffers, reused by every wave).
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from linegen.workers.cache import CachePolicy, Layout
from linegen.workers.cache.kv import KVCache, cache_bytes_per_row, scored_entries
from linegen.workers.engine.compile_choice import ENGINE_MODES, Decision, decide
from linegen.workers.engine.sampling import BatchSampling, guide, sample
from linegen.workers.engine.static_wave import StaticDecoder
from linegen.workers.engine.wave import GenRequest, WaveResult, WaveStats, peak_memory_bytes
from linegen.workers.models.config import ModelSpec
from linegen.workers.models.gpt import GPT


class Engine:
    def __init__(self, gpt: GPT, vq: torch.nn.Module | None, spec: ModelSpec, policy: CachePolicy,
                 device: torch.device | str = "cpu", max_batch: int = 8, compile: str = "off"):
        self.gpt, self.vq, self.spec, self.policy = gpt, vq, spec, policy
        self.device = torch.device(device)
        self.dtype = next(gpt.parameters()).dtype
        self.layout = Layout(prefix=spec.prefix_len, grid=spec.grid)
        policy.check(self.layout)
        policy.head_budgets(self.layout, gpt.config.n_layer, gpt.config.n_head)  # shares fit this model
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if compile not in ENGINE_MODES:
            raise ValueError(f"compile must be one of {', '.join(ENGINE_MODES)}, got {compile!r}")
        self.max_batch = max_batch
        self.compile = compile
        self.decode_chunk = 8  # images per VQ decoder call; bounds the decoder's activation memory
        self._static: dict[str, StaticDecoder] = {}  # by backend
        self.work_items = 0  # items the caller said it will decode (compile=auto weighs them)
        self.items_done = 0
        self._auto_failed: str | None = None  # why compile=auto gave up on the static path

    def add_work(self, items: int) -> None:
        """Declare `items` more items to decode with this engine (a job's size, a new shard)."""
        self.work_items += items

    def decision(self, requests: list[GenRequest]) -> Decision:
        """Which path a wave of `requests` takes now (workers/engine/compile_choice.py)."""
        if self.compile == "auto" and self._auto_failed is not None:
            return Decision(None, self._auto_failed)
        native = "cuda_graph" if self.device.type == "cuda" else "inductor"
        backend = "static" if self.compile == "static" else native
        missing = self._decoder(backend).missing(requests) if self.compile != "off" else 0
        rows_per_item = 2 if any(r.sampling.cfg_scale > 1 for r in requests) else 1
        remaining = max(len(requests), self.work_items - self.items_done)
        return decide(self.compile, self.device.type, self.spec, str(self.dtype).removeprefix("torch."),
                      remaining * rows_per_item * self.spec.num_tokens, shapes_to_build=missing)

    def _decoder(self, backend: str) -> StaticDecoder:
        if backend not in self._static:
            self._static[backend] = StaticDecoder(self, backend)
        return self._static[backend]

    def release(self) -> None:
        """Free the static path's buffers and graphs (a later wave rebuilds them: inductor reuses
        its compiled code, CUDA graphs are captured again). Lets a benchmark keep many engines."""
        self._static.clear()

    @property
    def compile_s(self) -> float:
        """Seconds spent so far building compiled/captured steps, over all waves."""
        return sum(d.graphs.build_s for d in self._static.values())

    # -- accounting -------------------------------------------------------------------------
    def cache_bytes_per_sequence(self, guided: bool = True) -> int:
        """Cache bytes one item needs: a CFG pair counts as two rows."""
        c = self.gpt.config
        per_row = cache_bytes_per_row(self.policy, self.layout, c.n_layer, c.n_head, c.head_dim,
                                      torch.finfo(self.dtype).bits // 8)
        return per_row * (2 if guided else 1)

    def plan_packing(self, budget_bytes: int | None = None, guided: bool = True):
        """How many items fit `budget_bytes` (default: a fraction of free device memory)."""
        from linegen.workers.engine.packing import default_budget, plan_packing, weights_bytes

        source = "given"
        if budget_bytes is None:
            budget_bytes, source = default_budget(self.device)
        c = self.gpt.config
        dtype_bytes = torch.finfo(self.dtype).bits // 8
        workspace = 0
        if self.policy.needs_queries:  # the explicit per-line scores of one chunk of rows, fp32
            entries = scored_entries(self.policy, self.layout, c.n_layer, c.n_head)
            workspace = 3 * 64 * self.layout.width * entries * 4
        if self.vq is not None:  # decoding a chunk of images: ~4 live activations at full resolution
            ch = self.spec.vq.ch * self.spec.vq.ch_mult[0]
            workspace += 4 * self.decode_chunk * ch * self.spec.image_size ** 2 * 4
        weights = weights_bytes(self.gpt) + (weights_bytes(self.vq) if self.vq is not None else 0)
        return plan_packing(cache_bytes_per_sequence=self.cache_bytes_per_sequence(guided),
                            rows_per_sequence=2 if guided else 1, weights=weights,
                            vocab=c.vocab_size, dim=c.dim, ffn=c.ffn_dim, dtype_bytes=dtype_bytes,
                            budget_bytes=budget_bytes, budget_source=source, workspace_bytes=workspace)

    # -- decoding ---------------------------------------------------------------------------
    def _prefix(self, requests: list[GenRequest], guided: bool) -> tuple[Tensor, Tensor | None]:
        n, gpt = len(requests), self.gpt
        if hasattr(gpt, "embed_prompt"):  # a model with its own prompt prefix (Janus: token ids)
            return gpt.embed_prompt(requests, guided, self.device)
        if gpt.config.cond == "c2i":
            labels = torch.tensor([r.class_id for r in requests], dtype=torch.long, device=self.device)
            if guided:
                labels = torch.cat([labels, gpt.null_condition(n, self.device)])
            return gpt.embed_condition(labels), None
        caps = torch.stack([r.caption for r in requests]).to(self.device)
        mask = torch.stack([r.caption_mask for r in requests]).to(self.device, torch.bool)
        caps = caps * mask[..., None].to(caps.dtype)  # padded rows are zero, as in training
        if guided:
            caps = torch.cat([caps, gpt.null_condition(n, self.device).to(caps.dtype)])
            mask = torch.cat([mask, mask])
        return gpt.embed_condition(caps), mask

    def run_waves(self, requests: list[GenRequest]) -> tuple[Tensor, float]:
        """Free-running samples of any number of requests, in waves of max_batch -> (tokens [n, N],
        decode seconds): what `eval`, `tune`'s sample check and the head profile run."""
        tokens, decode_s = [], 0.0
        for i in range(0, len(requests), self.max_batch):
            res = self.run_wave(requests[i:i + self.max_batch])
            tokens.append(res.tokens)
            decode_s += res.stats.decode_s
        return torch.cat(tokens), decode_s

    @torch.inference_mode()
    def run_wave(self, requests: list[GenRequest], forced: Tensor | None = None,
                 on_logits: Callable[[int, Tensor], None] | None = None) -> WaveResult:
        """Decode one wave of <= max_batch items.

        forced [n, N]: teacher forcing (feed these tokens instead of sampling); on_logits(step, guided
        fp32 logits [n, V]) sees the guided distribution of every step (fidelity metrics use both).
        """
        n = len(requests)
        if not 1 <= n <= self.max_batch:
            raise ValueError(f"a wave holds 1..{self.max_batch} items, got {n}")
        if forced is None and on_logits is None:
            decision = self.decision(requests)
            reason = decision.reason
            if decision.backend is not None:
                try:
                    result = self._decoder(decision.backend).run(requests, decision.reason)
                    self.items_done += n
                    return result
                except Exception as e:  # e.g. no C++ compiler for inductor: auto keeps the job going
                    if self.compile != "auto":
                        raise
                    self._static.pop(decision.backend, None)
                    self._auto_failed = reason = f"auto: the static path failed ({type(e).__name__}: {e}); eager from now on"
        else:
            reason = "eager: teacher forcing and logit hooks need the reference path"
        result = self._run_reference(requests, forced, on_logits)
        result.stats.compile_decision = reason
        self.items_done += n
        return result

    def _run_reference(self, requests: list[GenRequest], forced: Tensor | None,
                       on_logits: Callable[[int, Tensor], None] | None) -> WaveResult:
        n = len(requests)
        t0 = time.perf_counter()
        N, C, gpt = self.spec.num_tokens, self.layout.prefix, self.gpt
        guided = any(r.sampling.cfg_scale > 1 for r in requests)
        rows = 2 * n if guided else n
        sampling = BatchSampling.build([r.sampling for r in requests], [r.seed for r in requests], N, self.device)
        x, prefix_mask = self._prefix(requests, guided)
        c = gpt.config
        cache = KVCache(self.policy, self.layout, rows, c.n_layer, c.n_head, c.head_dim, self.dtype,
                        self.device, pairs=n if guided else 0, prefix_mask=prefix_mask)
        logits = gpt(x, torch.arange(C, device=self.device), self.spec.grid, cache)
        cache.advance(C)
        tokens = torch.empty(n, N, dtype=torch.long, device=self.device)
        for step in range(N):
            if step > 0:
                prev = tokens[:, step - 1]
                inp = torch.cat([prev, prev]) if guided else prev
                pos = torch.tensor([C + step - 1], device=self.device)
                logits = gpt(gpt.embed_tokens(inp[:, None]), pos, self.spec.grid, cache)
                cache.advance(1)
            g = guide(logits[:, -1], n, sampling.cfg_scale, guided)
            if on_logits is not None:
                on_logits(step, g)
            tokens[:, step] = forced[:, step].to(self.device) if forced is not None else sample(g, sampling, step)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        stats = WaveStats(batch_size=n, rows=rows, tokens=n * N, decode_s=time.perf_counter() - t0,
                          compaction_s=cache.compaction_s, kv_cache_bytes=cache.nbytes(),
                          peak_memory_bytes=peak_memory_bytes(self.device))
        return WaveResult(tokens=tokens.cpu(), stats=stats)

    @torch.inference_mode()
    def decode_images(self, tokens: Tensor) -> np.ndarray:
        """Token grids [n, N] -> uint8 images [n, H, W, 3] through the VQ decoder (fp32)."""
        from linegen.workers.models.vq import to_uint8

        if self.vq is None:
            raise RuntimeError("this engine has no VQ decoder")
        out = []
        for i in range(0, tokens.shape[0], self.decode_chunk):
            t = tokens[i:i + self.decode_chunk].to(self.device, non_blocking=True)  # async when pinned
            out.append(np.asarray(to_uint8(self.vq.decode_code(t, self.spec.grid).float().cpu())))
        return np.concatenate(out)
