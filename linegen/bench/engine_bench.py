"""Cache policies side by side on one model, one machine, one run (`linegen bench`).

For each policy: cache bytes per sequence, how many sequences fit the memory budget, decode
throughput at an equal batch and at each policy's own max batch, peak memory, and the share of
decode time spent in per-line scoring. Every figure is also given as a ratio to `full`.
Each policy can run in several variants (decode path and dtype, e.g. `off:float32,on:float32,on:auto`),
measured in turn (interleaved per repeat) so a drifting machine load hits them alike; compile time
is reported apart and never inside throughput.
The run also measures the machine's plain matmul rates (fp32 and bf16) and memory read rate, and
reports each row's roofline (linegen/bench/roofline.py): FLOPs and bytes per step, the images/s they
bound, and the fraction of that bound and of the GEMM rates the engine reached.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from linegen.bench.roofline import matmul_rate, read_bandwidth, roofline, wave_bytes, wave_flops
from linegen.settings.candidates import Candidate
from linegen.workers.cache import POLICY_NAMES, Layout, make_policy
from linegen.workers.cache.head_profile import measure_shares
from linegen.workers.engine import Engine, GenRequest, SamplingParams
from linegen.workers.engine.compile_choice import ENGINE_MODES
from linegen.workers.engine.packing import weights_bytes
from linegen.workers.models.config import ModelSpec
from linegen.workers.models.janus_config import is_janus
from linegen.workers.models.loading import load_model
from linegen.workers.models.precision import resolve_dtype_name
from linegen.workers.models.registry import get_spec
from linegen.workers.runner import LoadedModel
from linegen.workers.sizes import parse_bytes

BENCH_CALIBRATION_ITEMS = 2  # items whose attention sets a `+heads` run's shares

FIELDS = ("kv_bytes_per_sequence", "max_sequences", "tokens_per_s", "images_per_s",
          "images_per_s_at_max_batch", "peak_memory_bytes", "scoring_share")


@dataclass(frozen=True)
class Variant:
    """One way of running the engine: its decode path (compile) and dtype (None: the device default)."""

    compile: str = "off"
    dtype: str | None = None

    @property
    def label(self) -> str:
        return f"{self.compile}:{self.dtype or 'default'}"


def parse_variants(text: str) -> tuple[Variant, ...]:
    """'off:float32,on:float32,on:auto' -> variants; a part without ':' is a compile mode (static: the
    static step without a compiler, to tell the two gains apart)."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        mode, _, dtype = part.partition(":")
        if mode not in ENGINE_MODES:
            raise ValueError(f"variant {part!r}: compile must be one of {', '.join(ENGINE_MODES)}")
        resolve_dtype_name(dtype or None, "cpu")  # a bad name fails here, before any measurement
        out.append(Variant(mode, dtype or None))
    if not out:
        raise ValueError("give at least one variant, e.g. off:float32")
    return tuple(out)


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
    compile: str = "off"
    variants: tuple[Variant, ...] | None = None  # None: the one variant (compile, dtype)
    cfg_scale: float = 4.0
    max_batch_cap: int | None = None  # bound the at-max-batch run (reported when it binds)
    skip_max_batch: bool = False
    full_max_batch: bool = True  # full also gets the at-max-batch run (whatever max_batch_ratios says)
    gpt_overrides: dict = field(default_factory=dict)  # e.g. dim=256, n_layer=8, n_head=4
    image_size: int | None = None
    repeats: int = 1
    warmup: bool = True


# Random T5-like features for t2i benchmarks: a typical prompt has ~20 of its 120 tokens real
# (left-padded), so attention masks and the full 120-entry prefix are exercised as in production.
CAPTION_TOKENS_USED = 20


def _requests(spec: ModelSpec, n: int, cfg_scale: float) -> list[GenRequest]:
    sampling = SamplingParams(cfg_scale=cfg_scale, top_k=0, top_p=1.0)
    if is_janus(spec):  # Janus-Pro: prompt token ids, not T5 features
        from linegen.workers.models.janus_prompts import random_prompt_requests

        return random_prompt_requests(spec, n, sampling)
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
    if is_janus(spec) and opts.checkpoint:  # a Janus folder decides its own dimensions
        from linegen.errors import UserError
        from linegen.workers.models.janus_config import JanusConfigError, read_config, spec_from_config

        try:
            spec = spec_from_config(spec.name, read_config(opts.checkpoint))
        except JanusConfigError as e:
            raise UserError(f"--checkpoint {opts.checkpoint}: {e}") from None
    if opts.gpt_overrides:
        spec = replace(spec, name=spec.name + "+custom", gpt=replace(spec.gpt, **opts.gpt_overrides))
    if opts.image_size:
        spec = replace(spec, name=spec.name + f"@{opts.image_size}", image_size=opts.image_size)
    return spec


@dataclass
class _Measure:
    """One policy x variant x batch: its engine and the fastest wave so far."""

    engine: Engine
    batch: int
    best: object = None
    compile_s: float = 0.0


def _measure_interleaved(setups: list, variants: tuple, opts: BenchOptions, device: torch.device, log) -> None:
    """Each repeat runs every (policy, batch, variant) engine in turn, so a drifting machine load
    hits every row alike; the fastest wave of each counts. A static engine's buffers are released
    after each wave: only one wave's cache is alive."""
    for _ in range(opts.repeats):
        for name, ratio_text, policy, per_variant in setups:
            for which in ("batch", "max"):
                for v in variants:
                    m = per_variant[v][2].get(which)
                    if m is None:
                        continue
                    res = _timed_wave(m.engine, m.batch, opts.cfg_scale, 1)
                    m.engine.release()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    m.compile_s += res.stats.compile_s
                    if m.best is None or res.stats.decode_s < m.best.stats.decode_s:
                        m.best = res
                    log(f"  {name} {ratio_text or ''} [{v.label}] batch {m.batch}: {m.batch / res.stats.decode_s:.4f} "
                        f"images/s (compile {res.stats.compile_s:.1f} s)")


def _per_head(runs, model, cfg_scale: float, log) -> dict:
    """`POLICY+heads` runs with their head shares measured on this model's own attention (a few
    calibration items; with random weights the shares are arbitrary, but memory, packing and
    speed are what a bench row shows, and those depend on the budgets' total alone)."""
    out, shares = {}, {}
    requests = _requests(model.spec, BENCH_CALIBRATION_ITEMS, cfg_scale)
    for name, ratio in runs:
        cand = Candidate.parse(name)
        if not cand.per_head:
            continue
        if ratio not in shares:
            shares[ratio] = measure_shares(model, ratio, requests, len(requests))
            log(f"head shares at {ratio}: {shares[ratio]}")
        out[(name, ratio)] = cand.cache(ratio, shares[ratio]).build()
    return out


def run_bench(opts: BenchOptions, log=lambda msg: None) -> dict:
    device = torch.device(opts.device)
    spec = build_spec(opts)
    runs = [(name, None) for name in opts.policies if name == "full"]
    runs += [(name, r) for r in opts.ratios for name in opts.policies if name != "full"]
    layout = Layout(spec.prefix_len, spec.grid)
    policies = {run: Candidate.parse(run[0]).cache(run[1]).build() for run in runs}
    for p in policies.values():  # every setting checked before the first (long) measurement
        p.check(layout)
    variants = opts.variants or (Variant(opts.compile, opts.dtype),)
    dtypes = {v: resolve_dtype_name(v.dtype, device.type) for v in variants}
    models = {name: LoadedModel(spec, load_model(spec, opts.checkpoint, opts.vq_checkpoint, device=device,
                                                 dtype=getattr(torch, name))[0], None, device)
              for name in dict.fromkeys(dtypes.values())}
    budget = parse_bytes(opts.memory_budget) if opts.memory_budget else None
    guided = opts.cfg_scale > 1
    rows_per_seq = 2 if guided else 1
    rates = {name: matmul_rate(device, getattr(torch, name)) for name in ("float32", "bfloat16")}
    bandwidth = read_bandwidth(device)
    log("plain matmul rate: " + ", ".join(f"{n} {r / 1e9:.1f} GFLOP/s" for n, r in rates.items())
        + f"; memory read {bandwidth / 1e9:.1f} GB/s")
    if opts.warmup:  # first-call costs (allocator, kernels, CUDA context) stay out of the table
        for model in models.values():
            _timed_wave(model.engine(make_policy("full")), 1, opts.cfg_scale, 1)
    policies.update(_per_head(runs, next(iter(models.values())), opts.cfg_scale, log))
    setups = []  # every (policy, batch, variant) engine is built before the first measurement
    for name, ratio_text in runs:
        policy = policies[(name, ratio_text)]
        wants_max = opts.full_max_batch if name == "full" else (
            opts.max_batch_ratios is None or ratio_text in opts.max_batch_ratios)
        per_variant = {}
        for v in variants:
            model = models[dtypes[v]]
            engine = model.engine(policy, max_batch=max(opts.batch, 1), compile=v.compile)
            plan = engine.plan_packing(budget, guided=guided)
            measures = {"batch": _Measure(engine, opts.batch)}
            if not opts.skip_max_batch and wants_max:
                n = plan.max_sequences if opts.max_batch_cap is None else min(plan.max_sequences, opts.max_batch_cap)
                measures["max"] = _Measure(model.engine(policy, max_batch=n, compile=v.compile), n)
            per_variant[v] = (engine, plan, measures)
        setups.append((name, ratio_text, policy, per_variant))
    _measure_interleaved(setups, variants, opts, device, log)
    results = []
    for name, ratio_text, policy, per_variant in setups:
        for v in variants:
            engine, vplan, measures = per_variant[v]
            row = _row(spec, policy, name, engine, vplan, measures, v, dtypes[v], rows_per_seq, guided, rates, bandwidth)
            log(f"{name} {ratio_text or ''} [{v.label}]: {row['images_per_s']:.4f} images/s at batch {opts.batch}"
                + (f", {row['images_per_s_at_max_batch']:.4f} at {row['max_batch_run']}" if row["max_batch_run"] else "")
                + f" (compile {row['compile_s']:.1f} s)")
            results.append(row)
    plan = setups[0][3][variants[0]][1]
    for r in results:
        full = next((f for f in results if f["policy"] == "full" and f["variant"] == r["variant"]), None)
        r["vs_full"] = {f: (r[f] / full[f] if full and full[f] and r[f] is not None else None) for f in FIELDS}
    first = dtypes[variants[0]]
    machine = {"device": str(device), "dtype": first, "threads": torch.get_num_threads(),
               "matmul_flops": rates.get(first, rates["float32"]), "matmul_flops_float32": rates["float32"],
               "matmul_flops_bfloat16": rates["bfloat16"], "read_bytes_per_s": bandwidth}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    c = spec.gpt
    return {"model": spec.name, "layers": c.n_layer, "dim": c.dim, "heads": c.n_head, "grid": spec.grid,
            "tokens": spec.num_tokens, "prefix": spec.prefix_len, "batch": opts.batch, "cfg_scale": opts.cfg_scale,
            "memory_budget_bytes": plan.budget_bytes, "weights_bytes": plan.weights_bytes,
            "variants": [v.label for v in variants], "machine": machine, "results": results}


def _row(spec, policy, name, engine, plan, measures, variant, dtype_name, rows_per_seq, guided, rates, bandwidth) -> dict:
    s = measures["batch"].best.stats
    wbytes = weights_bytes(engine.gpt)
    dtype_bytes = torch.finfo(engine.dtype).bits // 8
    rate = rates.get(dtype_name, rates["float32"])

    def roof(n: int, decode_s: float) -> dict:
        r = roofline(spec, policy, n, n * rows_per_seq, wbytes, dtype_bytes, rate, bandwidth)
        achieved = n / decode_s
        flops = r.flops_per_step * spec.num_tokens / decode_s
        return {**r.to_dict(), "images": n, "images_per_s": achieved,
                "fraction_of_bound": achieved / r.bound_images_per_s,
                "fraction_of_gemm_float32": flops / rates["float32"], "fraction_of_gemm_bfloat16": flops / rates["bfloat16"]}

    flops = wave_flops(spec, policy, s.batch_size * rows_per_seq)
    nbytes = wave_bytes(spec, policy, s.batch_size * rows_per_seq, wbytes, dtype_bytes)
    peak = s.peak_memory_bytes if engine.device.type == "cuda" else wbytes + s.kv_cache_bytes
    row = {
        "policy": name, "ratio": policy.budget(engine.layout) / engine.layout.num_tokens,
        "head_shares": policy.options().get("head_shares", ""),  # a `+heads` run's measured shares
        "variant": variant.label, "compile": variant.compile, "dtype": dtype_name, "path": s.path,
        "kv_bytes_per_sequence": engine.cache_bytes_per_sequence(guided),
        "max_sequences": plan.max_sequences,
        "tokens_per_s": s.tokens / s.decode_s,
        "images_per_s": s.batch_size / s.decode_s,
        "images_per_s_at_max_batch": None,
        "max_batch_run": None,
        "peak_memory_bytes": peak,
        "scoring_share": s.compaction_s / s.decode_s,
        "decode_s": s.decode_s,
        "compile_s": sum(m.compile_s for m in measures.values()),
        "achieved_flops": flops / s.decode_s,
        "fraction_of_matmul_peak": flops / s.decode_s / rate,
        "achieved_bytes_per_s": nbytes / s.decode_s,
        "fraction_of_read_bandwidth": nbytes / s.decode_s / bandwidth,
        "roofline": roof(s.batch_size, s.decode_s),
        "roofline_at_max_batch": None,
    }
    big = measures.get("max")
    if big is not None:
        r = big.best.stats
        row["images_per_s_at_max_batch"] = r.batch_size / r.decode_s
        row["max_batch_run"] = big.batch
        row["roofline_at_max_batch"] = roof(r.batch_size, r.decode_s)
        if engine.device.type == "cuda":
            row["peak_memory_bytes_at_max_batch"] = r.peak_memory_bytes
    return row
