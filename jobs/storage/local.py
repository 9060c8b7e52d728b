"""A local folder as a storage root: atomic renames for writes, hard links for put-if-absent.

Nothing here follows a symbolic link out of the root: a key whose path resolves outside it (a
link planted at ``images/shard-00000.parquet`` or at a folder on the way) is refused, so a job
folder cannot be made to read, write or move files elsewhere on the machine.
"""
from __future__ import annotations

import errno
import os
import time
import uuid
from pathlib import Path

from linegen.jobs.storage.base import Storage, StorageError, StorageExists, StorageNotFound
from linegen.jobs.storage.keys import TMP_PREFIX, check_key, check_prefix



def read_file(path: Path) -> bytes:
    """A local file's bytes; a missing one is StorageNotFound, any other failure one StorageError line."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise StorageNotFound(f"{path} does not exist") from None
    except OSError as e:
        raise StorageError(f"cannot read {path}: {e.strerror or e}") from None


class LocalStorage(Storage):
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(os.path.expanduser(os.fspath(root))).absolute()
        self.url = str(self.root)

    def _path(self, key: str, *, follow_last: bool = True) -> Path:
        """The file of ``key``; refused if it, or a folder on the way, is a link out of the root.
        ``follow_last=False``: the last component may be a link (an unlink removes the link only)."""
        path = self.root.joinpath(*check_key(key).split("/"))
        # realpath resolves every link on the way; the root itself may be a link (the user's choice).
        real = os.path.realpath(path if follow_last else path.parent)
        root = os.path.realpath(self.root)
        if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
            raise StorageError(f"{path} leads outside {self.root} (a symbolic link to {real}); refusing to follow it")
        return path

    def _write_tmp(self, path: Path, data: bytes) -> Path:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create folder {path.parent}: {e.strerror or e}") from None
        tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:12]}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # a commit marker must not outlive its data after a crash
        except OSError as e:
            _discard(tmp)
            raise StorageError(f"cannot write {path}: {e.strerror or e}") from None
        return tmp

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = self._write_tmp(path, data)
        try:
            os.replace(tmp, path)
        except OSError as e:
            _discard(tmp)
            raise StorageError(f"cannot write {path}: {e.strerror or e}") from None

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        tmp = self._write_tmp(path, data)
        try:
            # link() fails if the target exists, so the complete file appears atomically and
            # only the first of several racing writers wins.
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise StorageError(f"cannot write {path}: {e.strerror or e}") from None
            return self._put_exclusive(path, data)  # filesystems without hard links
        finally:
            _discard(tmp)

    def _put_exclusive(self, path: Path, data: bytes) -> bool:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as e:
            raise StorageError(f"cannot write {path}: {e.strerror or e}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True

    def get(self, key: str) -> bytes:
        return read_file(self._path(key))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        prefix = check_prefix(prefix)
        # Walk only the deepest folder the prefix names, then filter by the string prefix,
        # so "images/shard-" and "images/" behave as they do on S3.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*base.split("/")) if base else self.root
        keys: list[str] = []
        if not start.is_dir():
            return keys
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(TMP_PREFIX)]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(TMP_PREFIX):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key, follow_last=False)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StorageError(f"cannot delete {path}: {e.strerror or e}") from None

    def move(self, src: str, dst: str, *, overwrite: bool = True) -> None:
        source, target = self._path(src), self._path(dst)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if overwrite:
                os.replace(source, target)  # a rename: atomic, and no copy of the bytes
            else:
                self._move_new(source, target)
        except StorageError:
            raise
        except FileNotFoundError:
            if not source.exists():
                raise StorageNotFound(f"{source} does not exist") from None
            raise StorageError(f"cannot move {source} to {target}: no such folder") from None
        except OSError as e:
            raise StorageError(f"cannot move {source} to {target}: {e.strerror or e}") from None
        for folder in (source.parent, source.parent.parent):  # an attempt's folders, once empty
            try:
                folder.rmdir()
            except OSError:
                break

    def remove_leftovers(self, prefix: str, *, older_than_s: float = 0.0) -> None:
        folder = self._path(check_prefix(prefix).rstrip("/"))
        if not folder.is_dir():
            return
        before = time.time() - older_than_s
        for dirpath, dirnames, filenames in os.walk(folder, topdown=False):
            for name in filenames:
                path = Path(dirpath) / name
                if name.startswith(TMP_PREFIX) and (older_than_s <= 0 or _mtime(path) < before):
                    _discard(path)
            try:
                os.rmdir(dirpath)  # only if it is empty now
            except OSError:
                pass

    @staticmethod
    def _move_new(source: Path, target: Path) -> None:
        """Rename without replacing: link() fails if the target exists, then the source goes."""
        try:
            os.link(source, target, follow_symlinks=False)
        except FileExistsError:
            raise StorageExists(f"{target} already exists") from None
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            if os.path.lexists(target):  # filesystems without hard links: check, then rename
                raise StorageExists(f"{target} already exists") from None
            os.rename(source, target)
            return
        os.unlink(source)

    def check(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise StorageError(f"output path {self.root} exists and is not a folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create output folder {self.root}: {e.strerror or e}") from None
        probe = self.root / f"{TMP_PREFIX}check-{uuid.uuid4().hex[:12]}"
        try:
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as e:
            _discard(probe)
            raise StorageError(f"output folder {self.root} is not writable: {e.strerror or e}") from None


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return float("inf")  # gone already: nothing to remove


def _discard(path: Path) -> None:
    """Remove a work file if it is there. Never raises: it runs while another error is being
    reported, and on a read-only filesystem even unlinking a missing file fails (EROFS)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
