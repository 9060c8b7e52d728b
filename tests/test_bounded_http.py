"""Issue 24, item 5: every call to a cluster is bounded in total time, and a server that does not
speak HTTP is one line naming its URL (credentials redacted). Real sockets on loopback: one server
answers garbage bytes, one sends headers and then drips a byte a second."""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

import jobs_helpers as H

VERSION = json.dumps({"version": "4", "ray_version": "2.60.0", "ray_commit": "x", "session_name": "s"}).encode()


class Server:
    """A TCP server on 127.0.0.1 that hands each request (its first line) to ``answer(conn, line)``."""

    def __init__(self, answer: Callable[[socket.socket, str], None]):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.answer = answer
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            try:
                self.answer(conn, data.split(b"\r\n", 1)[0].decode())
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def garbage(conn: socket.socket, line: str) -> None:
    conn.sendall(b"\x00\x17SSH-2.0-not-http garbage\r\n\r\n")


def drip(conn: socket.socket, line: str) -> None:
    """Answers /api/version at once (so Ray's client gets built), drips every other answer."""
    if " /api/version" in line:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (len(VERSION), VERSION))
        return
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(300):
        conn.sendall(b" ")
        time.sleep(1.0)


def drip_everything(conn: socket.socket, line: str) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(300):
        conn.sendall(b" ")
        time.sleep(1.0)


@pytest.fixture
def serve():
    servers: list[Server] = []

    def start(answer) -> Server:
        servers.append(Server(answer))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_non_http_answer_is_one_line_naming_the_url_without_credentials(serve, tmp_path: Path) -> None:
    srv = serve(garbage)
    url = f"http://alice:s3cret@127.0.0.1:{srv.port}"
    shown = f"http://alice:***@127.0.0.1:{srv.port}"
    for args in (["status", "j"], ["list"], ["cancel", "j"], ["logs", "j"]):
        r = H.run_linegen([*args, "--cluster", url], timeout=60, cwd=tmp_path, log_dir=tmp_path / "logs")
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.describe()
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and shown in lines[0] and "did not answer with HTTP" in lines[0], r.describe()
        assert "s3cret" not in r.stderr + r.stdout


@pytest.mark.parametrize("answer", [drip_everything, drip], ids=["urllib-probe", "ray-client"])
def test_a_dripping_server_is_cut_off_at_the_timeout(serve, answer) -> None:
    import linegen
    from linegen.cluster import jobs_api
    from linegen.cluster.address import ClusterAddress

    jobs_api._CLIENT_CLASS = jobs_api._CLIENT_CLASS or jobs_api._client_class()  # import Ray's client first
    srv = serve(answer)
    address = ClusterAddress(f"http://127.0.0.1:{srv.port}", timeout_s=2.0)
    t0 = time.monotonic()
    with pytest.raises(linegen.ClusterError, match=r"no complete answer from http://127.0.0.1:\d+ .* within 2 s"):
        jobs_api.list_jobs(jobs_api.connect(address))
    assert time.monotonic() - t0 < 5.0  # before: a per-read timeout never fired (180 s and counting)


def test_timeout_flag_bounds_the_cli(serve, tmp_path: Path) -> None:
    srv = serve(drip)
    t0 = time.monotonic()
    r = H.run_linegen(["list", "--cluster", f"http://127.0.0.1:{srv.port}", "--timeout", "2"], timeout=60,
                      cwd=tmp_path, log_dir=tmp_path / "logs")
    wall = time.monotonic() - t0
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.describe()
    assert "within 2 s" in r.stderr and wall < 20, r.describe()
    bad = H.run_linegen(["list", "--cluster", f"http://127.0.0.1:{srv.port}", "--timeout", "0"], timeout=60,
                        cwd=tmp_path, log_dir=tmp_path / "logs")
    assert bad.returncode != 0 and "--timeout" in bad.stderr and "Traceback" not in bad.stderr, bad.describe()
