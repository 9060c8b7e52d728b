"""Encode a shard's results as Parquet: image rows (HF `Image` struct) and per-batch stats rows.

Image files load with `datasets.load_dataset("parquet", data_files=...)` and decode `image` to
PIL because the schema carries the `huggingface` metadata that `datasets` itself writes
(`{"info": {"features": ...}}`, see docs/outputs.md). The metadata is spelled out
here rather than built with `datasets.Features`, so writing needs no `datasets` import.
List columns are declared as `Sequence`, which every `datasets` release from 2.x to 5.x reads.

Pure functions of their inputs; no storage, no torch.
"""
from __future__ import annotations

import io
import json
import math
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from linegen.jobs.plan import Item

# datasets writes image data with 100 rows per row group; the Hub viewer fails on row groups
# over ~300 MB, which ~100 PNGs stay far below.
ROW_GROUP_SIZE = 100
COMPRESSION = "zstd"

_IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])


def _value(dtype: str) -> dict[str, Any]:
    return {"dtype": dtype, "_type": "Value"}


# (name, arrow type, HF feature), in column order.
_IMAGE_COLUMNS: tuple[tuple[str, pa.DataType, dict[str, Any]], ...] = (
    ("image", _IMAGE_TYPE, {"_type": "Image"}),
    ("item_id", pa.string(), _value("string")),
    ("job_id", pa.string(), _value("string")),
    ("row", pa.int64(), _value("int64")),
    ("replica", pa.int32(), _value("int32")),
    ("id", pa.string(), _value("string")),
    ("class_id", pa.int32(), _value("int32")),
    ("prompt", pa.string(), _value("string")),
    ("prompt_tokens", pa.int32(), _value("int32")),
    ("prompt_truncated", pa.bool_(), _value("bool")),
    ("seed", pa.int64(), _value("int64")),
    # Every setting that made the image: the row's sampling values (its own or the job's) and
    # the cache, so a row alone says how to make its image again.
    ("cfg_scale", pa.float64(), _value("float64")),
    ("temperature", pa.float64(), _value("float64")),
    ("top_k", pa.int64(), _value("int64")),
    ("top_p", pa.float64(), _value("float64")),
    ("model", pa.string(), _value("string")),
    ("cache_policy", pa.string(), _value("string")),
    ("cache_ratio", pa.float64(), _value("float64")),
    ("cache_options", pa.string(), _value("string")),  # every option of the policy that ran, as a JSON object ("{}": full)
    ("tokens", pa.list_(pa.int32()), {"feature": _value("int32"), "_type": "Sequence"}),
    ("width", pa.int32(), _value("int32")),
    ("height", pa.int32(), _value("int32")),
)

IMAGE_COLUMN_NAMES = tuple(name for name, _, _ in _IMAGE_COLUMNS)

# Kept manifest columns (--keep-columns), by the kind validation gave them (jobs.manifest.kept_columns).
_KEPT_TYPES = {"string": (pa.string(), "string"), "integer": (pa.int64(), "int64"),
               "number": (pa.float64(), "float64"), "boolean": (pa.bool_(), "bool")}

# --image-format: PIL's name and the file extension (the `path` in the image struct, the tar member).
IMAGE_FORMATS = {"png": ("PNG", "png"), "jpeg": ("JPEG", "jpg"), "webp": ("WEBP", "webp")}


def image_schema(class_names: Sequence[str] | None = None,
                 extra_columns: Sequence[tuple[str, str]] = ()) -> pa.Schema:
    """The image Parquet schema. With the model's class names, `class_id` is a Hugging Face
    `ClassLabel` (its Arrow type is int64, as `datasets` declares it), so a dataset shows names.
    ``extra_columns``: (name, kind) of the kept manifest columns, after linegen's own."""
    columns = list(_IMAGE_COLUMNS) + [(name, *_KEPT_TYPES[kind]) for name, kind in extra_columns]
    columns = [(n, t, f if isinstance(f, dict) else _value(f)) for n, t, f in columns]
    if class_names:
        at = [name for name, _, _ in columns].index("class_id")
        columns[at] = ("class_id", pa.int64(), {"names": list(class_names), "_type": "ClassLabel"})
    return pa.schema(
        [pa.field(name, typ) for name, typ, _ in columns],
        metadata={"huggingface": json.dumps({"info": {"features": {name: feature for name, _, feature in columns}}})},
    )



_TIMESTAMP = pa.timestamp("us", tz="UTC")

STATS_SCHEMA = pa.schema([
    ("job_id", pa.string()),
    ("shard_id", pa.string()),
    ("attempt", pa.int32()),
    ("worker", pa.string()),
    ("node", pa.string()),
    ("device", pa.string()),
    ("model", pa.string()),
    ("cache_policy", pa.string()),
    ("cache_ratio", pa.float64()),
    ("batch_size", pa.int64()),
    ("images", pa.int64()),
    ("tokens", pa.int64()),
    ("wall_s", pa.float64()),
    ("tokens_per_s", pa.float64()),
    ("images_per_s", pa.float64()),
    ("kv_cache_bytes", pa.int64()),
    ("peak_memory_bytes", pa.int64()),
    ("prompts_truncated", pa.int64()),
    ("compile_s", pa.float64()),  # building compiled decode steps (this shard's share), not in wall_s
    ("decode_path", pa.string()),  # "eager" or the compiled step's backend (inductor, cuda_graph)
    ("started_at", _TIMESTAMP),
    ("finished_at", _TIMESTAMP),
])
STATS_COLUMNS: tuple[str, ...] = tuple(STATS_SCHEMA.names)


# --------------------------------------------------------------------------- PNG


def encode_png(img: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of one uint8 [H, W, 3] image.

    Level 1 is several times faster than PIL's default 6 for a few percent larger files; at
    thousands of images per second the encoder, not the disk, is the bottleneck.
    """
    from PIL import Image  # lazy: PIL is only needed where images are written

    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {arr.dtype} {list(arr.shape)}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def encode_image(img: np.ndarray, image_format: str = "png", quality: int | None = None) -> bytes:
    """One uint8 [H, W, 3] image as PNG (fast zlib level), JPEG or WebP (``quality`` 1..100,
    PIL's default 75 when None; WebP at 100 is lossless)."""
    if image_format == "png":
        return encode_png(img)
    from PIL import Image

    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {arr.dtype} {list(arr.shape)}")
    buf = io.BytesIO()
    options: dict[str, Any] = {"quality": 75 if quality is None else int(quality)}
    if image_format == "webp" and options["quality"] == 100:
        options["lossless"] = True
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format=IMAGE_FORMATS[image_format][0], **options)
    return buf.getvalue()


def encode_images(images: Iterable[np.ndarray], workers: int = 4, image_format: str = "png",
                  quality: int | None = None) -> list[bytes]:
    """Encode many images, in order, on threads (PIL's encoders release the GIL)."""
    images = list(images)
    if workers <= 1 or len(images) <= 1:
        return [encode_image(img, image_format, quality) for img in images]
    with ThreadPoolExecutor(max_workers=min(workers, len(images))) as pool:
        return list(pool.map(lambda img: encode_image(img, image_format, quality), images))


def encode_pngs(images: Iterable[np.ndarray], workers: int = 4, compress_level: int = 1) -> list[bytes]:
    """PNG-encode many images, in order. PIL's zlib releases the GIL, so threads scale."""
    images = list(images)
    if workers <= 1 or len(images) <= 1:
        return [encode_png(img, compress_level) for img in images]
    with ThreadPoolExecutor(max_workers=min(workers, len(images))) as pool:
        return list(pool.map(lambda img: encode_png(img, compress_level), images))


# --------------------------------------------------------------------------- image rows


def _tokens_array(tokens: np.ndarray) -> pa.ListArray:
    n, per_image = tokens.shape
    values = pa.array(tokens.astype(np.int32, copy=False).reshape(-1), type=pa.int32())
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * per_image, type=pa.int32())
    return pa.ListArray.from_arrays(offsets, values)


def check_shard_arrays(items: Sequence[Item], images: np.ndarray, tokens: np.ndarray,
                       prompt_info: Sequence[tuple[int, bool] | None] | None) -> list:
    """The shapes every image file format needs; returns prompt_info as one entry per item."""
    n = len(items)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"images must be uint8 [n, H, W, 3], got {images.dtype} {list(images.shape)}")
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be an integer [n, N] array, got {tokens.dtype} {list(tokens.shape)}")
    if images.shape[0] != n or tokens.shape[0] != n:
        raise ValueError(f"{n} items but {images.shape[0]} images and {tokens.shape[0]} token grids")
    if tokens.size and (tokens.min() < np.iinfo(np.int32).min or tokens.max() > np.iinfo(np.int32).max):
        raise ValueError("token ids do not fit in int32")
    info = list(prompt_info) if prompt_info is not None else [None] * n
    if len(info) != n:
        raise ValueError(f"{n} items but {len(info)} prompt_info entries")
    return info


def cache_options_text(options: dict | None) -> str:
    """The `cache_options` column: every option of the policy that ran (defaults included, a preset
    resolved), as JSON."""
    return json.dumps(dict(options or {}), sort_keys=True, separators=(",", ":"))


def item_records(items: Sequence[Item], images: np.ndarray, *, job_id: str | None, model: str, cache_policy: str,
                 cache_ratio: float, prompt_info: list, cache_options: str = "{}") -> list[dict[str, Any]]:
    """Every scalar column of each image row, by name (the Parquet columns but `image` and
    `tokens`, and what a WebDataset sample's JSON holds): the one definition of an image row,
    shared by the Parquet writer, the WebDataset writer and `linegen.Generator`. Kept manifest
    columns come last, under their own names."""
    height, width = int(images.shape[1]), int(images.shape[2])
    return [{"item_id": it.item_id, "job_id": job_id, "row": it.row, "replica": it.replica, "id": it.user_id,
             "class_id": it.class_id, "prompt": it.prompt,
             "prompt_tokens": None if x is None else int(x[0]), "prompt_truncated": None if x is None else bool(x[1]),
             "seed": it.seed, "cfg_scale": float(it.cfg_scale), "temperature": float(it.temperature),
             "top_k": int(it.top_k), "top_p": float(it.top_p),
             "model": model, "cache_policy": cache_policy, "cache_ratio": float(cache_ratio),
             "cache_options": cache_options, "width": width, "height": height, **dict(it.extra)}
            for it, x in zip(items, prompt_info)]


def image_table(
    items: Sequence[Item],
    images: np.ndarray,
    tokens: np.ndarray,
    *,
    job_id: str,
    model: str,
    cache_policy: str,
    cache_ratio: float,
    class_names: Sequence[str] | None = None,
    png_workers: int = 4,
    prompt_info: Sequence[tuple[int, bool] | None] | None = None,
    cache_options: str = "{}",
    image_format: str = "png",
    image_quality: int | None = None,
    extra_columns: Sequence[tuple[str, str]] = (),
) -> pa.Table:
    """One row per image, in `items` order; `images[i]` and `tokens[i]` belong to `items[i]`.

    `prompt_info[i]`: (caption tokens kept, whether the prompt was cut) for text items; the
    columns are null for class items. `class_names`: the model's, for a `ClassLabel` class_id.
    """
    images = np.asarray(images)
    tokens = np.asarray(tokens)
    info = check_shard_arrays(items, images, tokens, prompt_info)
    records = item_records(items, images, job_id=job_id, model=model, cache_policy=cache_policy,
                           cache_ratio=cache_ratio, prompt_info=info, cache_options=cache_options)
    schema = image_schema(class_names, extra_columns)
    encoded = encode_images(images, workers=png_workers, image_format=image_format, quality=image_quality)
    ext = IMAGE_FORMATS[image_format][1]
    image_col = pa.StructArray.from_arrays(
        [pa.array(encoded, type=pa.binary()),
         pa.array([f"{it.item_id}.{ext}" for it in items], type=pa.string())],
        fields=list(_IMAGE_TYPE),
    )
    columns = []
    for field in schema:
        if field.name == "image":
            columns.append(image_col)
        elif field.name == "tokens":
            columns.append(_tokens_array(tokens))
        else:
            columns.append(pa.array([r.get(field.name) for r in records], type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)


# --------------------------------------------------------------------------- stats rows


def _timestamp(value: Any) -> Any:
    # Workers report time.time(); pyarrow takes microseconds since the epoch for a UTC column.
    # Aware datetimes pass through; bools are rejected (they are ints to Python, never times).
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"expected epoch seconds, got {value!r}")
    return round(value * 1_000_000)


def stats_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """One row per engine batch, with exactly the DESIGN stats columns (others are an error)."""
    expected = set(STATS_COLUMNS)
    for i, row in enumerate(rows):
        missing = [c for c in STATS_COLUMNS if c not in row]
        extra = sorted(k for k in row if k not in expected)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if extra:
                parts.append(f"unexpected {', '.join(map(str, extra))}")
            raise ValueError(f"stats row {i}: {'; '.join(parts)}")

    arrays = []
    for field in STATS_SCHEMA:
        values = [row[field.name] for row in rows]
        try:
            if field.type == _TIMESTAMP:
                values = [_timestamp(v) for v in values]
            arrays.append(pa.array(values, type=field.type))
        except (pa.ArrowException, ValueError, TypeError, OverflowError) as e:
            raise ValueError(f"stats column {field.name!r} ({field.type}): {e}") from None
    return pa.Table.from_arrays(arrays, schema=STATS_SCHEMA)


# --------------------------------------------------------------------------- Parquet


def to_parquet_bytes(table: pa.Table, row_group_size: int = ROW_GROUP_SIZE) -> bytes:
    """The whole Parquet file in memory (shards are uploaded as one object anyway)."""
    if row_group_size < 1:
        raise ValueError(f"row_group_size must be >= 1, got {row_group_size}")
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=row_group_size, compression=COMPRESSION)
    return sink.getvalue().to_pybytes()
