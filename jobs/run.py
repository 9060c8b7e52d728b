"""`linegen run`: a job on the embedded default (a local Ray started in-process) or, when Ray is
already initialised, on that cluster; the same driver a submitted job runs.

No orphans: the embedded cluster's processes die with this one. SIGKILL is handled by the cluster's
reaper (cluster/reaper.py); Ctrl-C and SIGTERM raise `JobInterrupted` in the driver, which kills
the whole cluster at once (no graceful Ray shutdown: after a signal to the process group its
daemons may be gone already) and lets the caller say so in one line. Committed shards stay valid;
running the same command again resumes.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from linegen.cluster.local import LocalCluster
from linegen.jobs.driver import run_job
from linegen.jobs.outcome import local_outcome
from linegen.jobs.prepare import PreparedJob
from linegen.jobs.progress import Progress
from linegen.jobs.summary import finished_summary

INTERRUPTED = "interrupted; run the same command again to resume"


class JobInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM while a job ran; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(INTERRUPTED)
        self.signum = signum
        self.exit_code = 128 + signum


class _Guard:
    """The signal handlers `interruptible` installs, and which signal fired first."""

    def __init__(self, on_second: Callable[[], None] | None):
        self.on_second, self.signum = on_second, None

    def handler(self, signum, frame):  # noqa: ARG001
        if self.signum is not None:
            if self.on_second is not None:
                self.on_second()
            os._exit(128 + signum)
        self.signum = signum
        raise JobInterrupted(signum)

    def arm(self) -> None:
        """Install the handlers (again: ray.init installs a SIGTERM handler of its own)."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self.handler)

    def interrupted(self, e: KeyboardInterrupt) -> JobInterrupted:
        """Ray's blocking calls turn an exception raised by a signal handler into a plain
        KeyboardInterrupt; this gives it back its signal."""
        return e if isinstance(e, JobInterrupted) else JobInterrupted(self.signum or signal.SIGINT)


@contextmanager
def interruptible(on_second: Callable[[], None] | None = None) -> Iterator[_Guard]:
    """SIGINT and SIGTERM raise `JobInterrupted` in the main thread (Ray's own SIGTERM handler,
    installed by ray.init, would exit with a C++ stack dump); a second one calls ``on_second``
    and exits at once. Outside the main thread this does nothing."""
    guard = _Guard(on_second)
    main = threading.current_thread() is threading.main_thread()
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    guard.arm()
    try:
        yield guard
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


def run_embedded(prepared: PreparedJob, progress: Callable[[Progress], None] | None = None,
                 num_cpus: int | None = None) -> dict:
    """Run a prepared job (every check and the whole manifest done before Ray starts) here."""

    done = finished_summary(prepared)  # every shard already committed: the markers answer, no Ray
    if done is not None:
        return done
    import logging

    # A private in-process cluster: no token file to write, no Ray banner on the user's terminal.
    cluster = LocalCluster(num_cpus=num_cpus, auth_mode="disabled", log_to_driver=False,
                           init_kwargs={"logging_level": logging.ERROR})
    # local_outcome outside: an interruption is recorded after the cluster is gone
    with local_outcome(prepared.storage, prepared.spec.job_id), interruptible(on_second=cluster.kill) as guard:
        try:
            cluster.start()
            guard.arm()  # ray.init installed its own SIGTERM handler
            return run_job(prepared, progress=progress)
        except KeyboardInterrupt as e:
            cluster.kill()  # every process of the cluster, now, before anything else is printed
            raise guard.interrupted(e) from None
        finally:
            cluster.stop()
