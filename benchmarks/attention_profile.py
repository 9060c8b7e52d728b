"""Where a model's line queries put their attention, per layer and head: the evidence behind the
cache settings (benchmarks/RESULTS.md).

    python -m linegen.benchmarks.attention_profile --samples 16

The full cache is teacher-forced on its own samples; at every line boundary the line's queries'
exact attention over all cached keys (the same explicit softmax LineAR scores with) is split
into: the condition prefix, the first image line (anchors), the line itself (row distance 0),
the lines 1, 2, 3 rows above, and everything older ("far"). "same col" is the share of the
previous rows' mass (distance 1-3) that falls within one column of the query's own column,
"top-B" the share of a head's visual mass its best B = N/6 keys hold (concentration), and
"next-line overlap" how much of line r's top-B keys line r+1 also ranks in its top-B (the
inter-line consistency LineAR relies on).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import torch

from linegen.workers.cache.base import BudgetedPolicy, Layout


@dataclass
class HeadStats:
    lines: int = 0
    prefix: float = 0.0
    first_line: float = 0.0
    by_distance: list[float] = field(default_factory=lambda: [0.0] * 4)  # rows 0..3 above
    far: float = 0.0
    same_col: float = 0.0
    near_rows: float = 0.0
    top_b: float = 0.0
    overlap: float = 0.0
    overlap_n: int = 0


class Recorder(BudgetedPolicy):
    """Never evicts (budget = all but the last line, which never completes); records attention."""

    name = "recorder"
    needs_queries = True
    state_names = ("unused",)  # makes the cache score every line, also before any eviction

    def __init__(self, grid: int, n_layer: int, n_head: int, top_b: int, start_line: int):
        super().__init__(lines=grid - 1)
        self.top_b, self.start_line = top_b, start_line
        self.stats = [[HeadStats() for _ in range(n_head)] for _ in range(n_layer)]
        self.previous_top: dict[int, torch.Tensor] = {}

    def score(self, ctx):
        w, r, p = ctx.layout.width, ctx.line, ctx.layout.prefix
        attn = ctx.attention[: ctx.pairs or None]  # conditional rows only: [R, H, w, L]
        rows = ctx.positions[: ctx.pairs or None].long() // w  # [R, H, Lv]
        cols = ctx.positions[: ctx.pairs or None].long() % w
        vis = attn[..., p:]
        mass = vis.sum(dim=2)  # [R, H, Lv] summed over the line's queries
        dist = r - rows
        qcol = torch.arange(w)[None, None, :, None]
        near = (vis * ((cols[:, :, None, :] - qcol).abs() <= 1) * ((dist >= 1) & (dist <= 3))[:, :, None, :]).sum((2, 3))
        near_all = (vis * ((dist >= 1) & (dist <= 3))[:, :, None, :]).sum((2, 3))
        topb = min(self.top_b, mass.shape[-1])
        top_idx = mass.topk(topb, dim=-1).indices
        top_mass = mass.gather(-1, top_idx).sum(-1) / mass.sum(-1).clamp_min(1e-12)
        top_pos = ctx.positions[: ctx.pairs or None].long().gather(-1, top_idx)
        for h in range(attn.shape[1]):
            s = self.stats[ctx.layer][h]
            if r >= self.start_line:
                s.lines += 1
                s.prefix += float(attn[:, h, :, :p].sum(-1).mean())
                s.first_line += float((vis[:, h] * (rows[:, h] == 0)[:, None, :]).sum(-1).mean()) if r > 0 else 0.0
                for d in range(4):
                    s.by_distance[d] += float((vis[:, h] * (dist[:, h] == d)[:, None, :]).sum(-1).mean())
                s.far += float((vis[:, h] * ((dist[:, h] > 3) & (rows[:, h] > 0))[:, None, :]).sum(-1).mean())
                s.same_col += float(near[:, h].sum())
                s.near_rows += float(near_all[:, h].sum())
                s.top_b += float(top_mass[:, h].mean())
            prev = self.previous_top.get((ctx.layer, h))
            if prev is not None and r > self.start_line:
                # keys older than line r - 1 that both lines could rank
                a = torch.zeros(attn.shape[0], (r + 1) * w, dtype=torch.bool)
                b = torch.zeros_like(a)
                a.scatter_(1, prev, True)
                b.scatter_(1, top_pos[:, h], True)
                old = torch.arange((r + 1) * w) < (r - 1) * w
                inter = (a & b & old).sum(-1).float()
                s.overlap += float((inter / (a & old).sum(-1).clamp_min(1)).mean())
                s.overlap_n += 1
            self.previous_top[(ctx.layer, h)] = top_pos[:, h]
        return torch.zeros_like(ctx.positions, dtype=torch.float32)


def table(recorder: Recorder) -> str:
    head = ("| layer | head | prefix | first line | same line | 1 row up | 2 rows up | 3 rows up | far | "
            "same col (of 1-3 up) | top-B share | next-line overlap |\n|" + "---|" * 12)
    out = [head]
    for layer, heads in enumerate(recorder.stats):
        for h, s in enumerate(heads):
            n = max(1, s.lines)
            d = [x / n for x in s.by_distance]
            out.append(f"| {layer} | {h} | {s.prefix / n:.2f} | {s.first_line / n:.2f} | {d[0]:.2f} | {d[1]:.2f} | "
                       f"{d[2]:.2f} | {d[3]:.2f} | {s.far / n:.2f} | {s.same_col / max(s.near_rows, 1e-12):.2f} | "
                       f"{s.top_b / n:.2f} | {s.overlap / max(1, s.overlap_n):.2f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    from linegen.quality.evaluate import EvalOptions, requests_for
    from linegen.settings.model_choice import ModelChoice
    from linegen.workers.cache import make_policy
    from linegen.workers.engine import Engine

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="linegen-shapes-c2i")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seed", type=int, default=1, help="request seeds (1: the calibration seeds of `linegen tune`)")
    p.add_argument("--start-line", type=int, default=6, help="first line counted (the cache is compressed from here on)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    choice = ModelChoice(name=args.model, device="cpu")
    spec, gpt, _vq, device = choice.load()
    requests = requests_for(EvalOptions(model=choice, seed=args.seed), spec, args.samples)
    full = Engine(gpt, None, spec, make_policy("full"), device=device, max_batch=args.samples)
    tokens = full.run_wave(requests).tokens
    layout = Layout(spec.prefix_len, spec.grid)
    rec = Recorder(spec.grid, spec.gpt.n_layer, spec.gpt.n_head, top_b=layout.num_tokens // 6,
                   start_line=args.start_line)
    Engine(gpt, None, spec, rec, device=device, max_batch=args.samples).run_wave(requests, forced=tokens)
    print(f"model {spec.name}: attention of each line's queries (conditional rows, lines {args.start_line}.."
          f"{spec.grid - 2}), {args.samples} full-cache samples teacher-forced; shares of each query's attention, "
          f"averaged; top-B with B = {layout.num_tokens // 6}\n")
    print(table(rec))


if __name__ == "__main__":
    main()
