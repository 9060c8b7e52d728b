"""`linegen generate`: K images per class into a folder of PNGs plus tokens.npy.

The items are the ones a manifest of `{class_id: c, count: K}` rows would give with the same job
seed, so the same image comes out of `linegen generate` and `linegen run`.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from linegen.jobs.cache_choice import CacheChoice
from linegen.jobs.errors import UserError
from linegen.jobs.manifest import ManifestRow
from linegen.jobs.models import ModelChoice
from linegen.jobs.plan import Item, expand_items
from linegen.workers.models.config import SamplingParams


@dataclass(frozen=True)
class GenerateOptions:
    model: ModelChoice
    class_ids: tuple[int, ...]
    count: int
    out: Path
    seed: int = 0
    sampling: SamplingParams = field(default_factory=SamplingParams)
    cache: CacheChoice = field(default_factory=CacheChoice)
    batch_size: int = 16


def to_request(item: Item):
    """A planned item -> the engine's request (class-conditional items)."""
    from linegen.workers.engine import GenRequest

    return GenRequest(seed=item.seed, class_id=item.class_id, sampling=item.sampling)


def plan_items(opts: GenerateOptions) -> list[Item]:
    spec = opts.model.spec()
    if opts.count < 1:
        raise UserError(f"--count must be >= 1, got {opts.count}")
    if not opts.class_ids:
        raise UserError("give at least one --class-id")
    if spec.gpt.cond != "c2i":
        raise UserError(f"model {spec.name} is text-conditional; `generate` takes class ids (use `linegen run` with prompts)")
    for c in opts.class_ids:
        if not 0 <= c < spec.gpt.num_classes:
            raise UserError(f"--class-id {c} is outside 0..{spec.gpt.num_classes - 1} for model {spec.name}")
    if opts.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {opts.batch_size}")
    rows = [ManifestRow(index=i, line=i + 1, prompt=None, class_id=c, count=opts.count, seed=None, id=None,
                        cfg_scale=None, temperature=None, top_k=None, top_p=None)
            for i, c in enumerate(opts.class_ids)]
    return expand_items(rows, job_seed=opts.seed, sampling=opts.sampling)


def check_options(opts: GenerateOptions) -> list[Item]:
    """Every check that needs no weights; returns the planned items."""
    items = plan_items(opts)
    spec = opts.model.spec()
    opts.cache.build(spec.prefix_len, spec.grid)
    opts.model.check()
    opts.model.resolve_device()
    return items


def load_engine(opts: GenerateOptions):
    """The model on its device, wrapped in an engine (errors here are one-line UserErrors)."""
    from linegen.workers.engine import Engine

    spec, gpt, vq, device = opts.model.load()
    return Engine(gpt, vq, spec, opts.cache.build(spec.prefix_len, spec.grid), device=device,
                  max_batch=opts.batch_size, compile=opts.model.compile)


def generate_to_folder(opts: GenerateOptions, progress: Callable[[int, int], None] | None = None,
                       engine=None) -> dict:
    items = check_options(opts)
    engine = engine or load_engine(opts)
    engine.add_work(len(items))  # compile=auto weighs the whole job
    try:
        opts.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {opts.out}: {e.strerror}") from None

    import numpy as np
    from PIL import Image

    from linegen.workers.engine.overlap import ImageDecoder

    spec, gpt, device = engine.spec, engine.gpt, str(engine.device)
    t0 = time.perf_counter()
    all_tokens, done, decode_s, compile_s = [], 0, 0.0, 0.0
    decoder = ImageDecoder(engine)  # on a GPU, a wave's images decode while the next wave decodes
    previous = None

    def save(start: int, future) -> None:
        for i, img in enumerate(future.result()):
            Image.fromarray(img).save(opts.out / f"{start + i:06d}.png")

    try:
        for start in range(0, len(items), opts.batch_size):
            wave = items[start:start + opts.batch_size]
            result = engine.run_wave([to_request(it) for it in wave])
            decode_s += result.stats.decode_s
            compile_s += result.stats.compile_s
            current = (start, decoder.submit(result.tokens))
            if previous is not None:
                save(*previous)
            previous = current
            all_tokens.append(result.tokens.numpy().astype(np.int32))
            done += len(wave)
            if progress:
                progress(done, len(items))
        if previous is not None:
            save(*previous)
    finally:
        decoder.close()
    tokens = np.concatenate(all_tokens)
    np.save(opts.out / "tokens.npy", tokens)
    wall = time.perf_counter() - t0
    summary = {
        "out": str(opts.out), "model": spec.name, "images": len(items), "image_size": spec.image_size,
        "tokens_per_image": spec.num_tokens, "device": device, "dtype": str(next(gpt.parameters()).dtype).removeprefix("torch."),
        "cache_policy": opts.cache.policy, "wall_s": round(wall, 3), "compile_s": round(compile_s, 3),
        "images_per_s": round(len(items) / wall, 4) if wall > 0 else None,
        "tokens_per_s": round(len(items) * spec.num_tokens / decode_s, 2) if decode_s > 0 else None,
        "seeds": [it.seed for it in items],
    }
    (opts.out / "generate.json").write_text(json.dumps(summary, indent=2))
    return summary
