"""The user's config file: ``~/.config/linegen/config.toml``.

The path is, first found: the ``path`` argument, ``$LINEGEN_CONFIG``,
``$XDG_CONFIG_HOME/linegen/config.toml``, ``~/.config/linegen/config.toml``. A missing default
file is an empty config; a missing file that was named explicitly is an error.

::
    [cluster]
    address = "http://head.example.com:8265"
    token_file = "~/.config/linegen/ray_token"   # a path; never the token itself

    [output]
    out = "s3://bucket/datasets"

    [s3]
    endpoint_url = "http://127.0.0.1:8333"       # optional, for S3-compatible stores

    [prices]                                     # dollars per device-hour, override built-ins
    H100 = 3.29

    [models]
    c2i-xl = { checkpoint = "s3://bucket/c2i_XL_384.pt", vq_checkpoint = "s3://bucket/vq_ds16_c2i.pt" }
    linegen-shapes-c2i = { cache = "linear", cache_ratio = "1/6", cache_options = { anchor_lines = 1 } }
    llamagen-t2i-xl-256 = { checkpoint = "s3://bucket/t2i_XL_stage1_256.pt", vq_checkpoint = "s3://bucket/vq_ds16_t2i.pt",
                            text_encoder = "s3://bucket/flan-t5-xl/" }

    [models.linegen-shapes-c2i]                  # a model's cache when no --cache flag is given
    cache = "linear"
    cache_ratio = "1/6"
    cache_options = { anchors = 8 }

Every key is checked: an unknown section or key, also inside a ``[models]`` entry, is an error
naming the key and its line, and so is a value of the wrong type. Secrets do not belong here: a
literal token or AWS key is refused with an error that says where to put it instead (a token
file, an environment variable, or the AWS credential chain).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from linegen.cluster.address import redact_url
from linegen.cost.prices import parse_price
from linegen.errors import UserError
from linegen.guarded import load_toml


class ConfigError(UserError, ValueError):
    """A config file that cannot be used; the message names the file and, when known, the line."""


@dataclass(frozen=True)
class ClusterConfig:
    address: str | None = None
    token_file: Path | None = None


@dataclass(frozen=True)
class OutputConfig:
    out: str | None = None


@dataclass(frozen=True)
class S3Config:
    endpoint_url: str | None = field(default=None, repr=False)  # may hold credentials: never shown


@dataclass(frozen=True)
class ModelConfig:
    """A ``[models]`` entry: the model's files, and the cache `run`/`submit` use when no cache flag
    is given (what `linegen tune` writes)."""

    name: str
    checkpoint: str | None = None
    vq_checkpoint: str | None = None
    text_encoder: str | None = None  # t2i models: a T5 folder (Hugging Face layout)
    cache: str | None = None  # a cache policy name (checked against the policies where it is used)
    cache_ratio: str | None = None  # "1/6" or "0.25"; a number in the file is kept as its text
    cache_options: dict[str, Any] | list[str] = field(default_factory=dict)  # a table, or KEY=VALUE strings


MODEL_KEYS = ("checkpoint", "vq_checkpoint", "text_encoder", "cache", "cache_ratio", "cache_options")


@dataclass(frozen=True)
class Config:
    path: Path | None = None
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    s3: S3Config = field(default_factory=S3Config)
    prices: dict[str, float] = field(default_factory=dict)
    models: dict[str, ModelConfig] = field(default_factory=dict)


_SECTIONS = {
    "cluster": {"address", "token_file"},
    "output": {"out"},
    "s3": {"endpoint_url"},  # region and profile come from the AWS chain (AWS_REGION, AWS_PROFILE)
}
_TOKEN_KEYS = {"token", "auth_token", "ray_token", "ray_auth_token", "password", "secret"}
_AWS_KEYS = {"aws_access_key_id", "aws_secret_access_key", "aws_session_token",
             "access_key", "secret_key", "access_key_id", "secret_access_key", "session_token"}


def default_config_path() -> Path:
    env = os.environ.get("LINEGEN_CONFIG")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "linegen" / "config.toml"


def _line_of(text: str, section: str | None, key: str | None) -> int | None:
    """Best-effort line number of ``key`` inside ``[section]`` (or of the section header).

    A section ``models.NAME`` is found either as its own table (``[models.NAME]``, then the key
    in it) or as an inline table (``NAME = { ... key = ... }`` under ``[models]``)."""
    current: str | None = None
    header = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]")
    parent, _, child = (section or "").partition(".")
    for i, line in enumerate(text.splitlines(), start=1):
        m = header.match(line)
        if m:
            current = re.sub(r"\s*\.\s*", ".", m.group(1).strip()).replace('"', "").replace("'", "")
            if key is None and current == section:
                return i
            continue
        if key is None:
            continue
        if child and current == parent and re.match(rf"^\s*[\"']?{re.escape(child)}[\"']?\s*=", line) \
                and re.search(rf"[{{,]\s*[\"']?{re.escape(key)}[\"']?\s*=", line):
            return i
        if section is None or current == section or current is None:
            if re.match(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=", line):
                return i
            if section and re.match(rf"^\s*{re.escape(section)}\s*\.\s*{re.escape(key)}\s*=", line):
                return i
    return None


class _Reader:
    def __init__(self, path: Path, text: str):
        self.path = path
        self.text = text

    def error(self, msg: str, section: str | None = None, key: str | None = None) -> ConfigError:
        line = _line_of(self.text, section, key) if (section or key) else None
        where = f"{self.path}, line {line}" if line else str(self.path)
        return ConfigError(f"{where}: {msg}")

    def check_secret(self, section: str, key: str) -> None:
        k = key.lower()
        if k in _TOKEN_KEYS:
            raise self.error(
                f"[{section}] {key}: secrets are not stored in the config file; put the token in "
                "a file readable only by you and set token_file = \"/path/to/file\" under "
                "[cluster], or set LINEGEN_RAY_TOKEN in the environment",
                section, key)
        if k in _AWS_KEYS:
            raise self.error(
                f"[{section}] {key}: AWS credentials are not stored in the config file; use the "
                "standard AWS credential chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "a profile in ~/.aws/credentials, or an instance role)",
                section, key)

    def string(self, section: str, key: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(f"[{section}] {key} must be a non-empty string", section, key)
        return value.strip()


def parse_config(text: str, path: str | os.PathLike[str] = "<config>") -> Config:
    """Parse config text (``path`` is only used in messages and to resolve relative paths)."""
    p = Path(path)
    r = _Reader(p, text)

    # tomllib's message ends with "(at line N, column M)"; the depth bound keeps a file nested
    # thousands deep from reaching the parser's recursion limit.
    data = load_toml(text, f"{p}: invalid TOML", error=ConfigError)

    values: dict[str, dict[str, Any]] = {}
    prices: dict[str, float] = {}
    models: dict[str, ModelConfig] = {}
    for section, body in data.items():
        r.check_secret("top level", section)
        if section not in (*_SECTIONS, "prices", "models"):
            raise r.error(
                f"unknown section [{section}] (known: cluster, output, s3, prices, models)",
                section if isinstance(body, dict) else None,
                None if isinstance(body, dict) else section)
        if not isinstance(body, dict):
            raise r.error(f"[{section}] must be a table", None, section)
        if section == "prices":
            for name, value in body.items():
                try:
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        raise ValueError(name)
                    prices[name] = parse_price(f"{name}={value}")[1]
                except ValueError:
                    raise r.error(
                        f"[prices] {name} = {value!r}: a price must be a number >= 0 of dollars "
                        "per device-hour, e.g. H100 = 3.29", "prices", name) from None
            continue
        if section == "models":
            for name, spec in body.items():
                models[name] = _model(r, name, spec)
            continue
        known = _SECTIONS[section]
        values[section] = {}
        for key, value in body.items():
            r.check_secret(section, key)
            if key not in known:
                raise r.error(
                    f"unknown key [{section}] {key} (known: {', '.join(sorted(known))})", section, key)
            values[section][key] = r.string(section, key, value)
            if key in ("address", "endpoint_url", "out") and redact_url(values[section][key]) != values[section][key]:
                raise r.error(f"[{section}] {key}: a URL with credentials (user:password@) is a secret and is not "
                              "stored in the config file; give it with the flag or the environment", section, key)

    cl = values.get("cluster", {})
    token_file = None
    if "token_file" in cl:
        tf = Path(cl["token_file"]).expanduser()
        if not tf.is_absolute():
            tf = (p.parent / tf) if str(p) != "<config>" else tf
        token_file = tf
    return Config(
        path=p if str(p) != "<config>" else None,
        cluster=ClusterConfig(address=cl.get("address"), token_file=token_file),
        output=OutputConfig(out=values.get("output", {}).get("out")),
        s3=S3Config(**values.get("s3", {})),
        prices=prices,
        models=models,
    )


def _model(r: _Reader, name: str, spec: Any) -> ModelConfig:
    if isinstance(spec, str):
        return ModelConfig(name=name, checkpoint=spec)
    if not isinstance(spec, dict):
        raise r.error(
            f"[models] {name} must be a table, e.g. {name} = {{ checkpoint = \"...\", "
            "vq_checkpoint = \"...\" }", "models", name)
    section = f"models.{name}"
    values: dict[str, Any] = {}
    for key, value in spec.items():
        r.check_secret(section, key)
        if key not in MODEL_KEYS:
            raise r.error(f"unknown key [models] {name}.{key} (known: {', '.join(MODEL_KEYS)})", section, key)
        if key == "cache_ratio":
            if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not str(value).strip():
                raise r.error(f"[models] {name}.cache_ratio must be a fraction such as \"1/6\" or 0.25",
                              section, key)
            values[key] = str(value).strip()
        elif key == "cache_options":
            values[key] = _cache_options(r, name, value)
        else:
            if not isinstance(value, str) or not value.strip():
                raise r.error(f"[models] {name}.{key} must be a non-empty string", section, key)
            values[key] = value.strip()
    return ModelConfig(name=name, **values)


def _cache_options(r: _Reader, name: str, value: Any) -> dict[str, Any] | list[str]:
    """A table of switches (``{ anchors = 8 }``) or ``["anchors=8"]`` as --cache-option gives them."""
    where = f"models.{name}", "cache_options"
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, str) or "=" not in item or not item.partition("=")[0].strip():
                raise r.error(f"[models] {name}.cache_options entries must look like KEY=VALUE", *where)
        return list(value)
    if not isinstance(value, dict):
        raise r.error(f"[models] {name}.cache_options must be a table, e.g. {{ anchors = 8 }}", *where)
    for k, v in value.items():
        if isinstance(v, (dict, list)) or v is None:
            raise r.error(f"[models] {name}.cache_options.{k} must be a number, a boolean or a string", *where)
    return dict(value)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the config file (see the module docstring for where it is looked for)."""
    explicit = path is not None or bool(os.environ.get("LINEGEN_CONFIG"))
    p = Path(path).expanduser() if path is not None else default_config_path()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{p}: config file does not exist") from None
        return Config(path=None)
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config file: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: config file is not UTF-8 text") from None
    return parse_config(text, p)
