"""Measure how much budget each head needs, and share a total budget by it (what `tune` writes).

`HeadProfile` is a cache policy that never evicts: at every line boundary it takes the line's
exact attention (the explicit softmax LineAR scores with) and records, per (layer, head), how much
of it the best k visual keys hold, for every k: a head's concentration curve. A local head's curve
is near its top after a line or two; a broad head's keeps rising. `budgets_from_profile` then gives
out the total n_layer * n_head * B in half lines, each to the head whose curve gains most from it
(the curves are concave, so this greedy split holds the most attention any split can), with every
head keeping at least one line: the same bytes as the uniform budget, placed where attention is.
"""
from __future__ import annotations

import torch

from linegen.workers.cache.base import BudgetedPolicy, Layout, parse_ratio
from linegen.workers.cache.head_budgets import format_shares, quantum


class HeadProfile(BudgetedPolicy):
    name = "head-profile"
    needs_queries = True
    state_names = ("unused",)  # per-entry state makes the cache score every line, not only when evicting

    def __init__(self, layout: Layout, n_layer: int, n_head: int):
        # a budget of all lines but the last, which never completes: nothing is ever evicted
        super().__init__(lines=layout.grid - 1)
        n = layout.num_tokens
        self.curves = torch.zeros(n_layer, n_head, n + 1, dtype=torch.float64)  # [.., k]: mass of the best k
        self.recorded = [0] * n_layer  # lines recorded, per layer

    def score(self, ctx):
        rows = ctx.pairs or ctx.positions.shape[0]  # the conditional rows of CFG pairs
        vis = ctx.visual_attention()[:rows]  # [R, H, w, Lv]
        mass = vis.sum(dim=2) / vis.shape[2]  # mean attention of the line's queries on each key
        best = mass.sort(dim=-1, descending=True).values.cumsum(-1).double().mean(0)  # [H, Lv]
        curve = self.curves[ctx.layer]
        lv = best.shape[-1]
        curve[:, 1:lv + 1] += best
        curve[:, lv + 1:] += best[:, -1:]  # more budget than keys: all of them
        self.recorded[ctx.layer] += 1
        return torch.zeros(ctx.positions.shape, dtype=torch.float32, device=ctx.positions.device)

    def mean_curves(self) -> torch.Tensor:
        """[n_layer, n_head, N + 1]: the mean over recorded lines of the mass the best k keys hold."""
        counts = torch.tensor(self.recorded, dtype=torch.float64).clamp_min(1)[:, None, None]
        return self.curves / counts


def budgets_from_profile(curves: torch.Tensor, budget: int, layout: Layout) -> list[list[int]]:
    """Integer budgets [layer][head] summing to n_layer * n_head * budget, each >= one line."""
    n_layer, n_head, _ = curves.shape
    n = layout.num_tokens
    low, q = min(layout.width, budget), quantum(layout.width)
    b = torch.full((n_layer * n_head,), low, dtype=torch.long)
    flat = curves.reshape(n_layer * n_head, -1)
    left = n_layer * n_head * (budget - low)
    while left > 0:
        step = q if left >= q else 1
        room = b + step <= n
        gain = flat.gather(1, (b + step).clamp_max(n)[:, None])[:, 0] - flat.gather(1, b[:, None])[:, 0]
        # where gains tie (heads whose every key already fits), the smaller budget goes first
        gain = torch.where(room, gain - 1e-12 * b, torch.full_like(gain, -1.0))
        i = int(gain.argmax())
        b[i] += step
        left -= step
    return b.reshape(n_layer, n_head).tolist()


def shares_text(budgets: list[list[int]], budget: int) -> str:
    """The `head_shares` option that reproduces these budgets at this uniform budget."""
    return format_shares([[b / budget for b in layer] for layer in budgets])


def measure_shares(model, ratio: str, requests: list, max_batch: int) -> str:
    """The `head_shares` option for `ratio` on a loaded model (workers/runner.py), from the attention
    of its full-cache samples of `requests`: what `tune`, `eval` and `bench` call `+heads`."""
    spec = model.spec
    layout = Layout(spec.prefix_len, spec.grid)
    profile = HeadProfile(layout, spec.gpt.n_layer, spec.gpt.n_head)
    model.engine(profile, max_batch=max_batch, images=False).run_waves(requests)
    budget = BudgetedPolicy(ratio=parse_ratio(ratio)).budget(layout)  # every budgeted policy's, at this ratio
    return shares_text(budgets_from_profile(profile.mean_curves(), budget, layout), budget)
