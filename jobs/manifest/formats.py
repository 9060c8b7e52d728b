"""The three manifest formats, each read into records for the Validator: JSON Lines (one object
per line; `.json` too), CSV (a header row, every cell text) and Parquet (columns)."""
from __future__ import annotations

import csv
import io
import json
from typing import Any, Iterator

from linegen.jobs.manifest.rows import (MAX_LINE_BYTES, MAX_TEXT_CHARS, REQUIRED_ONE_OF, RULES, Validator,
                                        allowed_hint, json_kind, parse_json_int)

_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
            ".csv": "csv", ".parquet": "parquet"}
_BOM = "\ufeff"
_JSON_WHITESPACE = " \t\n\r"

# ---------------------------------------------------------------- formats

def manifest_extension(name: str) -> str | None:
    """The manifest's file extension ('.jsonl', '.csv', ...) if it is a format we read, else None."""
    base = name.rstrip("/").rsplit("/", 1)[-1].lower()
    dot = base.rfind(".")
    return base[dot:] if dot > 0 and base[dot:] in _FORMATS else None


def format_of(name: str) -> str | None:
    ext = manifest_extension(name)
    return _FORMATS[ext] if ext else None


def _undecodable(raw: bytes) -> str | None:
    try:
        raw.decode("utf-8")
        return None
    except UnicodeDecodeError as e:
        return (f"not valid UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                "save the manifest as UTF-8")


class _DuplicateKey(Exception):
    pass


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def _lines(data: bytes) -> Iterator[tuple[int, bytes | None, int]]:
    """(1-based line number, its bytes without the newline, its length); the bytes are None for a
    line over MAX_LINE_BYTES, which is never copied, decoded or parsed."""
    start, number, size = 0, 0, len(data)
    while start <= size:
        end = data.find(b"\n", start)
        end = size if end < 0 else end
        number += 1
        length = end - start
        yield number, (data[start:end] if length <= MAX_LINE_BYTES else None), length
        start = end + 1


def _too_long(length: int) -> str:
    return (f"line is {length / 2**20:.1f} MiB; a manifest line may hold at most "
            f"{MAX_LINE_BYTES // 2**20} MiB")


def parse_jsonl(data: bytes, v: Validator) -> None:
    decode = _line_decoder(json.JSONDecoder(object_pairs_hook=_unique_object, parse_int=parse_json_int))
    for number, raw, length in _lines(data):
        if raw is None:
            v.skip_record()
            v.issue(number, None, _too_long(length))
            continue
        raw = raw.rstrip(b"\r")
        if number == 1 and raw.startswith(_BOM.encode()):
            raw = raw[len(_BOM.encode()):]
        if not raw.strip():
            continue  # blank lines are allowed; line numbers stay physical
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            v.skip_record()
            v.issue(number, None, _undecodable(raw))
            continue
        try:
            obj = decode(text)
        except RecursionError:
            v.skip_record()
            v.issue(number, None, "not valid JSON: nested too deeply")
            continue
        except _DuplicateKey as e:
            v.skip_record()
            v.issue(number, str(e), "field appears more than once in the object")
            continue
        except json.JSONDecodeError as e:
            v.skip_record()
            hint = " (a .json manifest must be JSON Lines: one object per line, not an array)" \
                if number == 1 and text.lstrip().startswith("[") else ""
            v.issue(number, None, f"not valid JSON: {e.msg} at column {e.colno}{hint}")
            continue
        except ValueError as e:  # what the scanner refuses beyond JSONDecodeError (huge floats' digits...)
            v.skip_record()
            v.issue(number, None, f"not valid JSON: {str(e)[:100]}")
            continue
        if not isinstance(obj, dict):
            v.skip_record()
            hint = "; a .json manifest must be JSON Lines, one object per line" \
                if isinstance(obj, list) else ""
            v.issue(number, None, f"expected a JSON object, got {json_kind(obj)}{hint}")
            continue
        v.record(number, obj, from_text=False)


def _line_decoder(decoder: json.JSONDecoder):
    """decoder.decode for one line, minus its per-call overhead: the C scanner on the line, and
    decode() itself (for its exact error) only when the line is not one JSON value."""
    scan, decode = decoder.scan_once, decoder.decode

    def decode_line(text: str):
        try:
            obj, end = scan(text, len(text) - len(text.lstrip(_JSON_WHITESPACE)))
        except StopIteration:
            return decode(text)
        if text[end:].strip(_JSON_WHITESPACE):
            return decode(text)  # extra data after the value
        return obj

    return decode_line


def parse_csv(data: bytes, v: Validator) -> None:
    bad_lines = [(n, _too_long(length) if raw is None else p) for n, raw, length in _lines(data)
                 if raw is None or (p := _undecodable(raw))]
    if bad_lines:
        # Quoted fields may span lines, so a partly undecodable CSV cannot be split safely.
        for number, problem in bad_lines:
            v.issue(number, None, problem)
        return
    text = data.decode("utf-8").removeprefix(_BOM)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        while header == []:  # leading blank lines
            header = next(reader, None)
        if header is None:
            v.issue(None, None, "manifest has no rows (the CSV file is empty)")
            return
        header_line = reader.line_num
        columns = [c.strip() for c in header]
        if not _check_csv_header(columns, header_line, v):
            return
        start = reader.line_num + 1
        for cells in reader:
            line, start = start, reader.line_num + 1
            if not any(c.strip() for c in cells):
                continue  # a blank line, or an all-empty row as spreadsheets export them
            if len(cells) != len(columns):
                v.skip_record()
                v.issue(line, None, f"expected {len(columns)} fields ({', '.join(columns)}), "
                        f"got {len(cells)}")
                continue
            v.record(line, dict(zip(columns, cells)), from_text=True)
    except csv.Error as e:
        v.issue(reader.line_num, None, f"cannot parse CSV: {e}")


def _check_csv_header(columns: list[str], line: int, v: Validator) -> bool:
    ok = True
    seen: set[str] = set()
    for position, column in enumerate(columns, start=1):
        if column == "":
            v.issue(line, None, f"CSV header column {position} has no name")
            ok = False
        elif column in seen:
            v.issue(line, column, "column appears more than once in the CSV header")
            ok = False
        elif column not in RULES and not v.keeps(column):
            v.issue(line, column, f"unknown CSV column; {allowed_hint(column)}")
            ok = False
        seen.add(column)
    if not seen & set(REQUIRED_ONE_OF):
        v.issue(line, None, "CSV header must have a 'prompt' or a 'class_id' column, "
                f"got {', '.join(map(repr, columns)) or 'no columns'}")
        ok = False
    return ok


def parse_parquet(data: bytes, v: Validator) -> None:
    from linegen.jobs.parquet import from_parquet_bytes  # lazy: only Parquet manifests pay for pyarrow

    try:
        table = from_parquet_bytes(data)
    except Exception as e:  # pyarrow raises several types for corrupt or non-Parquet data
        v.issue(None, None, f"cannot read Parquet: {e}")
        return
    columns = table.column_names
    unknown = [c for c in columns if c not in RULES and not v.keeps(c)]
    for column in unknown:
        v.issue(None, column, f"unknown Parquet column; {allowed_hint(column)}")
    if not set(columns) & set(REQUIRED_ONE_OF):
        v.issue(None, None, "Parquet file must have a 'prompt' or a 'class_id' column, "
                f"got {', '.join(map(repr, columns)) or 'no columns'}")
    if v.issues:
        return
    if not _parquet_text_is_utf8(table, v) or not _parquet_text_fits(table, v):
        return
    for number, record in enumerate(_parquet_records(table), start=1):
        v.record(number, record, from_text=False)


def _parquet_text_is_utf8(table: Any, v: Validator) -> bool:
    """A string column holding bytes that are not UTF-8 (a damaged or hand-written file) is an
    issue naming the row and column, not a decode error while the rows are read."""
    import pyarrow as pa

    valid = True
    for column in table.column_names:
        col = table.column(column)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            continue
        try:
            col.validate(full=True)
            continue
        except pa.ArrowInvalid:
            pass
        raw = col.cast(pa.large_binary() if pa.types.is_large_string(col.type) else pa.binary()).to_pylist()
        bad = [row for row, cell in enumerate(raw) if cell is not None and not _is_utf8(cell)]
        for row in bad[:5]:
            v.issue(row + 1, column, "text is not valid UTF-8")
        valid = valid and not bad
    return valid


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _parquet_text_fits(table: Any, v: Validator) -> bool:
    """Refuse over-long text cells before they are turned into Python strings (which would copy
    them again); rows are numbered like records, from 1."""
    import pyarrow as pa
    import pyarrow.compute as pc

    fits = True
    for column in table.column_names:
        col = table.column(column)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
                or pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)):
            continue
        lengths = pc.utf8_length(col) if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) \
            else pc.binary_length(col)
        long_rows = pc.indices_nonzero(pc.fill_null(pc.greater(lengths, MAX_TEXT_CHARS), False)).to_pylist()
        for row in long_rows[:5]:
            v.issue(row + 1, column, f"text of {lengths[row].as_py()} characters; at most {MAX_TEXT_CHARS}")
            fits = False
    return fits


def _parquet_records(table: Any) -> Iterator[dict[str, Any]]:
    # Convert in batches so a large manifest does not hold every row as dicts twice.
    for batch in table.to_batches(max_chunksize=65536):
        yield from batch.to_pylist()


