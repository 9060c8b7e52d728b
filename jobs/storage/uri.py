"""Storage roots and objects named by URL: a local path, a file:// URL or s3://bucket/prefix."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from linegen.jobs.storage.base import Storage, StorageError, StorageNotFound
from linegen.jobs.storage.local import LocalStorage
from linegen.jobs.storage.s3 import S3Storage


def parse_s3(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    if not parts.netloc:
        raise StorageError(f"invalid S3 URL {uri!r}: expected s3://bucket/prefix")
    return parts.netloc, parts.path.lstrip("/")


def local_path(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


def open_storage(url: str, *, endpoint_url: str | None = None, **options: Any) -> Storage:
    """Open the storage root ``url`` (local path, file:// URL or s3://bucket/prefix).

    ``options`` go to S3Storage (retry settings, multipart sizes) and are ignored locally.
    """
    url = os.fspath(url)
    if url.startswith("s3://"):
        bucket, prefix = parse_s3(url)
        return S3Storage(bucket, prefix.rstrip("/"), endpoint_url=endpoint_url, **options)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url) and not url.startswith("file://"):
        raise StorageError(f"unsupported storage URL {url!r}: use a local path or s3://bucket/prefix")
    if not url:
        raise StorageError("empty storage URL")
    return LocalStorage(local_path(url))


def read_uri(uri: str, *, endpoint_url: str | None = None) -> bytes:
    """Read one object or file by full URI (local path or s3://bucket/key)."""
    uri = os.fspath(uri)
    if uri.startswith("s3://"):
        bucket, key = parse_s3(uri)
        if not key or key.endswith("/"):
            raise StorageError(f"invalid S3 object URL {uri!r}: no object key")
        return S3Storage(bucket, endpoint_url=endpoint_url).get(key)
    path = Path(os.path.expanduser(local_path(uri)))
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise StorageNotFound(f"{path} does not exist") from None
    except OSError as e:
        raise StorageError(f"cannot read {path}: {e.strerror or e}") from None
