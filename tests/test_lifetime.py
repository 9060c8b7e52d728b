"""`linegen run` as a real process: live progress readable from --out alone, and no orphans.

- A job with one large shard shows `images.done > 0` in `status --out --json` (and a cost so far
  in `list --out`) before its first commit: workers report every wave, the driver rewrites
  OUT/<job>/_progress.json.
- However `linegen run` dies -- SIGKILL of its process group, SIGKILL of the process alone,
  SIGTERM, Ctrl-C (SIGINT to the group, as a terminal sends it) -- no process of its embedded Ray
  cluster is left after 15 s (checked by PID: every process of its session at the kill, and the
  reaper), nothing is committed after the kill settles, and SIGTERM/Ctrl-C print one line.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

try:
    import jobs_helpers as H
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import jobs_helpers as H

pytestmark = pytest.mark.timeout(420)

INTERRUPTED = "interrupted; run the same command again to resume"
WIDE = {"COLUMNS": "300"}  # the "job ... -> OUT" header stays one line


def run_args(manifest: Path, out: Path, job: str, shard_size: int, *extra: str) -> list[str]:
    return ["run", str(manifest), "--out", str(out), "--job-id", job, *H.MODEL_ARGS, "--shard-size", str(shard_size),
            "--batch-size", "2", *extra]


def reapers_of(pid: int) -> list[H.Proc]:
    return [p for p in H.processes() if "linegen.cluster.reaper" in p.cmd and p.cmd.endswith(f" {pid}")
            and p.state != "Z"]


def cluster_pids(proc: subprocess.Popen) -> list[int]:
    """Every live process of the run: its session (Ray's daemons, agents, workers) and its reaper."""
    return [p.pid for p in H.live_in_session(proc.pid) + reapers_of(proc.pid)]


def alive(pids: list[int]) -> list[H.Proc]:
    wanted = set(pids)
    return [p for p in H.processes() if p.pid in wanted and p.state != "Z"]


def lg_json(*args: str) -> dict | list:
    """A read-only command's --json answer, in-process (the runs themselves are real processes)."""
    r = H.invoke_linegen([*args, "--json"])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_live_progress_before_the_first_commit_then_sigterm(tmp_path: Path) -> None:
    manifest = H.write_manifest(tmp_path / "m.jsonl", [{"class_id": 3, "count": 2000}])
    out, job = tmp_path / "out", "live"
    proc = H.start_linegen(run_args(manifest, out, job, 2000), env=WIDE, cwd=tmp_path, log_dir=tmp_path / "logs")
    commits = out / job / "_commits"
    try:
        def live_status():
            assert proc.poll() is None, H.finish_linegen(proc, 5).describe()
            if not (out / job / "job.json").exists():
                return None  # the run has not claimed its job yet (it is still importing or validating)
            doc = lg_json("status", job, "--out", str(out))
            return doc if (doc["images"]["done"] or 0) > 0 else None

        deadline = time.monotonic() + 180
        doc = None
        while doc is None:
            assert time.monotonic() < deadline, "no live progress within 180 s"
            doc = live_status()
            time.sleep(0.5)
        listed = lg_json("list", "--out", str(out))
        committed_then = list(commits.glob("*.json"))
        pids = cluster_pids(proc)
        os.killpg(proc.pid, signal.SIGTERM)  # e.g. `kill -TERM -PGID`, a service manager stopping it
        result = H.finish_linegen(proc, 30)
    finally:
        H.kill_session(proc)
    assert not committed_then, "the one shard was committed before live progress showed"
    assert doc["state"] == "RUNNING" and doc["images_committed"] == 0, doc
    assert 0 < doc["images"]["done"] < 2000 and doc["images"]["total"] == 2000
    assert doc["images_per_s"] > 0 and doc["eta_s"] > 0, doc
    assert doc["cost"]["usd"] > 0 and doc["cost"]["device_seconds"] > 0, doc["cost"]
    assert doc["workers"]["placed"] == 1 and doc["live_updated_at"] > 0
    mine = [d for d in listed if d["job_id"] == job]
    assert mine and mine[0]["state"] == "RUNNING" and mine[0]["images"]["done"] > 0 and mine[0]["cost"]["usd"] > 0

    assert result.returncode == 128 + signal.SIGTERM, result.describe()
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("progress ")]  # plain progress lines: stderr is no terminal
    # the "job ... -> OUT" and "cache ..." header lines, then the one line
    assert lines[-1] == INTERRUPTED and len(lines) == 3 and lines[1].startswith("cache "), result.describe()
    left = H.wait_until_gone(lambda: alive(pids), 15)
    assert not left, [str(p) for p in left]
    # the interrupted driver said so: status no longer calls it running
    after = lg_json("status", job, "--out", str(out))
    assert after["state"] != "RUNNING" and after["images"]["done"] == 0, after


@pytest.mark.parametrize("how", ["sigkill-group", "sigkill-process", "ctrl-c"])
def test_no_process_of_the_embedded_cluster_outlives_linegen_run(how: str, tmp_path: Path) -> None:
    manifest = H.write_manifest(tmp_path / "m.jsonl", [{"class_id": 1, "count": 400}])
    out, job = tmp_path / "out", f"die-{how}"
    proc = H.start_linegen(run_args(manifest, out, job, 4), env=WIDE, cwd=tmp_path, log_dir=tmp_path / "logs")
    commits = out / job / "_commits"
    try:
        H.wait_for_commit(proc, commits)
        pids = cluster_pids(proc)
        assert len(pids) >= 5, pids  # the CLI, gcs_server, raylet, agents, a worker, the reaper
        killed_at = time.monotonic()
        if how == "sigkill-group":
            os.killpg(proc.pid, signal.SIGKILL)
        elif how == "sigkill-process":
            os.kill(proc.pid, signal.SIGKILL)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        result = H.finish_linegen(proc, 30)
        left = H.wait_until_gone(lambda: alive(pids), 15 - (time.monotonic() - killed_at))
        assert not left, f"alive {time.monotonic() - killed_at:.1f} s after the kill: {[str(p) for p in left]}"
        settled = sorted(p.name for p in commits.glob("*.json"))
        time.sleep(2.0)
        assert sorted(p.name for p in commits.glob("*.json")) == settled, "shards were committed after the kill"
        assert len(settled) < 100
    finally:
        H.kill_session(proc)
        H.kill_pids(reapers_of(proc.pid))
    if how == "ctrl-c":
        assert result.returncode == 128 + signal.SIGINT, result.describe()
        lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("progress ")]
        assert lines[-1] == INTERRUPTED and len(lines) == 3 and lines[1].startswith("cache "), result.describe()
        assert "Traceback" not in result.stderr and "SIGTERM received" not in result.stderr


def test_a_gpu_run_without_gpus_waits_then_fails_naming_the_resources(tmp_path: Path) -> None:
    """Never a CPU fallback: workers that ask for a GPU the embedded cluster does not have stay
    pending; after --wait-for-resources the job fails with that reason, and `status --out` says so."""
    manifest = H.write_manifest(tmp_path / "m.jsonl", [{"class_id": 1, "count": 4}])
    out, job = tmp_path / "out", "no-gpu"
    result = H.run_linegen(run_args(manifest, out, job, 4, "--device", "cpu", "--gpus-per-worker", "1",
                                    "--wait-for-resources", "5s"), env=WIDE, timeout=180, cwd=tmp_path,
                           log_dir=tmp_path / "logs")
    assert result.returncode == 1, result.describe()
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: waited 5 s for resources: 0 of at least 1 worker(s) placed"), result.describe()
    assert "1 GPU" in lines[-1] and "0 GPU" in lines[-1] and "--wait-for-resources" in lines[-1]
    assert not (out / job / "images").exists() and not (out / job / "_commits").exists()  # nothing ran on CPU
    doc = lg_json("status", job, "--out", str(out))
    assert doc["state"] == "FAILED" and "waited 5 s for resources" in doc["reason"], doc
