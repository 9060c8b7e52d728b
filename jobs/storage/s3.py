"""S3 (or an S3-compatible store) as a storage root, through boto3 (imported lazily).

Conditional puts (``If-None-Match: *``) give exactly-once commits. Transient failures (throttling,
5xx, dropped connections, timeouts) are retried by botocore's own standard retry mode, with its
exponential backoff and jitter; linegen's own code only retries what is particular to
conditional writes (a 409 ConditionalRequestConflict means "try the conditional put again").
Every failure becomes a one-line StorageError that never shows credentials.
"""
from __future__ import annotations

import os
import random
import threading
import time
import uuid
from typing import Any, Callable, TypeVar

from linegen.cluster.address import is_redacted, redact_text, redact_url
from linegen.jobs.storage.base import Storage, StorageError, StorageExists, StorageNotFound, StorageUnreachable
from linegen.jobs.storage.keys import TMP_PREFIX, check_key, check_prefix, segments

T = TypeVar("T")

DEFAULT_MULTIPART_THRESHOLD = 64 * 1024 * 1024
DEFAULT_PART_SIZE = 16 * 1024 * 1024

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


def _retried(exc: BaseException) -> int:
    """How many times botocore retried the request that ended in ``exc`` (0 if unknown)."""
    meta = (getattr(exc, "response", None) or {}).get("ResponseMetadata", {})
    return int(meta.get("RetryAttempts", 0) or 0)


def _is_conflict(exc: BaseException) -> bool:
    code, status = _error_code(exc)
    return status == 409 or code == "ConditionalRequestConflict"


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
        max_attempts: int = 6,  # per request, botocore's total_max_attempts (backoff up to 20 s each)
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        part_size: int = DEFAULT_PART_SIZE,
    ):
        if not bucket:
            raise StorageError("S3 URL has no bucket name")
        self.bucket = bucket
        self.prefix = "/".join(segments(prefix, what="S3 prefix")) if prefix else ""
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.endpoint_url = endpoint_url
        self.max_attempts = max(1, max_attempts)
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
        ep = f", endpoint_url={redact_url(self.endpoint_url)!r}" if self.endpoint_url else ""
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

        if is_redacted(self.endpoint_url):
            raise StorageError(f"the S3 endpoint {self.endpoint_url} was recorded without its credentials; "
                               "give it again with --s3-endpoint-url or LINEGEN_S3_ENDPOINT_URL")

        custom = bool(
            self.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        kwargs: dict[str, Any] = dict(
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            retries={"total_max_attempts": self.max_attempts, "mode": "standard"},
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
            raise StorageError(f"cannot set up S3 client for {self.url}: {type(e).__name__}: {redact_text(e)}") from None

    def _endpoint(self) -> str:
        try:
            return redact_url(self._client().meta.endpoint_url)
        except Exception:
            return redact_url(self.endpoint_url or "the default AWS endpoint")

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self, full_key: str) -> str:
        return f"s3://{self.bucket}/{full_key}"

    # -- error translation (botocore has retried whatever was transient by now)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (StorageError, _Signal):
            raise
        except Exception as e:
            raise self._translate(e, what) from None

    def _attempts(self, exc: BaseException) -> int:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError

        if isinstance(exc, (BotoConnectionError, HTTPClientError)):
            return self.max_attempts  # transient by botocore's rules: every attempt was used
        return _retried(exc) + 1

    def _translate(self, exc: BaseException, what: str) -> StorageError:
        from botocore.exceptions import ClientError
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import (ConnectTimeoutError, EndpointConnectionError, HTTPClientError,
                                         NoCredentialsError, PartialCredentialsError)

        attempts = self._attempts(exc)
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return StorageError(
                f"no usable S3 credentials found for {what}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or use an instance role"
            )
        if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
            return StorageUnreachable(
                f"cannot reach S3 endpoint {self._endpoint()} for {what}{tries}: {type(exc).__name__}"
            )
        if isinstance(exc, (BotoConnectionError, HTTPClientError)):
            return StorageUnreachable(
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
            if isinstance(status, int) and status >= 500:  # the store is there but cannot serve now
                return StorageUnreachable(f"S3 request for {what} failed{tries}: {detail}")
            return StorageError(f"S3 request for {what} failed{tries}: {detail}")
        return StorageError(f"S3 request for {what} failed{tries}: {type(exc).__name__}: {redact_text(exc)}")

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
            for attempt in range(1, self.max_attempts + 1):
                try:
                    self._client().put_object(Bucket=self.bucket, Key=full_key, Body=data, **extra)
                    return True
                except Exception as e:
                    if if_none_match and _error_code(e)[1] == 412:
                        return False  # PreconditionFailed: someone (maybe an earlier try) won
                    if not (if_none_match and _is_conflict(e)) or attempt == self.max_attempts:
                        raise
                    # 409: a concurrent conditional write on this key was in progress; S3 asks to retry
                    time.sleep(min(1.0, 0.05 * 2 ** attempt) * random.uniform(0.5, 1.0))
            raise AssertionError("unreachable")

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

        def op() -> None:
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
                # A completion botocore retried after its first try landed finds the upload gone.
                if code == "NoSuchUpload" and _retried(e) > 0 and not extra:
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
        self._put_full(self._full(check_key(key)), bytes(data), if_none_match=False)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._put_full(self._full(check_key(key)), bytes(data), if_none_match=True)

    def get(self, key: str) -> bytes:
        return self._get_full(self._full(check_key(key)))

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def head(self, key: str) -> dict[str, Any] | None:
        """The object's metadata (``ContentLength``, ``ETag``, ...), or None if it does not exist."""
        return self._head_full(self._full(check_key(key)))

    def download(self, key: str, path: str | os.PathLike[str]) -> None:
        """Copy an object to a local file with ranged, parallel GETs (big checkpoints)."""
        full = self._full(check_key(key))
        self._call(self._where(full), lambda: self._client().download_file(self.bucket, full, os.fspath(path)))

    def list(self, prefix: str = "") -> list[str]:
        prefix = check_prefix(prefix)
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
        full = self._full(check_key(key))
        self._call(self._where(full), lambda: self._client().delete_object(Bucket=self.bucket, Key=full))

    def move(self, src: str, dst: str, *, overwrite: bool = True) -> None:
        """A server-side copy (no bytes through this process; CopyObject replaces ``dst`` at once),
        then the delete of ``src``. ``overwrite=False`` looks for ``dst`` first (S3 has no
        conditional copy everywhere; publishing is the only caller, and one attempt publishes)."""
        source, target = self._full(check_key(src)), self._full(check_key(dst))
        if not overwrite and self._head_full(target) is not None:
            raise StorageExists(f"{self._where(target)} already exists")
        self._call(self._where(source), lambda: self._client().copy_object(
            Bucket=self.bucket, Key=target, CopySource={"Bucket": self.bucket, "Key": source}))
        self._call(self._where(source), lambda: self._client().delete_object(Bucket=self.bucket, Key=source))

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
