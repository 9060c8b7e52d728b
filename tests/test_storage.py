"""jobs.storage against a local folder and a real S3 server (SeaweedFS weed mini)."""

from __future__ import annotations

import os
import pickle
import threading
import time
from pathlib import Path

import pytest

from linegen.cluster.local import free_port
from linegen.jobs.storage import (
    LocalStorage,
    S3Storage,
    StorageError,
    StorageNotFound,
    fetch_to_local,
    join_key,
    open_storage,
    read_uri,
    safe_component,
)

# Few attempts keep failure tests fast (botocore's backoff: up to 1 s, then 2 s); real jobs use 6.
FAST = dict(max_attempts=3, connect_timeout=1, read_timeout=10)
MiB = 1024 * 1024


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "local":
        return open_storage(str(tmp_path / "out"))
    server = request.getfixturevalue("s3_env")
    bucket = request.getfixturevalue("tmp_bucket")
    return open_storage(f"s3://{bucket}/jobs/root", endpoint_url=server.endpoint_url, **FAST)


# --------------------------------------------------------------------------- both backends


def test_put_get_exists_list_delete(storage):
    storage.check()
    assert storage.list("") == []
    storage.put("job/images/shard-00001.parquet", b"one")
    storage.put("job/images/shard-00000.parquet", b"zero")
    storage.put("job/_commits/shard-00000.json", b"{}")
    storage.put("job/job.json", b"spec")
    storage.put("job/job.json", b"spec v2")  # overwrite

    assert storage.get("job/job.json") == b"spec v2"
    assert storage.exists("job/images/shard-00000.parquet")
    assert not storage.exists("job/images/shard-00002.parquet")
    assert storage.list("job/images/") == [
        "job/images/shard-00000.parquet",
        "job/images/shard-00001.parquet",
    ]
    assert storage.list("job/images/shard-0000") == storage.list("job/images")
    assert storage.list("") == sorted(storage.list("job/"))
    assert len(storage.list("")) == 4
    assert storage.list("nothing/here/") == []

    storage.delete("job/images/shard-00001.parquet")
    storage.delete("job/images/shard-00001.parquet")  # idempotent
    assert storage.list("job/images/") == ["job/images/shard-00000.parquet"]
    with pytest.raises(StorageNotFound):
        storage.get("job/images/shard-00001.parquet")


def test_put_if_absent_writes_once(storage):
    assert storage.put_if_absent("job/_commits/shard-00000.json", b"first") is True
    assert storage.put_if_absent("job/_commits/shard-00000.json", b"second") is False
    assert storage.get("job/_commits/shard-00000.json") == b"first"


def test_put_if_absent_concurrent_has_one_winner(storage):
    # SeaweedFS makes racing conditional writers to one key wait in ~1 s steps, so keep n small.
    n = 5
    barrier = threading.Barrier(n)
    results: dict[int, bool] = {}

    def write(i: int) -> None:
        barrier.wait()
        results[i] = storage.put_if_absent("job/_commits/race.json", f"writer {i}".encode())

    threads = [threading.Thread(target=write, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [i for i, won in results.items() if won]
    assert len(results) == n and len(winners) == 1
    assert storage.get("job/_commits/race.json") == f"writer {winners[0]}".encode()


def test_keys_cannot_escape_root(storage):
    for bad in ["../x", "/etc/passwd", "a/../../b", "", "a\\b"]:
        with pytest.raises(StorageError):
            storage.put(bad, b"x")
    with pytest.raises(StorageError):
        storage.list("../")


def test_storage_pickles_and_works_after(storage):
    storage.put("a.txt", b"before")  # creates the S3 client, which must not be pickled
    blob = pickle.dumps(storage)
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if isinstance(storage, S3Storage) and secret:
        assert secret.encode() not in blob and secret not in repr(storage)
    clone = pickle.loads(blob)
    assert clone.url == storage.url
    assert clone.get("a.txt") == b"before"
    clone.put("b.txt", b"after")
    assert storage.get("b.txt") == b"after"


# --------------------------------------------------------------------------- local specifics


def test_local_writes_leave_no_partial_files(tmp_path: Path):
    store = open_storage(str(tmp_path / "out"))
    assert isinstance(store, LocalStorage)
    store.put("x/a.bin", b"a" * 1000)
    store.put_if_absent("x/b.bin", b"b")
    store.put_if_absent("x/b.bin", b"c")
    (tmp_path / "out" / "x" / ".tmp-crashed-writer").write_bytes(b"partial")
    assert store.list("") == ["x/a.bin", "x/b.bin"]
    leftovers = [p.name for p in (tmp_path / "out" / "x").iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == [".tmp-crashed-writer"]


def test_local_check_reports_unusable_folder(tmp_path: Path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageError, match="not a folder"):
        open_storage(str(tmp_path / "file")).check()
    open_storage(f"file://{tmp_path}/new/deep").check()
    assert (tmp_path / "new" / "deep").is_dir()


def test_open_storage_urls():
    s3 = open_storage("s3://bucket/some/prefix/")
    assert isinstance(s3, S3Storage)
    assert (s3.bucket, s3.prefix, s3.url) == ("bucket", "some/prefix", "s3://bucket/some/prefix")
    assert open_storage("s3://bucket").url == "s3://bucket"
    for bad in ["gs://bucket/x", "s3://", "s3:///x", "s3://b/../x"]:
        with pytest.raises(StorageError):
            open_storage(bad)


# --------------------------------------------------------------------------- ids and keys


def test_safe_component():
    for ok in ["cat-001", "img_42.png", "A.b-c"]:
        assert safe_component(ok) == ok
    for bad in ["../../x", "/etc/passwd", "..", ".", "", ".hidden", "a/b", "a\\b", "x\x00y\n",
                "x" * 500]:
        out = safe_component(bad)
        assert out and "/" not in out and "\\" not in out and ".." not in out
        assert not out.startswith(".") and out.isprintable() and len(out) <= 100
        assert join_key("root", out) == f"root/{out}"
    assert safe_component("my id 7").startswith("my_id_7")
    # distinct ids stay distinct after sanitising
    assert safe_component("a/b") != safe_component("a_b")
    assert safe_component("a/b") == safe_component("a/b")


def test_join_key():
    assert join_key("job", "images", "shard-00000.parquet") == "job/images/shard-00000.parquet"
    assert join_key("job/", "images/x") == "job/images/x"
    for bad in [("../../x",), ("/etc/passwd",), ("..",), ("",), ("a", "..", "b"), ("C:\\x",)]:
        with pytest.raises(StorageError):
            join_key(*bad)


# --------------------------------------------------------------------------- S3 specifics


def test_multipart_roundtrip(s3_env, tmp_bucket):
    store = open_storage(f"s3://{tmp_bucket}/big", endpoint_url=s3_env.endpoint_url,
                         multipart_threshold=5 * MiB, part_size=5 * MiB, **FAST)
    data = os.urandom(12 * MiB + 123)
    store.put("blob.bin", data)
    assert store.get("blob.bin") == data
    etag = s3_env.client().head_object(Bucket=tmp_bucket, Key="big/blob.bin")["ETag"]
    assert etag.strip('"').endswith("-3")  # really went through a 3-part upload

    assert store.put_if_absent("once.bin", data) is True
    assert store.put_if_absent("once.bin", data[::-1]) is False
    assert store.get("once.bin") == data

    # A racing writer that passed the existence check loses at the conditional completion.
    store._head_full = lambda key: None
    assert store.put_if_absent("once.bin", data[::-1]) is False
    assert store.get("once.bin") == data
    uploads = s3_env.client().list_multipart_uploads(Bucket=tmp_bucket).get("Uploads", [])
    assert uploads == []  # the losing upload was aborted


def test_endpoint_from_environment(s3_env, tmp_bucket):
    # No endpoint_url: boto3 itself picks up AWS_ENDPOINT_URL_S3.
    store = open_storage(f"s3://{tmp_bucket}/p", **FAST)
    store.check()
    store.put("k", b"v")
    assert s3_env.client().get_object(Bucket=tmp_bucket, Key="p/k")["Body"].read() == b"v"


@pytest.mark.parametrize("which", ["key", "secret"])
def test_wrong_credentials(s3_env, tmp_bucket, monkeypatch, which):
    secret = "wrong-secret-value-123456"
    if which == "key":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKNOSUCHKEY")
    else:
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    store = open_storage(f"s3://{tmp_bucket}/p", endpoint_url=s3_env.endpoint_url, max_attempts=5)
    t0 = time.monotonic()
    with pytest.raises(StorageError) as err:
        store.check()
    msg = str(err.value)
    assert "credentials" in msg and f"s3://{tmp_bucket}/p" in msg
    assert ("InvalidAccessKeyId" if which == "key" else "SignatureDoesNotMatch") in msg
    assert time.monotonic() - t0 < 1.0  # 4xx is not retried
    assert secret not in msg and s3_env.secret_key not in msg
    with pytest.raises(StorageError, match="credentials"):
        store.put("k", b"v")


def test_no_credentials(s3_env, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no slow instance-role probe
    with pytest.raises(StorageError, match="no usable S3 credentials"):
        open_storage("s3://somebucket/p", **FAST).check()


def test_missing_bucket(s3_env):
    store = open_storage("s3://no-such-bucket-xyz/p", endpoint_url=s3_env.endpoint_url, **FAST)
    with pytest.raises(StorageError, match="S3 bucket 'no-such-bucket-xyz' does not exist"):
        store.check()
    # check() must not create it (SeaweedFS auto-creates buckets on PUT)
    names = [b["Name"] for b in s3_env.client().list_buckets()["Buckets"]]
    assert "no-such-bucket-xyz" not in names


def test_unreachable_endpoint(s3_env):
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = open_storage("s3://bucket/p", endpoint_url=endpoint, **FAST)
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=f"cannot reach S3 endpoint {endpoint}.*3 attempts"):
        store.check()
    assert time.monotonic() - t0 < 5


def test_server_down_then_back(s3_env, tmp_bucket):
    url = f"s3://{tmp_bucket}/p"
    patient = open_storage(url, endpoint_url=s3_env.endpoint_url, max_attempts=40, connect_timeout=1)
    patient.put("before", b"1")
    s3_env.stop()
    try:
        # Down for good: bounded retries, then a clear error.
        quick = open_storage(url, endpoint_url=s3_env.endpoint_url, **FAST)
        t0 = time.monotonic()
        with pytest.raises(StorageError, match="cannot reach S3 endpoint"):
            quick.put("lost", b"x")
        assert time.monotonic() - t0 < 5

        # Down for a moment: the put keeps retrying and lands once the server is back.
        errors: list[BaseException] = []

        def put() -> None:
            try:
                patient.put("during", b"2")
            except BaseException as e:
                errors.append(e)

        writer = threading.Thread(target=put)
        writer.start()
        time.sleep(1.0)
        assert writer.is_alive()  # still retrying
        s3_env.start()
        writer.join(60)
        assert not writer.is_alive() and errors == []
        assert patient.get("during") == b"2" and patient.get("before") == b"1"
    finally:
        s3_env.start()


def test_read_uri_and_fetch_to_local(s3_env, tmp_bucket, tmp_path):
    c = s3_env.client()
    c.put_object(Bucket=tmp_bucket, Key="models/ckpt.pt", Body=b"weights-v1")
    uri = f"s3://{tmp_bucket}/models/ckpt.pt"
    ep = s3_env.endpoint_url
    assert read_uri(uri, endpoint_url=ep) == b"weights-v1"
    with pytest.raises(StorageNotFound, match="missing.pt"):
        read_uri(f"s3://{tmp_bucket}/models/missing.pt", endpoint_url=ep)

    cache = tmp_path / "cache"
    first = fetch_to_local(uri, endpoint_url=ep, cache_dir=cache)
    assert first.name == "ckpt.pt" and first.read_bytes() == b"weights-v1"
    stamp = first.stat().st_ino, first.stat().st_mtime_ns
    again = fetch_to_local(uri, endpoint_url=ep, cache_dir=cache)
    assert again == first and (again.stat().st_ino, again.stat().st_mtime_ns) == stamp

    c.put_object(Bucket=tmp_bucket, Key="models/ckpt.pt", Body=b"weights-v2!")  # changed upstream
    assert fetch_to_local(uri, endpoint_url=ep, cache_dir=cache).read_bytes() == b"weights-v2!"
    assert not [p for p in cache.rglob(".tmp-*")]
    with pytest.raises(StorageNotFound):
        fetch_to_local(f"s3://{tmp_bucket}/models/missing.pt", endpoint_url=ep, cache_dir=cache)

    local = tmp_path / "local.bin"
    local.write_bytes(b"here")
    assert fetch_to_local(str(local)) == local and read_uri(str(local)) == b"here"
    with pytest.raises(StorageNotFound):
        fetch_to_local(str(tmp_path / "absent"))
    with pytest.raises(StorageNotFound):
        read_uri(str(tmp_path / "absent"))


# --------------------------------------------------------------------------- retry policy (stubbed)


def _stubbed(**options):
    # The one place a real server cannot help: SeaweedFS never answers 409
    # ConditionalRequestConflict (AWS S3 does), so that retry path is driven by botocore's Stubber.
    import boto3
    from botocore.stub import Stubber

    store = S3Storage("bucket", "p", **{**FAST, **options})
    client = boto3.session.Session().client(
        "s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    store._client_obj = client
    return store, Stubber(client)


def test_conditional_conflict_409_is_retried():
    # SeaweedFS never answers 409 in practice, so the S3 semantics are checked with a stub.
    store, stub = _stubbed()
    stub.add_client_error("put_object", "ConditionalRequestConflict", http_status_code=409)
    stub.add_response("put_object", {"ETag": '"abc"'})
    with stub:
        assert store.put_if_absent("k", b"v") is True
    stub.assert_no_pending_responses()


class _Throttling:
    """A real HTTP endpoint answering PUTs as S3 would under load: ``answers`` is a list of
    (status, S3 error code) given in turn, then 200. Counts the requests it saw."""

    def __init__(self, answers: list[tuple[int, str]]):
        import http.server

        self.answers, self.requests = list(answers), 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_PUT(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests += 1
                status, code = outer.answers.pop(0) if outer.answers else (200, "")
                body = b"" if status == 200 else (f"<Error><Code>{code}</Code><Message>{code}</Message>"
                                                  "</Error>").encode()
                self.send_response(status)
                self.send_header("ETag", '"abc"')
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def throttling(monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "AKTEST", "AWS_SECRET_ACCESS_KEY": "secret",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    servers = []

    def make(answers):
        servers.append(_Throttling(answers))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def test_throttling_is_retried_by_botocore_but_access_denied_is_not(throttling):
    """Transient errors are retried by botocore's standard retry mode (issue 15, C12), over real HTTP."""
    server = throttling([(503, "SlowDown"), (500, "InternalError")])
    store = S3Storage("bucket", "p", endpoint_url=server.url, **FAST)
    store.put("k", b"v")
    assert server.requests == 3
    # the retrying is botocore's own: the bare client rides out the throttling by itself
    server = throttling([(503, "SlowDown")])
    raw = S3Storage("bucket", "p", endpoint_url=server.url, **FAST)._client()
    assert raw.put_object(Bucket="bucket", Key="p/k", Body=b"v")["ResponseMetadata"]["RetryAttempts"] == 1
    assert server.requests == 2

    server = throttling([(403, "AccessDenied")])
    store = S3Storage("bucket", "p", endpoint_url=server.url, **FAST)
    with pytest.raises(StorageError, match="access denied"):
        store.put("k", b"v")
    assert server.requests == 1

    server = throttling([(503, "SlowDown")] * 3)
    store = S3Storage("bucket", "p", endpoint_url=server.url, **FAST)
    with pytest.raises(StorageError, match="after 3 attempts.*SlowDown"):
        store.put("k", b"v")
    assert server.requests == 3
