"""What a manifest row is and the rules every field obeys, whatever file format it came from.

`Validator` checks records one by one and collects every issue (file, line or row index, field);
the formats (jobs/manifest/formats.py) feed it records, the entry points (jobs/manifest/__init__.py)
raise its issues as one ManifestError.
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal

from linegen.errors import UserError
from linegen.workers.models.config import SAMPLING_RULES

MAX_SEED = 2**63 - 1
# Bounds on what one manifest may ask for, checked before anything is planned (README, "Manifests").
# Per row and per job they leave room for a billion-image job; beyond them a plan cannot be run.
MAX_COUNT = 10**9  # images per row
MAX_IMAGES = 10**10  # images per job (the sum of every row's count)
MAX_LINE_BYTES = 1 << 20  # one JSON Lines line or CSV record; longer ones are not even decoded
MAX_TEXT_CHARS = 65536  # a prompt or an id (prompts are cut to 120 tokens anyway)
MAX_INT_DIGITS = 40  # an integer literal longer than this fits no field (seeds have at most 19)
REQUIRED_ONE_OF = ("prompt", "class_id")
ALLOWED_FIELDS = ("prompt", "class_id", "count", "seed", "id",
                  "cfg_scale", "temperature", "top_k", "top_p")
SAMPLING_FIELDS = tuple(SAMPLING_RULES)
MAX_SHOWN_ISSUES = 50

# int() also accepts "1_000" and unicode digits; a manifest should not.
_INT_TEXT = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class Conditioning:
    """What the chosen model accepts; used for the model-dependent checks."""
    kind: Literal["class", "text"]
    num_classes: int = 1000

    @classmethod
    def of(cls, model) -> "Conditioning":
        """What the rows for a model (workers.models.config.ModelSpec) must give."""
        if model.gpt.cond == "t2i":
            return cls(kind="text")
        return cls(kind="class", num_classes=model.gpt.num_classes)

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
    extra: tuple = ()  # (name, value) of the columns kept with --keep-columns, in keep order


@dataclass(frozen=True)
class ManifestIssue:
    file: str
    line: int | None  # 1-based line of a file, or the 0-based index of a row given in Python
    field: str | None
    message: str
    indexed: bool = False  # True: `line` is a row index, shown as rows[3]

    def __str__(self) -> str:
        if self.line is None:
            where = self.file
        else:
            where = f"{self.file}[{self.line}]" if self.indexed else f"{self.file}:{self.line}"
        what = self.message if self.field is None else f"field '{_clip(self.field)}': {self.message}"
        return printable(f"{where}: {what}")


class ManifestError(UserError):
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


def printable(text: str) -> str:
    """One line that any terminal can print: control characters and lone surrogates (which a
    manifest's JSON escapes can hold) are shown as escapes instead of breaking the line or the
    encoder."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii"), text)


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


class HugeInt:
    """An integer literal too long for any field (Python's int() refuses over 4300 digits, and a
    parse of one that long is already a denial of service). Stands in for the value, so the
    Validator reports it like any other wrong value."""

    def __init__(self, digits: int):
        self.digits = digits

    def __repr__(self) -> str:
        return f"an integer of {self.digits} digits"


def parse_json_int(text: str) -> int | HugeInt:
    """`json.loads(parse_int=...)`: integers, but never the very long ones."""
    digits = len(text.lstrip("-"))
    return HugeInt(digits) if digits > MAX_INT_DIGITS else int(text)


def _valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate such as "\ud800": no UTF-8 file can hold it
        return False
    return True


# ---------------------------------------------------------------- field rules

@dataclass(frozen=True)
class _Rule:
    kind: Literal["int", "float", "str"]
    ok: Callable[[Any], bool]
    expect: str


RULES: dict[str, _Rule] = {
    "prompt": _Rule("str", lambda v: v.strip() != "" and len(v) <= MAX_TEXT_CHARS,
                    f"a non-empty string of at most {MAX_TEXT_CHARS} characters"),
    "class_id": _Rule("int", lambda v: 0 <= v < 2**31, "an integer >= 0 (below 2**31)"),
    "count": _Rule("int", lambda v: 1 <= v <= MAX_COUNT, f"an integer in 1..{MAX_COUNT:,}"),
    "seed": _Rule("int", lambda v: 0 <= v <= MAX_SEED, "an integer in 0..2**63-1"),
    "id": _Rule("str", lambda v: v != "" and len(v) <= MAX_TEXT_CHARS,
                f"a non-empty string of at most {MAX_TEXT_CHARS} characters"),
    # Per-row sampling overrides obey the engine's own limits (one home: workers.models.config).
    **{name: _Rule("int" if name == "top_k" else "float", test, expect)
       for name, (test, expect) in SAMPLING_RULES.items()},
}


class _Bad(Exception):
    pass


# Marks a field that is present but invalid: it still counts for "exactly one of prompt/class_id".
_INVALID = object()


def json_kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float, HugeInt)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _show(v: Any) -> str:
    if isinstance(v, HugeInt):
        return repr(v)
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 128:
        return f"an integer of about {int(v.bit_length() * 0.30103) + 1} digits"  # str() refuses > 4300
    if isinstance(v, str):
        v = v[:200]  # only the start is shown: never copy a huge field
    try:
        text = json.dumps(v, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = f"a {type(v).__name__}"
    return _clip(text)


def _coerce(name: str, raw: Any, from_text: bool) -> Any:
    """Turn a raw cell into the field's Python type, or raise _Bad with the user-facing reason."""
    rule = RULES[name]
    if not from_text:  # the common case first: a JSON/Parquet value of the right type (bool is not int)
        kind, t = rule.kind, type(raw)
        if t is int and kind == "int":
            if rule.ok(raw):
                return raw
        elif t is str and kind == "str":
            if rule.ok(raw) and _valid_unicode(raw):
                return raw
        elif kind == "float" and (t is float or t is int) and rule.ok(float(raw)):
            return float(raw)

    def got() -> str:  # only on the error path: rendering the value costs as much as the check
        return f"must be {rule.expect}, got {_show(raw)}"

    if from_text:  # CSV: every cell is a string
        if rule.kind == "str":
            value: Any = raw
        elif rule.kind == "int":
            if not _INT_TEXT.fullmatch(raw.strip()):
                raise _Bad(got())
            value = parse_json_int(raw.strip())
            if isinstance(value, HugeInt):
                raise _Bad(f"must be {rule.expect}, got {value!r}")
        else:
            try:
                value = float(raw.strip())
            except ValueError:
                raise _Bad(got()) from None
    else:
        # bool is an int subclass in Python, but `true` is never a count or a class.
        if rule.kind == "str":
            ok_type = isinstance(raw, str)
        elif rule.kind == "int":
            ok_type = isinstance(raw, int) and not isinstance(raw, bool)
        else:
            ok_type = isinstance(raw, (int, float)) and not isinstance(raw, bool)
        if not ok_type:
            raise _Bad(f"{got()} ({json_kind(raw)})")
        try:
            value = float(raw) if rule.kind == "float" else raw
        except OverflowError:  # an int beyond any float: 10**400
            raise _Bad(got()) from None
    if rule.kind == "str" and not _valid_unicode(value):
        raise _Bad("must be valid Unicode text, got a lone surrogate (an unpaired \\ud800-\\udfff escape)")
    if not rule.ok(value):
        raise _Bad(got())
    return value


# ---------------------------------------------------------------- row validation

def allowed_hint(field: str) -> str:
    hint = f"allowed fields are {', '.join(ALLOWED_FIELDS)}"
    close = difflib.get_close_matches(field, ALLOWED_FIELDS, n=1)
    return hint + (f" (did you mean '{close[0]}'?)" if close else "")


KEEP_ALL = "*"  # --keep-columns '*': every column that is not a manifest field
_KEPT_KINDS = {bool: "boolean", int: "integer", float: "number", str: "string"}


def kept_value_kind(value: Any) -> str | None:
    """'boolean', 'integer', 'number' or 'string' for a value a kept column may hold; None otherwise."""
    return _KEPT_KINDS.get(type(value))


class Validator:
    """Validates records one by one and remembers what it needs across rows (ids, issues)."""

    def __init__(self, name: str, conditioning: Conditioning | None, indexed: bool = False,
                 keep: tuple[str, ...] = ()):
        self.name = name
        self.indexed = indexed
        self.conditioning = conditioning
        # Extra columns carried into the image rows (img2dataset's save_additional_columns).
        self.keep = tuple(keep)
        self.kept_kinds: dict[str, tuple[str, int]] = {}  # column -> (kind, first line with a value)
        self.issues: list[ManifestIssue] = []
        self.rows: list[ManifestRow] = []
        self.records = 0
        self._id_lines: dict[str, int] = {}

    def issue(self, line: int | None, field: str | None, message: str) -> None:
        self.issues.append(ManifestIssue(self.name, line, field, message, self.indexed))

    def skip_record(self) -> None:
        """A record too broken to validate still occupies a row index."""
        self.records += 1

    def record(self, line: int, raw: dict[str, Any], *, from_text: bool) -> None:
        index = self.records
        self.records += 1
        n_before = len(self.issues)
        values: dict[str, Any] = {}
        kept: dict[str, Any] = {}
        for field, value in raw.items():
            if field not in RULES:
                if self.keeps(field):
                    self._kept(line, field, value, from_text, kept)
                else:
                    self.issue(line, field, f"unknown field; {allowed_hint(field)}")
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
        get = values.get  # positional: a million rows should not pay for keyword matching
        extra = tuple(sorted(kept.items())) if kept else ()
        self.rows.append(ManifestRow(index, line, get("prompt"), get("class_id"), get("count", 1), get("seed"),
                                     get("id"), get("cfg_scale"), get("temperature"), get("top_k"), get("top_p"),
                                     extra))

    def keeps(self, field: str) -> bool:
        return field in self.keep or (KEEP_ALL in self.keep and field not in RULES)

    def _kept(self, line: int, field: str, value: Any, from_text: bool, into: dict[str, Any]) -> None:
        """A kept column's value: a scalar of one type in every row (a Parquet column needs one)."""
        if value is None or (from_text and value == ""):
            into[field] = None
            return
        if isinstance(value, str) and (len(value) > MAX_TEXT_CHARS or not _valid_unicode(value)):
            self.issue(line, field, f"kept column: must be valid text of at most {MAX_TEXT_CHARS} characters")
            return
        kind = kept_value_kind(value)
        if kind is None:
            self.issue(line, field, f"kept column: must be a string, number or boolean, got {_show(value)} "
                       f"({json_kind(value)})")
            return
        if kind == "integer" and not -2**63 <= value < 2**63:  # a Parquet int64 column holds it
            self.issue(line, field, f"kept column: integer {_show(value)} does not fit 64 bits")
            return
        first = self.kept_kinds.setdefault(field, (kind, line))
        if first[0] != kind:
            if {first[0], kind} == {"integer", "number"}:  # 1 and 1.5 in one column: numbers
                self.kept_kinds[field] = ("number", first[1])
            else:
                where = f"{self.name}[{first[1]}]" if self.indexed else f"line {first[1]}"
                self.issue(line, field, f"kept column: {where} holds a {first[0]}, this row a {kind}; "
                           "a column holds one type")
                return
        into[field] = value

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
            where = f"{self.name}[{first}]" if self.indexed else f"line {first}"
            self.issue(line, "id", f"duplicate id {_show(user_id)} (first used on {where})")

    def finish(self) -> list[ManifestRow]:
        if self.records == 0 and not self.issues:
            self.issue(None, None, "manifest has no rows")
        total = sum(row.count for row in self.rows)
        if total > MAX_IMAGES:
            self.issue(None, None, f"manifest asks for {total:,} images; a job may hold at most {MAX_IMAGES:,} "
                       "(split it into several jobs)")
        if self.issues:
            raise ManifestError(self.issues)
        return self.rows


def kept_columns(rows: Iterable[ManifestRow]) -> tuple[tuple[str, str], ...]:
    """(name, kind) of every kept column some row has, in name order: the extra columns of the
    job's image rows. Validation made each column one kind (integers with numbers: numbers); a
    column with only nulls is text."""
    kinds: dict[str, set[str]] = {}
    for row in rows:
        for name, value in row.extra:
            seen = kinds.setdefault(name, set())
            if value is not None:
                seen.add(kept_value_kind(value))
    out = []
    for name in sorted(kinds):
        seen = kinds[name]
        kind = "number" if "number" in seen else (seen.pop() if seen else "string")
        out.append((name, kind))
    return tuple(out)
