"""How a job ended when it did not succeed: ``<job>/_FAILED`` and ``<job>/_CANCELLED``.

``_SUCCESS`` (written by the driver) says a job is complete. These two markers say why it is not,
so that ``linegen status`` can show the reason and a job submitted with ``--after`` learns that
the job it waits for will never succeed (jobs.schedule). Each is a small JSON document::
    {"state": "failed" | "cancelled", "reason": "one line", "at": 1795353501.6, "attempt": "j-resume-1"}

Writers:

- the driver (`driver_outcome` around `jobs.driver.main`): a UserError -> ``_FAILED`` (or
  ``_CANCELLED`` for a dependency that failed), SIGTERM (``ray job stop`` / ``linegen cancel``)
  -> ``_CANCELLED``, any other exception -> ``_FAILED`` with its last line;
- ``linegen cancel`` writes ``_CANCELLED`` ("cancelled by user") before it stops the Ray job, so
  its reason wins (the driver writes its own only if none exists: a conditional put);
- ``linegen resume`` removes both before it submits the next attempt;
- a local run (`local_outcome` around `linegen run` and a local `linegen resume`): Ctrl-C ->
  ``_CANCELLED`` ("interrupted"), a UserError -> ``_FAILED``; each run first removes both, since
  running again resumes the job.

Reasons are one line and never contain credentials (they come from our own one-line errors).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from linegen.cluster.address import redact_text
from linegen.jobs import layout
from linegen.jobs.errors import JobCancelled, UserError
from linegen.jobs.storage import StorageNotFound

ATTEMPT_ENV = "LINEGEN_ATTEMPT"  # the Ray submission id of this attempt (set by `linegen submit`)
MAX_REASON = 2000


@dataclass(frozen=True)
class Outcome:
    state: str  # "failed" | "cancelled"
    reason: str
    at: float | None = None
    attempt: str | None = None

    def to_dict(self) -> dict:
        return {"state": self.state, "reason": self.reason, "at": self.at, "attempt": self.attempt}


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in redact_text(text).splitlines() if ln.strip()]
    line = " | ".join(lines) if len(lines) <= 3 else " | ".join(lines[:3]) + f" | ... ({len(lines) - 3} more lines)"
    return line[:MAX_REASON]


def _doc(state: str, reason: str) -> bytes:
    return json.dumps({"state": state, "reason": _one_line(reason), "at": time.time(),
                       "attempt": os.environ.get(ATTEMPT_ENV)}, indent=2).encode()


def write_failed(storage, job_id: str, reason: str) -> bool:
    """Record a failure (overwrites an older failure; never replaces a cancellation)."""
    if storage.exists(layout.cancelled_key(job_id)):
        return False
    storage.put(layout.failed_key(job_id), _doc("failed", reason))
    return True


def write_cancelled(storage, job_id: str, reason: str, *, overwrite: bool = False) -> bool:
    """Record a cancellation; by default only if none is recorded yet (the first reason wins)."""
    key = layout.cancelled_key(job_id)
    if overwrite:
        storage.put(key, _doc("cancelled", reason))
        return True
    return storage.put_if_absent(key, _doc("cancelled", reason))


def read_outcome(storage, job_id: str) -> Outcome | None:
    """The job's ``_CANCELLED`` (first) or ``_FAILED`` marker, or None."""

    for key, state in ((layout.cancelled_key(job_id), "cancelled"), (layout.failed_key(job_id), "failed")):
        try:
            data = storage.get(key)
        except StorageNotFound:
            continue
        from linegen.guarded import load_json_object

        try:
            f = load_json_object(data, storage.location(key))
            return Outcome(state=state, reason=_one_line(f.str("reason", "", max_len=10 * MAX_REASON)),
                           at=f.float("at", None), attempt=f.str("attempt", None, max_len=200))
        except UserError:  # not ours, or damaged: its text is still the best reason there is
            return Outcome(state=state, reason=_one_line(data[:MAX_REASON].decode("utf-8", "replace")))
    return None


def clear_outcome(storage, job_id: str) -> None:
    """Forget how an earlier attempt ended (before a resume)."""
    for key in (layout.cancelled_key(job_id), layout.failed_key(job_id)):
        if storage.exists(key):
            storage.delete(key)


# --------------------------------------------------------------------------- the driver's guard


class DriverOutcome:
    """Records how the driver ends; see `driver_outcome`."""

    def __init__(self, out: str, job_id: str, endpoint_url: str | None):
        self.out, self.job_id, self.endpoint_url = out, job_id, endpoint_url
        self._storage = None

    def storage(self):
        if self._storage is None:
            from linegen.jobs.storage import open_storage

            self._storage = open_storage(self.out, endpoint_url=self.endpoint_url)
        return self._storage

    def _record(self, state: str, reason: str) -> None:
        try:
            if state == "cancelled":
                write_cancelled(self.storage(), self.job_id, reason)
            else:
                write_failed(self.storage(), self.job_id, reason)
        except Exception as e:  # noqa: BLE001 - the job's own error matters more than its marker
            print(f"linegen: could not record the outcome of job {self.job_id}: {_one_line(str(e))}",
                  file=sys.stderr, flush=True)

    def failed(self, error: BaseException) -> int:
        """Record a UserError: a cancelled dependency -> _CANCELLED, else _FAILED. Returns 1."""
        if isinstance(error, JobCancelled):
            self._record("cancelled", str(error).removeprefix("cancelled: "))
        else:
            self._record("failed", str(error))
        return 1


def _sigterm(signum, frame):  # noqa: ARG001
    # What Ray's own driver handler does too (ray.init installs `sys.exit(signum)`).
    sys.exit(signum)


@contextmanager
def driver_outcome(out: str, job_id: str, endpoint_url: str | None = None) -> Iterator[DriverOutcome]:
    """Around the driver's work: SIGTERM -> ``_CANCELLED``; an unexpected exception -> ``_FAILED``.

    Ray stops a job with SIGTERM and kills it 3 s later, so the marker is written at once. Call
    ``guard.failed(e)`` for a UserError the driver handles itself.
    """
    guard = DriverOutcome(out, job_id, endpoint_url)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm)
    try:
        yield guard
    except SystemExit as e:
        if e.code == signal.SIGTERM:
            print(f"linegen: job {job_id} stopped (SIGTERM); committed shards stay valid", file=sys.stderr, flush=True)
            guard._record("cancelled", "stopped (the Ray job received SIGTERM)")
        raise
    except KeyboardInterrupt:
        guard._record("cancelled", "interrupted")
        raise
    except UserError as e:
        guard.failed(e)
        raise
    except Exception as e:
        guard._record("failed", f"{type(e).__name__}: {e}")
        raise


@contextmanager
def local_outcome(storage, job_id: str) -> Iterator[None]:
    """Around a run on the embedded cluster: an earlier run's marker no longer holds; Ctrl-C and
    a UserError leave one, so `linegen status` says "interrupted" or why, not "unknown"."""
    clear_outcome(storage, job_id)

    def record(write, reason: str) -> None:
        try:
            write(storage, job_id, reason)
        except Exception as e:  # noqa: BLE001 - the interruption or the job's error matters more
            print(f"linegen: could not record the outcome of job {job_id}: {_one_line(str(e))}",
                  file=sys.stderr, flush=True)

    try:
        yield
    except KeyboardInterrupt:
        from linegen.jobs.hints import resume

        hint = resume(job_id, out=getattr(storage, "url", None))
        record(write_cancelled, f"interrupted (Ctrl-C); run the same command again or `{hint}` to finish it")
        raise
    except UserError as e:
        record(write_failed, str(e))
        raise
