"""How many sequences fit a memory budget: the number LineAR's smaller cache multiplies.

units = (budget - weights - fixed workspace) // (cache bytes per item + activation bytes per item),
where an item with guidance is a CFG pair (two cache rows). The cache bytes come from the policy
(workers/cache/kv.py: prefix + capacity entries per layer, plus query stash and positions);
activations are what one decode step allocates per row beyond the cache (logits and the sampling
buffers over the vocabulary, hidden states) — measured on a GPU by a probe step, counted on a CPU.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from linegen.errors import UserError
from linegen.workers.sizes import fmt_bytes


class PackingError(UserError, ValueError):
    """A memory budget that cannot hold one sequence: the user's setting, said in one line."""


@dataclass(frozen=True)
class PackingPlan:
    max_sequences: int
    cache_bytes_per_sequence: int
    activation_bytes_per_sequence: int
    weights_bytes: int
    workspace_bytes: int
    budget_bytes: int
    total_bytes: int  # what max_sequences actually use, weights included
    budget_source: str

    def to_dict(self) -> dict:
        return asdict(self)


def default_budget(device: torch.device, fraction: float = 0.85) -> tuple[int, str]:
    """A fraction of what the device has free now, plus the weights already resident on it."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * fraction) + int(torch.cuda.memory_allocated(device)), f"{fraction:.0%} of free GPU memory"
    return int(available_ram() * fraction), f"{fraction:.0%} of available RAM"


def available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def weights_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def activation_bytes_per_row(vocab: int, dim: int, ffn: int, dtype_bytes: int) -> int:
    # fp32 logits, guided copy, filtered copy, sorted copy + indices, softmax, cumsum (~8 vocab
    # vectors), plus one token's hidden, qkv and FFN intermediates in the model dtype.
    return 8 * vocab * 4 + (6 * dim + 3 * ffn) * dtype_bytes


def plan_packing(*, cache_bytes_per_sequence: int, rows_per_sequence: int, weights: int, vocab: int,
                 dim: int, ffn: int, dtype_bytes: int, budget_bytes: int, budget_source: str,
                 workspace_bytes: int = 0) -> PackingPlan:
    act = activation_bytes_per_row(vocab, dim, ffn, dtype_bytes) * rows_per_sequence
    per_seq = cache_bytes_per_sequence + act
    free = budget_bytes - weights - workspace_bytes
    n = max(0, free // per_seq)
    if n < 1:
        minimum = weights + workspace_bytes + per_seq
        raise PackingError(
            f"memory budget {fmt_bytes(budget_bytes)} is too small for one sequence: the weights take "
            f"{fmt_bytes(weights)} and one sequence needs {fmt_bytes(per_seq)} "
            f"(minimum {fmt_bytes(minimum)})")
    return PackingPlan(max_sequences=int(n), cache_bytes_per_sequence=cache_bytes_per_sequence,
                       activation_bytes_per_sequence=act, weights_bytes=weights, workspace_bytes=workspace_bytes,
                       budget_bytes=budget_bytes, total_bytes=weights + workspace_bytes + int(n) * per_seq,
                       budget_source=budget_source)
