"""Kill the embedded Ray cluster's processes when the process that started it dies (Linux).

`ray.init()` starts gcs_server, raylet, the dashboard and log monitors as children of the calling
process; the raylet starts agents and workers (each worker in a process group of its own). When
that process is SIGKILLed, Ray's kernel fate-sharing takes the direct children down, but the
agents and workers are the raylet's children and live on (an actor can still commit a shard).

`Reaper` starts ``python -m linegen.cluster.reaper PARENT_PID`` in a session of its own (a signal
to the parent's process group does not reach it) with a pipe from the parent as its stdin. It
keeps a list of the cluster's processes -- the roots (the parent's children that appeared after
the reaper started, or exactly those the parent names in a ``roots PID ...`` line) and every
descendant, each with its start time, so that a reused PID is never touched -- rescanning
``/proc`` every ``SCAN_S``. Then:

- stdin closes without ``bye`` (the parent died, however): stop every listed process
  (SIGSTOP first, so nothing forks while it is being killed), rescan, SIGKILL them all;
- ``kill``: the same, at once (an interrupted run);
- ``bye``: the parent shut Ray down itself; whatever is left after ``GRACE_S`` is killed.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

SCAN_S = 0.3
GRACE_S = 5.0


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live, non-zombie process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rfind(b")") + 2:].split()
    if rest[0] in (b"Z", b"X"):
        return None
    return int(rest[1]), int(rest[19])


def _table() -> dict[int, tuple[int, int]]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                out[int(name)] = st
    return out


class _Tracker:
    def __init__(self, parent: int):
        self.parent, self.me = parent, os.getpid()
        self.baseline = {pid for pid, (ppid, _) in _table().items() if ppid == parent}
        self.roots: set[int] | None = None  # None: any new child of the parent
        self.known: dict[int, int] = {}  # pid -> start time

    def scan(self) -> None:
        table = _table()
        roots = self.roots if self.roots is not None else {
            pid for pid, (ppid, _) in table.items() if ppid == self.parent and pid not in self.baseline}
        frontier = [pid for pid in roots | set(self.known) if pid in table and pid != self.me]
        for pid in frontier:
            self.known.setdefault(pid, table[pid][1])
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        while frontier:
            pid = frontier.pop()
            for child in children.get(pid, ()):
                if child not in self.known and child != self.me:
                    self.known[child] = table[child][1]
                    frontier.append(child)
        self.known = {pid: start for pid, start in self.known.items()
                      if pid in table and table[pid][1] == start}

    def alive(self) -> list[int]:
        return [pid for pid, start in self.known.items() if (_stat(pid) or (0, None))[1] == start]

    def kill(self) -> None:
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            self.scan()
            for pid in self.alive():
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + 5.0
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parent = int(argv[0])
    tracker = _Tracker(parent)
    stdin = sys.stdin.buffer
    buf = b""
    while True:
        tracker.scan()
        ready, _, _ = select.select([stdin], [], [], SCAN_S)
        if not ready:
            continue
        chunk = os.read(stdin.fileno(), 4096)
        if not chunk:  # the parent is gone (or closed the pipe without saying bye)
            tracker.kill()
            return 0
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            words = line.decode(errors="replace").split()
            if not words:
                continue
            if words[0] == "roots":
                tracker.scan()
                tracker.roots = {int(w) for w in words[1:]}
            elif words[0] == "kill":
                tracker.kill()
                return 0
            elif words[0] == "bye":
                deadline = time.monotonic() + GRACE_S
                while time.monotonic() < deadline:
                    tracker.scan()
                    if not tracker.alive():
                        return 0
                    time.sleep(SCAN_S)
                tracker.kill()
                return 0


class Reaper:
    """The parent's side: start it before the cluster, name the roots after, say bye or kill."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        if not sys.platform.startswith("linux"):
            return
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "linegen.cluster.reaper", str(os.getpid())],
                                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        except OSError:
            self.proc = None
        self.baseline = self.children()

    @staticmethod
    def children() -> set[int]:
        me = os.getpid()
        return {pid for pid, (ppid, _) in _table().items() if ppid == me} if sys.platform.startswith("linux") else set()

    def _send(self, line: str, close: bool = False) -> None:
        if self.proc is None or self.proc.stdin is None:
            return
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
            if close:
                self.proc.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def name_roots(self) -> None:
        """The processes `ray.init()` just started: the new children of this process."""
        own = {self.proc.pid} if self.proc is not None else set()
        self._send("roots " + " ".join(str(p) for p in sorted(self.children() - self.baseline - own)))

    def bye(self) -> None:
        self._send("bye", close=True)

    def kill_now(self, wait_s: float = 6.0) -> None:
        """Kill the whole cluster at once and wait (bounded) until the reaper says it is done."""
        self._send("kill", close=True)
        if self.proc is not None:
            try:
                self.proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                pass


if __name__ == "__main__":
    sys.exit(main())
