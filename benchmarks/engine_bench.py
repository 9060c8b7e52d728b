"""Cache policies side by side on one model, one machine, one run (`linegen bench`).

For each policy: cache bytes per sequence, how many sequences fit the memory budget, decode
throughput at an equal batch and at each policy's own max batch, peak memory, and the share of
decode time spent in per-line scoring. Every figure is also given as a ratio to `full`.
The run also measures the machine's plain matmul rate and reports what fraction of it the
decode loop achieves, from the FLOPs a step must do (counted below).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch

from linegen.workers.cache import POLICY_NAMES, Layout, make_policy
from linegen.workers.engine import Engine, GenRequest, SamplingParams
from linegen.workers.engine.packing import weights_bytes
from linegen.workers.sizes import parse_bytes
from linegen.workers.models.config import ModelSpec
from linegen.workers.models.loading import load_model
from linegen.workers.models.registry import get_spec

FIELDS = ("kv_bytes_per_sequence", "max_sequences", "tokens_per_s", "images_per_s",
          "images_per_s_at_max_batch", "peak_memory_bytes", "scoring_share")


@dataclass(frozen=True)
class BenchOptions:
    model: str = "llamagen-c2i-b-384"
    checkpoint: str | None = None
    vq_checkpoint: str | None = None
    policies: tuple[str, ...] = POLICY_NAMES
    ratios: tuple[str, ...] = ("1/6",)
    max_batch_ratios: tuple[str, ...] | None = None  # ratios that also get the at-max-batch run (None: all)
    batch: int = 1
    memory_budget: str | None = None
    device: str = "cpu"
    dtype: str | None = None
    cfg_scale: float = 4.0
    max_batch_cap: int | None = None  # bound the at-max-batch run (reported when it binds)
    skip_max_batch: bool = False
    gpt_overrides: dict = field(default_factory=dict)  # e.g. dim=256, n_layer=8, n_head=4
    image_size: int | None = None
    repeats: int = 1
    warmup: bool = True


def decode_flops(spec: ModelSpec, ctx: int) -> float:
    """FLOPs of one decode step for one cache row attending over `ctx` keys."""
    c = spec.gpt
    matmuls = c.n_layer * (4 * c.dim * c.dim + 3 * c.dim * c.ffn_dim) + c.dim * c.vocab_size
    attention = c.n_layer * 2 * 2 * c.dim * ctx  # q.k and p.v
    return 2.0 * matmuls + attention


def wave_flops(spec: ModelSpec, policy, rows: int) -> float:
    """FLOPs of a whole wave: prefill + N-1 decode steps, with each step's true cache length."""
    layout = Layout(spec.prefix_len, spec.grid)
    budget, w, C = policy.budget(layout), layout.width, layout.prefix
    total, visual = decode_flops(spec, C) * C, 0
    for _ in range(spec.num_tokens - 1):
        visual += 1
        total += decode_flops(spec, C + visual)
        if visual % w == 0 and visual > budget:
            visual = budget
    return total * rows


def wave_bytes(spec: ModelSpec, policy, rows: int, weights: int, dtype_bytes: int) -> float:
    """Bytes a wave must read: all weights once per step, plus every row's cached K and V."""
    layout = Layout(spec.prefix_len, spec.grid)
    budget, w, C = policy.budget(layout), layout.width, layout.prefix
    c = spec.gpt
    per_entry = 2 * c.n_layer * c.dim * dtype_bytes
    total, visual = weights + C * per_entry * rows, 0
    for _ in range(spec.num_tokens - 1):
        visual += 1
        total += weights + (C + visual) * per_entry * rows
        if visual % w == 0 and visual > budget:
            visual = budget
    return total


def read_bandwidth(device: torch.device, mib: int = 512, repeats: int = 5) -> float:
    """The machine's plain memory read rate (bytes/s): the roof for small-batch decode."""
    x = torch.ones(mib * 2**18, device=device, dtype=torch.float32)
    x.sum()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        x.sum()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return x.numel() * 4 * repeats / (time.perf_counter() - t0)


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """The machine's plain dense matmul rate (FLOP/s) for this dtype: the roof the engine is held to."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0)


# Random T5-like features for t2i benchmarks: a typical prompt has ~20 of its 120 tokens real
# (left-padded), so attention masks and the full 120-entry prefix are exercised as in production.
CAPTION_TOKENS_USED = 20


def _requests(spec: ModelSpec, n: int, cfg_scale: float) -> list[GenRequest]:
    sampling = SamplingParams(cfg_scale=cfg_scale, top_k=0, top_p=1.0)
    if spec.gpt.cond == "c2i":
        return [GenRequest(seed=1000 + i, class_id=i % spec.gpt.num_classes, sampling=sampling) for i in range(n)]
    g = torch.Generator().manual_seed(0)
    T, used = spec.gpt.caption_tokens, min(CAPTION_TOKENS_USED, spec.gpt.caption_tokens)
    mask = torch.zeros(T, dtype=torch.bool)
    mask[T - used:] = True
    return [GenRequest(seed=1000 + i, caption=torch.randn(T, spec.gpt.caption_dim, generator=g) * mask[:, None] * 0.1,
                       caption_mask=mask, sampling=sampling) for i in range(n)]


def _timed_wave(engine: Engine, n: int, cfg_scale: float, repeats: int):
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(engine.device)
    best = None
    for _ in range(repeats):
        res = engine.run_wave(_requests(engine.spec, n, cfg_scale))
        if best is None or res.stats.decode_s < best.stats.decode_s:
            best = res
    return best


def build_spec(opts: BenchOptions) -> ModelSpec:
    spec = get_spec(opts.model)
    if opts.gpt_overrides:
        spec = replace(spec, name=spec.name + "+custom", gpt=replace(spec.gpt, **opts.gpt_overrides))
    if opts.image_size:
        spec = replace(spec, name=spec.name + f"@{opts.image_size}", image_size=opts.image_size)
    return spec


def run_bench(opts: BenchOptions, log=lambda msg: None) -> dict:
    device = torch.device(opts.device)
    dtype = getattr(torch, opts.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    spec = build_spec(opts)
    runs = [(name, None) for name in opts.policies if name == "full"]
    runs += [(name, r) for r in opts.ratios for name in opts.policies if name != "full"]
    layout = Layout(spec.prefix_len, spec.grid)
    policies = {run: make_policy(run[0], ratio=run[1]) for run in runs}
    for p in policies.values():  # every setting checked before the first (long) measurement
        p.check(layout)
    gpt, _vq = load_model(spec, opts.checkpoint, opts.vq_checkpoint, device=device, dtype=dtype)
    budget = parse_bytes(opts.memory_budget) if opts.memory_budget else None
    guided = opts.cfg_scale > 1
    rows_per_seq = 2 if guided else 1
    peak_rate = matmul_rate(device, dtype)
    bandwidth = read_bandwidth(device)
    log(f"plain matmul rate: {peak_rate / 1e9:.1f} GFLOP/s ({dtype}); memory read {bandwidth / 1e9:.1f} GB/s")
    wbytes = weights_bytes(gpt)
    dtype_bytes = torch.finfo(dtype).bits // 8
    results = []
    if opts.warmup:  # first-call costs (allocator, kernels, CUDA context) stay out of the table
        _timed_wave(Engine(gpt, None, spec, make_policy("full"), device=device, max_batch=1), 1, opts.cfg_scale, 1)
    for name, ratio_text in runs:
        policy = policies[(name, ratio_text)]
        engine = Engine(gpt, None, spec, policy, device=device, max_batch=max(opts.batch, 1))
        plan = engine.plan_packing(budget, guided=guided)
        res = _timed_wave(engine, opts.batch, opts.cfg_scale, opts.repeats)
        s = res.stats
        flops = wave_flops(spec, policy, opts.batch * rows_per_seq)
        nbytes = wave_bytes(spec, policy, opts.batch * rows_per_seq, wbytes, dtype_bytes)
        if device.type == "cuda":
            peak = s.peak_memory_bytes
        else:  # process RSS never goes down, so count what this run holds: weights + cache
            peak = weights_bytes(gpt) + s.kv_cache_bytes
        row = {
            "policy": name, "ratio": policy.budget(engine.layout) / engine.layout.num_tokens,
            "kv_bytes_per_sequence": engine.cache_bytes_per_sequence(guided),
            "max_sequences": plan.max_sequences,
            "tokens_per_s": s.tokens / s.decode_s,
            "images_per_s": s.batch_size / s.decode_s,
            "images_per_s_at_max_batch": None,
            "max_batch_run": None,
            "peak_memory_bytes": peak,
            "scoring_share": s.compaction_s / s.decode_s,
            "decode_s": s.decode_s,
            "achieved_flops": flops / s.decode_s,
            "fraction_of_matmul_peak": flops / s.decode_s / peak_rate,
            "achieved_bytes_per_s": nbytes / s.decode_s,
            "fraction_of_read_bandwidth": nbytes / s.decode_s / bandwidth,
        }
        wants_max = opts.max_batch_ratios is None or name == "full" or ratio_text in opts.max_batch_ratios
        if not opts.skip_max_batch and wants_max:
            n = plan.max_sequences if opts.max_batch_cap is None else min(plan.max_sequences, opts.max_batch_cap)
            big = Engine(gpt, None, spec, policy, device=device, max_batch=n)
            r = _timed_wave(big, n, opts.cfg_scale, 1)
            row["images_per_s_at_max_batch"] = r.stats.batch_size / r.stats.decode_s
            row["max_batch_run"] = n
            if device.type == "cuda":
                row["peak_memory_bytes_at_max_batch"] = r.stats.peak_memory_bytes
        log(f"{name} {ratio_text or ''}: {row['images_per_s']:.4f} images/s at batch {opts.batch}")
        results.append(row)
    full = next((r for r in results if r["policy"] == "full"), None)
    for r in results:
        r["vs_full"] = {f: (r[f] / full[f] if full and full[f] and r[f] is not None else None) for f in FIELDS}
    machine = {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
               "matmul_flops": peak_rate, "read_bytes_per_s": bandwidth}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    c = spec.gpt
    return {"model": spec.name, "layers": c.n_layer, "dim": c.dim, "heads": c.n_head, "grid": spec.grid,
            "tokens": spec.num_tokens, "prefix": spec.prefix_len, "batch": opts.batch, "cfg_scale": opts.cfg_scale,
            "memory_budget_bytes": plan.budget_bytes, "weights_bytes": plan.weights_bytes,
            "machine": machine, "results": results}
