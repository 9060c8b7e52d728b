"""Remote clusters end to end: `linegen submit/status/list/logs/cancel/resume/monitor/cost` against
real Ray heads (`ray start --head` on free loopback ports, shared by the test session), with the
test-tiny model and a local output folder (the head runs on this machine). The commands run
in-process through Typer's CliRunner (tests/cli_runner.py): they only talk to the cluster's HTTP
API and to storage, and the jobs themselves run as real Ray jobs on the head. Checks that nothing
printed holds a secret run the command as a real process (`lg_proc`)."""
from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import jobs_helpers as H
from cli_runner import invoke
from linegen.cluster import jobs_api
from linegen.cluster.local import free_port

LINEGEN = str(Path(sys.executable).parent / "linegen")
JOB_ARGS = ["--model", "test-tiny", "--device", "cpu", "--shard-size", "4", "--batch-size", "2"]


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """An empty config home, so no user config file changes what the commands do."""
    return tmp_path_factory.mktemp("cfg")


def _env(home: Path, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_", "LINEGEN_"))}
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "XDG_CONFIG_HOME": str(home), "COLUMNS": "200"})
    env.update(extra or {})
    return env


def lg(home: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`linegen ARGS` in-process, with exactly the environment `_env` gives."""
    return invoke(list(args), env=_env(home, env))


def lg_proc(home: Path, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`linegen ARGS` as a real process: for checks that nothing it prints holds a secret (Ray's own
    loggers write to the process's stderr, which an in-process run would not capture)."""
    return subprocess.run([LINEGEN, *args], capture_output=True, text=True, timeout=timeout, env=_env(home, env))


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0, r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def manifest(path: Path, images: int) -> Path:
    rows = [{"class_id": i % 10, "count": 1} for i in range(images)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def jid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def status(home: Path, job: str, *args: str) -> dict:
    return json.loads(ok(lg(home, "status", job, "--json", *args)).stdout)


def quick_status(home: Path, url: str, job: str) -> dict:
    """`linegen status --json` in-process (same function), for checks that race a clock."""
    from linegen.jobs.remote import job_status, make_context

    cfg = home / "empty.toml"
    cfg.touch()
    return job_status(make_context(cluster=url, config=str(cfg)), job).to_dict()


def wait_ray(address, sid: str, timeout: float = 150, until=jobs_api.TERMINAL_STATUSES):
    return jobs_api.wait(address, sid, timeout=timeout, poll=0.3, until=until)


def commits(out: Path, job: str) -> list[str]:
    return sorted(p.stem for p in (out / job / "_commits").glob("*.json"))


def item_ids(out: Path, job: str) -> list[str]:
    """Every image row of every committed shard (what a reader trusts)."""
    ids: list[str] = []
    for shard in commits(out, job):
        ids += pq.read_table(out / job / "images" / f"{shard}.parquet", columns=["item_id"]).column("item_id").to_pylist()
    return ids


@pytest.fixture(scope="module")
def done_job(ray_head, home, tmp_path_factory):
    """One 12-image job submitted and run to the end (shared by several tests)."""
    d = tmp_path_factory.mktemp("done")
    out, job = d / "out", jid("twelve")
    m = manifest(d / "m.jsonl", 12)
    r = ok(lg(home, "submit", str(m), "--cluster", ray_head.url, "--out", str(out), "--job-id", job, *JOB_ARGS))
    state = wait_ray(ray_head.address(), job)
    assert state.status == "SUCCEEDED", state.message
    return {"out": out, "job": job, "manifest": m, "submit": r}


# --------------------------------------------------------------------------- submit / status / cost


def test_submit_runs_once_exactly_once_output(ray_head, home, done_job) -> None:
    out, job = done_job["out"], done_job["job"]
    assert done_job["submit"].stdout.strip() == job  # prints the job id (details on stderr)
    assert "submitted" in done_job["submit"].stderr

    assert commits(out, job) == ["shard-00000", "shard-00001", "shard-00002"]
    ids = item_ids(out, job)
    assert len(ids) == 12 and len(set(ids)) == 12
    success = json.loads((out / job / "_SUCCESS").read_text())
    assert success["images"] == {"done": 12, "total": 12} and success["cost"]["usd"] > 0
    assert (out / job / "manifest.jsonl").read_bytes() == done_job["manifest"].read_bytes()

    doc = status(home, job, "--cluster", ray_head.url)
    assert doc["state"] == "SUCCEEDED" and doc["errors"] == []
    assert doc["shards"] == {"done": 3, "total": 3} and doc["images"] == {"done": 12, "total": 12}
    assert doc["progress"] == 1.0 and doc["cost"]["usd"] > 0 and doc["cost"]["usd_per_1k_images"] > 0
    assert doc["out"] == str(out)  # found from the Ray job's metadata

    # The same job again: not run a second time.
    marker = out / job / "_commits" / "shard-00000.json"
    before = marker.stat().st_mtime_ns
    r = ok(lg(home, "submit", str(done_job["manifest"]), "--cluster", ray_head.url, "--out", str(out),
              "--job-id", job, *JOB_ARGS))
    assert "already submitted" in r.stderr and r.stdout.strip() == job
    runs = [s for s in jobs_api.list_jobs(ray_head.address()) if (s.metadata or {}).get("linegen_job_id") == job]
    assert [s.submission_id for s in runs] == [job] and runs[0].status == "SUCCEEDED"
    assert marker.stat().st_mtime_ns == before
    meta = runs[0].metadata
    assert meta["linegen_out"] == str(out) and meta["linegen_attempt"] == "0"

    # status from the output root alone (no cluster): the job's own outputs say it succeeded
    assert status(home, job, "--out", str(out))["state"] == "SUCCEEDED"
    # the config file's default cluster
    cfg = home / "cluster.toml"
    cfg.write_text(f'[cluster]\naddress = "{ray_head.url}"\n')
    assert status(home, job, "--config", str(cfg))["state"] == "SUCCEEDED"
    log = ok(lg(home, "logs", job, "--cluster", ray_head.url)).stdout  # the driver's progress, readable
    assert f"job {job}: 12/12 images (100%)" in log and "finished: 12/12 images" in log and '{"progress"' not in log
    assert '"summary"' in ok(lg(home, "logs", job, "--cluster", ray_head.url, "--json")).stdout  # raw


def test_cost_from_stats_with_given_price(home, done_job) -> None:
    out, job = done_job["out"], done_job["job"]
    wall = sum(sum(pq.read_table(f, columns=["wall_s"]).column("wall_s").to_pylist())
               for f in (out / job / "stats").glob("*.parquet"))
    doc = json.loads(ok(lg(home, "cost", job, "--out", str(out), "--price", "CPU=3.6", "--json")).stdout)
    assert doc["device_seconds"] == pytest.approx(wall)
    assert doc["usd"] == pytest.approx(wall / 3600 * 3.6)
    assert doc["usd_per_1k_images"] == pytest.approx(wall / 3600 * 3.6 / 12 * 1000)
    assert doc["prices"]["cpu"]["usd_per_hour"] == 3.6 and doc["complete"] is True
    table = ok(lg(home, "cost", job, "--out", str(out), "--price", "CPU=3.6")).stdout
    assert "per 1k images" in table

    # a price from the config file, overridden again by --price
    cfg = home / "prices.toml"
    cfg.write_text("[prices]\nCPU = 7.2\n")
    doc = json.loads(ok(lg(home, "cost", job, "--out", str(out), "--config", str(cfg), "--json")).stdout)
    assert doc["usd"] == pytest.approx(wall / 3600 * 7.2)


def test_estimate_from_measured_stats_or_says_none(home, done_job, tmp_path: Path) -> None:
    out, job = done_job["out"], done_job["job"]
    m = manifest(tmp_path / "big.jsonl", 3000)
    r = lg(home, "cost", "--estimate", str(m), "--model", "test-tiny", "--gpu", "H100")
    line = one_line_error(r)
    assert "no measured throughput exists for test-tiny on H100" in line

    doc = json.loads(ok(lg(home, "cost", "--estimate", str(m), "--model", "test-tiny", "--gpu", "CPU",
                           "--from-job", job, "--out", str(out), "--price", "CPU=1", "--json")).stdout)
    assert doc["images"] == {"done": None, "total": 3000} and doc["throughput"]["kind"] == "job-stats"
    assert f"stats of job {job}" in doc["throughput"]["source"]
    rate = doc["throughput"]["images_per_device_s"]
    assert doc["usd"] == pytest.approx(3000 / rate / 3600 * 1.0)
    # without --from-job, a finished matching job under --out is found by itself
    doc = json.loads(ok(lg(home, "cost", "--estimate", str(m), "--model", "test-tiny", "--gpu", "CPU",
                           "--out", str(out), "--json")).stdout)
    assert doc["throughput"]["kind"] == "job-stats" and job in doc["throughput"]["source"]


# --------------------------------------------------------------------------- cancel / resume / monitor


def test_cancel_mid_run_then_resume_exactly_once(ray_head, home, tmp_path: Path) -> None:
    out, job = tmp_path / "out", jid("long")
    m = manifest(tmp_path / "m.jsonl", 160)
    ok(lg(home, "submit", str(m), "--cluster", ray_head.url, "--out", str(out), "--job-id", job, *JOB_ARGS))
    H.wait_for(lambda: commits(out, job), 150, "the first commit")

    r = ok(lg(home, "cancel", job, "--cluster", ray_head.url))
    assert "cancelled" in r.stdout and f"`linegen resume {job} --cluster {ray_head.url}`" in r.stdout
    assert jobs_api.status(ray_head.address(), job).status == "STOPPED"
    stopped = quick_status(home, ray_head.url, job)
    assert stopped["state"] == "CANCELLED" and "cancelled by user" in stopped["reason"]
    time.sleep(2.0)
    done_at_cancel = commits(out, job)
    assert 1 <= len(done_at_cancel) < 40, "the job ended before it could be cancelled"
    time.sleep(2.0)
    assert commits(out, job) == done_at_cancel  # stopped means stopped
    ids = item_ids(out, job)
    assert len(ids) == 4 * len(done_at_cancel) == len(set(ids))  # committed shards are valid
    assert status(home, job, "--cluster", ray_head.url)["images"]["done"] == len(ids)

    r = ok(lg(home, "resume", job, "--cluster", ray_head.url, "--json"))
    res = json.loads(r.stdout)
    assert res["status"] == "submitted" and res["submission_id"] == f"{job}-resume-1"
    H.wait_for(lambda: len(commits(out, job)) > len(done_at_cancel), 120, "the resumed attempt's first commit")
    running = quick_status(home, ray_head.url, job)
    snap = json.loads(ok(lg(home, "monitor", "--cluster", ray_head.url, "--once", "--json")).stdout)
    again = json.loads(ok(lg(home, "resume", job, "--cluster", ray_head.url, "--json")).stdout)
    assert again["status"] in ("already running", "already complete")

    assert running["state"] == "RUNNING" and len(ids) < running["images"]["done"] < 160
    assert running["cost"]["usd"] > 0 and running["cost"]["projected_usd"] >= running["cost"]["usd"]
    assert snap["nodes"] and snap["nodes"][0]["alive"] and snap["cpus"]["total"] >= 1
    assert snap["gpus"]["total"] == 0 and snap["gpus"]["utilisation_percent"] is None
    assert {job, f"{job}-resume-1"} <= {j["submission_id"] for j in snap["jobs"]}
    mine = [j for j in snap["linegen_jobs"] if j["job_id"] == job]
    assert len(mine) == 1 and mine[0]["state"] in ("RUNNING", "SUCCEEDED")
    assert mine[0]["images"]["total"] == 160 and mine[0]["images"]["done"] > len(ids)
    assert mine[0]["cost"]["usd"] > 0

    state = wait_ray(ray_head.address(), f"{job}-resume-1")
    assert state.status == "SUCCEEDED", state.message
    assert len(commits(out, job)) == 40
    ids = item_ids(out, job)
    assert len(ids) == 160 and len(set(ids)) == 160
    final = status(home, job, "--cluster", ray_head.url)
    assert final["state"] == "SUCCEEDED" and final["images"] == {"done": 160, "total": 160}
    assert [a["submission_id"] for a in final["attempts"]] == [job, f"{job}-resume-1"]
    listed = json.loads(ok(lg(home, "list", "--cluster", ray_head.url, "--json")).stdout)
    entry = [d for d in listed if d["job_id"] == job]
    assert len(entry) == 1 and len(entry[0]["attempts"]) == 2  # attempts grouped under the job id
    assert json.loads(ok(lg(home, "resume", job, "--cluster", ray_head.url, "--json")).stdout)["status"] == "already complete"
    table = ok(lg(home, "list", "--cluster", ray_head.url)).stdout
    assert job in table and "SUCCEEDED" in table


# --------------------------------------------------------------------------- scheduling


def _actors_of(address, job: str) -> list[dict]:
    rows = jobs_api.http_get_json(address, "/api/v0/actors?limit=10000")["data"]["result"]["result"]
    return [a for a in rows if (a.get("name") or "").startswith(f"linegen-{job}-") and a.get("state") != "DEAD"]


AT_DELAY_S = 20  # long enough for the drivers to be up and seen waiting on a busy machine


@pytest.fixture(scope="module", autouse=True)
def scheduled(ray_head, home, tmp_path_factory) -> dict:
    """Job `first` submitted ``--at`` AT_DELAY_S from now and `second` ``--after`` it, before any
    other test of this module, so that the wait for `first`'s time overlaps the tests in between
    instead of being slept through. Records what the jobs looked like while waiting; the checks
    are in test_at_waits_then_runs_and_after_follows."""
    d = tmp_path_factory.mktemp("at")
    out, first, second = d / "out", jid("at"), jid("after")
    m = manifest(d / "m.jsonl", 8)
    start = int(time.time()) + AT_DELAY_S
    at = datetime.fromtimestamp(start).strftime("%Y-%m-%dT%H:%M:%S")  # local time
    seen: dict = {"out": out, "first": first, "second": second, "start": start}
    seen["submit_first"] = lg(home, "submit", str(m), "--cluster", ray_head.url, "--out", str(out), "--job-id", first,
                              "--at", at, *JOB_ARGS)
    seen["submit_second"] = lg(home, "submit", str(m), "--cluster", ray_head.url, "--out", str(out), "--job-id",
                               second, "--after", first, *JOB_ARGS)
    if seen["submit_first"].returncode or seen["submit_second"].returncode:
        return seen  # the test reports it
    seen["status_at_submit"] = quick_status(home, ray_head.url, first)
    seen["submitted_by"] = time.time()
    # the driver is up (Ray: RUNNING) and waits: no workers, no commits, the dependent waits too
    wait_ray(ray_head.address(), first, timeout=30, until={"RUNNING", *jobs_api.TERMINAL_STATUSES})
    wait_ray(ray_head.address(), second, timeout=30, until={"RUNNING", *jobs_api.TERMINAL_STATUSES})
    seen["waiting"] = None
    if time.time() < start - 1:
        seen["waiting"] = {"first": quick_status(home, ray_head.url, first)["state"],
                           "second": quick_status(home, ray_head.url, second)["state"],
                           "actors": _actors_of(ray_head.address(), first), "commits": commits(out, first)}
        seen["waiting_checked_at"] = time.time()
    return seen


def test_at_waits_then_runs_and_after_follows(ray_head, home, scheduled) -> None:
    out, first, second, start = (scheduled[k] for k in ("out", "first", "second", "start"))
    r = ok(scheduled["submit_first"])
    assert "UTC" in r.stderr and "starts" in r.stderr
    r = ok(scheduled["submit_second"])
    assert f"after     job {first}" in r.stderr

    doc = scheduled["status_at_submit"]
    assert doc["schedule"]["start_at_utc"].endswith("Z") and doc["schedule"]["start_at"] == start
    if scheduled["submitted_by"] < start - 1:
        assert doc["state"] in ("PENDING", "SCHEDULED"), doc
    waiting = scheduled["waiting"]
    if waiting is not None and scheduled["waiting_checked_at"] < start - 1:
        assert waiting["first"] == "SCHEDULED" and waiting["second"] == "WAITING", waiting
        assert waiting["actors"] == []  # waiting holds no workers (no GPU)
        assert waiting["commits"] == []

    state = wait_ray(ray_head.address(), first)
    assert state.status == "SUCCEEDED", state.message
    first_batch = min(min(t.timestamp() for t in pq.read_table(f, columns=["started_at"]).column("started_at").to_pylist())
                      for f in (out / first / "stats").glob("*.parquet"))
    assert first_batch >= start  # it ran only after its time

    state = wait_ray(ray_head.address(), second)
    assert state.status == "SUCCEEDED", state.message
    succ = json.loads((out / first / "_SUCCESS").read_text())
    second_batch = min(min(t.timestamp() for t in pq.read_table(f, columns=["started_at"]).column("started_at").to_pylist())
                       for f in (out / second / "stats").glob("*.parquet"))
    assert second_batch >= succ["finished_at"]  # it ran only after the other job succeeded
    assert len(set(item_ids(out, second))) == 8


def gate_job(out: Path, job: str, m: Path) -> Path:
    """A job folder that never runs (prepared here, no Ray): a job submitted ``--after`` it waits
    until the test writes the returned ``_SUCCESS`` path, a release under the test's control
    instead of a wall-clock wait."""
    from linegen.jobs import layout
    from linegen.jobs.prepare import prepare_job
    from linegen.jobs.spec import JobSpec

    prepare_job(JobSpec.from_flags(manifest=str(m), out=str(out), job_id=job, model="test-tiny", random_weights=True))
    return out / layout.success_key(job)


def test_after_a_failing_job_is_cancelled_with_its_reason(ray_head, home, tmp_path: Path) -> None:
    out, base, dep = tmp_path / "out", jid("base"), jid("dep")
    m = manifest(tmp_path / "m.jsonl", 8)
    mb = manifest(tmp_path / "base.jsonl", 8)
    release = gate_job(out, jid("gate"), m)
    ok(lg(home, "submit", str(mb), "--cluster", ray_head.url, "--out", str(out), "--job-id", base,
          "--after", release.parent.name, *JOB_ARGS))
    # Break the job behind the scheduler's back (its manifest and the job's copy of it): its
    # driver re-reads the manifest when it starts, after its wait, and fails.
    for f in (mb, out / base / "manifest.jsonl"):
        f.write_text('{"class_id": "not a number"}\n')
    ok(lg(home, "submit", str(m), "--cluster", ray_head.url, "--out", str(out), "--job-id", dep,
          "--after", base, *JOB_ARGS))
    release.write_text("{}")

    assert wait_ray(ray_head.address(), base).status == "FAILED"
    assert wait_ray(ray_head.address(), dep, timeout=60).status == "FAILED"  # exited non-zero
    b = status(home, base, "--cluster", ray_head.url)
    assert b["state"] == "FAILED" and "class_id" in b["reason"]
    d = status(home, dep, "--cluster", ray_head.url)
    assert d["state"] == "CANCELLED"
    assert d["reason"].startswith(f"job {base} failed: ") and "class_id" in d["reason"]
    assert commits(out, dep) == [] and not (out / dep / "_SUCCESS").exists()
    assert f"cancelled: job {base} failed" in ok(lg(home, "logs", dep, "--cluster", ray_head.url)).stdout

    # submitting another dependent of a failed job is refused at once
    line = one_line_error(lg(home, "submit", str(m), "--cluster", ray_head.url, "--out", str(out),
                             "--job-id", jid("dep2"), "--after", base, *JOB_ARGS))
    assert f"job {base} failed" in line


# --------------------------------------------------------------------------- token auth


def test_token_auth(ray_head_token, home, tmp_path: Path) -> None:
    head, token = ray_head_token, ray_head_token.token
    out, job = tmp_path / "out", jid("tok")
    m = manifest(tmp_path / "m.jsonl", 4)
    args = ["submit", str(m), "--cluster", head.url, "--out", str(out), "--job-id", job, *JOB_ARGS]

    line = one_line_error(lg(home, *args))
    assert "rejected the token (missing or wrong)" in line and "no token was sent" in line
    wrong = "f" * 64
    line = one_line_error(lg(home, *args, "--token", wrong))
    assert "rejected the token" in line and wrong not in line
    assert not (out / job).exists()  # nothing was prepared for a refused submission

    r = ok(lg_proc(home, *args, "--price", "CPU=2", env={"LINEGEN_RAY_TOKEN": token}))
    assert token not in r.stdout + r.stderr
    state = wait_ray(head.address(), job)
    assert state.status == "SUCCEEDED", state.message
    success = json.loads((out / job / "_SUCCESS").read_text())  # priced as given at submit
    assert success["cost"]["usd"] == pytest.approx(success["device_seconds"] / 3600 * 2)

    # Inside the cluster a driver reaches the Jobs API with Ray's own address and token (what a
    # job waiting --after another one uses when that one left no marker).
    probe = "python -c \"from linegen.cluster.inside import jobs_from_inside as j; print('SEEN=%d' % len(j() or []))\""
    assert jobs_api.submit(head.address(), probe, f"{job}-probe")
    assert wait_ray(head.address(), f"{job}-probe").status == "SUCCEEDED"
    seen = re.findall(r"^SEEN=(\d+)$", jobs_api.logs(head.address(), f"{job}-probe"), re.M)
    assert seen and int(seen[0]) >= 2, seen

    # Ray's own token file with RAY_AUTH_MODE=token, and --token
    tf = tmp_path / "auth_token"
    tf.write_text(token + "\n")
    doc_text = ok(lg(home, "status", job, "--cluster", head.url, "--json",
                     env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tf)})).stdout
    assert json.loads(doc_text)["state"] == "SUCCEEDED"
    doc_text2 = ok(lg(home, "status", job, "--cluster", head.url, "--json", "--token", token)).stdout
    logs = ok(lg_proc(home, "logs", job, "--cluster", head.url, "--token-file", str(tf))).stdout
    # a config file naming the cluster and a token file; an explicit header (e.g. set by a proxy)
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[cluster]\naddress = "{head.url}"\ntoken_file = "{tf}"\n[output]\nout = "{out}"\n')
    listed = ok(lg(home, "list", "--config", str(cfg), "--json")).stdout
    assert [d["job_id"] for d in json.loads(listed)] == [job] and token not in listed
    ok(lg(home, "status", job, "--cluster", head.url, "--header", f"Authorization=Bearer {token}"))
    # the secret is nowhere: status, job.json, Ray's job metadata, logs
    assert token not in doc_text and token not in doc_text2 and token not in logs
    assert token not in (out / job / "job.json").read_text()
    info = jobs_api.status(head.address(), job)
    assert token not in json.dumps(info.metadata) and info.metadata["linegen_job_id"] == job


def test_submit_stores_no_url_credentials(ray_head, home, tmp_path: Path) -> None:
    """Credentials in --cluster and --s3-endpoint-url (issue 15, B): the job runs, and neither
    job.json, Ray's job metadata and runtime env, nor anything printed holds them."""
    secret = "pw-" + uuid.uuid4().hex[:8]
    out, job = tmp_path / "out", jid("sec")
    m = manifest(tmp_path / "m.jsonl", 2)
    cluster = ray_head.url.replace("http://", f"http://alice:{secret}@")
    endpoint = f"http://bob:{secret}@127.0.0.1:{free_port()}"  # unused by a local --out, but recorded
    r = ok(lg_proc(home, "submit", str(m), "--cluster", cluster, "--out", str(out), "--job-id", job,
                   "--s3-endpoint-url", endpoint, *JOB_ARGS))
    assert secret not in r.stdout + r.stderr and "LINEGEN_S3_ENDPOINT_URL" in r.stderr  # the warning
    state = wait_ray(ray_head.address(), job)
    assert state.status == "SUCCEEDED", state.message
    client = jobs_api.connect(ray_head.address())
    info = client.get_job_info(job)
    stored = json.dumps({"metadata": info.metadata, "runtime_env": info.runtime_env, "entrypoint": info.entrypoint})
    assert secret not in stored and "bob:***@127.0.0.1" in stored, stored
    assert secret not in (out / job / "job.json").read_text()
    assert secret not in jobs_api.logs(ray_head.address(), job)
    doc = ok(lg_proc(home, "status", job, "--cluster", cluster, "--json"))
    assert secret not in doc.stdout + doc.stderr and json.loads(doc.stdout)["state"] == "SUCCEEDED"
    assert json.loads(doc.stdout)["cluster"] == cluster.replace(secret, "***")


# --------------------------------------------------------------------------- one-line errors


def test_errors_are_one_line(ray_head, home, tmp_path: Path) -> None:
    m = manifest(tmp_path / "m.jsonl", 4)
    dead = f"http://127.0.0.1:{free_port()}"
    for args in (["status", "x", "--cluster", dead], ["list", "--cluster", dead], ["monitor", "--once", "--cluster", dead],
                 ["submit", str(m), "--cluster", dead, "--out", str(tmp_path / "o")]):
        line = one_line_error(lg(home, *args))
        assert line.startswith(f"error: cannot reach Ray cluster at {dead}: "), line

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        for args in (["status", "x", "--cluster", url], ["monitor", "--once", "--json", "--cluster", url]):
            line = one_line_error(lg(home, *args))
            assert line == f"error: {url} does not look like a Ray dashboard (HTTP 404 on /api/version)"
    finally:
        server.shutdown()
        server.server_close()

    for cmd in (["status", "nope"], ["logs", "nope"], ["cancel", "nope"], ["resume", "nope"], ["cost", "nope"]):
        line = one_line_error(lg(home, *cmd, "--cluster", ray_head.url))
        assert line == f"error: no job 'nope' on cluster {ray_head.url}", line
    line = one_line_error(lg(home, "status", "nope", "--out", str(tmp_path / "o")))
    assert line == f"error: no job 'nope' under {tmp_path / 'o'}"
    line = one_line_error(lg(home, "submit", str(m), "--cluster", ray_head.url, "--out", str(tmp_path / "o"),
                             "--at", "2001-01-01T00:00", *JOB_ARGS))
    assert "in the past" in line
    line = one_line_error(lg(home, "submit", str(m), "--cluster", ray_head.url, "--out", str(tmp_path / "o"),
                             "--after", "nope", *JOB_ARGS))
    assert "no job 'nope'" in line
    # no cluster and no --out: the job is looked for where `linegen run` writes (./out), like run
    r = invoke(["status", "x"], env=_env(home), cwd=tmp_path)
    assert one_line_error(r) == "error: no job 'x' under out"
