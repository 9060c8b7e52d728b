"""Free-running generation in waves: the one loop `eval`, `tune`'s sample check and the head
profile share."""
from __future__ import annotations


def generate_tokens(engine, requests, max_batch: int):
    """Free-running samples of `requests` in waves of `max_batch` -> (tokens [n, N], decode seconds)."""
    import torch

    tokens, decode_s = [], 0.0
    for i in range(0, len(requests), max_batch):
        res = engine.run_wave(requests[i:i + max_batch])
        tokens.append(res.tokens)
        decode_s += res.stats.decode_s
    return torch.cat(tokens), decode_s
