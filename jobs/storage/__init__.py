"""One storage interface over a local folder and S3, used for every job read and write.

A job's output root is a URL: a local path (or ``file://`` URL) or ``s3://bucket/prefix``
(`uri.open_storage`). One module per backend (`local`, `s3`), the key rules (`keys`) and the
download cache for checkpoints and model folders (`download`).

Deliberately free of torch/ray imports so the CLI starts fast; boto3 is imported lazily too.
"""
from linegen.jobs.storage.base import Storage, StorageError, StorageExists, StorageNotFound, StorageUnreachable
from linegen.jobs.storage.download import fetch_folder_to_local, fetch_to_local
from linegen.jobs.storage.keys import TMP_PREFIX, join_key, safe_component
from linegen.jobs.storage.local import LocalStorage
from linegen.jobs.storage.s3 import S3Storage
from linegen.jobs.storage.uri import absolute_uri, open_storage, read_uri

__all__ = ["absolute_uri", "LocalStorage", "S3Storage", "Storage", "StorageError", "StorageExists", "StorageNotFound",
           "StorageUnreachable", "TMP_PREFIX",
           "fetch_folder_to_local", "fetch_to_local", "join_key", "open_storage", "read_uri", "safe_component"]
