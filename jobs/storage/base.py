"""The storage interface every job read and write goes through, and its errors.

Keys are '/'-separated paths relative to a root (a local folder or ``s3://bucket/prefix``).
Writes are atomic (readers never see a partial object) and ``put_if_absent`` is the
exactly-once primitive behind shard commits.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from linegen.errors import UserError


class StorageError(UserError):
    """A storage failure with a one-line, human-readable message (never credentials)."""


class StorageNotFound(StorageError):
    """The key, object or file does not exist."""


class StorageUnreachable(StorageError):
    """The storage did not answer (connection refused or reset, timeout, a 5xx): nothing about the
    key is known, and trying again later may work (jobs.outage rides these out)."""


class StorageExists(StorageError):
    """A move without overwrite found its target already there."""


class Storage(ABC):
    url: str

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write (or overwrite) ``key`` atomically."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if it does not exist. True if we wrote it, False if it existed.

        After an ambiguous failure (the connection dropped after the server may have stored
        the object), a retry can find our own write and report False. Callers treat False as
        "the shard is already done", which is correct either way.
        """

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Return the object's bytes; raise StorageNotFound if it does not exist."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys (relative to the root) that start with ``prefix``."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing key is not an error."""

    @abstractmethod
    def move(self, src: str, dst: str, *, overwrite: bool = True) -> None:
        """Give ``dst`` the bytes of ``src`` and remove ``src``. Readers of ``dst`` see the old
        object or the whole new one, never a part. StorageNotFound if ``src`` does not exist;
        with ``overwrite=False``, StorageExists (and ``src`` kept) if ``dst`` already does."""

    @abstractmethod
    def check(self) -> None:
        """Verify the storage is usable before any work starts; raise StorageError if not."""

    def remove_leftovers(self, prefix: str, *, older_than_s: float = 0.0) -> None:
        """Remove the temporary files (``.tmp-*``) a killed write left under ``prefix`` (only those
        untouched for ``older_than_s`` seconds), and the folders that leaves empty. Only a local
        folder has such files (an unfinished S3 upload is invisible), so this does nothing elsewhere."""

    def location(self, key: str) -> str:
        """Where ``key`` is, as a user would type it (a path or an s3:// URL), for messages."""
        return f"{self.url.rstrip('/')}/{key}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
