"""Shared pytest fixtures. Keep this file to fixture definitions; logic lives in helper modules."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

# Every job the tests start polls and reports faster than a real one (jobs/intervals.py): progress
# shows in half a second, a job waiting --after another notices its end in a quarter of one. Set
# before anything imports linegen.jobs; subprocesses and the Ray heads inherit it.
os.environ["LINEGEN_INTERVALS"] = "live_every_s=0.5,report_every_s=0.5,after_poll_s=0.25,nodes_every_s=1"
# One compute thread per process (this one, every subprocess, every Ray worker; set before torch
# is imported). The tests' models are tiny, so a second thread buys nothing, while two workers'
# processes with two spinning OpenMP threads each on two cores burned about half the CPU of a
# compute test (tests/test_cache.py alone: 27 CPU-s with two threads, 15 with one, same wall).
os.environ["OMP_NUM_THREADS"] = "1"

# The files that run longest, longest first. Two xdist workers take files in collection order
# (`--no-loadscope-reorder` in pyproject.toml): the multi-minute node-loss scenario starts at once
# and the short files fill the other worker around it, instead of it starting last and running
# alone at the end (measured: benchmarks/RESULTS.md, the suite's section).
LONGEST_FIRST = ("test_elastic.py", "test_remote.py", "test_jobs.py", "test_concurrent_jobs.py",
                 "test_lifetime.py", "test_footguns.py", "test_webdataset.py", "test_storage.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


try:
    from s3server import S3Server
except ModuleNotFoundError:  # tests/ imported as a package
    from tests.s3server import S3Server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real SeaweedFS S3 server on loopback, shared by the whole session."""
    server = S3Server()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """Point boto3's standard credential chain (and endpoint) at the test server."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def tmp_bucket(s3_server: S3Server) -> str:
    """A fresh, uniquely named bucket."""
    s3_server.start()  # no-op unless an earlier test left the server stopped
    return s3_server.make_bucket(f"t-{uuid.uuid4().hex[:16]}")


# Real Ray heads (`ray start --head` on free loopback ports), one of each kind per session, and a
# module's shared embedded Ray; see tests/ray_fixtures.py.
try:
    from ray_fixtures import embedded_ray, ray_head, ray_head_token  # noqa: E402,F401
except ModuleNotFoundError:  # tests/ imported as a package
    from tests.ray_fixtures import embedded_ray, ray_head, ray_head_token  # noqa: E402,F401


@pytest.fixture(scope="module")
def hf_datasets(tmp_path_factory: pytest.TempPathFactory):
    """The real `datasets` (a test dependency), offline, with its caches in a temp folder (read at
    import time)."""
    home = tmp_path_factory.mktemp("hf-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HOME", str(home))
        mp.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
        import datasets

        yield datasets, home
