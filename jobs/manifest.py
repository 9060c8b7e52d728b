"""Read and validate prompt manifests (JSON Lines, CSV or Parquet).

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

import csv
import difflib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

from linegen.workers.models.config import SAMPLING_RULES

MAX_SEED = 2**63 - 1
REQUIRED_ONE_OF = ("prompt", "class_id")
ALLOWED_FIELDS = ("prompt", "class_id", "count", "seed", "id",
                  "cfg_scale", "temperature", "top_k", "top_p")
SAMPLING_FIELDS = tuple(SAMPLING_RULES)
MAX_SHOWN_ISSUES = 50

_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
            ".csv": "csv", ".parquet": "parquet"}
# int() also accepts "1_000" and unicode digits; a manifest should not.
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_BOM = "\ufeff"


@dataclass(frozen=True)
class Conditioning:
    """What the chosen model accepts; used for the model-dependent checks."""
    kind: Literal["class", "text"]
    num_classes: int = 1000

    def __post_init__(self) -> None:
        if self.kind not in ("class", "text"):
            raise ValueError(f"conditioning kind must be 'class' or 'text', got {self.kind!r}")
        if self.kind == "class" and self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")


@dataclass(frozen=True, slots=True)
class ManifestRow:
    index: int            # 0-based data row index: the stable "row" of the design
    line: int             # 1-based physical line (CSV: header is line 1; Parquet: row number)
    prompt: str | None
    class_id: int | None
    count: int
    seed: int | None
    id: str | None
    cfg_scale: float | None
    temperature: float | None
    top_k: int | None
    top_p: float | None


@dataclass(frozen=True)
class ManifestIssue:
    file: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        what = self.message if self.field is None else f"field '{self.field}': {self.message}"
        return f"{where}: {what}"


class ManifestError(Exception):
    """All problems found in one manifest; `.issues` holds every one of them."""

    def __init__(self, issues: list[ManifestIssue]):
        self.issues = list(issues)
        super().__init__(self._render())

    def _render(self) -> str:
        n = len(self.issues)
        lines = [f"manifest has {n} problem{'s' if n != 1 else ''}:"]
        lines += [f"  {issue}" for issue in self.issues[:MAX_SHOWN_ISSUES]]
        if n > MAX_SHOWN_ISSUES:
            lines.append(f"  ... and {n - MAX_SHOWN_ISSUES} more")
        return "\n".join(lines)


# ---------------------------------------------------------------- field rules

@dataclass(frozen=True)
class _Rule:
    kind: Literal["int", "float", "str"]
    ok: Callable[[Any], bool]
    expect: str


_RULES: dict[str, _Rule] = {
    "prompt": _Rule("str", lambda v: v.strip() != "", "a non-empty string"),
    "class_id": _Rule("int", lambda v: v >= 0, "an integer >= 0"),
    "count": _Rule("int", lambda v: v >= 1, "an integer >= 1"),
    "seed": _Rule("int", lambda v: 0 <= v <= MAX_SEED, "an integer in 0..2**63-1"),
    "id": _Rule("str", lambda v: v != "", "a non-empty string"),
    # Per-row sampling overrides obey the engine's own limits (one home: workers.models.config).
    **{name: _Rule("int" if name == "top_k" else "float", test, expect)
       for name, (test, expect) in SAMPLING_RULES.items()},
}


class _Bad(Exception):
    pass


# Marks a field that is present but invalid: it still counts for "exactly one of prompt/class_id".
_INVALID = object()


def _json_kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _show(v: Any) -> str:
    if isinstance(v, str):
        text = json.dumps(v, ensure_ascii=False)
    else:
        try:
            text = json.dumps(v, ensure_ascii=False)
        except (TypeError, ValueError):
            text = repr(v)
    if len(text) > 60:
        text = text[:57] + "..."
    return text


def _coerce(name: str, raw: Any, from_text: bool) -> Any:
    """Turn a raw cell into the field's Python type, or raise _Bad with the user-facing reason."""
    rule = _RULES[name]
    expect = f"must be {rule.expect}"
    got = f"{expect}, got {_show(raw)}"
    if from_text:  # CSV: every cell is a string
        if rule.kind == "str":
            value: Any = raw
        elif rule.kind == "int":
            if not _INT_TEXT.fullmatch(raw.strip()):
                raise _Bad(got)
            value = int(raw.strip())
        else:
            try:
                value = float(raw.strip())
            except ValueError:
                raise _Bad(got) from None
    else:
        # bool is an int subclass in Python, but `true` is never a count or a class.
        if rule.kind == "str":
            ok_type = isinstance(raw, str)
        elif rule.kind == "int":
            ok_type = isinstance(raw, int) and not isinstance(raw, bool)
        else:
            ok_type = isinstance(raw, (int, float)) and not isinstance(raw, bool)
        if not ok_type:
            raise _Bad(f"{got} ({_json_kind(raw)})")
        value = float(raw) if rule.kind == "float" else raw
    if not rule.ok(value):
        raise _Bad(got)
    return value


# ---------------------------------------------------------------- row validation

def _allowed_hint(field: str) -> str:
    hint = f"allowed fields are {', '.join(ALLOWED_FIELDS)}"
    close = difflib.get_close_matches(field, ALLOWED_FIELDS, n=1)
    return hint + (f" (did you mean '{close[0]}'?)" if close else "")


class _Validator:
    """Validates records one by one and remembers what it needs across rows (ids, issues)."""

    def __init__(self, name: str, conditioning: Conditioning | None):
        self.name = name
        self.conditioning = conditioning
        self.issues: list[ManifestIssue] = []
        self.rows: list[ManifestRow] = []
        self.records = 0
        self._id_lines: dict[str, int] = {}

    def issue(self, line: int | None, field: str | None, message: str) -> None:
        self.issues.append(ManifestIssue(self.name, line, field, message))

    def skip_record(self) -> None:
        """A record too broken to validate still occupies a row index."""
        self.records += 1

    def record(self, line: int, raw: dict[str, Any], *, from_text: bool) -> None:
        index = self.records
        self.records += 1
        n_before = len(self.issues)
        values: dict[str, Any] = {}
        for field, value in raw.items():
            if field not in _RULES:
                self.issue(line, field, f"unknown field; {_allowed_hint(field)}")
                continue
            if value is None or (from_text and value == ""):
                continue  # absent
            try:
                values[field] = _coerce(field, value, from_text)
            except _Bad as e:
                self.issue(line, field, str(e))
                values[field] = _INVALID

        self._check_conditioning(line, raw, values)
        self._check_seed_span(line, values)
        self._check_id(line, values.get("id"))
        if len(self.issues) != n_before:
            return
        self.rows.append(ManifestRow(
            index=index, line=line,
            prompt=values.get("prompt"), class_id=values.get("class_id"),
            count=values.get("count", 1), seed=values.get("seed"), id=values.get("id"),
            cfg_scale=values.get("cfg_scale"), temperature=values.get("temperature"),
            top_k=values.get("top_k"), top_p=values.get("top_p"),
        ))

    def _check_conditioning(self, line: int, raw: dict[str, Any], values: dict[str, Any]) -> None:
        has_prompt, has_class = "prompt" in values, "class_id" in values
        if has_prompt and has_class:
            self.issue(line, None, "row has both 'prompt' and 'class_id'; give exactly one")
            return
        if not has_prompt and not has_class:
            self.issue(line, None, "row has neither 'prompt' nor 'class_id'; give exactly one")
            return
        cond = self.conditioning
        if cond is None:
            return
        if has_prompt and cond.kind == "class":
            self.issue(line, "prompt", "the model has no text conditioning (it is "
                       "class-conditional); give 'class_id' instead")
        elif has_class and cond.kind == "text":
            self.issue(line, "class_id", "the model has no class conditioning (it is "
                       "text-conditional); give 'prompt' instead")
        elif has_class and values["class_id"] is not _INVALID:
            class_id = values["class_id"]
            if class_id >= cond.num_classes:
                self.issue(line, "class_id", f"class {class_id} is out of range for this model "
                           f"(0..{cond.num_classes - 1})")

    def _check_seed_span(self, line: int, values: dict[str, Any]) -> None:
        seed, count = values.get("seed"), values.get("count", 1)
        if seed is None or seed is _INVALID or count is _INVALID:
            return
        if seed + count - 1 > MAX_SEED:
            self.issue(line, "seed", f"seed + count - 1 must be <= 2**63-1 (replica r uses "
                       f"seed + r), got seed {seed} with count {count}")

    def _check_id(self, line: int, user_id: Any) -> None:
        if user_id is None or user_id is _INVALID:
            return
        first = self._id_lines.setdefault(user_id, line)
        if first != line:
            self.issue(line, "id", f"duplicate id {_show(user_id)} (first used on line {first})")

    def finish(self) -> list[ManifestRow]:
        if self.records == 0 and not self.issues:
            self.issue(None, None, "manifest has no rows")
        if self.issues:
            raise ManifestError(self.issues)
        return self.rows


# ---------------------------------------------------------------- formats

def _format_of(name: str) -> str | None:
    base = name.rstrip("/").rsplit("/", 1)[-1].lower()
    dot = base.rfind(".")
    return _FORMATS.get(base[dot:]) if dot > 0 else None


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


def _parse_jsonl(data: bytes, v: _Validator) -> None:
    for number, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if number == 1 and raw.startswith(_BOM.encode()):
            raw = raw[len(_BOM.encode()):]
        if not raw.strip():
            continue  # blank lines are allowed; line numbers stay physical
        problem = _undecodable(raw)
        if problem:
            v.skip_record()
            v.issue(number, None, problem)
            continue
        text = raw.decode("utf-8")
        try:
            obj = json.loads(text, object_pairs_hook=_unique_object)
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
        if not isinstance(obj, dict):
            v.skip_record()
            hint = "; a .json manifest must be JSON Lines, one object per line" \
                if isinstance(obj, list) else ""
            v.issue(number, None, f"expected a JSON object, got {_json_kind(obj)}{hint}")
            continue
        v.record(number, obj, from_text=False)


def _parse_csv(data: bytes, v: _Validator) -> None:
    bad_lines = [(n, p) for n, raw in enumerate(data.split(b"\n"), start=1)
                 if (p := _undecodable(raw))]
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


def _check_csv_header(columns: list[str], line: int, v: _Validator) -> bool:
    ok = True
    seen: set[str] = set()
    for position, column in enumerate(columns, start=1):
        if column == "":
            v.issue(line, None, f"CSV header column {position} has no name")
            ok = False
        elif column in seen:
            v.issue(line, column, "column appears more than once in the CSV header")
            ok = False
        elif column not in _RULES:
            v.issue(line, column, f"unknown CSV column; {_allowed_hint(column)}")
            ok = False
        seen.add(column)
    if not seen & set(REQUIRED_ONE_OF):
        v.issue(line, None, "CSV header must have a 'prompt' or a 'class_id' column, "
                f"got {', '.join(map(repr, columns)) or 'no columns'}")
        ok = False
    return ok


def _parse_parquet(data: bytes, v: _Validator) -> None:
    import pyarrow as pa  # lazy: only Parquet manifests pay for it
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except Exception as e:  # pyarrow raises several types for corrupt or non-Parquet data
        v.issue(None, None, f"cannot read Parquet: {e}")
        return
    columns = table.column_names
    unknown = [c for c in columns if c not in _RULES]
    for column in unknown:
        v.issue(None, column, f"unknown Parquet column; {_allowed_hint(column)}")
    if not set(columns) & set(REQUIRED_ONE_OF):
        v.issue(None, None, "Parquet file must have a 'prompt' or a 'class_id' column, "
                f"got {', '.join(map(repr, columns)) or 'no columns'}")
    if v.issues:
        return
    for number, record in enumerate(_parquet_records(table), start=1):
        v.record(number, record, from_text=False)


def _parquet_records(table: Any) -> Iterator[dict[str, Any]]:
    # Convert in batches so a large manifest does not hold every row as dicts twice.
    for batch in table.to_batches(max_chunksize=65536):
        yield from batch.to_pylist()


# ---------------------------------------------------------------- entry points

def parse_manifest(data: bytes, name: str,
                   conditioning: Conditioning | None = None) -> list[ManifestRow]:
    """Validate a manifest held in memory; `name` picks the format and labels the issues.

    Raises ManifestError listing every problem. With `conditioning` None the checks that
    depend on the model (prompt vs class, class range) are skipped.
    """
    v = _Validator(name, conditioning)
    fmt = _format_of(name)
    if fmt is None:
        v.issue(None, None, "unknown manifest format; use a .jsonl (or .json with one object "
                "per line), .csv or .parquet file")
    elif fmt == "jsonl":
        _parse_jsonl(data, v)
    elif fmt == "csv":
        _parse_csv(data, v)
    else:
        _parse_parquet(data, v)
    return v.finish()


def read_manifest(uri: str, conditioning: Conditioning | None = None, *,
                  endpoint_url: str | None = None) -> list[ManifestRow]:
    """Read and validate a manifest from a local path or an s3:// URI.

    Anything that stops the manifest from being used, including failing to read it, is
    raised as ManifestError, so callers need to handle one error type.
    """
    return parse_manifest(_read_bytes(uri, endpoint_url), uri, conditioning)


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
