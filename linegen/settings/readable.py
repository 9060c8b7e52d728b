"""Fail fast on a checkpoint that is not there: the load itself may happen later, on another node."""
from __future__ import annotations

import os

from linegen.errors import UserError
from linegen.jobs.storage import StorageError, open_storage


def check_readable(flag: str, uri: str, endpoint_url: str | None) -> None:
    """Fail fast on a checkpoint that is not there (the load itself may happen on another node)."""
    from pathlib import Path

    if not uri.startswith("s3://"):
        p = Path(uri.removeprefix("file://")).expanduser()
        if not p.is_file():
            raise UserError(f"{flag} {uri}: no such file")
        if not os.access(p, os.R_OK):
            raise UserError(f"{flag} {uri}: not readable")
        return
    bucket_and_key = uri[len("s3://"):]
    bucket, _, key = bucket_and_key.partition("/")
    try:
        if not open_storage(f"s3://{bucket}", endpoint_url=endpoint_url).exists(key):
            raise UserError(f"{flag} {uri}: no such object")
    except StorageError as e:
        raise UserError(f"{flag} {uri}: {e}") from None
