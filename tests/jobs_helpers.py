"""Helpers for tests/test_jobs.py: running `linegen` as a real subprocess (or in-process, for
commands that only read or refuse), watching the processes it leaves behind, and reading a job's
output back (local folder or S3)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

LINEGEN = str(Path(sys.executable).parent / "linegen")

# Every run in these tests uses the small random-weight model and a fixed seed.
MODEL_ARGS = ["--model", "test-tiny", "--random-weights"]


# --------------------------------------------------------------------------- environment


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without anything that could point `linegen` elsewhere
    (AWS credentials/endpoints, a Ray address), plus `extra`."""
    # RAY_AUTH_MODE too: an in-process ray.init() (test_jobs' ray_local) leaves "token" behind in
    # os.environ, and `linegen run` breaks with it (see test_run_with_ray_auth_mode_token_in_env).
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_") and k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.update(extra or {})
    return env


def manifest_text(rows: Iterable[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def write_manifest(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    path.write_text(manifest_text(rows))
    return path


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """Where a process is in the process tree (from /proc/<pid>/stat)."""
    pid: int
    state: str
    ppid: int
    pgrp: int
    session: int
    cmd: str

    def __str__(self) -> str:
        return (f"pid {self.pid} ({self.cmd!r}, state {self.state}, ppid {self.ppid}, "
                f"pgrp {self.pgrp}, session {self.session})")


def processes() -> list[Proc]:
    out: list[Proc] = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            cmd = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2:].split()
        out.append(Proc(int(name), rest[0], int(rest[1]), int(rest[2]), int(rest[3]),
                        cmd[:120] or stat[stat.find("(") + 1: stat.rfind(")")]))
    return out


def live_in_group(pgid: int) -> list[Proc]:
    """Non-zombie processes of process group `pgid`."""
    return [p for p in processes() if p.pgrp == pgid and p.state != "Z"]


def live_in_session(sid: int) -> list[Proc]:
    """Non-zombie processes of session `sid` (a group leader started with start_new_session)."""
    return [p for p in processes() if p.session == sid and p.state != "Z"]


def wait_until_gone(find, timeout: float) -> list[Proc]:
    """Poll `find()` until it returns nothing or `timeout` passes; returns what is left."""
    deadline = time.monotonic() + timeout
    left = find()
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = find()
    return left


def kill_pids(procs: Iterable[Proc]) -> None:
    for p in procs:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL everything `proc` started (it is a session leader): its group, then any
    process of its session that left the group (Ray puts its workers in their own groups)."""
    sid = proc.pid
    try:
        os.killpg(sid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    kill_pids(live_in_session(sid))


@dataclass
class Result:
    args: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float

    @property
    def json(self) -> Any:
        """The `--json` document on stdout (Ray may print log lines before it)."""
        start = self.stdout.find("{")
        assert start >= 0, f"no JSON on stdout:\n{self.describe()}"
        return json.loads(self.stdout[start:])

    def describe(self) -> str:
        return (f"$ {' '.join(self.args)}\nexit {self.returncode} after {self.wall_s:.1f}s\n"
                f"--- stdout (tail)\n{self.stdout[-3000:]}\n--- stderr (tail)\n{self.stderr[-3000:]}")


def start_linegen(args: list[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
                  log_dir: Path) -> subprocess.Popen:
    """`linegen ARGS` in its own session (so the embedded Ray can be found and killed as one)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    n = len(list(log_dir.glob("*.out")))
    out = open(log_dir / f"{n:02d}.out", "w+")
    err = open(log_dir / f"{n:02d}.err", "w+")
    proc = subprocess.Popen([LINEGEN, *args], env=clean_env(env), cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=out, stderr=err, text=True, start_new_session=True)
    proc._lg_files = (out, err)  # type: ignore[attr-defined]
    proc._lg_t0 = time.monotonic()  # type: ignore[attr-defined]
    return proc


def finish_linegen(proc: subprocess.Popen, timeout: float) -> Result:
    """Wait for a start_linegen process; on timeout kill its whole session (returncode None)."""
    try:
        code: int | None = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_session(proc)
        code = None
    wall = time.monotonic() - proc._lg_t0  # type: ignore[attr-defined]
    texts = []
    for f in proc._lg_files:  # type: ignore[attr-defined]
        f.flush()
        f.seek(0)
        texts.append(f.read())
        f.close()
    return Result([LINEGEN, *proc.args[1:]], code, texts[0], texts[1], wall)


def run_linegen(args: list[str], *, timeout: float, env: Mapping[str, str] | None = None,
                cwd: Path | None = None, log_dir: Path) -> Result:
    return finish_linegen(start_linegen(args, env=env, cwd=cwd, log_dir=log_dir), timeout)


def invoke_linegen(args: list[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Result:
    """`linegen ARGS` in this process (tests/cli_runner.py), with `clean_env(env)` as its whole
    environment: for commands that only read, or refuse before doing anything."""
    try:
        from cli_runner import invoke
    except ModuleNotFoundError:  # tests/ imported as a package
        from tests.cli_runner import invoke

    t0 = time.monotonic()
    r = invoke(args, env=clean_env(env), cwd=cwd)
    return Result(["linegen", *args], r.returncode, r.stdout, r.stderr, time.monotonic() - t0)


# --------------------------------------------------------------------------- job output


def local_files(root: Path) -> dict[str, bytes]:
    """Every file under `root`, keyed by its '/'-path relative to root."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def s3_keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return sorted(keys)


def s3_files(client: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every object under `prefix/`, keyed relative to the prefix (like local_files)."""
    root = prefix.rstrip("/") + "/"
    return {k[len(root):]: client.get_object(Bucket=bucket, Key=k)["Body"].read()
            for k in s3_keys(client, bucket, root)}


def expected_layout(job_id: str, n_shards: int, manifest_ext: str = "jsonl", image_ext: str = "parquet") -> set[str]:
    keys = {f"{job_id}/{name}" for name in ("job.json", f"manifest.{manifest_ext}", "plan.json", "_SUCCESS")}
    for i in range(n_shards):
        sid = f"shard-{i:05d}"
        keys |= {f"{job_id}/images/{sid}.{image_ext}", f"{job_id}/stats/{sid}.parquet",
                 f"{job_id}/_commits/{sid}.json"}
    return keys


def tar_item_ids(data: bytes) -> list[str]:
    """The sample keys of a WebDataset tar shard, in member order (plain tarfile)."""
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [m.name[: -len(".json")] for m in tar.getmembers() if m.name.endswith(".json")]


def image_item_ids(data: bytes, key: str) -> list[str]:
    return tar_item_ids(data) if key.endswith(".tar") else read_parquet(data).column("item_id").to_pylist()


def read_parquet(data: bytes):
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data))


def markers(files: Mapping[str, bytes], job_id: str) -> dict[str, dict]:
    prefix = f"{job_id}/_commits/"
    return {k[len(prefix):-len(".json")]: json.loads(v) for k, v in files.items()
            if k.startswith(prefix) and k.endswith(".json")}


def marker_problems(files: Mapping[str, bytes], job_id: str) -> list[str]:
    """Every commit marker must describe files that exist with exactly the committed bytes."""
    problems = []
    for sid, m in markers(files, job_id).items():
        if m.get("shard_id") != sid or m.get("job_id") != job_id:
            problems.append(f"{sid}: marker names {m.get('job_id')}/{m.get('shard_id')}")
        for kind in ("images", "stats"):
            info = m["files"][kind]
            ext = "tar" if kind == "images" and m.get("format") == "webdataset" else "parquet"
            expected_key = f"{job_id}/{kind}/{sid}.{ext}"
            if info["key"] != expected_key:
                problems.append(f"{sid}: {kind} key {info['key']!r}, expected {expected_key!r}")
            data = files.get(info["key"])
            if data is None and info.get("staged"):
                # the committing process stopped between its marker and its move (an outage):
                # the committed bytes are still at the staged key until publish_pending moves them
                data = files.get(info["staged"])
            if data is None:
                problems.append(f"{sid}: committed {kind} file {info['key']} is missing")
            elif len(data) != info["bytes"] or hashlib.sha256(data).hexdigest() != info["sha256"]:
                problems.append(f"{sid}: {kind} file {info['key']} ({len(data)} bytes) does not match "
                                f"its marker ({info['bytes']} bytes, sha256 {info['sha256'][:12]})")
        image_data = files.get(m["files"]["images"]["key"]) or files.get(m["files"]["images"].get("staged") or "")
        if image_data is not None:
            ids = image_item_ids(image_data, m["files"]["images"]["key"])
            if len(ids) != m["images"] or (ids and (ids[0], ids[-1]) != (m["first_item_id"], m["last_item_id"])):
                problems.append(f"{sid}: marker says {m['images']} images {m['first_item_id']}..{m['last_item_id']}, "
                                f"file has {len(ids)}")
    return problems


def committed_item_ids(files: Mapping[str, bytes], job_id: str) -> list[str]:
    """item_id of every row of every committed shard's image file (what a reader trusts)."""
    ids: list[str] = []
    for sid, m in sorted(markers(files, job_id).items()):
        info = m["files"]["images"]
        data = files.get(info["key"]) or files[info["staged"]]  # staged: a move cut off (marker_problems)
        ids += image_item_ids(data, info["key"])
    return ids


def published_images(files: Mapping[str, bytes], job_id: str) -> list[str]:
    """What a reader's glob over images/ sees (every file there, hidden names included)."""
    return sorted(k for k in files if k.startswith(f"{job_id}/images/"))


@dataclass
class JobOutput:
    """One finished `linegen run`, with every output file read back right after it finished."""
    kind: str  # "local" | "s3"
    job_id: str
    out: str  # the --out argument
    manifest_rows: list[dict]
    shard_size: int
    batch_size: int
    result: Result
    files: dict[str, bytes] = field(repr=False, default_factory=dict)  # relative to OUT
    base: Path | None = None  # local: the folder that holds the manifest and OUT
    bucket: str | None = None
    prefix: str | None = None

    @property
    def n_items(self) -> int:
        return sum(r.get("count", 1) for r in self.manifest_rows)

    @property
    def n_shards(self) -> int:
        return -(-self.n_items // self.shard_size)

    def tables(self, kind: str):
        import pyarrow as pa

        keys = sorted(k for k in self.files if k.startswith(f"{self.job_id}/{kind}/"))
        return keys, pa.concat_tables([read_parquet(self.files[k]) for k in keys])


def wait_for(pred, timeout: float, what: str, poll: float = 0.25):
    """pred()'s first truthy value, polled until ``timeout`` s; else an AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def wait_for_commit(proc: subprocess.Popen, commits: Path, timeout: float = 180) -> None:
    """Until a commit marker appears under ``commits`` (a local _commits/ folder); the process must
    stay alive meanwhile."""
    deadline = time.monotonic() + timeout
    while not list(commits.glob("*.json")):
        assert proc.poll() is None, finish_linegen(proc, 5).describe()
        assert time.monotonic() < deadline, f"no shard committed within {timeout:g} s"
        time.sleep(0.05)


def tune_choice(judged: list[dict]) -> dict:
    """tune's choice among its finalists, restated: the lowest KL, unless another finalist's
    samples are closer by more than two standard errors of the paired per-item differences."""
    order = sorted(judged, key=lambda r: (r["kl_mean"], -r["top1_agreement"]))
    best = order[0]
    for r in order[1:]:
        d = [b - a for a, b in zip(r["sample_items"], best["sample_items"])]
        assert len(d) >= 2 and abs(statistics.fmean(r["sample_items"]) - r["sample_distance"]) < 1e-3
        if statistics.fmean(d) > 2 * statistics.stdev(d) / len(d) ** 0.5:
            best = r
    return best
