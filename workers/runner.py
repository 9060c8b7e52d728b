"""A model loaded once and ready to decode: the one recipe every caller uses.

`LoadedModel` is the weights on a device (GPT, VQ decoder, the text encoder of a t2i model) and
builds engines over them: a job's actor and `linegen.Generator` build one (`ModelRunner`), while
`eval`, `tune` and `bench` build one per cache policy over the same weights. `ModelRunner` adds
what a generating caller needs: the packing that sizes its waves from the memory budget, and an
image decoder that overlaps VQ decoding with the next wave on a GPU.

``model`` is anything with ``load() -> (spec, gpt, vq, device)`` and ``load_text_encoder(device)``
(the job's `ModelChoice`); ``cache`` anything with ``build(prefix, grid) -> CachePolicy``. Where
the weights come from (a path, S3, the built-in files) is theirs to know; this module only decodes.
"""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from linegen.workers.cache import CachePolicy
from linegen.workers.engine.engine import Engine
from linegen.workers.engine.wave import WaveResult, requests_for
from linegen.workers.engine.overlap import ImageDecoder
from linegen.workers.models.config import ModelSpec
from linegen.workers.sizes import parse_bytes


@dataclass
class LoadedModel:
    spec: ModelSpec
    gpt: torch.nn.Module
    vq: torch.nn.Module | None
    device: torch.device | str
    text: Any = None  # the TextEncoder of a t2i model, else None

    @classmethod
    def load(cls, model, *, text: bool = True) -> "LoadedModel":
        spec, gpt, vq, device = model.load()
        return cls(spec, gpt, vq, device, model.load_text_encoder(device) if text else None)

    def engine(self, policy: CachePolicy, *, max_batch: int = 1, compile: str = "off", images: bool = True) -> Engine:
        """An engine over these weights; ``images=False`` leaves the VQ decoder out (tokens only)."""
        return Engine(self.gpt, self.vq if images else None, self.spec, policy, device=self.device,
                      max_batch=max_batch, compile=compile)

    @property
    def device_name(self) -> str:
        dev = torch.device(self.device)
        return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


class ModelRunner:
    """One engine with its cache policy, sized by packing (or ``batch_size``), and its image decoder."""

    def __init__(self, model, cache, *, batch_size: int | None = None, memory_budget: str | None = None):
        self.model = LoadedModel.load(model)
        spec = self.model.spec
        self.engine = self.model.engine(cache.build(spec.prefix_len, spec.grid), compile=getattr(model, "compile", "off"))
        self.packing = self.engine.plan_packing(parse_bytes(memory_budget) if memory_budget else None)
        self.engine.max_batch = batch_size or self.packing.max_sequences
        self.images = ImageDecoder(self.engine)

    @property
    def spec(self) -> ModelSpec:
        return self.model.spec

    @property
    def text(self):
        return self.model.text

    def decode(self, items: list) -> tuple[WaveResult, list, "Future"]:
        """One wave of planned items -> (tokens and stats, per-item prompt info, the images' future:
        done at once on a CPU, decoding on a side stream while the next wave runs on a GPU)."""
        requests, prompt_info = requests_for(items, self.model.text)
        result = self.engine.run_wave(requests)
        return result, prompt_info, self.images.submit(result.tokens)

    def close(self) -> None:
        self.images.close()
