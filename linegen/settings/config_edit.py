"""Set keys of one `[models]` entry in the user's config file, leaving the rest of the file as it was.

`linegen tune` records its choice here (cache, cache_ratio, cache_options). The file is edited
with `tomlkit`, which parses TOML into a document that keeps every comment, quote style, blank
line, line ending and key form, so only the values set change, byte for byte:
  * an entry written as a table (``[models.NAME]``), inline (``NAME = { ... }``) or with dotted
    keys (``NAME.cache = ...``) keeps its form; a value equal to the one there is not touched;
  * a table value (``cache_options``) that is already a table, a sub-table or dotted keys is
    updated key by key in that form;
  * an entry written as a bare checkpoint (``NAME = "s3://..."``) becomes an inline table
    holding the checkpoint and the new keys;
  * a model without an entry gets a ``[models.NAME]`` table at the end of the file.
A CRLF file stays CRLF. The result is parsed again (linegen/settings/config_file.py) before it
replaces the file, atomically; a symlinked config is edited at its target (the link stays), and a
read-only one is a one-line error.
"""
from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

from linegen.guarded import load_toml
from linegen.settings.config_file import ConfigError, parse_config


def _item(value: Any):
    """A tomlkit value for a plain Python one; tables as inline tables (one line, like the entry)."""
    import tomlkit

    if isinstance(value, dict):
        t = tomlkit.inline_table()
        for k, v in value.items():
            t[str(k)] = _item(v)
        return t
    if isinstance(value, (list, tuple)):
        a = tomlkit.array()
        a.extend(_item(v) for v in value)
        return a
    if value is None:
        raise ConfigError(f"cannot write {value!r} to a config file")
    return tomlkit.item(value)


def _plain(value: Any) -> Any:
    return value.unwrap() if hasattr(value, "unwrap") else value


def _set(container, key: str, value: Any) -> None:
    """``container[key] = value`` keeping the form of what is there: equal values untouched, a
    table written as a sub-table or as dotted keys updated key by key (an inline table is written
    again whole, on its line, its comment kept)."""
    from tomlkit.items import InlineTable

    old = container.get(key) if key in container else None
    if old is not None and _plain(old) == value:
        return
    if isinstance(value, dict) and old is not None and isinstance(_plain(old), dict) \
            and not isinstance(old, InlineTable):
        for k in [k for k in old if k not in value]:
            del old[k]
        for k, v in value.items():
            _set(old, str(k), v)
        return
    if old is None:
        _add(container, key, _item(value))
    else:
        container[key] = _item(value)


def _add(container, key: str, item) -> None:
    """A new key right after the table's last key, not after the comments and blank lines that
    end it (those introduce what follows)."""
    from tomlkit.items import Table

    body = getattr(getattr(container, "value", None), "body", None)
    if isinstance(container, Table) and body:
        keyed = [i for i, (k, _) in enumerate(body) if k is not None]
        if keyed:
            try:
                container.value._insert_at(keyed[-1] + 1, key, item)
                return
            except Exception:  # noqa: BLE001 - a private tomlkit call: fall back to appending
                pass
    container[key] = item


def set_model_keys(text: str, model: str, values: dict[str, Any]) -> str:
    """`text` with `values` set in the [models] entry of `model` (see the module docstring)."""
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    data = load_toml(text, "invalid TOML", error=ConfigError)  # size and depth bounds, tomllib's message
    if not isinstance(data.get("models", {}), dict):
        raise ConfigError("[models] must be a table")
    crlf = "\r\n" in text
    try:
        if model not in data.get("models", {}):
            # A new table at the very end: tomlkit would put it next to the other [models.*]
            # tables, after the comment that introduces whatever table follows them.
            body = tomlkit.document()
            for k, v in values.items():
                body[k] = _item(v)
            out = text + ("" if not text or text.endswith("\n") else "\n") + ("\n" if text.strip() else "")
            out += f"[{tomlkit.key(['models', model]).as_string()}]\n" + tomlkit.dumps(body)
            tomlkit.parse(out)  # e.g. `models = { ... }` inline cannot take a [models.NAME] table
        else:
            doc = tomlkit.parse(text)
            models = doc["models"]
            entry = models[model]
            if isinstance(_plain(entry), str):  # NAME = "checkpoint"
                models[model] = _item({"checkpoint": _plain(entry), **values})
            else:
                for k, v in values.items():
                    _set(entry, k, v)
            out = tomlkit.dumps(doc)
    except TOMLKitError as e:  # valid TOML that tomlkit cannot edit: say so, do not blame the file
        raise ConfigError(f"cannot edit the [models] entry {model!r} automatically ({e}); "
                          f"set {', '.join(values)} in it by hand") from None
    if crlf:  # lines tomlkit added end in "\n": match the file
        out = re.sub(r"(?<!\r)\n", "\r\n", out)
    return out


def write_model_keys(path: str | os.PathLike[str], model: str, values: dict[str, Any]) -> Path:
    """Set `values` in `model`'s entry of the config file at `path` (created if missing). Returns
    the path as given; a symlink is followed and its target rewritten."""
    import tomllib

    p = Path(path).expanduser()
    target = Path(os.path.realpath(p))  # a symlinked config (dotfiles repo): edit what it points to
    try:
        raw = target.read_bytes() if target.exists() else b""
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read config file: {getattr(e, 'strerror', None) or e}") from None
    if target.exists():
        mode = target.stat().st_mode
        if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(target, os.W_OK):
            raise ConfigError(f"{p}: the config file is read-only; not changed (make it writable, "
                              "or use tune --no-write / --config OTHER)")
    try:
        new = set_model_keys(text, model, values)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
    parse_config(new, p)  # the edited file must still be a valid config
    written = tomllib.loads(new)["models"][model]
    for k, v in values.items():
        if written.get(k) != v:
            raise ConfigError(f"{p}: writing [models] {model}.{k} failed (read back {written.get(k)!r})")
    if new == text:
        return p
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".config.", suffix=".toml", dir=target.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(new.encode("utf-8"))
        if target.exists():
            os.chmod(tmp, target.stat().st_mode & 0o7777)
        os.replace(tmp, target)
    except OSError as e:
        raise ConfigError(f"{p}: cannot write config file: {e.strerror or e}") from None
    return p
