"""Local copies of remote files: checkpoints and model folders are downloaded once into a cache
and reused while the object's size and ETag are unchanged."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

from linegen.jobs.storage.base import StorageError, StorageNotFound
from linegen.jobs.storage.keys import TMP_PREFIX, safe_component
from linegen.jobs.storage.uri import local_path, open_storage, parse_s3
from linegen.jobs.storage.s3 import S3Storage


def cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    """Where downloaded objects are kept: `cache_dir`, else ~/.cache/linegen/objects."""
    return Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "linegen" / "objects"


def _local(uri: str, *, folder: bool) -> Path:
    """A local file (or folder) as it is: nothing to download."""
    path = Path(os.path.expanduser(local_path(uri)))
    if folder and not path.is_dir():
        raise StorageNotFound(f"{path} is not a folder")
    if not folder and not path.exists():
        raise StorageNotFound(f"{path} does not exist")
    return path


def fetch_to_local(
    uri: str, *, endpoint_url: str | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Return a local path for ``uri``, downloading s3:// objects into a cache once.

    A cached copy is reused while the object's size and ETag are unchanged.
    """
    uri = os.fspath(uri)
    if not uri.startswith("s3://"):
        return _local(uri, folder=False)

    bucket, key = parse_s3(uri)
    name = key.rsplit("/", 1)[-1]
    if not key or not name:
        raise StorageError(f"invalid S3 object URL {uri!r}: no object key")
    s3 = S3Storage(bucket, endpoint_url=endpoint_url)
    head = s3.head(key)
    if head is None:
        raise StorageNotFound(f"{uri} does not exist")
    size, etag = int(head.get("ContentLength", -1)), str(head.get("ETag", ""))

    root = cache_root(cache_dir)
    folder = root / hashlib.sha256(uri.encode()).hexdigest()[:32]
    target = folder / safe_component(name)
    meta_path = folder / ".meta.json"
    try:
        meta = json.loads(meta_path.read_text())
        if target.is_file() and target.stat().st_size == size and meta.get("etag") == etag:
            return target
    except (OSError, ValueError):
        pass

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create cache folder {folder}: {e.strerror or e}") from None
    tmp = folder / f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}"
    try:
        # download_file uses ranged, parallel GETs for big objects (the model checkpoints).
        s3.download(key, tmp)
        if tmp.stat().st_size != size:
            raise StorageError(f"download of {uri} is incomplete ({tmp.stat().st_size} of {size} bytes)")
        os.replace(tmp, target)
        meta_tmp = folder / f"{TMP_PREFIX}meta-{uuid.uuid4().hex[:12]}"
        meta_tmp.write_text(json.dumps({"uri": uri, "etag": etag, "size": size}))
        os.replace(meta_tmp, meta_path)
    except OSError as e:
        raise StorageError(f"cannot write {target}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def fetch_folder_to_local(
    uri: str, *, endpoint_url: str | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Return a local folder for ``uri``: a folder as is, or every object under an s3:// prefix
    (a Hugging Face model folder, say) downloaded once into a cache, keeping relative paths.
    """
    uri = os.fspath(uri)
    if not uri.startswith("s3://"):
        return _local(uri, folder=True)
    base = uri.rstrip("/")
    keys = [k for k in open_storage(base, endpoint_url=endpoint_url).list()
            if not any(part.startswith(TMP_PREFIX) for part in k.split("/"))]
    if not keys:
        raise StorageNotFound(f"{uri} holds no objects")
    root = cache_root(cache_dir)
    folder = root / ("folder-" + hashlib.sha256(base.encode()).hexdigest()[:32])
    for key in keys:
        # Each object is cached (and re-checked by ETag) by fetch_to_local; the folder view is
        # hard links to those copies, refreshed on every call.
        cached = fetch_to_local(f"{base}/{key}", endpoint_url=endpoint_url, cache_dir=root)
        target = folder.joinpath(*key.split("/"))
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}"
            try:
                os.link(cached, tmp)
            except OSError:
                shutil.copyfile(cached, tmp)
            os.replace(tmp, target)
        except OSError as e:
            raise StorageError(f"cannot write {target}: {e.strerror or e}") from None
    return folder
