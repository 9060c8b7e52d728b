"""Keys and ids: what may be a key under a storage root, and user ids made safe for paths."""
from __future__ import annotations

import hashlib
import re

from linegen.jobs.storage.base import StorageError

TMP_PREFIX = ".tmp-"  # hidden work files (partial writes, probes); never listed, never read
MAX_COMPONENT_LEN = 100

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_component(text: str) -> str:
    """Turn a user-provided id into one safe path component.

    Ids that are already safe come back unchanged. Anything altered gets a short hash of the
    original appended, so two different ids (``a/b`` and ``a_b``) never share a file name.
    """
    text = str(text)
    out = re.sub(r"\.{2,}", "_", _UNSAFE.sub("_", text)).strip(".")
    if out != text:
        out = re.sub(r"_+", "_", out).strip("_")  # tidy what sanitising produced
    out = out or "id"
    if len(out) > MAX_COMPONENT_LEN:
        out = out[: MAX_COMPONENT_LEN - 9].rstrip(".")
    if out != text:
        out = f"{out}-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
    return out


def segments(key: str, *, what: str = "key") -> list[str]:
    """Split a key into segments, rejecting anything that could escape the storage root."""
    if not isinstance(key, str):
        raise StorageError(f"invalid {what} {key!r}: not a string")
    if _CONTROL.search(key):
        raise StorageError(f"invalid {what} {key!r}: contains control characters")
    if "\\" in key:
        raise StorageError(f"invalid {what} {key!r}: backslashes are not allowed")
    if key.startswith("/") or re.match(r"^[A-Za-z]:", key):
        raise StorageError(f"invalid {what} {key!r}: must be a relative path")
    segs = [s for s in key.split("/") if s]
    if any(s in (".", "..") for s in segs):
        raise StorageError(f"invalid {what} {key!r}: '.' and '..' segments are not allowed")
    return segs


def join_key(*parts: str) -> str:
    """Join key parts with '/'; reject absolute paths and '.'/'..' segments."""
    segs: list[str] = []
    for part in parts:
        segs.extend(segments(part))
    if not segs:
        raise StorageError(f"invalid key from parts {parts!r}: empty")
    return "/".join(segs)


def check_key(key: str) -> str:
    segs = segments(key)
    if not segs:
        raise StorageError(f"invalid key {key!r}: empty")
    return "/".join(segs)


def check_prefix(prefix: str) -> str:
    """Like a key, but may be empty and keeps a trailing '/' (S3 prefixes are plain strings)."""
    segs = segments(prefix, what="prefix")
    out = "/".join(segs)
    if out and prefix.endswith("/"):
        out += "/"
    return out
