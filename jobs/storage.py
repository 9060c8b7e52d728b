"""One storage interface over a local folder and S3, used for every job read and write.

A job's output root is a URL: a local path (or ``file://`` URL) or ``s3://bucket/prefix``.
Keys are '/'-separated paths relative to that root. Writes are atomic (readers never see a
partial object) and ``put_if_absent`` is the exactly-once primitive behind shard commits.

Deliberately free of torch/ray imports so the CLI starts fast; boto3 is imported lazily too.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import threading
import time
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit, urlunsplit

T = TypeVar("T")

TMP_PREFIX = ".tmp-"
DEFAULT_MULTIPART_THRESHOLD = 64 * 1024 * 1024
DEFAULT_PART_SIZE = 16 * 1024 * 1024
MAX_COMPONENT_LEN = 100


class StorageError(Exception):
    """A storage failure with a one-line, human-readable message (never credentials)."""


class StorageNotFound(StorageError):
    """The key, object or file does not exist."""


# --------------------------------------------------------------------------- keys and ids

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


def _segments(key: str, *, what: str = "key") -> list[str]:
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
        segs.extend(_segments(part))
    if not segs:
        raise StorageError(f"invalid key from parts {parts!r}: empty")
    return "/".join(segs)


def _check_key(key: str) -> str:
    segs = _segments(key)
    if not segs:
        raise StorageError(f"invalid key {key!r}: empty")
    return "/".join(segs)


def _check_prefix(prefix: str) -> str:
    """Like a key, but may be empty and keeps a trailing '/' (S3 prefixes are plain strings)."""
    segs = _segments(prefix, what="prefix")
    out = "/".join(segs)
    if out and prefix.endswith("/"):
        out += "/"
    return out


def _redact_url(url: str) -> str:
    """Drop any user:password@ part of an endpoint URL before it goes into a message."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url


# --------------------------------------------------------------------------- interface


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
    def check(self) -> None:
        """Verify the storage is usable before any work starts; raise StorageError if not."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


# --------------------------------------------------------------------------- local folder


class LocalStorage(Storage):
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(os.path.expanduser(os.fspath(root))).absolute()
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*_check_key(key).split("/"))

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
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write {path}: {e.strerror or e}") from None
        return tmp

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = self._write_tmp(path, data)
        try:
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
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
            tmp.unlink(missing_ok=True)

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
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise StorageNotFound(f"{path} does not exist") from None
        except OSError as e:
            raise StorageError(f"cannot read {path}: {e.strerror or e}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        prefix = _check_prefix(prefix)
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
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StorageError(f"cannot delete {path}: {e.strerror or e}") from None

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
            probe.unlink(missing_ok=True)
            raise StorageError(f"output folder {self.root} is not writable: {e.strerror or e}") from None


# --------------------------------------------------------------------------- S3

_RETRY_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
    "TooManyRequestsException", "RequestTimeout", "RequestTimeoutException",
    "InternalError", "ServiceUnavailable", "ConditionalRequestConflict",
}
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
    "TokenRefreshRequired", "InvalidSecurity", "AuthorizationHeaderMalformed",
}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}


def _error_code(exc: Any) -> tuple[str, int]:
    err = getattr(exc, "response", {}) or {}
    code = str(err.get("Error", {}).get("Code", ""))
    status = int(err.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _is_retryable(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError, IncompleteReadError, ResponseStreamingError

    retryable = (BotoConnectionError, HTTPClientError, IncompleteReadError, ResponseStreamingError)
    if isinstance(exc, retryable):
        return True  # refused, reset, DNS, connect/read timeouts, truncated bodies
    if isinstance(exc, ClientError):
        code, status = _error_code(exc)
        # 501 NotImplemented (e.g. a store without conditional writes) will not get better.
        return (status >= 500 and status != 501) or status == 429 or code in _RETRY_CODES
    return False


class S3Storage(Storage):
    """S3 (or an S3-compatible store) under ``s3://bucket/prefix``.

    Credentials come from boto3's standard chain and are never stored on this object, so it
    pickles safely to Ray actors; the client is created lazily in each process.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        max_attempts: int = 6,
        base_delay: float = 0.5,
        max_delay: float = 8.0,
        retry_deadline: float = 30.0,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        part_size: int = DEFAULT_PART_SIZE,
    ):
        if not bucket:
            raise StorageError("S3 URL has no bucket name")
        self.bucket = bucket
        self.prefix = "/".join(_segments(prefix, what="S3 prefix")) if prefix else ""
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.endpoint_url = endpoint_url
        self.max_attempts = max(1, max_attempts)
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.retry_deadline = retry_deadline
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self._client_obj: Any = None
        self._lock = threading.Lock()

    # -- pickling: the client holds sockets and credentials, so each process makes its own
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client_obj"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        ep = f", endpoint_url={_redact_url(self.endpoint_url)!r}" if self.endpoint_url else ""
        return f"S3Storage({self.url!r}{ep})"

    def _client(self) -> Any:
        if self._client_obj is None:
            with self._lock:
                if self._client_obj is None:
                    self._client_obj = self._make_client()
        return self._client_obj

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config

        custom = bool(
            self.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        kwargs: dict[str, Any] = dict(
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            # One retry layer (ours, in _call) keeps the total time predictable.
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=32,
        )
        if custom:
            # S3-compatible stores rarely do virtual-host buckets, and many reject the
            # CRC checksums boto3 >= 1.36 adds by default.
            kwargs["s3"] = {"addressing_style": "path"}
            kwargs["request_checksum_calculation"] = "when_required"
            kwargs["response_checksum_validation"] = "when_required"
        try:
            session = boto3.session.Session()
            return session.client("s3", endpoint_url=self.endpoint_url, config=Config(**kwargs))
        except Exception as e:  # bad profile, bad endpoint URL, ...
            raise StorageError(f"cannot set up S3 client for {self.url}: {type(e).__name__}: {e}") from None

    def _endpoint(self) -> str:
        try:
            return _redact_url(self._client().meta.endpoint_url)
        except Exception:
            return _redact_url(self.endpoint_url or "the default AWS endpoint")

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self, full_key: str) -> str:
        return f"s3://{self.bucket}/{full_key}"

    # -- retries and error translation

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with bounded exponential backoff on transient failures."""
        start = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except (StorageError, _Signal):
                raise
            except Exception as e:
                if not _is_retryable(e) or attempt >= self.max_attempts:
                    raise self._translate(e, what, attempt) from None
                delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
                delay *= random.uniform(0.5, 1.0)  # jitter: de-synchronise many workers
                if time.monotonic() - start + delay > self.retry_deadline:
                    raise self._translate(e, what, attempt) from None
                time.sleep(delay)

    def _translate(self, exc: BaseException, what: str, attempts: int = 1) -> StorageError:
        from botocore.exceptions import (
            ClientError, ConnectTimeoutError, EndpointConnectionError, HTTPClientError,
            NoCredentialsError, PartialCredentialsError, ConnectionError as BotoConnectionError,
        )

        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return StorageError(
                f"no usable S3 credentials found for {what}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or use an instance role"
            )
        if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
            return StorageError(
                f"cannot reach S3 endpoint {self._endpoint()} for {what}{tries}: {type(exc).__name__}"
            )
        if isinstance(exc, (BotoConnectionError, HTTPClientError)):
            return StorageError(
                f"connection to S3 endpoint {self._endpoint()} failed for {what}{tries}: "
                f"{type(exc).__name__}"
            )
        if isinstance(exc, ClientError):
            code, status = _error_code(exc)
            msg = str(exc.response.get("Error", {}).get("Message", "")).strip()
            if code == "NoSuchBucket":
                return StorageError(f"S3 bucket '{self.bucket}' does not exist ({what})")
            if code in _NOT_FOUND_CODES:
                return StorageNotFound(f"{what} does not exist")
            if code in _CREDENTIAL_CODES:
                return StorageError(f"S3 credentials were rejected for {what}: {code}")
            if code in ("AccessDenied", "403") or status == 403:
                return StorageError(
                    f"S3 access denied for {what} ({code}): check the credentials and their "
                    "permissions"
                )
            detail = f"{code}: {msg}" if msg and msg != code else code or f"HTTP {status}"
            return StorageError(f"S3 request for {what} failed{tries}: {detail}")
        return StorageError(f"S3 request for {what} failed{tries}: {type(exc).__name__}: {exc}")

    # -- raw operations on full keys (read_uri/fetch_to_local use these with arbitrary keys)

    def _get_full(self, full_key: str) -> bytes:
        def op() -> bytes:
            resp = self._client().get_object(Bucket=self.bucket, Key=full_key)
            return resp["Body"].read()  # inside op: a truncated body is retried too

        return self._call(self._where(full_key), op)

    def _head_full(self, full_key: str) -> dict[str, Any] | None:
        def op() -> dict[str, Any] | None:
            try:
                return self._client().head_object(Bucket=self.bucket, Key=full_key)
            except Exception as e:
                code, status = _error_code(e)
                if status == 404 and code != "NoSuchBucket":
                    return None
                raise

        return self._call(self._where(full_key), op)

    def _put_full(self, full_key: str, data: bytes, if_none_match: bool) -> bool:
        where = self._where(full_key)
        if len(data) > self.multipart_threshold:
            return self._put_multipart(full_key, data, if_none_match)
        extra = {"IfNoneMatch": "*"} if if_none_match else {}

        def op() -> bool:
            try:
                self._client().put_object(Bucket=self.bucket, Key=full_key, Body=data, **extra)
                return True
            except Exception as e:
                if if_none_match and _error_code(e)[1] == 412:
                    return False  # PreconditionFailed: someone (maybe an earlier try) won
                raise  # 409 ConditionalRequestConflict is retried by _call

        return self._call(where, op)

    def _put_multipart(self, full_key: str, data: bytes, if_none_match: bool) -> bool:
        where = self._where(full_key)
        c = self._client()
        if if_none_match and self._head_full(full_key) is not None:
            return False  # cheap early exit; the conditional completion still settles races
        # 409 on completion means a racing write: S3 says start over with a new upload.
        for _ in range(self.max_attempts):
            upload_id = self._call(
                where, lambda: c.create_multipart_upload(Bucket=self.bucket, Key=full_key)
            )["UploadId"]
            try:
                parts = []
                for n, off in enumerate(range(0, len(data), self.part_size), start=1):
                    chunk = data[off : off + self.part_size]
                    resp = self._call(
                        f"{where} (part {n})",
                        lambda: c.upload_part(
                            Bucket=self.bucket, Key=full_key, UploadId=upload_id,
                            PartNumber=n, Body=chunk,
                        ),
                    )
                    parts.append({"PartNumber": n, "ETag": resp["ETag"]})
                extra = {"IfNoneMatch": "*"} if if_none_match else {}
                try:
                    self._complete(full_key, upload_id, parts, extra, len(data))
                    return True
                except _Precondition:
                    self._abort(full_key, upload_id)
                    return False
                except _Conflict:
                    self._abort(full_key, upload_id)
                    continue
            except BaseException:
                self._abort(full_key, upload_id)
                raise
        raise StorageError(f"S3 multipart upload to {where} kept conflicting with other writers")

    def _complete(
        self, full_key: str, upload_id: str, parts: list[dict[str, Any]],
        extra: dict[str, str], size: int,
    ) -> None:
        c = self._client()
        attempts = 0

        def op() -> None:
            nonlocal attempts
            attempts += 1
            try:
                c.complete_multipart_upload(
                    Bucket=self.bucket, Key=full_key, UploadId=upload_id,
                    MultipartUpload={"Parts": parts}, **extra,
                )
            except Exception as e:
                code, status = _error_code(e)
                if status == 412:
                    raise _Precondition() from None
                if status == 409 or code == "ConditionalRequestConflict":
                    raise _Conflict() from None
                # A retried completion whose first try landed finds the upload gone.
                if code == "NoSuchUpload" and attempts > 1 and not extra:
                    head = c.head_object(Bucket=self.bucket, Key=full_key)
                    if head.get("ContentLength") == size:
                        return
                raise

        self._call(self._where(full_key), op)

    def _abort(self, full_key: str, upload_id: str) -> None:
        try:  # best effort: incomplete uploads are invisible, just billed
            self._client().abort_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id)
        except Exception:
            pass

    # -- Storage interface

    def put(self, key: str, data: bytes) -> None:
        self._put_full(self._full(_check_key(key)), bytes(data), if_none_match=False)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._put_full(self._full(_check_key(key)), bytes(data), if_none_match=True)

    def get(self, key: str) -> bytes:
        return self._get_full(self._full(_check_key(key)))

    def exists(self, key: str) -> bool:
        return self._head_full(self._full(_check_key(key))) is not None

    def list(self, prefix: str = "") -> list[str]:
        prefix = _check_prefix(prefix)
        full = self._full(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full}
            if token:
                kwargs["ContinuationToken"] = token
            resp = self._call(f"s3://{self.bucket}/{full}", lambda: self._client().list_objects_v2(**kwargs))
            keys.extend(obj["Key"][strip:] for obj in resp.get("Contents", []))
            if not resp.get("IsTruncated"):
                break
            token = resp.get("NextContinuationToken")
            if not token:
                break
        return sorted(k for k in keys if k)

    def delete(self, key: str) -> None:
        full = self._full(_check_key(key))
        self._call(self._where(full), lambda: self._client().delete_object(Bucket=self.bucket, Key=full))

    def check(self) -> None:
        c = self._client()
        root = f"{self.prefix}/" if self.prefix else ""
        # ListObjectsV2 first: unlike HEAD it returns error codes (NoSuchBucket,
        # InvalidAccessKeyId, ...), and it must run before any PUT because some stores
        # (SeaweedFS) silently create a missing bucket on PUT.
        self._call(self.url, lambda: c.list_objects_v2(Bucket=self.bucket, Prefix=root, MaxKeys=1))
        probe = f"{root}{TMP_PREFIX}check-{uuid.uuid4().hex[:12]}"
        self._call(self.url, lambda: c.put_object(Bucket=self.bucket, Key=probe, Body=b"ok"))
        self._call(self.url, lambda: c.delete_object(Bucket=self.bucket, Key=probe))


class _Signal(Exception):
    """Internal control flow that _call must pass through untranslated."""


class _Precondition(_Signal):
    """Internal: a conditional multipart completion found the key already present."""


class _Conflict(_Signal):
    """Internal: a conditional multipart completion raced another write (409)."""


# --------------------------------------------------------------------------- entry points


def _parse_s3(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    if not parts.netloc:
        raise StorageError(f"invalid S3 URL {uri!r}: expected s3://bucket/prefix")
    return parts.netloc, parts.path.lstrip("/")


def _local_path(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


def open_storage(url: str, *, endpoint_url: str | None = None, **options: Any) -> Storage:
    """Open the storage root ``url`` (local path, file:// URL or s3://bucket/prefix).

    ``options`` go to S3Storage (retry settings, multipart sizes) and are ignored locally.
    """
    url = os.fspath(url)
    if url.startswith("s3://"):
        bucket, prefix = _parse_s3(url)
        return S3Storage(bucket, prefix.rstrip("/"), endpoint_url=endpoint_url, **options)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url) and not url.startswith("file://"):
        raise StorageError(f"unsupported storage URL {url!r}: use a local path or s3://bucket/prefix")
    if not url:
        raise StorageError("empty storage URL")
    return LocalStorage(_local_path(url))


def read_uri(uri: str, *, endpoint_url: str | None = None) -> bytes:
    """Read one object or file by full URI (local path or s3://bucket/key)."""
    uri = os.fspath(uri)
    if uri.startswith("s3://"):
        bucket, key = _parse_s3(uri)
        if not key or key.endswith("/"):
            raise StorageError(f"invalid S3 object URL {uri!r}: no object key")
        return S3Storage(bucket, endpoint_url=endpoint_url)._get_full(key)
    path = Path(os.path.expanduser(_local_path(uri)))
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise StorageNotFound(f"{path} does not exist") from None
    except OSError as e:
        raise StorageError(f"cannot read {path}: {e.strerror or e}") from None


def _cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    """Where downloaded objects are kept: `cache_dir`, else ~/.cache/linegen/objects."""
    return Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "linegen" / "objects"


def fetch_to_local(
    uri: str, *, endpoint_url: str | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Return a local path for ``uri``, downloading s3:// objects into a cache once.

    A cached copy is reused while the object's size and ETag are unchanged.
    """
    uri = os.fspath(uri)
    if not uri.startswith("s3://"):
        path = Path(os.path.expanduser(_local_path(uri)))
        if not path.exists():
            raise StorageNotFound(f"{path} does not exist")
        return path

    bucket, key = _parse_s3(uri)
    name = key.rsplit("/", 1)[-1]
    if not key or not name:
        raise StorageError(f"invalid S3 object URL {uri!r}: no object key")
    s3 = S3Storage(bucket, endpoint_url=endpoint_url)
    head = s3._head_full(key)
    if head is None:
        raise StorageNotFound(f"{uri} does not exist")
    size, etag = int(head.get("ContentLength", -1)), str(head.get("ETag", ""))

    root = _cache_root(cache_dir)
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
        s3._call(uri, lambda: s3._client().download_file(bucket, key, str(tmp)))
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
        path = Path(os.path.expanduser(_local_path(uri)))
        if not path.is_dir():
            raise StorageNotFound(f"{path} is not a folder")
        return path
    base = uri.rstrip("/")
    keys = [k for k in open_storage(base, endpoint_url=endpoint_url).list()
            if not any(part.startswith(TMP_PREFIX) for part in k.split("/"))]
    if not keys:
        raise StorageNotFound(f"{uri} holds no objects")
    root = _cache_root(cache_dir)
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
