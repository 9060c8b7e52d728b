"""The model-holding worker: one per GPU (or a CPU-sized pool), wrapped as a Ray actor by the driver.

It loads the model once, then keeps the engine busy: shards queue up inside the actor, waves are
filled with items across shard boundaries, and a finished shard is handed to the sink (PNG,
Parquet, upload, commit marker) on a separate thread while the engine decodes the next wave.
The actor knows nothing about storage or the job: the driver passes in objects it only calls —
`model.load()`, `cache.build(prefix, grid)`, `sink.is_committed(id)` / `sink.commit(...)`.
"""
from __future__ import annotations

import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ShardOutcome:
    shard_id: str
    attempt: int
    status: str  # "committed" | "already" (another attempt committed it) | "failed"
    images: int = 0
    error: str | None = None
    worker: str = ""


@dataclass
class _Pending:
    shard: object
    attempt: int
    tokens: list = field(default_factory=list)
    images: list = field(default_factory=list)
    stats: list = field(default_factory=list)
    prompt_info: list = field(default_factory=list)  # per item: (caption tokens, truncated) or None
    next_item: int = 0

    def done(self) -> int:
        return sum(len(t) for t in self.tokens)


class GenerationActor:
    def __init__(self, model, cache, sink, *, batch_size: int | None = None, memory_budget: str | None = None,
                 worker_name: str = "worker", cpu_threads: int | None = None):
        import torch

        if cpu_threads:
            torch.set_num_threads(cpu_threads)
        from linegen.workers.engine import Engine
        from linegen.workers.sizes import parse_bytes

        self.sink = sink
        self.spec, gpt, vq, device = model.load()
        self.text = model.load_text_encoder(device)  # None for class-conditional models
        self.model_name = self.spec.name
        policy = cache.build(self.spec.prefix_len, self.spec.grid)
        self.engine = Engine(gpt, vq, self.spec, policy, device=device, max_batch=1)
        budget = parse_bytes(memory_budget) if memory_budget else None
        self.packing = self.engine.plan_packing(budget)
        self.engine.max_batch = batch_size or self.packing.max_sequences
        self.worker = worker_name
        self.node = socket.gethostname()
        self.device_name = torch.cuda.get_device_name(device) if str(device).startswith("cuda") else "cpu"
        self.inbox: queue.Queue = queue.Queue()
        self.outbox: queue.Queue = queue.Queue()
        self.commits: queue.Queue = queue.Queue()
        self._stop = False
        threading.Thread(target=self._engine_loop, daemon=True).start()
        threading.Thread(target=self._commit_loop, daemon=True).start()

    # -- called by the driver ---------------------------------------------------------------
    def info(self) -> dict:
        return {"worker": self.worker, "node": self.node, "device": self.device_name, "pid": os.getpid(),
                "max_batch": self.engine.max_batch, "model": self.model_name,
                "cache_bytes_per_sequence": self.engine.cache_bytes_per_sequence(),
                "packing": self.packing.to_dict(),
                "text_encoder": self.text.stats() if self.text is not None else None}

    def submit(self, shard, attempt: int) -> None:
        self.inbox.put((shard, attempt))

    def next_outcome(self, timeout: float = 30.0) -> ShardOutcome | None:
        """The next finished shard, or None if none finished within `timeout` seconds."""
        try:
            return self.outbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def shutdown(self) -> None:
        self._stop = True

    # -- the engine thread ------------------------------------------------------------------
    def _take_wave(self, pending: list[_Pending]) -> list[tuple[_Pending, object]]:
        """Up to max_batch items, oldest shard first, taking the next queued shard when one runs dry."""
        wave: list[tuple[_Pending, object]] = []
        while len(wave) < self.engine.max_batch:
            p = next((p for p in pending if p.next_item < len(p.shard.items)), None)
            if p is None:
                try:  # idle: wait a little for work; mid-wave: only take what is already queued
                    shard, attempt = self.inbox.get(timeout=0.5) if not wave else self.inbox.get_nowait()
                except queue.Empty:
                    break
                try:
                    committed = self.sink.is_committed(shard.shard_id)
                except Exception as e:  # storage unreachable: this shard fails, the driver retries it
                    self.outbox.put(ShardOutcome(shard.shard_id, attempt, "failed", error=_one_line(e),
                                                 worker=self.worker))
                    continue
                if committed:
                    self.outbox.put(ShardOutcome(shard.shard_id, attempt, "already", worker=self.worker))
                else:
                    pending.append(_Pending(shard, attempt))
                continue
            take = min(self.engine.max_batch - len(wave), len(p.shard.items) - p.next_item)
            wave += [(p, it) for it in p.shard.items[p.next_item:p.next_item + take]]
            p.next_item += take
        return wave

    def _engine_loop(self) -> None:
        from linegen.workers.engine import requests_for

        pending: list[_Pending] = []
        while not self._stop:
            wave = self._take_wave(pending)
            if not wave:
                continue
            started = time.time()
            try:
                requests, prompt_info = requests_for([it for _, it in wave], self.text)
                result = self.engine.run_wave(requests)
                images = self.engine.decode_images(result.tokens)
            except Exception as e:  # a shard that cannot be generated fails, the actor goes on
                failed = {id(p) for p, _ in wave}
                for p in [p for p in pending if id(p) in failed]:
                    pending.remove(p)
                    self.outbox.put(ShardOutcome(p.shard.shard_id, p.attempt, "failed", error=_one_line(e),
                                                 worker=self.worker))
                continue
            finished = time.time()
            tokens = result.tokens.numpy().astype(np.int32)
            start = 0
            for p in _unique(p for p, _ in wave):
                n = sum(1 for q, _ in wave if q is p)
                p.tokens.append(tokens[start:start + n])
                p.images.append(images[start:start + n])
                p.prompt_info += prompt_info[start:start + n]
                truncated = sum(1 for x in prompt_info[start:start + n] if x is not None and x[1])
                p.stats.append(self._stats_row(p, result.stats, n, len(wave), started, finished, truncated))
                start += n
            for p in [p for p in pending if p.done() == len(p.shard.items)]:
                pending.remove(p)
                self.commits.put(p)

    def _stats_row(self, p: _Pending, s, n: int, batch: int, started: float, finished: float,
                   truncated: int) -> dict:
        # A wave shared by two shards is split by item count, so summing wall_s over shards
        # gives device time once (cost accounting relies on it).
        share = n / batch
        wall = (finished - started) * share
        return {"job_id": getattr(self.sink, "job_id", ""), "shard_id": p.shard.shard_id, "attempt": p.attempt,
                "worker": self.worker, "node": self.node, "device": self.device_name, "model": self.model_name,
                "cache_policy": self.engine.policy.name,
                "cache_ratio": self.engine.policy.budget(self.engine.layout) / self.engine.layout.num_tokens,
                "batch_size": batch, "images": n, "tokens": n * self.spec.num_tokens, "wall_s": wall,
                "tokens_per_s": n * self.spec.num_tokens / wall if wall > 0 else 0.0,
                "images_per_s": n / wall if wall > 0 else 0.0, "kv_cache_bytes": s.kv_cache_bytes,
                "peak_memory_bytes": s.peak_memory_bytes, "prompts_truncated": truncated,
                "started_at": started, "finished_at": finished}

    # -- the commit thread ------------------------------------------------------------------
    def _commit_loop(self) -> None:
        while not self._stop:
            p: _Pending = self.commits.get()
            try:
                wrote = self.sink.commit(p.shard, p.attempt, np.concatenate(p.tokens), np.concatenate(p.images),
                                         p.stats, prompt_info=p.prompt_info)
                self.outbox.put(ShardOutcome(p.shard.shard_id, p.attempt, "committed" if wrote else "already",
                                             images=len(p.shard.items), worker=self.worker))
            except Exception as e:
                self.outbox.put(ShardOutcome(p.shard.shard_id, p.attempt, "failed", error=_one_line(e),
                                             worker=self.worker))


def _unique(seq):
    seen, out = set(), []
    for x in seq:
        if id(x) not in seen:
            seen.add(id(x))
            out.append(x)
    return out


def _one_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".splitlines()
    return text[0] if text else type(e).__name__
