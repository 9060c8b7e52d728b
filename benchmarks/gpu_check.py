"""The one-shot GPU check (run through benchmarks/gpu_check.sh, which makes linegen importable).

GPU: LlamaGen GPT-XL 384 px, random weights, bf16, CFG 4 with the model's sampling defaults; every
policy at batch 256 and at its packed maximum (the engine's own packing plan for the device's
free memory), the eager reference path vs the compiled one (CUDA graphs); then images/s, peak
memory and the fraction of the compute and memory rooflines (linegen/bench/roofline.py, rates
measured here), beside the LineAR paper's figures. Before that, compiled vs eager greedy tokens
on a small fp32 model, and after it, if time is left, whether VQ decoding overlaps decoding.
Last, Janus-Pro-1B (random weights, CFG 5, 120 prompt entries of which 24 real): full cache vs
LineAR 1/6 at batch 128, eager and compiled, beside the paper's Janus-Pro-1B row.

--smoke: the same code on a CPU with a tiny GPT (and a tiny Janus) on a 16x16 grid. Its compiled column runs
the static step eagerly (the step a CUDA graph captures, without the capture): inductor would
spend longer compiling each shape than the whole smoke run may take (tests/test_static_step.py
covers inductor on a tiny model).

Only torch and linegen.workers / linegen.bench / linegen.benchmarks are imported; the script fails if anything
pulled in Ray, boto3 or the rest of linegen.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
import traceback
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import torch

import linegen
from linegen.bench.roofline import matmul_rate, read_bandwidth, roofline
from linegen.workers.cache import make_policy
from linegen.workers.engine import Engine, GenRequest, SamplingParams
from linegen.workers.engine.overlap import ImageDecoder
from linegen.workers.engine.packing import weights_bytes
from linegen.workers.models.config import GPTConfig, ModelSpec
from linegen.workers.models.janus_config import is_janus, janus_lm, janus_spec
from linegen.workers.models.janus_prompts import random_prompt_requests
from linegen.workers.models.loading import load_model
from linegen.workers.models.precision import auto_dtype
from linegen.workers.models.registry import TINY_VQ, get_spec
from linegen.workers.sizes import parse_bytes

RUNS = (("full", None), ("linear", "1/4"), ("linear", "1/6"), ("streaming", "1/6"), ("h2o", "1/6"))
# The LineAR paper's efficiency table, LlamaGen-XL at 384 px, batch 256: (peak GB, images/s)
PAPER = {("full", None): (64.75, 0.77), ("linear", "1/4"): (25.51, 4.00), ("linear", "1/6"): (20.97, 5.85)}
# Janus-Pro-1B (docs/janus.md): the paper's row at batch 128, (peak GB, images/s)
JANUS_RUNS = (("full", None), ("linear", "1/6"))
JANUS_PAPER = {("full", None): (58.68, 0.89), ("linear", "1/6"): (34.64, 5.22)}
JANUS_BATCH = 128
FORBIDDEN = ("ray", "boto3", "pyarrow", "linegen.jobs", "linegen.cli", "linegen.cluster")
TINY_GPT = GPTConfig(dim=64, n_layer=2, n_head=4, vocab_size=256)


@dataclass(frozen=True)
class Setup:
    device: torch.device
    spec: ModelSpec
    batch: int
    packed_cap: int | None  # None: the packing plan's maximum
    memory_budget: int | None  # None: the engine's default (a share of free memory)
    compiled: str  # the Engine compile mode of the compiled column
    check_spec: ModelSpec  # the small fp32 model of the token check
    time_limit_s: float  # rows still to run after this are reported as skipped
    janus: ModelSpec | None = None  # Janus-Pro rows (random weights, the model's CFG 5), after the rest
    janus_batch: int = JANUS_BATCH
    janus_limit_s: float = 0.0  # Janus rows still to run after this (since the start) are skipped


def gpu_setup() -> Setup:
    return Setup(device=torch.device("cuda"), spec=get_spec("llamagen-c2i-xl-384"), batch=256, packed_cap=None,
                 memory_budget=None, compiled="on",
                 check_spec=ModelSpec(name="check-24", gpt=replace(TINY_GPT, dim=128, n_layer=4), image_size=96, vq=TINY_VQ),
                 time_limit_s=390.0, janus=get_spec("janus-pro-1b"), janus_limit_s=540.0)


def smoke_setup() -> Setup:
    tiny = ModelSpec(name="smoke-16", gpt=TINY_GPT, image_size=64, vq=TINY_VQ)
    tiny_janus = janus_spec("smoke-janus", janus_lm(64, 2, 4, 128, vocab_size=256, text_vocab_size=512),
                            "tiny Janus for the smoke run", image_size=32, vq=TINY_VQ)  # 8x8: a quarter of the steps
    return Setup(device=torch.device("cpu"), spec=tiny, batch=2, packed_cap=4, memory_budget=parse_bytes("256MiB"),
                 compiled="static", check_spec=tiny, time_limit_s=90.0, janus=tiny_janus, janus_batch=2,
                 janus_limit_s=110.0)


def requests(spec: ModelSpec, n: int, sampling: SamplingParams, seed0: int = 1000) -> list[GenRequest]:
    if is_janus(spec):  # random prompt ids (24 real of 120 entries), left-padded
        return random_prompt_requests(spec, n, sampling)
    return [GenRequest(seed=seed0 + i, class_id=(7 * i) % spec.gpt.num_classes, sampling=sampling) for i in range(n)]


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# --------------------------------------------------------------------------- tokens


def check_tokens(setup: Setup) -> list[dict]:
    """Compiled vs eager greedy tokens (fp32), and an item alone vs inside a padded batch."""
    spec, device = setup.check_spec, setup.device
    gpt, _ = load_model(spec, None, None, device=device, dtype=torch.float32, random_seed=0)
    with torch.no_grad():
        for p in gpt.parameters():
            p.mul_(5)  # sharper than the 0.02 init, so greedy tokens are not near-ties
    greedy = SamplingParams(cfg_scale=3.0, top_k=1)
    batch = requests(spec, 3, greedy)
    # per-head budgets: alternate heads at half and 1.5x the budget, so every layer is two groups
    c = spec.gpt
    shares = "/".join(",".join("0.5" if h % 2 == 0 else "1.5" for h in range(c.n_head)) for _ in range(c.n_layer))
    out = []
    for label, name, ratio, options in (("full", "full", None, {}), ("linear", "linear", "1/6", {}),
                                        ("linear+heads", "linear", "1/6", {"head_shares": shares})):
        policy = make_policy(name, ratio=ratio, **options)
        eager = Engine(gpt, None, spec, policy, device=device, max_batch=4).run_wave(batch).tokens
        compiled = Engine(gpt, None, spec, policy, device=device, max_batch=4, compile=setup.compiled)
        together = compiled.run_wave(batch)
        alone = compiled.run_wave(batch[2:])
        out.append({"policy": label, "ratio": ratio, "equal": bool(torch.equal(together.tokens, eager)),
                    "mismatch": float((together.tokens != eager).float().mean()),
                    "alone_equal": bool(torch.equal(alone.tokens[0], together.tokens[2])),
                    "path": together.stats.path})
    return out


# --------------------------------------------------------------------------- throughput


def throughput(setup: Setup, gpt, rates: dict, bandwidth: float, started: float, log, janus: bool = False) -> list[dict]:
    """Every run at the setup's batch and at its packed maximum; Janus: its runs at its batch only."""
    spec, device = (setup.janus, setup.device) if janus else (setup.spec, setup.device)
    limit = setup.janus_limit_s if janus else setup.time_limit_s
    dtype = next(gpt.parameters()).dtype
    wbytes, dtype_bytes = weights_bytes(gpt), torch.finfo(dtype).bits // 8
    sampling = spec.default_sampling
    rows = []
    for name, ratio in (JANUS_RUNS if janus else RUNS):
        policy = make_policy(name, ratio=ratio)
        plan = Engine(gpt, None, spec, policy, device=device).plan_packing(setup.memory_budget)
        packed = plan.max_sequences if setup.packed_cap is None else min(plan.max_sequences, setup.packed_cap)
        wanted = (setup.janus_batch,) if janus else (setup.batch, packed)
        batches = [b for b in dict.fromkeys(wanted) if b <= plan.max_sequences]
        for batch in batches:
            eager_rate = None
            modes = ["off", setup.compiled]
            while modes:
                mode = modes.pop(0)
                row = {"policy": name, "ratio": ratio, "batch": batch, "packed": batch == packed, "mode": mode,
                       "max_sequences": plan.max_sequences}
                if time.perf_counter() - started > limit:
                    rows.append({**row, "skipped": "skipped: time limit"})
                    continue
                free_memory(device)
                try:
                    engine = Engine(gpt, None, spec, policy, device=device, max_batch=batch, compile=mode)
                    s = engine.run_wave(requests(spec, batch, sampling)).stats
                except Exception as e:  # one failing row must not cost the rest of a one-shot run
                    traceback.print_exc()
                    rows.append({**row, "skipped": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"})
                    if mode not in ("off", "static"):
                        modes.append("static")  # the same step uncaptured: tells capture from step problems
                    continue
                finally:
                    engine = None
                roof = roofline(spec, policy, batch, s.rows, wbytes, dtype_bytes, rates[str(dtype).removeprefix("torch.")],
                                bandwidth)
                ips = batch / s.decode_s
                eager_rate = ips if mode == "off" else eager_rate
                row.update(images_per_s=ips, vs_eager=ips / eager_rate if eager_rate else None, path=s.path,
                           decode_s=s.decode_s, compile_s=s.compile_s, peak_gb=s.peak_memory_bytes / 1e9,
                           compute_fraction=ips / roof.compute_bound_images_per_s,
                           memory_fraction=ips / roof.memory_bound_images_per_s,
                           compute_bound=roof.compute_bound_images_per_s, memory_bound=roof.memory_bound_images_per_s,
                           scoring_share=s.compaction_s / s.decode_s)
                log(f"{name} {ratio or ''} batch {batch} {mode}: {ips:.2f} images/s, {row['peak_gb']:.2f} GB, "
                    f"compile {s.compile_s:.1f} s, decode {s.decode_s:.1f} s")
                rows.append(row)
    free_memory(device)
    return rows


def overlap(setup: Setup, gpt, vq, started: float) -> dict | None:
    """Two waves with VQ decoding: one after the other vs the images of wave 1 during wave 2."""
    if time.perf_counter() - started > setup.time_limit_s:
        return None
    spec, device = setup.spec, setup.device
    batch = min(setup.batch, 64)
    engine = Engine(gpt, vq, spec, make_policy("linear", ratio="1/6"), device=device, max_batch=batch, compile=setup.compiled)
    reqs = requests(spec, batch, spec.default_sampling)
    engine.run_wave(reqs)  # build the step outside the timing
    t0 = time.perf_counter()
    for _ in range(2):
        engine.decode_images(engine.run_wave(reqs).tokens)
    sequential = time.perf_counter() - t0
    decoder = ImageDecoder(engine)
    t0 = time.perf_counter()
    first = decoder.submit(engine.run_wave(reqs).tokens)
    second = decoder.submit(engine.run_wave(reqs).tokens)
    first.result(), second.result()
    pipelined = time.perf_counter() - t0
    decoder.close()
    return {"batch": batch, "sequential_s": sequential, "pipelined_s": pipelined, "overlaps": decoder.overlaps}


# --------------------------------------------------------------------------- report


def table_rows(rows: list[dict], paper_of) -> list[str]:
    """One markdown line per measured (or skipped) row; paper_of(row) -> (GB, images/s) or None."""
    lines = []
    for r in rows:
        paper = paper_of(r)
        head = f"| {r['policy']} | {r['ratio'] or '1'} | {r['batch']}{' (packed)' if r['packed'] else ''} |"
        if "skipped" in r:
            lines.append(f"{head} {r['mode']} | {r['skipped']} | | | | | | | | |")
            continue
        vs = "-" if r["vs_eager"] is None or r["mode"] == "off" else f"{r['vs_eager']:.2f}x"
        lines.append(f"{head} {r['path']} | {r['images_per_s']:.2f} | {vs} | {r['peak_gb']:.2f} | {r['compile_s']:.1f} | "
                     f"{r['compute_fraction']:.1%} | {r['memory_fraction']:.1%} | {r['scoring_share']:.1%} | "
                     f"{paper[0] if paper else ''} | {paper[1] if paper else ''} |")
    return lines


TABLE_HEAD = ["| policy | ratio | batch | path | images/s | vs eager | peak GB | compile s | % compute roof | "
              "% memory roof | scoring share | paper GB | paper images/s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]


def markdown(setup: Setup, env: str, rates: dict, bandwidth: float, tokens: list[dict], rows: list[dict],
             ov: dict | None, wall: float, janus_rows: list[dict] | None = None) -> str:
    spec = setup.spec
    c = spec.gpt
    lines = [f"# GPU check: {env}", "",
             f"Rates measured in this run: bf16 GEMM {rates['bfloat16'] / 1e12:.1f} TFLOP/s, fp32 GEMM "
             f"{rates['float32'] / 1e12:.1f} TFLOP/s, memory read {bandwidth / 1e12:.2f} TB/s. Whole check: {wall:.0f} s.",
             "", f"## Compiled ({setup.compiled}) vs eager greedy tokens, {setup.check_spec.name} "
                 f"(dim {setup.check_spec.gpt.dim}, {setup.check_spec.gpt.n_layer} layers, fp32, CFG 3, 3 items)", "",
             "| policy | path | tokens equal eager | mismatch | item alone == in batch |", "|---|---|---|---|---|"]
    for t in tokens:
        lines.append(f"| {t['policy']} {t['ratio'] or ''} | {t['path']} | {t['equal']} | {t['mismatch']:.4f} | {t['alone_equal']} |")
    s = spec.default_sampling
    lines += ["", f"## {spec.name}: {c.n_layer} layers, dim {c.dim}, {spec.grid}x{spec.grid} tokens, random weights, "
                  f"{auto_dtype(setup.device.type)}, CFG {s.cfg_scale} top-k {s.top_k}", "",
              "Eager = the reference path (compile off); compiled = the static step "
              f"({setup.compiled}). Roofline fractions: achieved images/s over the bound from the step's FLOPs at "
              "the GEMM rate (compute) and from its weight + KV bytes at the read rate (memory). Peak = the "
              "allocator's peak in the run (GB = 1e9 B, as the paper). Paper: LineAR's table at batch 256.", "",
              *TABLE_HEAD]
    lines += table_rows(rows, lambda r: PAPER.get((r["policy"], r["ratio"]))
                        if r["batch"] == 256 and spec.name == "llamagen-c2i-xl-384" else None)
    if ov is not None:
        lines += ["", f"## VQ decoding beside decoding (linear 1/6, compiled, 2 waves of {ov['batch']})", "",
                  f"one after the other {ov['sequential_s']:.1f} s; images of wave 1 decoded during wave 2 "
                  f"{ov['pipelined_s']:.1f} s ({'side stream' if ov['overlaps'] else 'inline on this device'})."]
    if janus_rows:
        j, jc = setup.janus, setup.janus.gpt
        lines += ["", f"## {j.name}: {jc.n_layer} layers, dim {jc.dim}, {j.grid}x{j.grid} tokens + {j.prefix_len} prompt "
                      f"entries (24 real), random weights, {auto_dtype(setup.device.type)}, CFG {j.default_sampling.cfg_scale}",
                  "", "Paper: LineAR's Janus-Pro-1B row at batch 128 (full cache vs LineAR 1/6).", "", *TABLE_HEAD]
        lines += table_rows(janus_rows, lambda r: JANUS_PAPER.get((r["policy"], r["ratio"]))
                            if r["batch"] == JANUS_BATCH and j.name == "janus-pro-1b" else None)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="markdown file to write")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    setup = smoke_setup() if args.smoke else gpu_setup()
    if args.smoke:
        torch.set_num_threads(1)  # tiny shapes: one thread is faster, and steady on a shared machine
    if setup.device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with SMOKE=1 on a CPU", file=sys.stderr)
        return 2
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    device_name = torch.cuda.get_device_name(setup.device) if setup.device.type == "cuda" else "cpu"
    env = (f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {device_name}, torch {torch.__version__}"
           + (f", CUDA {torch.version.cuda}" if setup.device.type == "cuda" else f", {torch.get_num_threads()} threads")
           + (", SMOKE" if args.smoke else ""))
    log(f"{env}; linegen from {linegen.__file__}")
    with torch.inference_mode():
        rates = {name: matmul_rate(setup.device, getattr(torch, name)) for name in ("bfloat16", "float32")}
    bandwidth = read_bandwidth(setup.device)
    try:
        tokens = check_tokens(setup)
    except Exception as e:
        traceback.print_exc()
        tokens = [{"policy": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}", "ratio": None,
                   "equal": False, "mismatch": 1.0, "alone_equal": False, "path": setup.compiled}]
    log(f"token check: {tokens}")
    gpt, vq = load_model(setup.spec, None, None, device=setup.device, dtype=getattr(torch, auto_dtype(setup.device.type)))
    rows = throughput(setup, gpt, rates, bandwidth, started, log)
    try:
        ov = overlap(setup, gpt, vq, started)
    except Exception:
        traceback.print_exc()
        ov = None
    janus_rows = []
    if setup.janus is not None:
        gpt = vq = None
        free_memory(setup.device)
        try:
            jgpt, _ = load_model(setup.janus, None, None, device=setup.device,
                                 dtype=getattr(torch, auto_dtype(setup.device.type)))
            janus_rows = throughput(setup, jgpt, rates, bandwidth, started, log, janus=True)
            jgpt = None
        except Exception as e:
            traceback.print_exc()
            janus_rows = [{"policy": "janus", "ratio": None, "batch": setup.janus_batch, "packed": False, "mode": "-",
                           "skipped": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"}]
    text = markdown(setup, env, rates, bandwidth, tokens, rows, ov, time.perf_counter() - started, janus_rows)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    pulled = sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
    if pulled:
        print(f"FAILED: imported {', '.join(pulled[:5])}: linegen.workers must need torch only", file=sys.stderr)
        return 3
    if not all(t["equal"] and t["alone_equal"] for t in tokens):
        print("FAILED: compiled tokens differ from eager", file=sys.stderr)
        return 1
    if any(str(r.get("skipped", "")).startswith("failed") for r in rows + janus_rows):
        print("FAILED: some rows did not run (see the table and the tracebacks above)", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
