"""What the hardware allows a decode wave: the FLOPs and bytes it must move, and the bound they set.

A decode step of a wave multiplies every weight once per row and reads every weight once (shared
by the rows) plus each row's cached K and V. With the machine's plain GEMM rate R and memory read
rate W, measured in the same run, a wave of n images over S steps can go no faster than

    images/s <= n / max(FLOPs / R, bytes / W)

(compute-bound or memory-bound, whichever is slower). The bench reports that bound beside what
the engine reached. The KV bytes are what the policy must read (the filled entries); a static
step that attends over a padded span reads more, which shows as a lower fraction.
Imports only torch and linegen.workers, so the GPU check runs it without the rest of linegen.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from linegen.workers.cache import Layout
from linegen.workers.models.config import ModelSpec


def decode_flops(spec: ModelSpec, ctx: int) -> float:
    """FLOPs of one decode step for one cache row attending over `ctx` keys."""
    c = spec.gpt
    matmuls = c.n_layer * (4 * c.dim * c.dim + 3 * c.dim * c.ffn_dim) + c.dim * c.vocab_size
    attention = c.n_layer * 2 * 2 * c.dim * ctx  # q.k and p.v
    return 2.0 * matmuls + attention


def _visual_lengths(spec: ModelSpec, policy):
    """The visual entries attended at each of the N - 1 decode steps (after that step's write)."""
    layout = Layout(spec.prefix_len, spec.grid)
    budget, w = policy.budget(layout), layout.width
    visual = 0
    for _ in range(spec.num_tokens - 1):
        visual += 1
        yield visual
        if visual % w == 0 and visual > budget:
            visual = budget


def wave_flops(spec: ModelSpec, policy, rows: int) -> float:
    """FLOPs of a whole wave: prefill + N-1 decode steps, with each step's true cache length."""
    C = spec.prefix_len
    total = decode_flops(spec, C) * C + sum(decode_flops(spec, C + v) for v in _visual_lengths(spec, policy))
    return total * rows


def wave_kv_bytes(spec: ModelSpec, policy, rows: int, dtype_bytes: int) -> float:
    """Bytes of cached K and V a wave's steps must read (prefill included)."""
    c, C = spec.gpt, spec.prefix_len
    per_entry = 2 * c.n_layer * c.dim * dtype_bytes
    return (C + sum(C + v for v in _visual_lengths(spec, policy))) * per_entry * rows


def wave_bytes(spec: ModelSpec, policy, rows: int, weights: int, dtype_bytes: int) -> float:
    """Bytes a wave must read: all weights once per step, plus every row's cached K and V."""
    return spec.num_tokens * weights + wave_kv_bytes(spec, policy, rows, dtype_bytes)


@dataclass(frozen=True)
class Roofline:
    flops_per_step: float  # the whole wave's, averaged over its N steps
    weight_bytes_per_step: float
    kv_bytes_per_step: float
    compute_bound_images_per_s: float
    memory_bound_images_per_s: float

    @property
    def bound_images_per_s(self) -> float:
        return min(self.compute_bound_images_per_s, self.memory_bound_images_per_s)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_bound_images_per_s <= self.memory_bound_images_per_s else "memory"

    def to_dict(self) -> dict:
        return {**asdict(self), "bound_images_per_s": self.bound_images_per_s, "bound": self.bound}


def roofline(spec: ModelSpec, policy, images: int, rows: int, weights: int, dtype_bytes: int,
             flops_rate: float, bytes_rate: float) -> Roofline:
    flops = wave_flops(spec, policy, rows)
    kv = wave_kv_bytes(spec, policy, rows, dtype_bytes)
    n = spec.num_tokens
    return Roofline(flops_per_step=flops / n, weight_bytes_per_step=float(weights), kv_bytes_per_step=kv / n,
                    compute_bound_images_per_s=images * flops_rate / flops,
                    memory_bound_images_per_s=images * bytes_rate / (n * weights + kv))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def read_bandwidth(device: torch.device, mib: int | None = None, repeats: int = 5) -> float:
    """The machine's plain memory read rate (bytes/s): the roof for memory-bound decode."""
    mib = mib or (4096 if device.type == "cuda" else 512)
    x = torch.ones(mib * 2**18, device=device, dtype=torch.float32)
    x.sum()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        x.sum()
    _sync(device)
    return x.numel() * 4 * repeats / (time.perf_counter() - t0)


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 5) -> float:
    """The machine's plain dense matmul rate (FLOP/s) for this dtype: the compute roof."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    _sync(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0)
