"""The model-holding worker: one per GPU (or a CPU-sized pool), wrapped as a Ray actor by the driver.

It loads the model once, then keeps the engine busy: shards queue up inside the actor, waves are
filled with items across shard boundaries, and a finished shard is handed to the sink (PNG,
Parquet, upload, commit marker) on a separate thread while the engine decodes the next wave.
On a GPU a wave's images are VQ-decoded on a side stream (workers/engine/overlap.py) while the
next wave decodes; the wave is finished (images handed to its shards) after that next wave.
The actor knows nothing about storage or the job: the driver passes in objects it only calls —
`model.load()`, `cache.build(prefix, grid)`, `shard.items`, `sink.is_committed(id)` / `sink.commit(...)`.

Construction is cheap (the model loads on the engine thread), so `where()` answers as soon as
Ray has placed the actor: that is how the driver tells a placed worker from a pending one. The
driver learns everything else from `poll()`: finished shards (kept until acknowledged, so a
reply lost with a dying connection loses nothing) and a live snapshot of what each wave decoded.
"""
from __future__ import annotations

import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from linegen.errors import one_line
from linegen.workers.metrics import WORKER_SERIES, Recorder


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
    items: tuple = ()
    tokens: list = field(default_factory=list)
    images: list = field(default_factory=list)
    stats: list = field(default_factory=list)
    prompt_info: list = field(default_factory=list)  # per item: (caption tokens, truncated) or None
    next_item: int = 0

    def done(self) -> int:
        return sum(len(t) for t in self.tokens)


class GenerationActor:
    def __init__(self, model, cache, sink, *, batch_size: int | None = None, memory_budget: str | None = None,
                 worker_name: str = "worker", cpu_threads: int | None = None, job_id: str = ""):
        self.sink, self._model, self._cache = sink, model, cache
        self._batch_size, self._memory_budget, self._cpu_threads = batch_size, memory_budget, cpu_threads
        self.worker = worker_name
        self.node = socket.gethostname()
        self.device_name = ""
        self.inbox: queue.Queue = queue.Queue()
        self.commits: queue.Queue = queue.Queue()
        self._cond = threading.Condition()
        self._outbox: list[tuple[int, ShardOutcome]] = []  # (seq, outcome), until acknowledged by poll(after)
        self._seq = 0
        self._in_flight: dict[str, dict] = {}  # shard id -> attempt, images decoded, device seconds
        self._totals = {"images": 0, "tokens": 0, "waves": 0, "device_seconds": 0.0, "first_wave_at": None,
                        "last_wave_at": None, "kv_cache_bytes": 0, "sequences": 0}
        self._loaded = threading.Event()
        self._load_error: str | None = None
        self._stop = False
        self.metrics = Recorder(WORKER_SERIES, job_id=job_id or getattr(sink, "job_id", ""), worker=worker_name)
        threading.Thread(target=self._engine_loop, daemon=True).start()
        threading.Thread(target=self._commit_loop, daemon=True).start()

    # -- called by the driver ---------------------------------------------------------------
    def where(self) -> dict:
        """Where Ray placed this worker (answers at once; the model may still be loading)."""
        node_id = None
        try:
            import ray

            if ray.is_initialized():
                node_id = ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001
            pass
        return {"worker": self.worker, "node_id": node_id, "host": self.node, "pid": os.getpid()}

    def info(self, timeout: float = 600.0) -> dict:
        """What the worker loaded (waits for the model)."""
        if not self._loaded.wait(timeout) or self._load_error:
            raise RuntimeError(self._load_error or f"model not loaded after {timeout:g} s")
        return {"worker": self.worker, "node": self.node, "device": self.device_name, "pid": os.getpid(),
                "max_batch": self.engine.max_batch, "model": self.model_name,
                "cache_bytes_per_sequence": self.engine.cache_bytes_per_sequence(),
                "packing": self.packing.to_dict(),
                "text_encoder": self.text.stats() if self.text is not None else None}

    def submit(self, shard, attempt: int) -> None:
        self.inbox.put((shard, attempt))

    def poll(self, after: int = 0, timeout: float = 1.0) -> dict:
        """Outcomes not yet acknowledged (``after``: the last sequence number the caller has
        booked), waiting up to ``timeout`` s for one, and a snapshot of the work in progress."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._outbox = [(seq, o) for seq, o in self._outbox if seq > after]
            while not self._outbox and self._load_error is None and not self._stop:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return {"outcomes": list(self._outbox), "loaded": self._loaded.is_set() and self._load_error is None,
                    "load_error": self._load_error, "live": self._snapshot()}

    def next_outcome(self, timeout: float = 30.0) -> ShardOutcome | None:
        """The next finished shard (acknowledged at once), or None if none finished within `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._outbox and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            return self._outbox.pop(0)[1] if self._outbox else None

    def shutdown(self) -> None:
        self._stop = True
        with self._cond:
            self._cond.notify_all()

    # -- bookkeeping ------------------------------------------------------------------------
    def _snapshot(self) -> dict:  # with self._cond held
        return {**self._totals, "device": self.device_name,
                "in_flight": {sid: dict(v) for sid, v in self._in_flight.items()},
                "storage_unreachable_since": getattr(getattr(self.sink, "outage", None), "since", None)}

    def _report(self, outcome: ShardOutcome) -> None:
        with self._cond:
            self._seq += 1
            self._outbox.append((self._seq, outcome))
            self._in_flight.pop(outcome.shard_id, None)
            self._cond.notify_all()

    def _book_wave(self, shares: list[tuple[_Pending, int]], started: float, finished: float, stats) -> None:
        wall, n = max(0.0, finished - started - stats.compile_s), sum(k for _, k in shares)
        with self._cond:
            t = self._totals
            t["images"] += n
            t["tokens"] += n * self.spec.num_tokens
            t["waves"] += 1
            t["device_seconds"] += wall
            t["first_wave_at"] = t["first_wave_at"] or started
            t["last_wave_at"] = finished
            t["kv_cache_bytes"], t["sequences"] = int(stats.kv_cache_bytes), n
            for p, k in shares:
                live = self._in_flight.setdefault(p.shard.shard_id, {"attempt": p.attempt, "decoded": 0,
                                                                     "device_seconds": 0.0})
                live["decoded"] += k
                live["device_seconds"] += wall * k / n
        self.metrics.add("linegen_images_generated", n)
        self.metrics.add("linegen_tokens_generated", n * self.spec.num_tokens)
        self.metrics.add("linegen_device_seconds", wall)
        self.metrics.set("linegen_images_per_s", n / wall if wall > 0 else 0.0)
        self.metrics.set("linegen_kv_cache_bytes", stats.kv_cache_bytes)
        self.metrics.set("linegen_sequences_per_wave", n)

    # -- the engine thread ------------------------------------------------------------------
    def _load(self) -> None:
        import torch

        if self._cpu_threads:
            torch.set_num_threads(self._cpu_threads)
        from linegen.workers.runner import ModelRunner

        self.runner = ModelRunner(self._model, self._cache, batch_size=self._batch_size,
                                  memory_budget=self._memory_budget)
        self.engine, self.packing, self.spec = self.runner.engine, self.runner.packing, self.runner.spec
        self.text = self.runner.text  # None for class-conditional models
        self.model_name = self.spec.name
        self.device_name = self.runner.model.device_name

    def _take_wave(self, pending: list[_Pending]) -> list[tuple[_Pending, object]]:
        """Up to max_batch items, oldest shard first, taking the next queued shard when one runs dry."""
        wave: list[tuple[_Pending, object]] = []
        while len(wave) < self.engine.max_batch:
            p = next((p for p in pending if p.next_item < len(p.items)), None)
            if p is None:
                try:  # idle: wait a little for work; mid-wave: only take what is already queued
                    shard, attempt = self.inbox.get(timeout=0.5) if not wave else self.inbox.get_nowait()
                except queue.Empty:
                    break
                try:
                    committed = self.sink.is_committed(shard.shard_id)
                except Exception as e:  # storage unreachable: this shard fails, the driver retries it
                    self._report(ShardOutcome(shard.shard_id, attempt, "failed", error=_one_line(e), worker=self.worker))
                    continue
                if committed:
                    self._report(ShardOutcome(shard.shard_id, attempt, "already", worker=self.worker))
                else:
                    pending.append(_Pending(shard, attempt, items=tuple(shard.items)))
                    self.engine.add_work(len(pending[-1].items))  # compile=auto weighs the work taken on
                continue
            take = min(self.engine.max_batch - len(wave), len(p.items) - p.next_item)
            wave += [(p, it) for it in p.items[p.next_item:p.next_item + take]]
            p.next_item += take
        return wave

    def _engine_loop(self) -> None:
        try:
            self._load()
        except BaseException as e:  # noqa: BLE001 - reported to the driver by poll()
            with self._cond:
                self._load_error = f"cannot load the model: {_one_line(e)}"
                self._cond.notify_all()
            return
        finally:
            self._loaded.set()
        pending: list[_Pending] = []
        in_flight = None  # a decoded wave whose images are still being decoded (GPU only)
        while not self._stop:
            wave = self._take_wave(pending)
            if not wave:
                if in_flight is not None:
                    self._finish_wave(pending, *in_flight)
                    in_flight = None
                continue
            started = time.time()
            try:
                result, prompt_info, images = self.runner.decode([it for _, it in wave])
            except Exception as e:  # a shard that cannot be generated fails, the actor goes on
                self._fail_wave(pending, wave, e)
                continue
            finished = time.time()  # the decode; images of a GPU wave are decoded during the next one
            if in_flight is not None:
                self._finish_wave(pending, *in_flight)
                in_flight = None
            current = (wave, result, prompt_info, images, started, finished)
            if images.done():
                self._finish_wave(pending, *current)
            else:
                in_flight = current

    def _fail_wave(self, pending: list[_Pending], wave: list, error: BaseException) -> None:
        failed = {id(p) for p, _ in wave}
        for p in [p for p in pending if id(p) in failed]:
            pending.remove(p)
            self._report(ShardOutcome(p.shard.shard_id, p.attempt, "failed", error=_one_line(error),
                                      worker=self.worker))

    def _finish_wave(self, pending: list[_Pending], wave: list, result, prompt_info: list, images,
                     started: float, finished: float) -> None:
        try:
            images = images.result()
        except Exception as e:
            self._fail_wave(pending, wave, e)
            return
        tokens = result.tokens.numpy().astype(np.int32)
        start = 0
        shares = []
        for p in _unique(p for p, _ in wave):
            n = sum(1 for q, _ in wave if q is p)
            if not any(q is p for q in pending):  # failed meanwhile (a later wave of the same shard)
                start += n
                continue
            p.tokens.append(tokens[start:start + n])
            p.images.append(images[start:start + n])
            p.prompt_info += prompt_info[start:start + n]
            truncated = sum(1 for x in prompt_info[start:start + n] if x is not None and x[1])
            p.stats.append(self._stats_row(p, result.stats, n, len(wave), started, finished, truncated))
            shares.append((p, n))
            start += n
        if shares:
            self._book_wave(shares, started, finished, result.stats)
        for p in [p for p in pending if p.done() == len(p.items)]:
            pending.remove(p)
            self.commits.put(p)

    def _stats_row(self, p: _Pending, s, n: int, batch: int, started: float, finished: float,
                   truncated: int) -> dict:
        # A wave shared by two shards is split by item count, so summing wall_s over shards
        # gives device time once (cost accounting relies on it).
        share = n / batch
        wall = max(0.0, finished - started - s.compile_s) * share  # compile time is reported apart
        return {"job_id": getattr(self.sink, "job_id", ""), "shard_id": p.shard.shard_id, "attempt": p.attempt,
                "worker": self.worker, "node": self.node, "device": self.device_name, "model": self.model_name,
                "cache_policy": self.engine.policy.name,
                "cache_ratio": self.engine.policy.budget(self.engine.layout) / self.engine.layout.num_tokens,
                "batch_size": batch, "images": n, "tokens": n * self.spec.num_tokens, "wall_s": wall,
                "tokens_per_s": n * self.spec.num_tokens / wall if wall > 0 else 0.0,
                "images_per_s": n / wall if wall > 0 else 0.0, "kv_cache_bytes": s.kv_cache_bytes,
                "peak_memory_bytes": s.peak_memory_bytes, "prompts_truncated": truncated,
                "compile_s": s.compile_s * share, "decode_path": s.path,
                "started_at": started, "finished_at": finished}

    # -- the commit thread ------------------------------------------------------------------
    def _commit_loop(self) -> None:
        while not self._stop:
            p: _Pending = self.commits.get()
            try:
                wrote = self.sink.commit(p.shard, p.attempt, np.concatenate(p.tokens), np.concatenate(p.images),
                                         p.stats, prompt_info=p.prompt_info)
                self._report(ShardOutcome(p.shard.shard_id, p.attempt, "committed" if wrote else "already",
                                          images=len(p.items), worker=self.worker))
            except Exception as e:
                self._report(ShardOutcome(p.shard.shard_id, p.attempt, "failed", error=_one_line(e),
                                          worker=self.worker))


def _unique(seq):
    seen, out = set(), []
    for x in seq:
        if id(x) not in seen:
            seen.add(id(x))
            out.append(x)
    return out


def _one_line(e: BaseException) -> str:
    return one_line(f"{type(e).__name__}: {e}")
