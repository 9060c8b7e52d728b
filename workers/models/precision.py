"""`--dtype auto`: bfloat16 where the hardware computes it natively, float32 elsewhere.

GPUs all do. On a CPU, bf16 only pays with native bf16 dot products (AVX512_BF16, or AMX): there
oneDNN runs bf16 GEMMs at ~2.5x its fp32 rate and reads half the weight bytes; without them
bf16 is converted in software and slower than fp32. torch's own capability string
(`torch.backends.cpu.get_cpu_capability()`) says only "AVX512", so the kernel's flags are read.
"""
from __future__ import annotations

from pathlib import Path

DTYPE_NAMES = ("float32", "bfloat16", "float16")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The first CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    return any(flag in cpu_flags(cpuinfo) for flag in NATIVE_BF16_FLAGS)


def auto_dtype(device: str, cpuinfo: str | None = None) -> str:
    """The dtype name `auto` means on `device` ("cpu", "cuda", "cuda:1")."""
    if str(device).startswith("cuda") or cpu_has_native_bf16(cpuinfo):
        return "bfloat16"
    return "float32"


def resolve_dtype_name(name: str | None, device: str) -> str:
    """None keeps the historical default (bf16 on GPU, fp32 on CPU); "auto" asks the hardware."""
    if name is None:
        return "bfloat16" if str(device).startswith("cuda") else "float32"
    if name == "auto":
        return auto_dtype(device)
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype must be auto or one of {', '.join(DTYPE_NAMES)}, got {name!r}")
    return name
