"""The footguns a new user hits (issue 15, C), each through the `linegen` CLI. Commands that only
read or refuse run in-process (`cli`, Typer's CliRunner); runs, generation and signals run as
real subprocesses (`lg`). Runs that need Ray are few and small (test-tiny, a handful of images)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from linegen.cluster.local import free_port

try:
    import jobs_helpers as H
    from cli_runner import invoke
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import jobs_helpers as H
    from tests.cli_runner import invoke

pytestmark = pytest.mark.timeout(400)


def _env(cwd: Path | None, env: dict | None) -> dict[str, str]:
    return H.clean_env({"XDG_CONFIG_HOME": str(cwd or "/nonexistent"), **(env or {})})


def lg(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`linegen ARGS` as a real subprocess."""
    return subprocess.run([H.LINEGEN, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=_env(cwd, env))


def cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`linegen ARGS` in-process, same environment as `lg`: for commands that only read or refuse."""
    return invoke(list(args), cwd=cwd, env=_env(cwd, env))


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode not in (0, None), r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def _prepared(base: Path, job: str, rows=({"class_id": 1, "count": 2},), **kw) -> Path:
    """A job folder as `run` leaves it before any shard (no Ray)."""
    from linegen.jobs.prepare import prepare_job
    from linegen.jobs.spec import JobSpec

    manifest = H.write_manifest(base / f"{job}.jsonl", list(rows))
    prepare_job(JobSpec.from_flags(manifest=str(manifest), out=str(base / "out"), job_id=job, model="test-tiny",
                                   random_weights=True, **kw))
    return manifest


# --out that looks like a URL but is not one ----------------------------------------------

@pytest.mark.parametrize("out, hint", [("s3:/bucket/x", "did you mean s3://bucket/x?"), ("s3:bucket/x", "s3://bucket/x"),
                                      ("gs://bucket/x", "use a local path")])
def test_scheme_like_out_is_refused_with_a_hint(tmp_path: Path, out: str, hint: str) -> None:
    manifest = H.write_manifest(tmp_path / "m.jsonl", [{"class_id": 1}])
    line = one_line_error(cli("run", str(manifest), "--out", out, *H.MODEL_ARGS, cwd=tmp_path))
    assert hint in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]  # no ./s3: folder


# help text -------------------------------------------------------------------------------

def test_help_keeps_bracketed_config_names() -> None:
    text = " ".join(cli("submit", "--help", env={"COLUMNS": "100"}).stdout.split())
    for words in ("[output] out", "[cluster] address", "[cluster] token_file", "[prices]"):
        assert words in text, words


# tables ----------------------------------------------------------------------------------

def test_models_and_list_never_cut_names_or_ids(tmp_path: Path) -> None:
    from linegen.workers.models.registry import MODELS

    r = cli("models", env={"COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    for name in MODELS:
        assert re.search(rf"│ {re.escape(name)}\b", r.stdout), f"{name} cut or wrapped:\n{r.stdout}"
    job = "a-rather-long-job-id-" + "x" * 60
    _prepared(tmp_path, job)
    r = cli("list", "--out", str(tmp_path / "out"), env={"COLUMNS": "60"})
    assert r.returncode == 0, r.stderr
    assert any(job in line and "UNKNOWN" in line for line in r.stdout.splitlines()), r.stdout


# local jobs: default --out, Ctrl-C -------------------------------------------------------

def test_local_commands_default_to_the_out_folder_of_run(tmp_path: Path) -> None:
    _prepared(tmp_path, "j")  # writes ./out/j, as `linegen run` does by default
    status = cli("status", "j", "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["out"] == "out"
    listed = cli("list", "--json", cwd=tmp_path)
    assert [d["job_id"] for d in json.loads(listed.stdout)] == ["j"]
    cost = cli("cost", "j", "--json", cwd=tmp_path)
    assert cost.returncode == 0 and json.loads(cost.stdout)["images"] == {"done": 0, "total": 2}, cost.stderr


def test_ctrl_c_is_cancelled_and_resume_finishes_a_local_job(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the foreground process group, as a terminal sends it) mid-run: `status`
    says interrupted, and `linegen resume JOB --out out` (no cluster) finishes it exactly once."""
    manifest = H.write_manifest(tmp_path / "m.jsonl", [{"class_id": 1, "count": 16}, {"class_id": 2, "count": 16}])
    job, out = "ctrlc", tmp_path / "out"
    commits = out / job / "_commits"
    proc = H.start_linegen(["run", str(manifest), "--out", "out", "--job-id", job, *H.MODEL_ARGS, "--shard-size", "4",
                            "--batch-size", "2"], cwd=tmp_path, log_dir=tmp_path / "logs")
    try:
        H.wait_for_commit(proc, commits)
        os.killpg(proc.pid, signal.SIGINT)
        first = H.finish_linegen(proc, 60)
    finally:
        H.kill_session(proc)
    assert first.returncode not in (0, None), first.describe()
    assert "Traceback" not in first.stderr, first.describe()
    status = json.loads(cli("status", job, "--json", cwd=tmp_path).stdout)
    assert status["state"] == "CANCELLED" and "interrupted" in status["reason"], status
    done_before = len(list(commits.glob("*.json")))
    assert done_before < 8, "the run finished before the interrupt"

    resumed = lg("resume", job, "--out", "out", "--json", cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    doc = json.loads(resumed.stdout)
    assert doc["status"] == "finished" and doc["summary"]["images"] == {"done": 32, "total": 32}
    files = H.local_files(out)
    assert H.marker_problems(files, job) == []
    ids = H.committed_item_ids(files, job)
    assert len(ids) == len(set(ids)) == 32
    assert json.loads(cli("status", job, "--json", cwd=tmp_path).stdout)["state"] == "SUCCEEDED"


# A reused job id naming what differs: tests/test_concurrent_jobs.py


# generate's output folder ----------------------------------------------------------------

def test_generate_replaces_its_own_files_and_refuses_others(tmp_path: Path) -> None:
    out = tmp_path / "g"
    args = ["generate", "--model", "test-tiny", "--class-id", "1", "--out", str(out)]
    assert lg(*args, "--count", "3").returncode == 0
    assert lg(*args, "--count", "1").returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "generate.json", "tokens.npy"]
    (out / "notes.txt").write_text("mine")
    line = one_line_error(lg(*args, "--count", "1"))
    assert "not empty" in line and "notes.txt" in line
    assert (out / "notes.txt").read_text() == "mine"


# the config file -------------------------------------------------------------------------

@pytest.mark.parametrize("text, key, line", [
    ('[models]\ntest-tiny = { checkpoint = "a.pt", chekpoint = "b.pt" }\n', "chekpoint", 2),
    ('[cluster]\naddress = "http://h:1"\n\n[models.test-tiny]\ncache = "linear"\ncahce_ratio = "1/4"\n', "cahce_ratio", 6),
    ('[s3]\nendpoint_url = "http://h:1"\nregion = "eu-west-1"\n', "region", 3),
])
def test_unknown_config_keys_name_key_and_line(tmp_path: Path, text: str, key: str, line: int) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    manifest = H.write_manifest(tmp_path / "m.jsonl", [{"class_id": 1}])
    for args in (["run", str(manifest), *H.MODEL_ARGS], ["generate", "--class-id", "1", *H.MODEL_ARGS],
                 ["status", "j"], ["submit", str(manifest)]):
        err = one_line_error(cli(*args, "--config", str(cfg), cwd=tmp_path))
        assert f"{cfg}, line {line}" in err and key in err, (args, err)


def test_models_entries_type_check_the_cache_keys(tmp_path: Path) -> None:
    from linegen.settings.config_file import ConfigError, parse_config

    cfg = parse_config('[models.test-tiny]\ncache = "linear"\ncache_ratio = 0.25\ncache_options = { anchors = 2 }\n',
                       "/x/c.toml")
    entry = cfg.models["test-tiny"]
    assert (entry.cache, entry.cache_ratio, entry.cache_options) == ("linear", "0.25", {"anchors": 2})
    for bad in ('cache = 3', 'cache_ratio = true', 'cache_options = "anchors=2"', 'cache_options = { a = [1] }'):
        with pytest.raises(ConfigError, match=r"c\.toml, line 2: \[models\] test-tiny\.cache"):
            parse_config(f"[models.test-tiny]\n{bad}\n", "/x/c.toml")


# An estimate without a measurement: tests/test_schedule.py::test_estimate_from_table_and_no_measurement


# a rejected token ------------------------------------------------------------------------

def test_rejected_token_names_ray_auth_mode() -> None:
    from linegen.cluster.address import ClusterAddress
    from linegen.cluster.jobs_api import auth_rejected

    assert "RAY_AUTH_MODE=token" in str(auth_rejected(ClusterAddress("http://h:8265"), 401))


# S3 throttling vs access denied: tests/test_storage.py::test_throttling_is_retried_by_botocore_but_access_denied_is_not


# a finished job, the config file and the summary's shape ---------------------------------

def test_run_takes_out_and_cache_from_the_config_and_a_finished_job_answers_without_ray(tmp_path: Path) -> None:
    """`run` with no --out and no cache flags takes both from --config; running the finished job
    again answers from its markers with Ray unimportable; the counts have one shape."""
    out = tmp_path / "from-config"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[output]\nout = "{out}"\n[models.test-tiny]\ncache = "linear"\ncache_ratio = "1/4"\n')
    manifest = H.write_manifest(tmp_path / "m.jsonl", [{"class_id": 1, "count": 3}])
    args = ["run", str(manifest), "--job-id", "j", "--config", str(cfg), *H.MODEL_ARGS, "--json"]
    first = lg(*args, cwd=tmp_path, timeout=240)
    assert first.returncode == 0, first.stderr
    spec = json.loads((out / "j" / "job.json").read_text())
    assert (spec["cache"]["policy"], spec["cache"]["ratio"]) == ("linear", "1/4")
    summary = json.loads(first.stdout)
    assert summary["images"] == {"done": 3, "total": 3} and summary["generated_this_run"] == 3
    success = json.loads((out / "j" / "_SUCCESS").read_text())
    assert datetime.fromisoformat(success["finished_at_utc"]).timestamp() == pytest.approx(success["finished_at"], abs=1)

    no_ray = ("import sys; sys.modules['ray'] = None  # any import of ray fails\n"
              "from linegen.cli.main import app; sys.argv = ['linegen'] + sys.argv[1:]; app()")
    t0 = time.monotonic()
    again = subprocess.run([sys.executable, "-c", no_ray, *args], capture_output=True, text=True, timeout=120,
                           cwd=tmp_path, env=H.clean_env({"XDG_CONFIG_HOME": str(tmp_path)}))
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["generated_this_run"] == 0 and doc["images_per_s_this_run"] is None and doc["images"] == summary["images"]
    assert time.monotonic() - t0 < 30
    assert json.loads((out / "j" / "_SUCCESS").read_text()) == success  # not rewritten
    table = cli(*[a for a in args if a != "--json"], cwd=tmp_path)
    assert "0.000 images/s" not in table.stdout and "nothing to generate" in table.stdout, table.stdout

    status = json.loads(cli("status", "j", "--out", str(out), "--json", cwd=tmp_path).stdout)
    assert status["images"] == summary["images"] and status["shards"] == summary["shards"]
    for key in ("submitted_at", "finished_at"):
        assert datetime.fromisoformat(status[f"{key}_utc"]).timestamp() == pytest.approx(status[key], abs=1)


# --json errors ---------------------------------------------------------------------------

def test_every_error_under_json_is_one_json_document(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    manifest = H.write_manifest(tmp_path / "m.jsonl", [{"class_id": 1}])
    cases = [
        ["generate", "--model", "nope", "--class-id", "1"], ["run", str(manifest), "--model", "nope"],
        ["bench", "--model", "nope"], ["eval", "--policies", "nope"], ["grid", "--policies", "nope"],
        ["submit", str(manifest), "--cluster", dead, "--out", "o"], ["list", "--cluster", dead],
        ["status", "x", "--cluster", dead], ["cancel", "x", "--cluster", dead], ["resume", "x", "--cluster", dead],
        ["monitor", "--cluster", dead], ["cost", "x", "--cluster", dead], ["status"], ["models", "--bogus"],
        ["cost", "--estimate", str(manifest)], ["validate", str(tmp_path / "absent.jsonl")],
    ]
    for case in cases:
        r = invoke([*case, "--json"], cwd=tmp_path, env=H.clean_env({"XDG_CONFIG_HOME": str(tmp_path)}))
        assert r.returncode != 0 and "Traceback" not in r.stderr, (case, r.stderr)
        doc = json.loads(r.stdout)  # stdout holds exactly one JSON document
        assert doc.get("error") or doc.get("issues"), (case, doc)
