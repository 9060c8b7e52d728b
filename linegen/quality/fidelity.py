"""How close a cache policy stays to the full cache: teacher-forced on the same token sequence.

Both engines are fed the same tokens (the full cache's own samples, or any given grid); at every
step we compare the guided next-token distributions: mean KL(full || policy) and how often their
top-1 tokens agree. Meaningful numbers need a trained model (random weights are near-uniform).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from linegen.workers.engine import Engine, GenRequest


@dataclass(frozen=True)
class Fidelity:
    kl_mean: float  # nats, averaged over steps and items
    top1_agreement: float  # fraction of steps where argmax agrees
    steps: int

    def to_dict(self) -> dict:
        return {"kl_mean": self.kl_mean, "top1_agreement": self.top1_agreement, "steps": self.steps}


def divergence(ref: torch.Tensor, got: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per step, of two guided next-token log-distributions [..., V]: KL(ref || got) in nats and
    whether their top-1 tokens agree (1.0 / 0.0), each [...]."""
    return (ref.exp() * (ref - got)).sum(-1), (ref.argmax(-1) == got.argmax(-1)).float()


def guided_logprobs(engine: Engine, requests: list[GenRequest], tokens: torch.Tensor) -> torch.Tensor:
    steps: list[torch.Tensor] = []
    engine.run_wave(requests, forced=tokens, on_logits=lambda _step, g: steps.append(torch.log_softmax(g, -1).cpu()))
    return torch.stack(steps, dim=1)  # [n, N, V]


def fidelity(full: Engine, policy: Engine, requests: list[GenRequest], tokens: torch.Tensor | None = None) -> Fidelity:
    """tokens [n, N]: the sequence to force; default: what the full cache samples for `requests`."""
    if tokens is None:
        tokens = full.run_wave(requests).tokens
    ref = guided_logprobs(full, requests, tokens)
    got = guided_logprobs(policy, requests, tokens)
    kl, agree = divergence(ref, got)  # [n, N] each
    return Fidelity(kl_mean=float(kl.mean()), top1_agreement=float(agree.mean()), steps=int(kl.numel()))
