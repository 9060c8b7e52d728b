"""`linegen generate`: K images per class into a folder of PNGs plus tokens.npy.

The items are the ones a manifest of `{class_id: c, count: K}` rows would give with the same job
seed, so the same image comes out of `linegen generate` and `linegen run`.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Callable

from linegen.errors import UserError
from linegen.jobs.manifest.rows import MAX_COUNT


def check_request(spec, class_ids: list[int], count: int) -> None:
    """The request against the model (workers.models.config.ModelSpec), before it is loaded."""

    if not 1 <= count <= MAX_COUNT:
        raise UserError(f"--count must be in 1..{MAX_COUNT:,}, got {count}")
    if not class_ids:
        raise UserError("give at least one --class-id")
    if spec.gpt.cond != "c2i":
        raise UserError(f"model {spec.name} is text-conditional; `generate` takes class ids (use `linegen run` with prompts)")
    for c in class_ids:
        if not 0 <= c < spec.gpt.num_classes:
            raise UserError(f"--class-id {c} is outside 0..{spec.gpt.num_classes - 1} for model {spec.name}")


_OWN_FILE = re.compile(r"\d{6,}\.png|tokens\.npy|generate\.json")  # what generate_to_folder writes


def check_out_folder(out: Path) -> list[Path]:
    """``out`` must be new, empty, or hold only an earlier `generate`'s files (returned: they are
    replaced, so no stale image outlives a smaller run). Anything else there is refused."""
    if not out.exists():
        return []
    if not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    entries = list(out.iterdir())
    foreign = sorted(p.name for p in entries if not (p.is_file() and _OWN_FILE.fullmatch(p.name)))
    if foreign:
        raise UserError(f"--out {out} is not empty ({foreign[0]}{' and more' if len(foreign) > 1 else ''} is not "
                        "from `linegen generate`); choose an empty or new folder")
    return entries


def generate_to_folder(generator, class_ids: list[int], count: int, out: Path,
                       progress: Callable[[int, int], None] | None = None) -> dict:
    """Decode ``count`` images of each class with ``generator`` (a loaded `Generator`) into ``out``,
    replacing an earlier `generate`'s files there."""
    import numpy as np
    from PIL import Image

    spec = generator.spec
    check_request(spec, class_ids, count)
    stale = check_out_folder(out)
    rows = [{"class_id": c, "count": count} for c in class_ids]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {out}: {e.strerror}") from None
    t0, compiled_before = time.perf_counter(), generator.compile_s
    generated = generator.generate(rows, progress=progress)
    for path in stale:
        path.unlink(missing_ok=True)
    for i, g in enumerate(generated):
        Image.fromarray(g.image).save(out / f"{i:06d}.png")
    np.save(out / "tokens.npy", np.stack([g.tokens for g in generated]))
    wall = time.perf_counter() - t0
    compile_s = generator.compile_s - compiled_before
    busy = wall - compile_s  # compile time is reported apart, never inside a throughput
    engine = generator.engine
    summary = {
        "out": str(out), "model": spec.name, "images": {"done": len(generated), "total": len(generated)},
        "image_size": spec.image_size,
        "tokens_per_image": spec.num_tokens, "device": str(engine.device),
        "dtype": str(engine.dtype).removeprefix("torch."), "cache_policy": generator.settings.cache.policy,
        "wall_s": round(wall, 3), "compile_s": round(compile_s, 3),
        "decode_path": generator.decode_path, "images_per_s": round(len(generated) / busy, 4) if busy > 0 else None,
        "tokens_per_s": round(len(generated) * spec.num_tokens / busy, 2) if busy > 0 else None,
        "seeds": [g.item.seed for g in generated],
    }
    (out / "generate.json").write_text(json.dumps(summary, indent=2))
    return summary
