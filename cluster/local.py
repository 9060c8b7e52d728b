"""Local Ray: the embedded in-process cluster, and a standalone head process on this machine.

- `LocalCluster`: the default when no cluster address is given. ``ray.init()`` in this process
  (no dashboard, so no Jobs API) if Ray is not already initialised, ``ray.shutdown()`` on exit
  only if we started it. Its processes die with this one: a reaper (cluster/reaper.py) kills
  every one of them when this process dies, even by SIGKILL; `LocalCluster.kill()` does it at once.
- `start_head()`: ``ray start --head ... --block`` as a child process in its own process group,
  with its own ``--temp-dir`` and ports, waiting until the dashboard answers ``/api/version``.
  `HeadProcess.stop()` stops exactly that head (never ``ray stop``, which stops every Ray on the
  machine). Useful to try remote-cluster commands on one machine::
      from linegen.cluster.local import start_head
      head = start_head(port_dashboard=8265, port_gcs=6379, temp_dir="/tmp/ray-head",
                        env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "..."})
      ...  # linegen --address http://127.0.0.1:8265 ...
      head.stop()

Ray is imported lazily, inside functions.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from linegen.cluster.address import ClusterAddress
from linegen.cluster.reaper import Reaper


def _refresh_auth_mode() -> None:
    """Make Ray read RAY_AUTH_MODE again. Ray caches it when first imported, so a process that
    imported ray while talking to a token-auth cluster (a notebook, a test) would start its
    embedded cluster in one mode and its workers in the other, and every actor creation would be
    cancelled. Ray's own tests reset the same two caches between auth modes."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # a Ray without token auth caches nothing
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


# Ports handed out by free_port come from below the kernel's ephemeral range and above Ray's
# worker ports (10002-19999 by default). A port the OS picks with bind(0) is an ephemeral one, which
# any process's next outgoing connection may take before Ray binds it: a starting Ray cluster opens
# dozens, and a dashboard whose port was taken moves to the next one (--port-retries) while we
# still point at the first ("connection refused" from a head that runs; seen with two clusters
# starting at once).
_PORTS_FROM = 20000


def _ephemeral_low(default: int = 32768) -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def free_port(host: str = "127.0.0.1", attempts: int = 200) -> int:
    """A TCP port nobody listens on right now, outside the ephemeral range where possible."""
    high = _ephemeral_low()
    for _ in range(attempts if high - _PORTS_FROM > 100 else 0):
        port = random.randrange(_PORTS_FROM, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # a crowded range: let the OS pick
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- embedded cluster


class LocalCluster:
    """The embedded local Ray cluster, as a context manager.

    ``num_cpus``/``num_gpus`` default to what Ray detects. ``temp_dir`` is Ray's root temp dir
    (absolute; keep it short: Ray's unix socket paths must fit in 107 bytes). ``auth_mode``
    ("token" or "disabled") sets ``RAY_AUTH_MODE`` for the cluster's lifetime; None keeps Ray's
    default (Ray 2.60 turns token auth on for a new local cluster and may write
    ``~/.ray/auth_token``). If Ray is already initialised in this process, it is reused as is
    and left running on exit.
    """

    def __init__(
        self,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        temp_dir: str | os.PathLike[str] | None = None,
        *,
        object_store_memory: int | None = None,
        auth_mode: str | None = None,
        log_to_driver: bool = True,
        init_kwargs: Mapping[str, Any] | None = None,
    ):
        if auth_mode not in (None, "token", "disabled"):
            raise ValueError(f"auth_mode must be 'token', 'disabled' or None, got {auth_mode!r}")
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.temp_dir = str(Path(temp_dir).resolve()) if temp_dir else None
        self.object_store_memory = object_store_memory
        self.auth_mode = auth_mode
        self.log_to_driver = log_to_driver
        self.init_kwargs = dict(init_kwargs or {})
        self.started = False
        self._saved_auth_mode: str | None = None
        self._reaper = None

    def start(self) -> LocalCluster:
        # RAY_AUTH_MODE is read when ray is imported: set it first, or the driver and the
        # cluster it starts disagree about auth and actor creation is cancelled.
        # Ray reads RAY_AUTH_MODE once, early: set it before the first `import ray`, or this
        # process and the cluster it starts disagree about auth and actor creation is cancelled.
        if self.auth_mode is not None:
            self._saved_auth_mode = os.environ.get("RAY_AUTH_MODE")
            os.environ["RAY_AUTH_MODE"] = self.auth_mode
        import ray

        if ray.is_initialized():
            self._restore_env()
            self.started = False
            return self
        _refresh_auth_mode()
        kwargs: dict[str, Any] = {
            "address": "local",  # always a new local cluster, whatever RAY_ADDRESS says
            "include_dashboard": False,
            "log_to_driver": self.log_to_driver,
        }
        if self.num_cpus is not None:
            kwargs["num_cpus"] = self.num_cpus
        if self.num_gpus is not None:
            kwargs["num_gpus"] = self.num_gpus
        if self.object_store_memory is not None:
            kwargs["object_store_memory"] = self.object_store_memory
        if self.temp_dir:
            Path(self.temp_dir).mkdir(parents=True, exist_ok=True)
            kwargs["_temp_dir"] = self.temp_dir
        kwargs.update(self.init_kwargs)

        self._reaper = Reaper()  # before ray.init: it takes every process started from now on
        try:
            ray.init(**kwargs)
        except BaseException:
            self._reaper.kill_now()
            self._reaper = None
            self._restore_env()
            raise
        self._reaper.name_roots()
        self.started = True
        return self

    def stop(self) -> None:
        if not self.started:
            return
        import ray

        try:
            ray.shutdown()
        finally:
            self.started = False
            if self._reaper is not None:
                self._reaper.bye()  # it kills whatever Ray's shutdown leaves behind
                self._reaper = None
            self._restore_env()

    def kill(self) -> None:
        """Kill every process of the cluster now (an interrupted run), without Ray's shutdown: after
        a signal to the process group its daemons may be gone already, and Ray's shutdown then
        hangs or aborts. This process's Ray state is left as is; it should exit soon."""
        if not self.started:
            return
        self.started = False
        if self._reaper is not None:
            self._reaper.kill_now()
            self._reaper = None
        self._restore_env()

    def _restore_env(self) -> None:
        if self.auth_mode is None:
            return
        if self._saved_auth_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = self._saved_auth_mode
        self._saved_auth_mode = None

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- head process


class HeadStartError(RuntimeError):
    """`start_head` failed; the message ends with the tail of the head's log."""


def _ray_executable() -> list[str]:
    candidate = Path(sys.executable).parent / "ray"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return [str(candidate)]
    found = shutil.which("ray")
    if found:
        return [found]
    return [sys.executable, "-m", "ray.scripts.scripts"]


def _die_with_parent() -> None:
    # Linux: if the starting process dies, the head's `ray start` gets SIGTERM and shuts down.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass


def _tail(path: Path, n: int = 20) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


@dataclass
class HeadProcess:
    """A running ``ray start --head --block`` in its own process group."""

    proc: subprocess.Popen
    host: str
    port_dashboard: int
    port_gcs: int
    temp_dir: Path
    log_path: Path
    env: dict[str, str] = field(repr=False, default_factory=dict)
    owns_temp_dir: bool = False
    started_in_s: float = 0.0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port_dashboard}"

    def address(self, token: str | None = None, headers: dict[str, str] | None = None) -> ClusterAddress:
        """A ClusterAddress for this head (token: e.g. the RAY_AUTH_TOKEN it was started with)."""
        return ClusterAddress(url=self.url, token=token, headers=dict(headers or {}),
                              token_source="argument" if token else None)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """Stop this head only: SIGTERM to ``ray start`` (it drains and stops its children), then
        SIGKILL to the whole process group if anything is left after ``timeout`` seconds."""
        pgid = self.proc.pid  # start_new_session=True: the group id is the leader's pid
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left in the group (workers, agents, or the leader itself after timeout).
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if self.owns_temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> HeadProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _probe(url: str, timeout: float = 2.0, headers: Mapping[str, str] | None = None) -> int | None:
    """HTTP status of GET url, or None if nothing answers."""
    try:
        req = urllib.request.Request(url, headers=dict(headers or {}))
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _head_node_alive(base: str, headers: Mapping[str, str], timeout: float = 2.0) -> bool:
    """Whether the State API lists an ALIVE node (the raylet has registered)."""
    try:
        req = urllib.request.Request(base + "/api/v0/nodes?limit=10", headers=dict(headers))
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            rows = json.loads(resp.read())["data"]["result"]["result"]
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError):
        return False
    return any(r.get("state") == "ALIVE" for r in rows)


def start_head(
    port_dashboard: int = 8265,
    port_gcs: int = 6379,
    temp_dir: str | os.PathLike[str] | None = None,
    env: Mapping[str, str | None] | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    host: str = "127.0.0.1",
    port_agent: int | None = None,
    port_client: int | None = None,
    extra_args: Sequence[str] = (),
    ready_timeout: float = 120.0,
    die_with_parent: bool = False,
) -> HeadProcess:
    """Start a Ray head (with dashboard and Jobs API) and wait until it is ready: the dashboard
    answers ``/api/version`` and the head node is ALIVE (checked with ``RAY_AUTH_TOKEN`` from
    ``env`` when token auth is on; without a known token, only that the dashboard answers).

    ``env`` is added to this process's environment for the head (a None value removes a
    variable), e.g. ``{"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": tok}`` or
    ``{"RAY_AUTH_MODE": "disabled"}``. ``temp_dir`` None makes a fresh one under /tmp that
    `HeadProcess.stop` removes. The dashboard agent and Ray Client ports default to free ports
    (not Ray's fixed 52365/10001) so that several heads can run on one machine. The directory
    of this Python is put first on the head's PATH, so ``python`` in job entrypoints is this
    interpreter.
    """
    owns = temp_dir is None
    tdir = Path(tempfile.mkdtemp(prefix="rayh-", dir="/tmp")) if owns else Path(temp_dir).resolve()
    tdir.mkdir(parents=True, exist_ok=True)
    log_path = tdir / "ray-start.log"

    child_env = _head_env(env)
    cmd = _ray_executable() + [
        "start",
        "--head",
        f"--port={port_gcs}",
        f"--dashboard-port={port_dashboard}",
        f"--dashboard-host={host}",
        "--include-dashboard=true",
        f"--dashboard-agent-listen-port={port_agent or free_port()}",
        f"--ray-client-server-port={port_client or free_port()}",
        f"--temp-dir={tdir}",
        "--disable-usage-stats",
        "--block",
    ]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus}")
    cmd.extend(extra_args)

    t0 = time.monotonic()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    head = HeadProcess(proc=proc, host=host, port_dashboard=port_dashboard, port_gcs=port_gcs,
                       temp_dir=tdir, log_path=log_path, env=child_env, owns_temp_dir=owns)
    _wait_until_ready(head, t0 + ready_timeout, ready_timeout)
    head.started_in_s = time.monotonic() - t0
    return head


def _head_env(env: Mapping[str, str | None] | None) -> dict[str, str]:
    """This process's environment plus ``env`` (a None value removes a variable)."""
    child_env = dict(os.environ)
    # `python` in job entrypoints should be this Python (e.g. the venv with linegen installed).
    bindir = str(Path(sys.executable).parent)
    child_env["PATH"] = bindir + os.pathsep + child_env.get("PATH", os.defpath)
    for k, v in (env or {}).items():
        if v is None:
            child_env.pop(k, None)
        else:
            child_env[k] = str(v)
    return child_env


def _wait_until_ready(head: HeadProcess, deadline: float, ready_timeout: float) -> None:
    """Until the dashboard answers and the head node is ALIVE; stops the head and raises if it
    exits or the deadline passes."""
    base = f"http://{head.host}:{head.port_dashboard}"
    # With token auth we can look inside only if we know the token.
    token = head.env.get("RAY_AUTH_TOKEN", "").strip()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    dashboard_up = False
    while True:
        if head.proc.poll() is not None:
            tail = _tail(head.log_path)
            head.stop()
            raise HeadStartError(f"ray start exited with code {head.proc.returncode}:\n{tail}")
        if not dashboard_up:
            code = _probe(base + "/api/version", headers=headers)
            # 401/403 without a known token: the dashboard is up with token auth on; that is
            # as far as we can check.
            if code in (401, 403) and not token:
                return
            dashboard_up = code == 200
        # Then wait for the head node itself (jobs need its raylet).
        if dashboard_up and _head_node_alive(base, headers):
            return
        if time.monotonic() > deadline:
            tail = _tail(head.log_path)
            head.stop()
            raise HeadStartError(f"Ray head at {base} not ready after {ready_timeout:g} s:\n{tail}")
        time.sleep(0.25)
