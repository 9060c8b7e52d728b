"""Set keys of one `[models]` entry in the user's config file, leaving the rest of the file as it was.

`linegen tune` records its choice here (cache, cache_ratio, cache_options). The file is edited
as text, not re-serialised, so the user's comments, order and layout survive:
  * an entry written as a table (``[models.NAME]``) gets the keys set inside that table;
  * an entry written inline (``NAME = { ... }`` or ``NAME = "checkpoint"``) is rewritten as one
    inline table holding its old values and the new ones (that line's own comment is lost);
  * a model without an entry gets a ``[models.NAME]`` table at the end of the file.
The result is parsed again (linegen/settings/config_file.py) before it replaces the file, atomically.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from linegen.settings.config_file import ConfigError, parse_config

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def toml_value(value: Any) -> str:
    """One TOML value on one line (strings, bools, numbers, lists, tables as inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes (\", \\, \n, \uXXXX) are all valid in a TOML basic string
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{toml_key(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) to a config file")


def _key_pattern(name: str) -> str:
    return "(?:" + "|".join(re.escape(k) for k in (name, json.dumps(name), f"'{name}'")) + ")"


def _section_end(lines: list[str], start: int) -> int:
    """Index of the next table header after line `start` (or len(lines))."""
    for i in range(start + 1, len(lines)):
        if re.match(r"^\s*\[", lines[i]):
            return i
    return len(lines)


def _value_extent(lines: list[str], start: int) -> int:
    """One past the last line of the key/value that begins on line `start` (values may span lines)."""
    for end in range(start + 1, len(lines) + 1):
        try:
            tomllib.loads("".join(lines[start:end]))
            return end
        except tomllib.TOMLDecodeError:
            continue
    raise ConfigError(f"line {start + 1}: cannot find the end of this value")


def _trailing_comment(chunk: list[str]) -> str:
    """'  # note' ending a key/value's last line ('' if none): the first '#' outside any string."""
    head, last = "".join(chunk[:-1]), chunk[-1].rstrip("\n")
    want = tomllib.loads("".join(chunk))
    for i, ch in enumerate(last):
        if ch != "#":
            continue
        try:
            if tomllib.loads(head + last[:i] + "\n") == want:
                j = i
                while j > 0 and last[j - 1] in " \t":
                    j -= 1
                return last[j:]
        except tomllib.TOMLDecodeError:
            continue
    return ""


def _with_newline(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"


def set_model_keys(text: str, model: str, values: dict[str, Any]) -> str:
    """`text` with `values` set in the [models] entry of `model` (see the module docstring)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML: {e}") from None
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ConfigError("[models] must be a table")
    lines = _with_newline(text).splitlines(keepends=True)
    key = _key_pattern(model)
    header = re.compile(rf"^\s*\[\s*models\s*\.\s*{key}\s*\]\s*(#.*)?$")
    table_at = next((i for i, ln in enumerate(lines) if header.match(ln.rstrip("\n"))), None)
    if table_at is not None:
        end = _section_end(lines, table_at)
        body, i = [], table_at + 1
        while i < end:  # drop the keys being set, whatever lines their old values span
            m = re.match(r"^\s*([A-Za-z0-9_-]+|\"[^\"]*\")\s*=", lines[i])
            if m and m.group(1).strip('"') in values:
                i = _value_extent(lines, i)
                continue
            body.append(lines[i])
            i += 1
        # after the table's last key line: blank lines and comments below it belong to what follows
        last = max((j for j, ln in enumerate(body) if ln.strip() and not ln.lstrip().startswith("#")), default=-1)
        new = [f"{toml_key(k)} = {toml_value(v)}\n" for k, v in values.items()]
        lines = lines[:table_at + 1] + body[:last + 1] + new + body[last + 1:] + lines[end:]
        return "".join(lines)
    if model in models:
        entry = models[model]
        old = {"checkpoint": entry} if isinstance(entry, str) else dict(entry)
        section = re.compile(r"^\s*\[\s*models\s*\]\s*(#.*)?$")
        start = next((i for i, ln in enumerate(lines) if section.match(ln.rstrip("\n"))), None)
        at = None
        if start is not None:
            assign = re.compile(rf"^\s*{key}\s*=")
            at = next((i for i in range(start + 1, _section_end(lines, start)) if assign.match(lines[i])), None)
        if at is None:
            raise ConfigError(f"the [models] entry {model!r} is written in a form this command cannot edit "
                              f"(dotted keys?); set {', '.join(values)} in it by hand")
        end = _value_extent(lines, at)
        merged = {**old, **values}
        comment = _trailing_comment(lines[at:end])
        lines[at:end] = [f"{toml_key(model)} = {toml_value(merged)}{comment}\n"]
        return "".join(lines)
    out = "".join(lines)
    if out and not out.endswith("\n\n"):
        out += "\n"
    out += f"[models.{toml_key(model)}]\n" + "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in values.items())
    return out


def write_model_keys(path: str | os.PathLike[str], model: str, values: dict[str, Any]) -> Path:
    """Set `values` in `model`'s entry of the config file at `path` (created if missing)."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8") if p.exists() else ""
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read config file: {e}") from None
    try:
        new = set_model_keys(text, model, values)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
    parse_config(new, p)  # the edited file must still be a valid config
    written = tomllib.loads(new)["models"][model]
    for k, v in values.items():
        if written.get(k) != v:
            raise ConfigError(f"{p}: writing [models] {model}.{k} failed (read back {written.get(k)!r})")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".config.", suffix=".toml", dir=p.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(new)
        if p.exists():
            os.chmod(tmp, p.stat().st_mode & 0o7777)
        os.replace(tmp, p)
    except OSError as e:
        raise ConfigError(f"{p}: cannot write config file: {e.strerror or e}") from None
    return p
