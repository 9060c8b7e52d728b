"""A real Prometheus server for tests: Debian's `prometheus` binary on a free loopback port.

It scrapes every second the targets of a file-based service discovery file (the one Ray's head
writes, `prom_metrics_service_discovery.json`, listing every node's metrics export port), keeps
its data in its own temp dir, and is stopped by its own PID. `query_range` is what Grafana sends
for a time-series panel (Prometheus' HTTP API, /api/v1/query_range).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from linegen.cluster.local import free_port

CONFIG = """global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: ray
    file_sd_configs:
      - files: ['{sd_file}']
        refresh_interval: 1s
"""


def binary() -> str | None:
    return shutil.which("prometheus")


@dataclass
class Prometheus:
    proc: subprocess.Popen
    port: int
    home: Path

    @classmethod
    def start(cls, sd_file: Path, home: Path, ready_timeout: float = 60.0) -> Prometheus:
        exe = binary()
        if exe is None:
            raise RuntimeError("no `prometheus` binary: apt-get install -y prometheus (.ci/run does)")
        home.mkdir(parents=True, exist_ok=True)
        (home / "prometheus.yml").write_text(CONFIG.format(sd_file=sd_file))
        port = free_port()
        log = open(home / "prometheus.log", "wb")
        proc = subprocess.Popen(
            [exe, f"--config.file={home / 'prometheus.yml'}", f"--storage.tsdb.path={home / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        server = cls(proc, port, home)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited ({proc.returncode}); see {home / 'prometheus.log'}")
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return server
            except OSError:
                pass
            time.sleep(0.2)
        server.stop()
        raise RuntimeError(f"prometheus not ready after {ready_timeout:g} s; see {home / 'prometheus.log'}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> dict:
        q = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{q}", timeout=30) as r:
            doc = json.loads(r.read())
        assert doc.get("status") == "success", doc
        return doc["data"]

    def query_range(self, expr: str, start: float, end: float, step: float = 2.0) -> list[dict]:
        """The series a Grafana time-series panel would draw for ``expr`` (a bad query raises)."""
        try:
            return self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step:g}")["result"]
        except urllib.error.HTTPError as e:
            raise AssertionError(f"Prometheus refused {expr!r}: {e.read().decode()[:500]}") from None

    def label_values(self, label: str, match: str) -> list[str]:
        return self.api(f"label/{label}/values", **{"match[]": match})

    def targets_up(self) -> int:
        return sum(1 for t in self.api("targets")["activeTargets"] if t.get("health") == "up")

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL if it has not gone in 10 s."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
