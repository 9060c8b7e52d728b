"""Rewrite shipped checkpoints with their floating tensors in bf16, to halve the package.

    python -m linegen.workers.builtin.store_bf16 workers/builtin/weights/photos_gpt.pt workers/builtin/weights/photos_vq.pt

The loaders cast every floating tensor to the module's dtype (workers/models/checkpoint.py), so a
bf16 file loads into an fp32 model like an fp32 one; only the last bits of each weight differ, and
the evaluation in benchmarks/RESULTS.md is of the files as shipped.
"""
from __future__ import annotations

import sys

import torch


def store_bf16(path: str) -> None:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["model"] = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, path)


if __name__ == "__main__":
    for p in sys.argv[1:]:
        store_bf16(p)
        print(f"stored {p} in bf16", flush=True)
