"""Issue 24, item 7: `tune`'s edit of the config file changes the values it sets and nothing else,
byte for byte (comments, quoting, CRLF, dotted keys, sub-tables); a symlinked config is edited at
its target; a read-only one is a one-line error."""
from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from linegen.settings.config_edit import set_model_keys, write_model_keys
from linegen.settings.config_file import ConfigError

VALUES = {"cache": "linear", "cache_ratio": "1/6", "cache_options": {"anchors": 4}}

HEAD = "# my settings\n[cluster]\naddress = 'http://head:8265'   # quoted my way\n\n"
TAIL = "\n# prices, negotiated\n[prices]\n\"H100\" = 3.29\n"


def _set_and_check(entry: str, model: str = "m") -> str:
    before = HEAD + entry + TAIL
    after = set_model_keys(before, model, VALUES)
    got = tomllib.loads(after)["models"][model]
    assert {k: got[k] for k in VALUES} == VALUES
    assert after.startswith(HEAD) and after.endswith(TAIL), after  # the rest, byte for byte
    return after[len(HEAD):len(after) - len(TAIL)]


def test_quoted_key_is_edited_in_place() -> None:
    """Before: valid TOML with a quoted key made the edit fail, blaming the file."""
    entry = "[models.m]\n'cache' = \"full\"  # was full\ncheckpoint = \"s3://b/m.pt\"\n"
    assert _set_and_check(entry) == ("[models.m]\n'cache' = \"linear\"  # was full\ncheckpoint = \"s3://b/m.pt\"\n"
                                     "cache_ratio = \"1/6\"\ncache_options = {anchors = 4}\n")


def test_dotted_keys_stay_dotted() -> None:
    entry = "[models.m]\ncache = \"linear\"\ncache_options.anchors = 2\ncache_options.recent_lines = 1\n"
    assert _set_and_check(entry) == ("[models.m]\ncache = \"linear\"\ncache_options.anchors = 4\n"
                                     "cache_ratio = \"1/6\"\n")
    top = "models.m.cache = \"full\"  # top level\n" + HEAD + TAIL  # dotted keys before any table
    after = set_model_keys(top, "m", VALUES)
    assert after == ("models.m.cache = \"linear\"  # top level\nmodels.m.cache_ratio = \"1/6\"\n"
                     "models.m.cache_options = {anchors = 4}\n" + HEAD + TAIL)


def test_sub_table_stays_a_sub_table() -> None:
    entry = "[models.m]\ncheckpoint = \"a\"\n\n[models.m.cache_options]\nanchors = 2 # two\n"
    assert _set_and_check(entry) == ("[models.m]\ncheckpoint = \"a\"\ncache = \"linear\"\ncache_ratio = \"1/6\"\n\n"
                                     "[models.m.cache_options]\nanchors = 4 # two\n")


def test_crlf_file_stays_crlf_and_identical_elsewhere() -> None:
    text = (HEAD + "[models.m]\ncache = \"full\"\n" + TAIL).replace("\n", "\r\n")
    after = set_model_keys(text, "m", VALUES)
    assert "\n" not in after.replace("\r\n", "")  # before: rewritten with LF
    assert after.startswith(HEAD.replace("\n", "\r\n")) and after.endswith(TAIL.replace("\n", "\r\n"))
    new = set_model_keys(text, "other", VALUES)  # a new entry at the end, CRLF too
    assert new.startswith(text) and "\n" not in new.replace("\r\n", "")


def test_symlinked_config_is_edited_at_its_target(tmp_path: Path) -> None:
    target = tmp_path / "dotfiles" / "linegen.toml"
    target.parent.mkdir()
    target.write_text(HEAD + TAIL)
    link = tmp_path / "config.toml"
    link.symlink_to(target)
    write_model_keys(link, "m", VALUES)
    assert link.is_symlink() and os.readlink(link) == str(target)  # before: replaced by a regular file
    assert tomllib.loads(target.read_text())["models"]["m"]["cache"] == "linear"


def test_read_only_config_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(HEAD + TAIL)
    path.chmod(0o444)
    with pytest.raises(ConfigError, match="read-only") as e:
        write_model_keys(path, "m", VALUES)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert path.read_text() == HEAD + TAIL
