"""Pytest fixtures for a real Ray head (see ray_head.py) and for an in-process embedded Ray.
Register in conftest.py with::

    from ray_fixtures import embedded_ray, ray_head, ray_head_token  # noqa: F401

Both are session-scoped: one head of each kind for the whole run, shared by every module that
uses it (a head costs seconds to start on a loaded machine). Tests that kill nodes build their
own cluster (tests/test_elastic.py). Tests on a shared head use unique job ids and never assume
the head is empty.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

try:
    from ray_head import TestHead
except ModuleNotFoundError:  # tests/ imported as a package
    from tests.ray_head import TestHead


@pytest.fixture(scope="session")
def ray_head() -> Iterator[TestHead]:
    """A Ray head with dashboard and Jobs API, token auth disabled."""
    head = TestHead.start(auth=False)
    try:
        yield head
    finally:
        head.stop()


@pytest.fixture(scope="session")
def ray_head_token() -> Iterator[TestHead]:
    """A Ray head with ``RAY_AUTH_MODE=token``; ``.token`` is its token."""
    head = TestHead.start(auth=True)
    try:
        yield head
    finally:
        head.stop()


@pytest.fixture(scope="module")
def embedded_ray() -> Iterator[object]:
    """One embedded local Ray in this process, shared by a module's API tests: `linegen.run`,
    `Generator` and `LocalCluster` reuse a Ray that is already initialised instead of starting
    their own (seconds each on a loaded machine). Module-scoped, so Ray is gone before the next
    module, and the environment ``ray.init`` changes (RAY_ADDRESS, RAY_AUTH_MODE) is restored."""
    with local_ray() as cluster:
        yield cluster


@contextmanager
def local_ray() -> Iterator[object]:
    """A private in-process Ray on this machine; afterwards the environment ``ray.init`` changes
    (RAY_ADDRESS, RAY_AUTH_MODE, ...) is as it was."""
    from linegen.cluster.local import LocalCluster

    saved = dict(os.environ)
    cluster = LocalCluster(num_cpus=2, auth_mode="disabled", log_to_driver=False).start()
    try:
        yield cluster
    finally:
        cluster.stop()
        os.environ.clear()
        os.environ.update(saved)
