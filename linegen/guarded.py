"""The one reader of files linegen wrote (and of the config file): bounded, typed, one-line errors.

Everything under a job folder (`_SUCCESS`, `plan.json`, `_progress.json`, `_commits/*.json`,
`job.json`, `_FAILED`/`_CANCELLED`) and the TOML config can be damaged by a crash of someone
else's tool, an edit by hand, or an attacker. Parsing them with bare ``json.loads`` /
``tomllib.loads`` and then indexing the result turns damage into an AttributeError, an
OverflowError (``1e400`` read as an int) or a RecursionError (a document nested 100,000 deep)
far from the file. Here:

- `load_json` / `load_toml` refuse a document larger than ``max_bytes`` or nested deeper than
  ``max_depth`` *before* the parser sees it (so no recursion limit is ever reached), and turn any
  parse error into one line naming the file;
- `Fields` reads typed fields out of the parsed object: an int that is an int (never a bool, a
  float or a string of digits) within a range, a finite float, a bounded string, an object.

Every failure is a `DamagedFile` (a `linegen.UserError`) whose message starts with ``where``, or
the error class the caller passes (readers of committed files raise `StorageError`).
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

from linegen.errors import UserError

MAX_BYTES = 16 * 2**20  # every status file linegen writes is a few KiB; a plan of 10^6 shards stays far below
MAX_DEPTH = 32  # the deepest document linegen writes (_progress.json) is 4 levels
_MISSING = object()


class DamagedFile(UserError):
    """A file linegen wrote (or the config file) cannot be read as what it should be."""


# Strings may hold any bracket; they are cut out before counting. JSON has one kind; TOML four.
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_TOML_STRING = re.compile(r'"""(?:[^\\]|\\.)*?"""|\'\'\'.*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#[^\n]*', re.S)
_BRACKETS = re.compile(r"[\[\]{}]")


def nesting_depth(text: str, strings: re.Pattern = _JSON_STRING) -> int:
    """How deep ``[``/``{`` nest in ``text`` once strings (and TOML comments) are cut out; a linear
    scan that never recurses, so it is safe on any input."""
    depth = deepest = 0
    for m in _BRACKETS.finditer(strings.sub("", text)):
        if m.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth = max(0, depth - 1)
    return deepest


def _text(data: bytes | str, where: str, max_bytes: int, error: type[Exception]) -> str:
    if len(data) > max_bytes:
        raise error(f"{where}: damaged: {len(data):,} bytes, more than the {max_bytes:,} such a file can hold")
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{where}: damaged: not UTF-8 text (byte {e.start})") from None


def load_json(data: bytes | str, where: str, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH,
              error: type[Exception] = DamagedFile) -> Any:
    """Parse a JSON document linegen wrote; `error` naming ``where`` if it is not one."""
    text = _text(data, where, max_bytes, error)
    depth = nesting_depth(text)
    if depth > max_depth:
        raise error(f"{where}: damaged: nested {depth} levels deep (at most {max_depth})")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise error(f"{where}: damaged: not valid JSON ({_first_line(e)})") from None


def load_json_object(data: bytes | str, where: str, **kw: Any) -> "Fields":
    """A JSON document that must be an object, as `Fields`."""
    error = kw.get("error", DamagedFile)
    doc = load_json(data, where, **kw)
    if not isinstance(doc, dict):
        raise error(f"{where}: damaged: expected a JSON object, found {_kind(doc)}")
    return Fields(doc, where, error)


def load_toml(text: str, where: str, *, max_bytes: int = 4 * 2**20, max_depth: int = MAX_DEPTH,
              error: type[Exception] = DamagedFile) -> dict:
    """Parse a TOML document (the config file). Dotted keys nest without brackets, so their depth
    counts too (``a.b.c = 1`` is 3 levels)."""
    import tomllib

    text = _text(text, where, max_bytes, error)
    bare = _TOML_STRING.sub("", text)
    depth = nesting_depth(bare, re.compile(r"(?!)")) + max((line.count(".") for line in bare.splitlines()), default=0)
    if depth > max_depth:
        raise error(f"{where}: nested {depth} levels deep (at most {max_depth})")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise error(f"{where}: {_first_line(e)}") from None
    except RecursionError:  # cannot happen below max_depth; kept so nothing escapes as a traceback
        raise error(f"{where}: nested too deep") from None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:200]


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


class Fields:
    """Typed fields of one parsed JSON object; each failure is one line naming the file and field."""

    def __init__(self, doc: dict, where: str, error: type[Exception] = DamagedFile):
        self.doc, self.where, self.error = doc, where, error

    def _bad(self, key: str, what: str) -> Exception:
        return self.error(f"{self.where}: damaged: field '{key}' {what}")

    def _get(self, key: str, default: Any) -> Any:
        """The field's value; ``default`` when it is absent or null (a required field has none)."""
        if key in self.doc and (self.doc[key] is not None or default is _MISSING):
            return self.doc[key]
        if default is _MISSING:
            raise self._bad(key, "is missing")
        return default

    def has(self, key: str) -> bool:
        return key in self.doc

    def int(self, key: str, default: Any = _MISSING, *, lo: int = 0, hi: int = 2**63 - 1) -> Any:
        v = self._get(key, default)
        if v is default and default is not _MISSING:
            return v
        if not isinstance(v, int) or isinstance(v, bool):
            raise self._bad(key, f"must be an integer, found {_kind(v)}")
        if not lo <= v <= hi:
            raise self._bad(key, f"must be between {lo} and {hi}, found {v}")
        return v

    def float(self, key: str, default: Any = _MISSING, *, lo: float = -math.inf, hi: float = math.inf) -> Any:
        v = self._get(key, default)
        if v is default and default is not _MISSING:
            return v
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise self._bad(key, f"must be a number, found {_kind(v)}")
        v = float(v)
        if not math.isfinite(v) or not lo <= v <= hi:
            raise self._bad(key, f"must be a finite number between {lo:g} and {hi:g}, found {v!r}")
        return v

    def str(self, key: str, default: Any = _MISSING, *, max_len: int = 4096) -> Any:
        v = self._get(key, default)
        if v is default and default is not _MISSING:
            return v
        if not isinstance(v, str):
            raise self._bad(key, f"must be a string, found {_kind(v)}")
        if len(v) > max_len:
            raise self._bad(key, f"is {len(v):,} characters long (at most {max_len:,})")
        return v

    def obj(self, key: str, default: Any = _MISSING) -> Any:
        """A nested object, as `Fields` (its ``where`` names the path)."""
        v = self._get(key, default)
        if v is default and default is not _MISSING:
            return v
        if not isinstance(v, dict):
            raise self._bad(key, f"must be an object, found {_kind(v)}")
        return Fields(v, f"{self.where}: {key}", self.error)

    def number_map(self, key: str, default: Any = _MISSING) -> Any:
        """An object of finite numbers (e.g. device -> seconds)."""
        f = self.obj(key, default)
        if not isinstance(f, Fields):
            return f
        return {k: f.float(k, lo=0.0) for k in f.doc}

    def count(self, key: str, default: Any = _MISSING) -> Any:
        """A count as linegen writes it, ``{"done": N, "total": M}`` (either may be null), or a
        plain integer (an older `_SUCCESS`); the done count."""
        v = self._get(key, default)
        if v is default and default is not _MISSING:
            return v
        if isinstance(v, dict):
            f = Fields(v, f"{self.where}: {key}", self.error)
            f.int("total", None)
            return f.int("done", None)
        return self.int(key)
