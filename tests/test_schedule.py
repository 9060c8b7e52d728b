"""Pure and local tests of remote-job logic: --at parsing, waiting for a time or another job,
the _FAILED/_CANCELLED markers, the driver's SIGTERM/dependency handling (no Ray needed: it
waits before Ray starts), state derivation, attempt ids, headers, runtime env, estimates."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from linegen.jobs import layout
from linegen.errors import UserError
from linegen.jobs.outcome import clear_outcome, read_outcome, write_cancelled, write_failed
from linegen.jobs.schedule import (IGNORE_SCHEDULE_ENV, JobCancelled, dependency_state, describe_time, parse_at,
                           wait_for_start)
from linegen.jobs.storage import LocalStorage

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tz_berlin(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# --------------------------------------------------------------------------- --at


def test_parse_at_clock_time_is_next_occurrence(tz_berlin) -> None:
    now = _ts("2026-11-22T13:00:00+01:00")
    assert parse_at("14:30", now) == _ts("2026-11-22T14:30:00+01:00")  # later today
    assert parse_at("02:00", now) == _ts("2026-11-23T02:00:00+01:00")  # already past: tomorrow
    assert parse_at("13:00:05", now) == now + 5
    assert parse_at("13:00", now) == _ts("2026-11-23T13:00:00+01:00")  # exactly now: tomorrow


def test_parse_at_date_time_local_unless_zoned(tz_berlin) -> None:
    now = _ts("2026-11-22T13:00:00+01:00")
    assert parse_at("2026-11-23T02:00", now) == _ts("2026-11-23T02:00:00+01:00")
    assert parse_at("2026-11-23 02:00:30", now) == _ts("2026-11-23T02:00:30+01:00")
    assert parse_at("2026-11-23T02:00Z", now) == _ts("2026-11-23T02:00:00+00:00")
    assert parse_at("2026-11-23T02:00+05:00", now) == _ts("2026-11-23T02:00:00+05:00")
    # Summer time is resolved for the date given, not today's offset.
    assert parse_at("2027-07-01T02:00", now) == _ts("2027-07-01T02:00:00+02:00")


def test_parse_at_relative_and_errors(tz_berlin) -> None:
    now = 1_800_000_000.0
    assert parse_at("+90s", now) == now + 90
    assert parse_at("+10m", now) == now + 600
    assert parse_at("+1h30m", now) == now + 5400
    assert parse_at("2h", now) == now + 7200
    for bad in ("", "tomorrow", "25:00", "12:61", "+5x", "2026-13-01T00:00"):
        with pytest.raises(UserError) as e:
            parse_at(bad, now)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="in the past"):
        parse_at("2020-01-01T00:00", now)


def test_describe_time_states_utc(tz_berlin) -> None:
    ts = _ts("2026-11-23T02:00:00+01:00")
    text = describe_time(ts)
    assert text == "2026-11-23 02:00:00 CET (2026-11-23 01:00:00 UTC)"


def test_submit_at_is_stated_in_utc_too(tz_berlin) -> None:
    ts = parse_at("2026-11-23T02:00", _ts("2026-11-22T13:00:00+01:00"))
    assert datetime.fromtimestamp(ts, tz=timezone.utc).hour == 1


# --------------------------------------------------------------------------- waiting


def _spec(job_id: str, out: str, **kw):
    from linegen.settings.model_choice import ModelChoice
    from linegen.jobs.spec import JobSpec

    return JobSpec(job_id=job_id, manifest="m.jsonl", out=out, model=ModelChoice("test-tiny"), **kw)


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


def test_wait_until_start_at(tmp_path: Path) -> None:
    clock = FakeClock()
    logs: list[str] = []
    wait_for_start(_spec("j", str(tmp_path), start_at=clock.t + 150), LocalStorage(tmp_path),
                   sleep=clock.sleep, clock=clock, log=logs.append)
    assert clock.t >= 1150 and max(clock.sleeps) <= 60
    assert "scheduled for" in logs[0] and "UTC" in logs[0]
    clock2 = FakeClock()
    wait_for_start(_spec("j", str(tmp_path), start_at=clock2.t - 5), LocalStorage(tmp_path),
                   sleep=clock2.sleep, clock=clock2, log=logs.append)
    assert clock2.sleeps == []


def test_wait_after_success_failure_and_cancel(tmp_path: Path) -> None:
    st = LocalStorage(tmp_path)
    clock = FakeClock()

    def sleeper(s: float) -> None:
        clock.sleep(s)
        if len(clock.sleeps) == 3:
            st.put(layout.success_key("a"), b"{}")

    wait_for_start(_spec("b", str(tmp_path), after="a"), st, sleep=sleeper, clock=clock, ray_check=None,
                   log=lambda m: None, poll_s=1)
    assert len(clock.sleeps) == 3

    write_failed(st, "x", "manifest line 1: field 'class_id': bad")
    with pytest.raises(JobCancelled) as e:
        wait_for_start(_spec("b", str(tmp_path), after="x"), st, sleep=clock.sleep, clock=clock,
                       ray_check=None, log=lambda m: None)
    assert str(e.value) == "cancelled: job x failed: manifest line 1: field 'class_id': bad"

    write_cancelled(st, "y", "cancelled by user (linegen cancel)")
    with pytest.raises(JobCancelled, match="job y was cancelled: cancelled by user"):
        wait_for_start(_spec("b", str(tmp_path), after="y"), st, sleep=clock.sleep, clock=clock,
                       ray_check=None, log=lambda m: None)


def test_wait_after_uses_ray_when_no_marker(tmp_path: Path) -> None:
    st = LocalStorage(tmp_path)
    assert dependency_state(st, "k", lambda other: None).state == "waiting"
    dep = dependency_state(st, "k", lambda other: "its Ray job k ended FAILED")
    assert dep.state == "failed" and dep.reason == "job k failed: its Ray job k ended FAILED"


def test_ray_fallback_sees_attempts_that_all_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    from linegen.jobs import schedule
    from linegen.jobs.schedule import _ray_check

    states: list = []
    monkeypatch.setattr(schedule, "jobs_from_inside", lambda: states)
    assert _ray_check("a") is None  # nothing known
    states[:] = [_js("a", "FAILED", {"linegen_job_id": "a"}, "Job entrypoint command failed with exit code -9"),
                 _js("a-resume-1", "RUNNING", {"linegen_job_id": "a"})]
    assert _ray_check("a") is None  # an attempt is still running
    states[1] = _js("a-resume-1", "STOPPED", {"linegen_job_id": "a"})
    states[1].end_time = 5.0
    assert _ray_check("a") == "its Ray job a-resume-1 ended STOPPED"
    states.append(_js("a-resume-2", "SUCCEEDED", {"linegen_job_id": "a"}))
    assert _ray_check("a") is None  # success is decided by its _SUCCESS marker


def test_shown_url_hides_credentials() -> None:
    from linegen.cluster.address import redact_url as shown_url

    assert shown_url("http://u:secret@proxy:8265/ray") == "http://u:***@proxy:8265/ray"
    assert shown_url("http://head:8265") == "http://head:8265"


def test_ignore_schedule_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(IGNORE_SCHEDULE_ENV, "1")
    clock = FakeClock()
    wait_for_start(_spec("b", str(tmp_path), start_at=clock.t + 1e6, after="never"), LocalStorage(tmp_path),
                   sleep=clock.sleep, clock=clock)
    assert clock.sleeps == []


# --------------------------------------------------------------------------- markers and spec


def test_outcome_markers(tmp_path: Path) -> None:
    st = LocalStorage(tmp_path)
    assert read_outcome(st, "j") is None
    write_failed(st, "j", "boom\nline two")
    o = read_outcome(st, "j")
    assert (o.state, o.reason) == ("failed", "boom | line two")
    assert write_cancelled(st, "j", "cancelled by user") is True
    assert write_cancelled(st, "j", "stopped (SIGTERM)") is False  # the first reason wins
    assert read_outcome(st, "j").reason == "cancelled by user"
    assert write_failed(st, "j", "later") is False  # a cancellation is not turned into a failure
    clear_outcome(st, "j")
    assert read_outcome(st, "j") is None


def test_old_job_json_still_loads() -> None:
    from linegen.jobs.spec import JobSpec

    spec = _spec("j", "/o", start_at=5.0, after="a", prices={"H100": 2.0})
    d = json.loads(spec.to_json())
    assert JobSpec.from_json(json.dumps(d)) == spec
    for k in ("start_at", "after", "prices"):
        d.pop(k)
    old = JobSpec.from_json(json.dumps(d))
    assert (old.start_at, old.after, old.prices) == (None, None, None)
    assert old.same_work(spec)  # the schedule is not part of the work: resume still matches


# --------------------------------------------------------------------------- the driver, locally


def _prepared(out: Path, job_id: str, **kw):
    from linegen.jobs.prepare import prepare_job

    manifest = out.parent / f"{job_id}.jsonl"
    manifest.write_text('{"class_id": 1, "count": 2}\n')
    spec = replace(_spec(job_id, str(out), shard_size=2), manifest=str(manifest), **kw)
    prepare_job(spec)
    return spec


def _driver(out: Path, job_id: str, **kw) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "LINEGEN_"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen([sys.executable, "-m", "linegen.jobs.driver", str(out), job_id], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_driver_sigterm_while_scheduled_writes_cancelled(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _prepared(out, "sched", start_at=time.time() + 3600)
    proc = _driver(out, "sched")
    try:
        deadline = time.time() + 60
        line = proc.stderr.readline()  # "linegen: job sched is scheduled for ..."
        assert "scheduled for" in line and "UTC" in line, line
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=max(1, deadline - time.time()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc != 0
    o = read_outcome(LocalStorage(out), "sched")
    assert o.state == "cancelled" and "SIGTERM" in o.reason
    assert not list((out / "sched").glob("_commits/*"))


def test_driver_after_failed_job_is_cancelled(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _prepared(out, "dep", after="base")
    write_failed(LocalStorage(out), "base", "1 shard(s) failed after all attempts")
    proc = _driver(out, "dep")
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    assert "cancelled: job base failed: 1 shard(s) failed after all attempts" in stderr
    o = read_outcome(LocalStorage(out), "dep")
    assert (o.state, o.reason) == ("cancelled", "job base failed: 1 shard(s) failed after all attempts")


# --------------------------------------------------------------------------- state, ids, headers, env


def _js(sid, status, meta=None, message=""):
    from linegen.cluster.jobs_api import JobState

    return JobState(submission_id=sid, status=status, metadata=meta or {}, message=message)


def test_attempt_ids_and_grouping() -> None:
    from linegen.jobs.remote.attempts import attempt_number, attempts_of, group_attempts

    assert attempt_number("j", "j") == 0 and attempt_number("j-resume-12", "j") == 12
    states = [_js("j-resume-2", "RUNNING", {"linegen_job_id": "j"}), _js("j", "STOPPED", {"linegen_job_id": "j"}),
              _js("j-resume-1", "FAILED", {"linegen_job_id": "j"}), _js("other", "SUCCEEDED"),
              _js("k", "SUCCEEDED", {"linegen_job_id": "k"})]
    assert [s.submission_id for s in attempts_of(states, "j")] == ["j", "j-resume-1", "j-resume-2"]
    assert set(group_attempts(states)) == {"j", "k"}


def test_derive_state() -> None:
    from linegen.jobs.outcome import Outcome
    from linegen.jobs.progress import JobProgress
    from linegen.jobs.remote.attempts import derive_state

    now = 1000.0
    spec = _spec("j", "/o", start_at=2000.0)
    p = JobProgress(job_id="j", spec=spec)
    assert derive_state([_js("j", "RUNNING")], p, spec, now=now)[0] == "SCHEDULED"
    assert derive_state([_js("j", "RUNNING", {"linegen_ignore_schedule": "1"})], p, spec, now=now)[0] == "RUNNING"
    spec2 = _spec("j", "/o", after="a")
    assert derive_state([_js("j", "RUNNING")], p, spec2, dep_succeeded=lambda a: False, now=now) == \
        ("WAITING", "waits for job a to succeed")
    assert derive_state([_js("j", "RUNNING")], p, spec2, dep_succeeded=lambda a: True, now=now)[0] == "RUNNING"
    assert derive_state([_js("j", "PENDING")], p, spec2, now=now)[0] == "PENDING"
    p.outcome = Outcome("cancelled", "job a failed: x")
    assert derive_state([_js("j", "FAILED")], p, spec2, now=now) == ("CANCELLED", "job a failed: x")
    p.outcome = None
    assert derive_state([_js("j", "STOPPED")], p, spec2, now=now)[0] == "CANCELLED"
    msg = "Job entrypoint command failed with exit code 1, last available logs:\nTraceback...\nModuleNotFoundError: No module named 'torch'"
    state, reason = derive_state([_js("j", "FAILED", message=msg)], p, spec2, now=now)
    assert state == "FAILED" and "no module 'torch'" in reason and "every node" in reason
    assert derive_state([], p, spec2, now=now)[0] == "INCOMPLETE"
    assert derive_state([], p, spec2, now=now, cluster_known=False)[0] == "UNKNOWN"
    p.succeeded = True
    assert derive_state([_js("j", "RUNNING")], p, spec2, now=now)[0] == "SUCCEEDED"


def test_parse_headers() -> None:
    from linegen.jobs.remote import parse_headers

    assert parse_headers(["X-Proxy=abc", "Cookie: a=b"]) == {"X-Proxy": "abc", "Cookie": "a=b"}
    with pytest.raises(UserError):
        parse_headers(["novalue"])
    with pytest.raises(UserError):
        parse_headers(["bad name=1"])


def test_runtime_env_ships_code_and_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from linegen.jobs.remote.shipping import PACKAGES, runtime_env, staged_code

    monkeypatch.setenv("LINEGEN_RAY_TOKEN", "tok-secret-123")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-456")
    with staged_code() as code:
        env = runtime_env(code=code, attempt="j", s3_endpoint_url="http://s3:9000")
        # One folder named after the namespace, holding every package the driver imports, no caches.
        assert [Path(p).name for p in env["py_modules"]] == ["linegen"]
        shipped = Path(env["py_modules"][0])
        assert (shipped / "__init__.py").is_file() and (shipped / "errors.py").is_file()
        assert all((shipped / name / "__init__.py").is_file() for name in PACKAGES)
        assert (shipped / "jobs" / "driver.py").is_file() and (shipped / "jobs" / "storage" / "s3.py").is_file()
        assert not list(shipped.rglob("__pycache__"))
        text = json.dumps(env) + "".join(p.read_text(errors="replace") for p in shipped.rglob("*.py"))
    assert not code.exists()  # the staging folder is gone after the upload
    assert "__pycache__" in env["excludes"]
    assert env["env_vars"]["LINEGEN_S3_ENDPOINT_URL"] == "http://s3:9000"
    assert "tok-secret-123" not in text and "aws-secret-456" not in text
    assert "py_modules" not in runtime_env(code=None, attempt="j", s3_endpoint_url=None)


def test_estimate_from_table_and_no_measurement(tmp_path: Path) -> None:
    from linegen.cost.estimate import estimate

    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"class_id": 1, "count": 1000}\n{"class_id": 2, "count": 500}\n')
    rows = [{"model": "test-tiny", "device": "NVIDIA H100 80GB HBM3", "cache_policy": "linear", "ratio": "1/6",
             "images_per_s": 300.0, "batch": 64, "source": "test row", "date": "2026-11-22"}]
    doc = estimate(str(manifest), "test-tiny", "H100", cache="linear", cache_ratio="1/6", gpus=2,
                   prices={"H100": 3.6}, table=rows)
    assert doc["images"] == {"done": None, "total": 1500} and doc["throughput"]["kind"] == "benchmark"
    assert doc["usd"] == pytest.approx(1500 / 300 / 3600 * 3.6)
    assert doc["wall_hours"] == pytest.approx(1500 / 300 / 3600 / 2)
    assert "benchmark table" in doc["throughput"]["source"]
    none = estimate(str(manifest), "test-tiny", "H100", cache="full", prices={"H100": 3.6}, table=rows)
    assert none["throughput"] is None and none["usd"] is None
    assert "no measured throughput exists for test-tiny on H100 with cache full" in none["reason"]
    assert none["images"] == {"done": None, "total": 1500}  # a readable manifest is still counted
    # the missing measurement is found before the manifest is read (issue 15, C8): even a manifest
    # that does not exist gets the "no measurement" answer, not a manifest error
    gone = estimate(str(tmp_path / "absent.jsonl"), "test-tiny", "H100", cache="full", table=rows)
    assert gone["throughput"] is None and "no measured throughput" in gone["reason"]


def test_estimate_from_the_shipped_table(tmp_path: Path) -> None:
    from linegen.cost.estimate import estimate

    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"class_id": 1, "count": 100}\n')
    doc = estimate(str(manifest), "test-tiny", "cpu", prices={"CPU": 1.0})
    assert doc["throughput"]["kind"] == "benchmark" and "throughput.json" in doc["throughput"]["source"]
    assert doc["usd"] == pytest.approx(100 / doc["throughput"]["images_per_device_s"] / 3600)


def test_throughput_table_rows_are_complete() -> None:
    from linegen.cost.estimate import TABLE_PATH

    data = json.loads(TABLE_PATH.read_text())
    for row in data["rows"]:
        assert {"model", "device", "cache_policy", "ratio", "images_per_s", "batch", "source", "date"} <= set(row)
        assert row["images_per_s"] > 0
