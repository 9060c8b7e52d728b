"""LineAR's switches against H2O on the built-in model: teacher-forced fidelity to the full cache.

    python -m linegen.benchmarks.linear_variants --ratio 1/6 --samples 32

Every row forces the same full-cache samples (the evaluation's requests: classes in turn, the
model's sampling defaults) and reports the mean KL(full || policy) per step and top-1 agreement
(workers/engine/fidelity.py), the columns of `linegen eval` that are steady at a few dozen samples.
"""
from __future__ import annotations

import argparse
import time

import torch

VARIANTS: tuple[tuple[str, dict], ...] = (
    ("h2o", {}), ("streaming", {}), ("snapkv", {}),
    ("linear", {}),
    ("linear", {"anchors": 0}), ("linear", {"anchors": 8}), ("linear", {"anchors": 16}), ("linear", {"anchors": 24}),
    ("linear", {"aggregate": "max"}), ("linear", {"recent_lines": 2}), ("linear", {"pool_2d": 3}),
    ("linear", {"cfg_shared": True}),
    ("linear", {"anchors": 16, "cfg_shared": True}),
    ("linear", {"anchors": 16, "cfg_shared": True, "recent_lines": 2}),
)


def main(argv: list[str] | None = None) -> None:
    from linegen.jobs.evaluate import EvalOptions, requests_for
    from linegen.jobs.models import ModelChoice
    from linegen.workers.cache import make_policy
    from linegen.workers.engine import Engine
    from linegen.workers.engine.fidelity import fidelity

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="linegen-shapes-c2i")
    p.add_argument("--ratio", default="1/6")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    choice = ModelChoice(name=args.model, device="cpu")
    spec, gpt, _vq, device = choice.load()
    requests = requests_for(EvalOptions(model=choice), spec, args.samples)
    full = Engine(gpt, None, spec, make_policy("full"), device=device, max_batch=args.samples)
    tokens = full.run_wave(requests).tokens
    print(f"model {spec.name}, ratio {args.ratio}, {args.samples} full-cache samples teacher-forced "
          f"({args.samples * spec.num_tokens} steps per row), {torch.get_num_threads()} threads\n")
    print("| policy | options | KL (nats) | top-1 agree | s |\n|---|---|---|---|---|")
    for name, options in VARIANTS:
        t0 = time.time()
        engine = Engine(gpt, None, spec, make_policy(name, ratio=args.ratio, **options), device=device,
                        max_batch=args.samples)
        f = fidelity(full, engine, requests, tokens)
        text = ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"
        print(f"| {name} | {text} | {f.kl_mean:.4f} | {f.top1_agreement:.3f} | {time.time() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
