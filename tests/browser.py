"""Headless Chromium (Debian's `chromium`) for tests: load a local HTML file with the network
off, dump the DOM it rendered and take a screenshot. Each call runs in a session of its own and
everything it started is killed by PID afterwards, so no renderer or crash handler is left behind.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

try:
    import jobs_helpers as H
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import jobs_helpers as H


def binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(args: list[str], url: str, timeout: float) -> subprocess.CompletedProcess:
    exe = binary()
    if exe is None:
        raise RuntimeError("no `chromium` binary: apt-get install -y chromium (.ci/run does)")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        # --no-sandbox: tests run as root; the proxy to nowhere keeps the page offline
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               "--disable-crash-reporter", "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}",
               "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>", *args, url]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            H.kill_session(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def dump_dom(html: Path, timeout: float = 60) -> str:
    r = _chromium(["--dump-dom", "--virtual-time-budget=2000"], html.resolve().as_uri(), timeout)
    assert r.returncode == 0 and r.stdout, f"chromium --dump-dom failed ({r.returncode}): {r.stderr[-2000:]}"
    return r.stdout


def screenshot(html: Path, png: Path, width: int = 1200, height: int = 2400, timeout: float = 60) -> Path:
    r = _chromium([f"--screenshot={png}", f"--window-size={width},{height}", "--virtual-time-budget=2000"],
                  html.resolve().as_uri(), timeout)
    assert r.returncode == 0 and png.exists(), f"chromium --screenshot failed ({r.returncode}): {r.stderr[-2000:]}"
    return png
