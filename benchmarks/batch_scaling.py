"""Full-cache engine throughput against batch size (issue 2's baseline table).

    python -m linegen.benchmarks.batch_scaling --model llamagen-c2i-b-256 --batches 1,4,16

Random weights, decode only (no VQ), CFG on: every image is 2 cache rows. Also prints the share of
the machine's plain matmul rate and memory read rate the decode loop reaches.
"""
from __future__ import annotations

import argparse

import torch

from linegen.bench.engine_bench import _requests
from linegen.bench.roofline import matmul_rate, read_bandwidth, wave_bytes, wave_flops
from linegen.workers.cache import make_policy
from linegen.workers.engine import Engine
from linegen.workers.engine.packing import weights_bytes
from linegen.workers.models.loading import load_model
from linegen.workers.models.registry import get_spec


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llamagen-c2i-b-256")
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--cfg-scale", type=float, default=4.0)
    args = ap.parse_args(argv)
    spec = get_spec(args.model)
    device = torch.device("cpu")
    gpt, _ = load_model(spec, None, None, device=device, dtype=torch.float32)
    peak, bw = matmul_rate(device, torch.float32), read_bandwidth(device)
    wbytes = weights_bytes(gpt)
    policy = make_policy("full")
    rows_per = 2 if args.cfg_scale > 1 else 1
    print(f"model {spec.name} (random weights, fp32), {spec.grid}x{spec.grid} tokens, cfg {args.cfg_scale}; "
          f"cpu, {torch.get_num_threads()} threads; plain matmul {peak / 1e9:.1f} GFLOP/s, memory read {bw / 1e9:.1f} GB/s")
    print()
    print("| batch (images) | cache rows | tokens/s | images/s | s per image | % of matmul peak | % of read bandwidth |")
    print("|---|---|---|---|---|---|---|")
    for b in (int(x) for x in args.batches.split(",")):
        eng = Engine(gpt, None, spec, policy, device=device, max_batch=b)
        s = eng.run_wave(_requests(eng.spec, b, args.cfg_scale)).stats
        flops = wave_flops(spec, policy, b * rows_per)
        nbytes = wave_bytes(spec, policy, b * rows_per, wbytes, 4)
        print(f"| {b} | {b * rows_per} | {s.tokens / s.decode_s:.1f} | {b / s.decode_s:.4f} | {s.decode_s / b:.1f} | "
              f"{flops / s.decode_s / peak:.1%} | {nbytes / s.decode_s / bw:.1%} |")


if __name__ == "__main__":
    main()
