"""Issue 24, item 6: a storage outage does not spend attempts. The real weed S3 server is killed
(SIGKILL) and restarted; a commit waits for it (within --storage-outage-budget) instead of
failing, a shard whose marker was written is reported committed whatever happens to its move,
and the driver's progress says "storage unreachable since ...". Outages here last seconds. The
whole job through a killed server is tests/test_jobs.py::test_s3_server_stopped_mid_job."""
from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest


FAST = dict(max_attempts=2, connect_timeout=1, read_timeout=10)  # botocore gives up quickly: we ride it out


def kill(server) -> None:
    """SIGKILL our own weed child by PID, then let the fixture reap it (start() brings it back)."""
    os.kill(server.pid, signal.SIGKILL)
    server.stop()


def sink_on(server, bucket: str, budget_s: float, storage=None):
    from linegen.jobs.outage import Outage
    from linegen.jobs.sink import ShardSink
    from linegen.jobs.storage import open_storage

    storage = storage or open_storage(f"s3://{bucket}/p", endpoint_url=server.endpoint_url, **FAST)
    return ShardSink(storage, "job-1", "tiny", "linear", 0.25, outage=Outage(budget_s)), storage


def shard_and_arrays():
    from test_writer import make_arrays, make_shard, worker_stats_row

    images, tokens = make_arrays(5)
    return make_shard(), tokens, images, [worker_stats_row()]


def test_commit_waits_out_a_killed_s3_server(s3_env, tmp_bucket: str) -> None:
    from linegen.jobs.sink import read_commit

    sink, storage = sink_on(s3_env, tmp_bucket, budget_s=120)
    shard, tokens, images, stats = shard_and_arrays()
    kill(s3_env)
    result: dict[str, Any] = {}

    def commit() -> None:
        try:
            result["won"] = sink.commit(shard, 1, tokens, images, stats)
        except BaseException as e:  # noqa: BLE001
            result["error"] = e

    t = threading.Thread(target=commit)
    try:
        t.start()
        deadline = time.monotonic() + 30
        while sink.outage.since is None:  # the commit noticed the outage and waits
            assert "error" not in result, result  # before: StorageError at once, an attempt spent
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(2.0)
        assert t.is_alive() and "error" not in result, result
    finally:
        s3_env.start()
    t.join(90)
    assert result == {"won": True}
    assert sink.outage.since is None  # reachable again
    marker = read_commit(storage, "job-1", shard.shard_id)
    assert sorted(storage.list("job-1/")) == ["job-1/_commits/shard-00000.json", "job-1/images/shard-00000.parquet",
                                              "job-1/stats/shard-00000.parquet"]
    assert marker.images == 5


def test_a_written_marker_is_never_reported_failed(s3_env, tmp_bucket: str) -> None:
    """The server dies right after the marker lands (a real outage at the worst moment, and longer
    than the budget): the shard is committed, its files stay staged, and publish_pending moves
    them once the server is back."""
    from linegen.jobs.sink import publish_pending, read_commit
    from linegen.jobs.storage import open_storage

    real = open_storage(f"s3://{tmp_bucket}/p", endpoint_url=s3_env.endpoint_url, **FAST)

    class DiesAfterTheMarker:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def put_if_absent(self, key: str, data: bytes) -> bool:
            won = real.put_if_absent(key, data)
            if key.endswith("_commits/shard-00000.json"):
                kill(s3_env)
            return won

    sink, _ = sink_on(s3_env, tmp_bucket, budget_s=1.0, storage=DiesAfterTheMarker())
    shard, tokens, images, stats = shard_and_arrays()
    try:
        assert sink.commit(shard, 1, tokens, images, stats) is True  # before: a StorageError (a failed shard)
    finally:
        s3_env.start()
    marker = read_commit(real, "job-1", shard.shard_id)
    assert marker is not None and not real.exists(marker.files["images"].key)  # still staged
    assert publish_pending(real, "job-1") == 1
    assert real.exists(marker.files["images"].key) and real.list("job-1/_attempts/") == []


@pytest.mark.parametrize("text, seconds", [("90s", 90.0), ("15m", 900.0), (None, 900.0)])
def test_budget_flag(text, seconds) -> None:
    from linegen.jobs.outage import budget_seconds

    assert budget_seconds(text) == seconds
