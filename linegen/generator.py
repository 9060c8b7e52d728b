"""`linegen.Generator`: a model loaded once, decoding manifest rows into images, tokens and metadata.

It works on its own (`Generator(model=...).generate(rows)`) and as a Ray Data callable class::

    ds = ray.data.from_items(linegen.read_rows("prompts.jsonl"))
    ds = ds.map_batches(linegen.Generator, fn_constructor_kwargs={"model": "linegen-shapes-c2i"},
                        concurrency=2, num_gpus=1, batch_size=64)

Rows are validated exactly like a manifest's (errors name the row by its index). An image's seed
derives from (seed, row, replica) as in `linegen run`, where ``row`` is the row's index in its
manifest: give it as a ``row`` field (`linegen.read_rows` adds it) to get the images `linegen run`
makes for the same manifest and seed; without it, a row's position in the call counts.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from linegen.errors import UserError
from linegen.jobs.manifest import Conditioning, parse_rows
from linegen.jobs.plan import Item, expand_items
from linegen.settings.resolve import Settings


@dataclass
class GeneratedImage:
    item: Item  # row, replica, seed, condition, sampling
    image: Any  # uint8 [H, W, 3] numpy array
    tokens: Any  # int32 [N] numpy array, raster order
    prompt_tokens: int | None = None  # t2i: caption tokens kept
    prompt_truncated: bool | None = None  # t2i: whether the prompt was cut to the encoder's limit


class Generator:
    def __init__(self, model: str | None = None, *, settings: Settings | None = None, **flags):
        """``flags``: the keywords of `linegen run` (checkpoint, vq_checkpoint, text_encoder,
        cache, cache_ratio, cache_options, seed, cfg_scale, top_k, top_p, temperature, batch_size,
        memory_budget, device, dtype, random_weights, s3_endpoint_url, config); or ready ``settings``."""
        from linegen.workers.runner import ModelRunner

        self.settings = settings if settings is not None else Settings.from_flags(model=model, **flags)
        self.settings.check()
        self.runner = ModelRunner(self.settings.model, self.settings.cache, batch_size=self.settings.batch_size,
                                  memory_budget=self.settings.memory_budget)
        self.engine, self.spec = self.runner.engine, self.runner.spec
        spec = self.spec
        self.conditioning = Conditioning.of(spec)
        self.cache_ratio = self.settings.cache.effective_ratio(spec.prefix_len, spec.grid)
        self.decode_path = ""  # how the last wave decoded (compile=auto says why)

    @property
    def compile_s(self) -> float:
        """Seconds spent building compiled/captured decode steps so far (never inside a throughput)."""
        return self.engine.compile_s

    def items(self, rows: Iterable[dict]) -> list[Item]:
        """The items (one per image) that `rows` ask for, with `linegen run`'s seeds."""
        cleaned, indices = [], []
        for position, row in enumerate(rows):
            row = dict(row)
            index = row.pop("row", None)
            if index is None:
                index = position
            elif isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise UserError(f"rows[{position}]: field 'row': must be the row's index in its manifest "
                                f"(an integer >= 0), got {index!r}")
            cleaned.append(row)
            indices.append(index)
        parsed = parse_rows(cleaned, conditioning=self.conditioning)
        parsed = [dataclasses.replace(r, index=indices[r.index]) for r in parsed]
        return expand_items(parsed, job_seed=self.settings.seed, sampling=self.settings.sampling)

    def generate(self, rows: Iterable[dict], progress: Callable[[int, int], None] | None = None
                 ) -> list[GeneratedImage]:
        """Images for every item the rows ask for, in row then replica order."""
        import numpy as np

        items = self.items(rows)
        self.engine.add_work(len(items))  # compile=auto weighs the whole call, not one wave
        out: list[GeneratedImage] = []
        step = self.engine.max_batch
        previous = None  # on a GPU a wave's images decode while the next wave runs

        def collect(wave, prompt_info, tokens, images) -> None:
            images = images.result()  # waits for this wave's VQ decoding
            for i, it in enumerate(wave):
                info = prompt_info[i]
                out.append(GeneratedImage(item=it, image=images[i], tokens=tokens[i],
                                          prompt_tokens=None if info is None else int(info[0]),
                                          prompt_truncated=None if info is None else bool(info[1])))
            if progress is not None:
                progress(len(out), len(items))

        for start in range(0, len(items), step):
            wave = items[start:start + step]
            result, prompt_info, images = self.runner.decode(wave)
            self.decode_path = result.stats.compile_decision
            current = (wave, prompt_info, result.tokens.numpy().astype(np.int32), images)
            if previous is not None:
                collect(*previous)
            previous = current
        if previous is not None:
            collect(*previous)
        return out

    def __call__(self, batch) -> dict[str, list]:
        """A Ray Data batch of manifest rows (numpy or pandas format) -> one row per image:
        PNG bytes in ``image`` and the columns of linegen's image rows."""
        import numpy as np

        from linegen.jobs.writer import IMAGE_COLUMN_NAMES, cache_options_text, encode_pngs, item_records

        generated = self.generate(_rows_of(batch))
        if not generated:
            return {name: [] for name in IMAGE_COLUMN_NAMES if name != "job_id"}
        # the columns of a job's image rows, from their one definition (jobs/writer.py), less job_id
        records = item_records([g.item for g in generated], np.stack([g.image for g in generated]), job_id=None,
                               model=self.spec.name, cache_policy=self.settings.cache.policy,
                               cache_ratio=self.cache_ratio, cache_options=cache_options_text(self.engine.policy.options()),
                               prompt_info=[None if g.prompt_tokens is None else (g.prompt_tokens, g.prompt_truncated)
                                            for g in generated])
        out: dict[str, list] = {"image": encode_pngs([g.image for g in generated])}
        for name in IMAGE_COLUMN_NAMES:
            if name == "tokens":
                out[name] = [g.tokens for g in generated]
            elif name not in ("image", "job_id"):
                out[name] = [r[name] for r in records]
        return out


# Ray Data types a column of integers with a missing value as float64 (42 -> 42.0): these fields
# take a float that holds an integer as that integer.
_INT_FIELDS = ("class_id", "count", "seed", "top_k", "row")


def _rows_of(batch) -> list[dict]:
    """Column batch -> row dicts of plain Python values; a missing value (None/NaN) is left out,
    and an integer field's float holding an integer (Ray Data's float64 column) is that integer."""
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas
        columns = {c: batch[c].tolist() for c in batch.columns}
    else:
        columns = {c: (v.tolist() if hasattr(v, "tolist") else list(v)) for c, v in batch.items()}
    n = len(next(iter(columns.values()))) if columns else 0
    rows = []
    for i in range(n):
        row = {}
        for name, values in columns.items():
            value = values[i]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            if name in _INT_FIELDS and isinstance(value, float) and value.is_integer():
                value = int(value)
            row[name] = value
        rows.append(row)
    return rows


__all__ = ["GeneratedImage", "Generator"]
