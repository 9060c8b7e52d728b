"""Pytest fixtures for a real Ray head (see ray_head.py). Register in conftest.py with::

    from ray_fixtures import ray_head, ray_head_token  # noqa: F401

Both are module-scoped: one head per test module that uses it, stopped after the module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

try:
    from ray_head import TestHead
except ModuleNotFoundError:  # tests/ imported as a package
    from tests.ray_head import TestHead


@pytest.fixture(scope="module")
def ray_head() -> Iterator[TestHead]:
    """A Ray head with dashboard and Jobs API, token auth disabled."""
    head = TestHead.start(auth=False)
    try:
        yield head
    finally:
        head.stop()


@pytest.fixture(scope="module")
def ray_head_token() -> Iterator[TestHead]:
    """A Ray head with ``RAY_AUTH_MODE=token``; ``.token`` is its token."""
    head = TestHead.start(auth=True)
    try:
        yield head
    finally:
        head.stop()
