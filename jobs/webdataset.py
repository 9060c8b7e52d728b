"""A shard as a WebDataset tar (`--format webdataset`): one sample per image, in shard order.

Each sample is three members that share the key ``<item_id>`` (WebDataset groups members by the
name up to the first dot, and item ids hold no dot):

    <item_id>.png         the image (PNG, as in the Parquet `image` column; .jpg or .webp with --image-format)
    <item_id>.json        the image row's scalar columns (jobs/writer.py `item_records`), plus
                          `class_name` where the model names its classes
    <item_id>.tokens.npy  the N token codes in raster order, int32 (numpy's .npy format)

The tar is built in memory and committed like a Parquet shard (jobs/sink.py), as
``images/<shard>.tar``. Member times and owners are fixed, so the bytes depend on the images only.
`webdataset.WebDataset(urls)` and plain `tarfile` both read it.
"""
from __future__ import annotations

import io
import json
import tarfile
from typing import Sequence

import numpy as np

from linegen.jobs.plan import Item
from linegen.jobs.writer import IMAGE_FORMATS, check_shard_arrays, encode_images, item_records


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def _npy(tokens: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(tokens, dtype=np.int32), allow_pickle=False)
    return buf.getvalue()


def shard_tar(items: Sequence[Item], images: np.ndarray, tokens: np.ndarray, *, job_id: str, model: str,
              cache_policy: str, cache_ratio: float, class_names: Sequence[str] | None = None, png_workers: int = 4,
              prompt_info: Sequence[tuple[int, bool] | None] | None = None, cache_options: str = "{}",
              image_format: str = "png", image_quality: int | None = None,
              extra_columns: Sequence[tuple[str, str]] = ()) -> bytes:
    """The tar bytes of one shard; `images[i]` and `tokens[i]` belong to `items[i]`."""
    images, tokens = np.asarray(images), np.asarray(tokens)
    info = check_shard_arrays(items, images, tokens, prompt_info)
    records = item_records(items, images, job_id=job_id, model=model, cache_policy=cache_policy,
                           cache_ratio=cache_ratio, prompt_info=info, cache_options=cache_options)
    pngs = encode_images(images, workers=png_workers, image_format=image_format, quality=image_quality)
    ext = IMAGE_FORMATS[image_format][1]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for record, png, grid in zip(records, pngs, tokens):
            if class_names and record["class_id"] is not None:
                record = {**record, "class_name": class_names[record["class_id"]]}
            key = record["item_id"]
            _member(tar, f"{key}.{ext}", png)
            _member(tar, f"{key}.json", json.dumps(record, ensure_ascii=False, sort_keys=True).encode())
            _member(tar, f"{key}.tokens.npy", _npy(grid))
    return buf.getvalue()
