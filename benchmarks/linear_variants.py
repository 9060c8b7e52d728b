"""The cache sweep: every `linegen tune` candidate plus a grid of LineAR's switches, by teacher-forced
fidelity to the full cache at one ratio.

    python -m linegen.benchmarks.linear_variants --ratio 1/6 --samples 32            # calibration seeds
    python -m linegen.benchmarks.linear_variants --ratio 1/6 --samples 64 --seed 0   # eval seeds

Same machinery as `linegen tune` (linegen/quality/tune.py): the full cache's own samples of the requests
(classes in turn, the model's sampling defaults) are forced through every candidate; the table
reports mean KL(full || candidate) per step and top-1 agreement. Seed 1 gives the calibration
items settings are chosen on; `linegen eval` judges on seed 0.
"""
from __future__ import annotations

import argparse

from linegen.settings.candidates import Candidate
from linegen.quality.evaluate import CALIBRATION_SEED
from linegen.quality.tune import CANDIDATES

# Single switches and their neighbours, beyond the named option sets (benchmarks/RESULTS.md).
GRID: tuple[Candidate, ...] = (
    Candidate("h2o", None, (("recent_share", 0.25),)), Candidate("h2o", None, (("recent_share", 0.75),)),
    Candidate("streaming", None, (("sinks", 24),)),
    Candidate("linear", "paper", (("anchors", 16),)),
    Candidate("linear", "paper", (("aggregate", "max"),)), Candidate("linear", "paper", (("pool_2d", 3),)),
    Candidate("linear", "paper", (("decay", 0.5),)), Candidate("linear", "paper", (("decay", 1.0),)),
    Candidate("linear", "paper", (("cfg_shared", True), ("cfg_rank", "sum"))),
    Candidate("linear", "paper", (("anchor_lines", 1), ("recent_lines", 3))),
    Candidate("linear", "accumulate", (("decay", 0.5),)), Candidate("linear", "accumulate", (("decay", 0.8),)),
    Candidate("linear", "accumulate", (("cfg_rank", "sum"),)),
    Candidate("linear", "accumulate", (("cfg_shared", False),)),
    Candidate("linear", "accumulate", (("anchor_lines", 0), ("anchors", 8))),
    Candidate("linear", "accumulate", (("anchor_lines", 0), ("anchors", 12))),
    Candidate("linear", "accumulate", (("recent_lines", 1),)),
    Candidate("linear", "accumulate", (("pool_2d", 3),)),
    Candidate("linear", "accumulate", (("aggregate", "max"),)),
)


def main(argv: list[str] | None = None) -> None:
    import torch

    from linegen.settings.model_choice import ModelChoice
    from linegen.quality.tune import TuneOptions, render_table, tune

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="linegen-shapes-c2i")
    p.add_argument("--ratio", default="1/6")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--seed", type=int, default=CALIBRATION_SEED)
    p.add_argument("--no-grid", action="store_true", help="only the `linegen tune` candidates")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    candidates = CANDIDATES + (() if args.no_grid else GRID)
    result = tune(TuneOptions(model=ModelChoice(name=args.model, device="cpu"), ratio=args.ratio,
                              samples=args.samples, seed=args.seed, max_batch=args.samples, candidates=candidates),
                  log=lambda m: print(m, flush=True))
    print()
    print(render_table(result))


if __name__ == "__main__":
    main()
