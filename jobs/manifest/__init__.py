"""Read and validate prompt manifests (JSON Lines, CSV or Parquet): the entry points.

A manifest is validated completely before any GPU work: every problem in every row is
collected and raised together as one ManifestError, each naming the file, line and field.

Decisions where the contract is silent:
- Integer fields (`class_id`, `count`, `seed`, `top_k`) accept integers only: JSON `3.0`,
  booleans and numeric strings are rejected. In CSV every cell is text, so "3" is fine but
  "3.5", "1_000" or "abc" are not.
- An absent field, a JSON/Parquet null and an empty CSV cell all mean "not given". In
  JSON/Parquet an empty string is a real value and so is rejected for `prompt` and `id`.
- A whitespace-only `prompt` counts as empty. Prompts and ids are otherwise kept verbatim.
- `seed + count - 1` must stay within 0..2**63-1, because replica r of a row with an explicit
  seed uses `seed + r` (see jobs.plan).
- A `.json` manifest must be JSON Lines, one object per line; a JSON array is reported as such.
- A UTF-8 byte order mark at the start of the file is ignored (spreadsheet exports add one).

No torch/ray imports here: the CLI imports this module on a laptop and must start fast.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

from linegen.jobs.manifest.formats import format_of, manifest_extension, parse_csv, parse_jsonl, parse_parquet
from linegen.jobs.manifest.rows import (ALLOWED_FIELDS, MAX_SEED, MAX_SHOWN_ISSUES, REQUIRED_ONE_OF, SAMPLING_FIELDS,
                                        Conditioning, ManifestError, ManifestIssue, ManifestRow, Validator,
                                        kept_columns)

# ---------------------------------------------------------------- entry points

def parse_manifest(data: bytes, name: str, conditioning: Conditioning | None = None, *,
                   keep: tuple[str, ...] = ()) -> list[ManifestRow]:
    """Validate a manifest held in memory; `name` picks the format and labels the issues.

    Raises ManifestError listing every problem. With `conditioning` None the checks that
    depend on the model (prompt vs class, class range) are skipped. ``keep``: extra columns to
    carry into the image rows (`--keep-columns`; ``"*"``: every unknown column).
    """
    v = Validator(name, conditioning, keep=keep)
    fmt = format_of(name)
    if fmt is None:
        v.issue(None, None, "unknown manifest format; use a .jsonl (or .json with one object "
                "per line), .csv or .parquet file")
    elif fmt == "jsonl":
        parse_jsonl(data, v)
    elif fmt == "csv":
        parse_csv(data, v)
    else:
        parse_parquet(data, v)
    return v.finish()


def parse_rows(rows: Iterable[Any], name: str = "rows", conditioning: Conditioning | None = None, *,
               keep: tuple[str, ...] = ()) -> list[ManifestRow]:
    """Validate rows given as Python dicts (the Python API), exactly like the lines of a file;
    each issue names its row by index (``rows[3]: field 'count': ...``)."""
    v = Validator(name, conditioning, indexed=True, keep=keep)
    for index, raw in enumerate(rows):
        if not isinstance(raw, dict):
            v.skip_record()
            v.issue(index, None, f"expected a dict of manifest fields, got {type(raw).__name__}")
            continue
        v.record(index, raw, from_text=False)
    return v.finish()


def read_manifest(uri: str, conditioning: Conditioning | None = None, *,
                  endpoint_url: str | None = None, keep: tuple[str, ...] = ()) -> list[ManifestRow]:
    """Read and validate a manifest from a local path or an s3:// URI.

    Anything that stops the manifest from being used, including failing to read it, is
    raised as ManifestError, so callers need to handle one error type.
    """
    return parse_manifest(_read_bytes(uri, endpoint_url), uri, conditioning, keep=keep)


def _read_bytes(uri: str, endpoint_url: str | None) -> bytes:
    def fail(message: str) -> ManifestError:
        return ManifestError([ManifestIssue(uri, None, None, message)])

    if uri.startswith("s3://"):
        from linegen.jobs.storage import StorageError, read_uri  # lazy: boto3 is slow to import
        try:
            return read_uri(uri, endpoint_url=endpoint_url)
        except StorageError as e:
            raise fail(f"cannot read manifest: {e}") from e
    scheme = re.match(r"([a-zA-Z][a-zA-Z0-9+.-]*)://", uri)
    if scheme and scheme.group(1).lower() != "file":
        raise fail(f"unsupported location '{scheme.group(1)}://'; use a local path or s3://")
    if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]+:", uri) and not uri.startswith("file:"):
        raise fail("looks like a URL but is not one linegen reads; use a local path (./NAME for a file "
                   "named like that) or s3://bucket/key")
    path = Path(uri.removeprefix("file://")).expanduser()
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise fail("file not found") from e
    except IsADirectoryError as e:
        raise fail("is a directory, expected a manifest file") from e
    except OSError as e:
        raise fail(f"cannot read manifest: {e.strerror or e}") from e


def total_items(rows: Iterable[ManifestRow]) -> int:
    """How many images the manifest asks for."""
    return sum(row.count for row in rows)


__all__ = ["ALLOWED_FIELDS", "MAX_SEED", "MAX_SHOWN_ISSUES", "REQUIRED_ONE_OF", "SAMPLING_FIELDS", "Conditioning",
           "ManifestError", "ManifestIssue", "ManifestRow", "manifest_extension", "parse_manifest", "parse_rows",
           "kept_columns", "read_manifest", "total_items"]
