"""Storage roots and objects named by URL: a local path, a file:// URL or s3://bucket/prefix."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from linegen.cluster.address import redact_url
from linegen.jobs.storage.base import Storage, StorageError
from linegen.jobs.storage.local import LocalStorage, read_file
from linegen.jobs.storage.s3 import S3Storage


def parse_s3(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    if not parts.netloc:
        raise StorageError(f"invalid S3 URL {uri!r}: expected s3://bucket/prefix")
    return parts.netloc, parts.path.lstrip("/")


def local_path(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


def absolute_uri(uri: str) -> str:
    """``uri`` as it reads from any working directory: an s3:// URL without a trailing '/', a local
    path (or file:// URL) made absolute. Relative and absolute spellings of one file agree."""
    uri = os.fspath(uri)
    if uri.startswith("s3://"):
        return uri.rstrip("/")
    return os.path.abspath(os.path.expanduser(local_path(uri)))


# "s3:/bucket/x", "s3:bucket", "gs://..." : a scheme the user meant, not a folder to create here.
_SCHEME_LIKE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")


def check_location(url: str) -> str:
    """Refuse what looks like a URL but is not one linegen reads (instead of silently using it as
    a local path such as ./s3:/bucket/x); local paths and s3:// / file:// URLs pass."""

    m = _SCHEME_LIKE.match(url)
    if not m or url.startswith(("s3://", "file://")):
        return url
    scheme, rest = m.group(1), url[m.end():]
    hint = f" (did you mean s3://{rest.lstrip('/')}?)" if scheme.lower() == "s3" and not rest.startswith("//") else ""
    raise StorageError(f"unsupported location {redact_url(url)!r}{hint}: use a local path or s3://bucket/prefix "
                       f"(./{url} for a local folder of that name)")


def open_storage(url: str, *, endpoint_url: str | None = None, **options: Any) -> Storage:
    """Open the storage root ``url`` (local path, file:// URL or s3://bucket/prefix).

    ``options`` go to S3Storage (retry settings, multipart sizes) and are ignored locally.
    """
    url = check_location(os.fspath(url))
    if url.startswith("s3://"):
        bucket, prefix = parse_s3(url)
        return S3Storage(bucket, prefix.rstrip("/"), endpoint_url=endpoint_url, **options)
    if not url:
        raise StorageError("empty storage URL")
    return LocalStorage(local_path(url))


def read_uri(uri: str, *, endpoint_url: str | None = None) -> bytes:
    """Read one object or file by full URI (local path or s3://bucket/key)."""
    uri = check_location(os.fspath(uri))
    if uri.startswith("s3://"):
        bucket, key = parse_s3(uri)
        if not key or key.endswith("/"):
            raise StorageError(f"invalid S3 object URL {uri!r}: no object key")
        return S3Storage(bucket, endpoint_url=endpoint_url).get(key)
    return read_file(Path(os.path.expanduser(local_path(uri))))
