"""Riding out a storage outage: wait and retry with backoff, within a time budget.

An unreachable store (S3 restarting, a network partition) says nothing about the shard being
written, so spending one of its ``--max-attempts`` on it would fail a whole job over a blip that
outlasts botocore's own few retries. `Outage.ride` retries one idempotent storage step while it
raises `StorageUnreachable`, backing off from `FIRST_WAIT_S` to `MAX_WAIT_S`, until the store
answers or the outage has lasted ``budget_s`` (``--storage-outage-budget``, default 15 minutes);
then the last error goes to the caller (and that attempt fails, as before). Any other error is
raised at once. ``since`` says since when the store has been unreachable, for progress and status.
"""
from __future__ import annotations

import random
import sys
import time
from typing import Callable, TypeVar

from linegen.errors import UserError
from linegen.jobs.schedule import parse_duration
from linegen.jobs.storage.base import StorageUnreachable

DEFAULT_BUDGET_S = 15 * 60.0
FIRST_WAIT_S = 0.5
MAX_WAIT_S = 15.0
T = TypeVar("T")


def budget_seconds(text: str | None) -> float:
    """``--storage-outage-budget`` as seconds (a duration such as 90s, 15m, 1h; 0 = never wait)."""

    if text is None:
        return DEFAULT_BUDGET_S
    seconds = parse_duration(text, "--storage-outage-budget")
    if seconds is None:
        raise UserError("--storage-outage-budget must be a duration such as 15m or 1h, not forever")
    return seconds


def utc_text(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


class Outage:
    """One process's view of the store: reachable, or unreachable since `since` (Unix seconds)."""

    def __init__(self, budget_s: float = DEFAULT_BUDGET_S, *, sleep: Callable[[float], None] = time.sleep):
        self.budget_s = float(budget_s)
        self.since: float | None = None
        self._sleep = sleep

    def __getstate__(self) -> dict:  # shipped to Ray actors: each process keeps its own view
        return {"budget_s": self.budget_s}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["budget_s"])

    def message(self) -> str:
        return f"storage unreachable since {utc_text(self.since)}; retrying" if self.since is not None else ""

    def ride(self, what: str, step: Callable[[], T]) -> T:
        """``step()``, retried while the store is unreachable (at most `budget_s` of outage)."""
        wait = FIRST_WAIT_S
        while True:
            try:
                result = step()
            except StorageUnreachable as e:
                now = time.time()
                if self.since is None:
                    self.since = now
                    print(f"linegen: {what}: {e}; waiting for storage (up to {self.budget_s:g} s)",
                          file=sys.stderr, flush=True)
                if now - self.since >= self.budget_s:
                    raise StorageUnreachable(f"{e} (unreachable since {utc_text(self.since)}, longer than "
                                             f"--storage-outage-budget {self.budget_s:g} s)") from None
                self._sleep(min(wait, max(0.0, self.since + self.budget_s - now)) * random.uniform(0.8, 1.0))
                wait = min(MAX_WAIT_S, wait * 2)
                continue
            if self.since is not None:
                print(f"linegen: storage reachable again after {time.time() - self.since:.0f} s ({what})",
                      file=sys.stderr, flush=True)
                self.since = None
            return result
