"""Jobs end to end, with real components: `linegen run` as a subprocess on its embedded local
Ray, a real S3 server (SeaweedFS), Parquet read back with pyarrow, and `datasets`.

What each group shows (the issue's "Must show" list):
1. end to end to a local folder and to an S3 prefix: every (row, replica) exactly once, PNGs of
   the model's size, stats rows, a commit marker per shard, `_SUCCESS`, `datasets` loads it;
2. resume after SIGKILL of the whole process group: committed shards are not redone;
3. an actor killed mid-job: its shards are requeued, every item still exactly once;
4. S3 failures: wrong credentials, missing bucket, the server stopped mid-job;
5. bad manifests: a clear error naming file:line and field, nothing written (these runs stop
   before anything starts, so they run in-process: jobs_helpers.invoke_linegen);
6. user ids such as `../../x` never become paths (checked on the runs of group 1);
7. the same --job-id with a different manifest is refused and overwrites nothing.

Expensive runs are module-scoped fixtures; their output is read into memory right after the
run, so later tests that touch the same folder cannot change what earlier checks see.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

try:
    import jobs_helpers as H
    from ray_fixtures import local_ray
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import jobs_helpers as H
    from tests.ray_fixtures import local_ray

pytestmark = pytest.mark.timeout(420)

# counts 5, 3 and 9 for classes 5, 3 and 9: 17 images; shard size 4 -> shards of 4,4,4,4,1, and
# with batch 3 the engine's waves straddle shard boundaries (items 3..5 are one wave).
# The user ids try to escape the output folder (see test_user_ids_never_become_paths).
E2E_ROWS = [
    {"class_id": 5, "count": 5, "id": "../../x"},
    {"class_id": 3, "count": 3, "id": "/etc/passwd"},
    {"class_id": 9, "count": 9, "id": "..\\..\\evil dir/../y"},
]
E2E_SHARD_SIZE, E2E_BATCH = 4, 3
E2E_JOB = "e2e-job"
IMAGE_SIZE = 32  # test-tiny: 8x8 tokens, 32x32 pixels
TOKENS_PER_IMAGE = 64
RUN_TIMEOUT = 240
# We run as root here: a path built from the id "/etc/passwd" would overwrite the real file.
PASSWD_SHA = hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest()


def run_args(manifest: Path | str, out: str, job_id: str, *, shard_size: int, batch_size: int,
             extra: list[str] = ()) -> list[str]:
    return ["run", str(manifest), "--out", out, "--job-id", job_id, *H.MODEL_ARGS,
            "--shard-size", str(shard_size), "--batch-size", str(batch_size), "--json", *extra]


def e2e_args(manifest: Path, out: str, extra: list[str] = ()) -> list[str]:
    return run_args(manifest, out, E2E_JOB, shard_size=E2E_SHARD_SIZE, batch_size=E2E_BATCH,
                    extra=["--cache", "linear", "--cache-ratio", "1/4", *extra])


def sha256_file(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# =========================================================================== 1. end to end


@pytest.fixture(scope="module")
def e2e_runs(s3_server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, H.JobOutput]:
    """The same job to a local folder and to an S3 prefix, both runs at once (each spends most of
    its time waiting for its embedded Ray to start)."""
    s3_server.start()  # no-op unless an earlier test left it stopped
    local_base = tmp_path_factory.mktemp("e2e-local")  # holds only the manifest and OUT
    local_manifest = H.write_manifest(local_base / "manifest.jsonl", E2E_ROWS)
    local_out = local_base / "out"
    bucket = s3_server.make_bucket(f"e2e-{uuid.uuid4().hex[:12]}")
    prefix = "runs/2026/e2e"
    s3_base = tmp_path_factory.mktemp("e2e-s3")
    s3_manifest = H.write_manifest(s3_base / "manifest.jsonl", E2E_ROWS)
    s3_out = f"s3://{bucket}/{prefix}"

    logs = tmp_path_factory.mktemp("e2e-logs")
    local_proc = H.start_linegen(e2e_args(local_manifest, str(local_out)), cwd=local_base, log_dir=logs)
    s3_proc = H.start_linegen(e2e_args(s3_manifest, s3_out, ["--s3-endpoint-url", s3_server.endpoint_url]),
                              env=s3_server.env(), cwd=s3_base, log_dir=logs)
    local_result = H.finish_linegen(local_proc, RUN_TIMEOUT)
    s3_result = H.finish_linegen(s3_proc, RUN_TIMEOUT)
    runs = {}
    if local_result.returncode == 0:
        runs["local"] = H.JobOutput("local", E2E_JOB, str(local_out), E2E_ROWS, E2E_SHARD_SIZE, E2E_BATCH,
                                    local_result, files=H.local_files(local_out), base=local_base)
    else:
        runs["local"] = local_result
    if s3_result.returncode == 0:
        runs["s3"] = H.JobOutput("s3", E2E_JOB, s3_out, E2E_ROWS, E2E_SHARD_SIZE, E2E_BATCH, s3_result,
                                 files=H.s3_files(s3_server.client(), bucket, prefix), base=s3_base,
                                 bucket=bucket, prefix=prefix)
    else:
        runs["s3"] = s3_result
    return runs


def _e2e(runs: dict, kind: str) -> H.JobOutput:
    run = runs[kind]
    assert isinstance(run, H.JobOutput), f"the {kind} end-to-end run failed:\n{run.describe()}"
    return run


@pytest.fixture(scope="module")
def local_job(e2e_runs: dict) -> H.JobOutput:
    return _e2e(e2e_runs, "local")


@pytest.fixture(scope="module")
def s3_job(e2e_runs: dict) -> H.JobOutput:
    return _e2e(e2e_runs, "s3")


@pytest.fixture(params=["local", "s3"])
def job_output(request: pytest.FixtureRequest) -> H.JobOutput:
    return request.getfixturevalue(f"{request.param}_job")


def test_e2e_layout_and_summary(job_output: H.JobOutput) -> None:
    job, files = job_output.job_id, job_output.files
    # exactly the documented layout: no temp files, no extra keys, nothing missing
    assert set(files) == H.expected_layout(job, job_output.n_shards), sorted(files)
    success = json.loads(files[f"{job}/_SUCCESS"])
    assert success["images"] == {"done": job_output.n_items, "total": 17}
    assert success["shards"] == {"done": job_output.n_shards, "total": 5}
    assert success["generated_this_run"] == 17
    assert success["job_id"] == job and success["model"] == "test-tiny"
    assert success["cache_policy"] == "linear"
    assert success["tokens"] == 17 * TOKENS_PER_IMAGE
    assert success["peak_memory_bytes"] > 0 and success["kv_cache_bytes"] > 0
    printed = job_output.result.json  # --json prints the same summary
    assert {k: printed[k] for k in ("job_id", "images", "shards", "plan_fingerprint")} == \
        {k: success[k] for k in ("job_id", "images", "shards", "plan_fingerprint")}
    plan = json.loads(files[f"{job}/plan.json"])
    assert plan["items"] == 17 and plan["shards"] == 5 and plan["fingerprint"] == success["plan_fingerprint"]
    spec = json.loads(files[f"{job}/job.json"])
    assert spec["job_id"] == job and spec["shard_size"] == E2E_SHARD_SIZE and spec["out"] == job_output.out
    assert files[f"{job}/manifest.jsonl"] == H.manifest_text(E2E_ROWS).encode()


def test_e2e_s3_output_holds_no_credentials(s3_job: H.JobOutput, s3_server) -> None:
    for key, data in s3_job.files.items():
        assert s3_server.secret_key.encode() not in data, key
        assert s3_server.access_key.encode() not in data, key


def test_e2e_every_row_replica_exactly_once(job_output: H.JobOutput) -> None:
    keys, table = job_output.tables("images")
    rows = table.to_pylist()
    assert len(rows) == 17
    expected = {(r, k) for r, spec in enumerate(E2E_ROWS) for k in range(spec["count"])}
    got = [(row["row"], row["replica"]) for row in rows]
    assert len(set(got)) == len(got) == 17 and set(got) == expected
    assert len({row["item_id"] for row in rows}) == 17
    assert len({row["seed"] for row in rows}) == 17  # one seed per (row, replica)
    for row in rows:
        src = E2E_ROWS[row["row"]]
        assert row["class_id"] == src["class_id"] and row["prompt"] is None
        assert row["id"] == src["id"]  # the user's id, verbatim, as a value
        assert row["model"] == "test-tiny" and row["cache_policy"] == "linear"
        assert 0 < row["cache_ratio"] < 1
    # shards hold consecutive items in plan order: 4, 4, 4, 4, 1
    per_shard = [H.read_parquet(job_output.files[k]).column("item_id").to_pylist() for k in keys]
    assert [len(s) for s in per_shard] == [4, 4, 4, 4, 1]
    flat = [i for s in per_shard for i in s]
    assert flat == sorted(flat)


def test_e2e_images_are_pngs_of_the_model_size(job_output: H.JobOutput) -> None:
    from PIL import Image

    _, table = job_output.tables("images")
    for row in table.to_pylist():
        data = row["image"]["bytes"]
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        img = Image.open(io.BytesIO(data))
        img.load()
        assert img.format == "PNG" and img.size == (IMAGE_SIZE, IMAGE_SIZE) and img.mode == "RGB"
        assert (row["width"], row["height"]) == (IMAGE_SIZE, IMAGE_SIZE)
        assert row["image"]["path"] == f"{row['item_id']}.png"
        assert len(row["tokens"]) == TOKENS_PER_IMAGE


def test_e2e_stats_rows(job_output: H.JobOutput) -> None:
    job = job_output.job_id
    keys, table = job_output.tables("stats")
    rows = table.to_pylist()
    assert rows
    for col in ("tokens_per_s", "images_per_s", "peak_memory_bytes", "kv_cache_bytes", "wall_s",
                "worker", "node", "device", "started_at", "finished_at"):
        assert all(r[col] is not None for r in rows), col
    for r in rows:
        assert r["job_id"] == job and r["attempt"] == 1
        assert r["tokens_per_s"] > 0 and r["images_per_s"] > 0
        assert r["peak_memory_bytes"] > 0 and r["kv_cache_bytes"] > 0
        assert 1 <= r["images"] <= r["batch_size"] <= E2E_BATCH
        assert r["tokens"] == r["images"] * TOKENS_PER_IMAGE
        assert r["model"] == "test-tiny" and r["cache_policy"] == "linear"
    by_shard: dict[str, int] = {}
    for r in rows:
        by_shard[r["shard_id"]] = by_shard.get(r["shard_id"], 0) + r["images"]
    assert by_shard == {f"shard-{i:05d}": n for i, n in enumerate([4, 4, 4, 4, 1])}
    # a wave that spans a shard boundary shows up as a row with fewer images than its batch
    assert any(r["images"] < r["batch_size"] for r in rows)


def test_e2e_commit_marker_per_shard(job_output: H.JobOutput) -> None:
    job, files = job_output.job_id, job_output.files
    markers = H.markers(files, job)
    assert sorted(markers) == [f"shard-{i:05d}" for i in range(5)]
    assert H.marker_problems(files, job) == []
    for sid, m in markers.items():
        assert m["attempt"] == 1
        stats = H.read_parquet(files[f"{job}/stats/{sid}.parquet"])
        assert m["stats_rows"] == stats.num_rows


def test_e2e_report_is_one_self_contained_html(job_output: H.JobOutput, s3_server, tmp_path: Path) -> None:
    """`linegen report` of the finished job, local and S3: charts as inline SVG, every sample image
    a PNG data: URI, nothing fetched from anywhere (the browser test is in test_elastic.py)."""
    import base64

    from PIL import Image

    html = tmp_path / "report.html"
    args = ["report", job_output.job_id, "--out", job_output.out, "--html", str(html), "--json"]
    env = None
    if job_output.kind == "s3":
        args += ["--s3-endpoint-url", s3_server.endpoint_url]
        env = s3_server.env()
    r = H.run_linegen(args, timeout=120, env=env, cwd=tmp_path, log_dir=tmp_path / "logs")
    assert r.returncode == 0, r.describe()
    assert json.loads(r.stdout) == {"job_id": job_output.job_id, "html": str(html)}
    page = html.read_text()
    assert page.count("<svg") == 4 and page.count("<polyline") >= 3, page[:2000]
    assert not re.search(r"""(src|href)=["']?(https?:|//)|<script|<link|@import""", page)
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(pngs) == 17  # every image of this small job (the grid shows up to 24)
    assert {Image.open(io.BytesIO(base64.b64decode(p))).size for p in pngs} == {(IMAGE_SIZE, IMAGE_SIZE)}
    assert "SUCCEEDED" in page and "17 of 17 images, 5 of 5 shards" in page
    assert f"<th>shard_size</th><td>{E2E_SHARD_SIZE}</td>" in page and "Cost per 1k images" in page


def test_e2e_loads_with_datasets(job_output: H.JobOutput, hf_datasets, tmp_path: Path) -> None:
    datasets, home = hf_datasets
    keys = sorted(k for k in job_output.files if k.startswith(f"{job_output.job_id}/images/"))
    if job_output.kind == "local":
        paths = [str(Path(job_output.out) / k) for k in keys]  # the real files
    else:
        paths = []
        for k in keys:  # downloaded from S3 by the fixture
            p = tmp_path / k.replace("/", "__")
            p.write_bytes(job_output.files[k])
            paths.append(str(p))
    ds = datasets.load_dataset("parquet", data_files=paths, split="train", cache_dir=str(home / "datasets"))
    assert len(ds) == 17
    assert isinstance(ds.features["image"], datasets.Image)
    img = ds[0]["image"]
    assert img.size == (IMAGE_SIZE, IMAGE_SIZE)
    assert sorted(zip(ds["row"], ds["replica"])) == sorted(
        (r, k) for r, spec in enumerate(E2E_ROWS) for k in range(spec["count"]))


# =========================================================================== 6. ids never paths


def test_user_ids_never_become_paths(job_output: H.JobOutput, s3_server) -> None:
    """The e2e manifest's ids are '../../x', '/etc/passwd' and '..\\..\\evil dir/../y'."""
    job = job_output.job_id
    if job_output.kind == "local":
        # everything the run created lies under OUT/<job_id>, in the documented layout
        created = set(H.local_files(job_output.base))
        expected = {"manifest.jsonl"} | {f"out/{k}" for k in H.expected_layout(job, 5)}
        assert created == expected
    else:
        keys = set(H.s3_keys(s3_server.client(), job_output.bucket))
        assert keys == {f"{job_output.prefix}/{k}" for k in H.expected_layout(job, 5)}
        assert set(H.local_files(job_output.base)) == {"manifest.jsonl"}
    _, table = job_output.tables("images")
    assert set(table.column("id").to_pylist()) == {r["id"] for r in E2E_ROWS}
    for path in table.column("image").combine_chunks().field("path").to_pylist():
        assert "/" not in path and ".." not in path and "passwd" not in path
    for name in job_output.files:
        assert "passwd" not in name and "evil" not in name and ".." not in name
    assert sha256_file("/etc/passwd") == PASSWD_SHA


# =========================================================================== 7. job id reuse


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in root.rglob("*") if p.is_file()}


def test_same_job_id_with_another_manifest_is_refused(local_job: H.JobOutput, tmp_path: Path) -> None:
    out = Path(local_job.out)
    before = _snapshot(out)
    other = H.write_manifest(tmp_path / "other.jsonl", [{"class_id": 7, "count": 2}])
    result = H.run_linegen(e2e_args(other, str(out)), timeout=120, cwd=tmp_path, log_dir=tmp_path / "logs")
    assert result.returncode not in (0, None), result.describe()
    err = result.stderr.strip().splitlines()
    assert err and err[-1].startswith("error:") and E2E_JOB in err[-1] and "different" in err[-1], result.describe()
    assert "Traceback" not in result.stderr
    assert _snapshot(out) == before  # nothing overwritten, nothing added


def test_same_job_id_with_edited_manifest_is_refused(local_job: H.JobOutput, tmp_path: Path) -> None:
    """The same manifest path, but its content changed since the job ran: a different manifest.
    Resuming silently with the old copy would drop the user's new rows without a word."""
    out = Path(local_job.out)
    manifest = local_job.base / "manifest.jsonl"
    original = manifest.read_bytes()
    before = _snapshot(out)
    try:
        H.write_manifest(manifest, E2E_ROWS + [{"class_id": 11, "count": 4}])
        result = H.run_linegen(e2e_args(manifest, str(out)), timeout=RUN_TIMEOUT, cwd=tmp_path,
                               log_dir=tmp_path / "logs")
    finally:
        manifest.write_bytes(original)
    assert result.returncode not in (0, None), (
        "an edited manifest under the same --job-id was accepted; the job 'resumed' with the old "
        "copy and the new rows were silently dropped\n" + result.describe())
    assert "Traceback" not in result.stderr
    assert _snapshot(out) == before


# =========================================================================== 2. resume


RESUME_ROWS = [{"class_id": 1, "count": 20}, {"class_id": 2, "count": 20}]  # 40 images, 10 shards


def test_resume_after_sigkill_of_the_process_group(tmp_path: Path) -> None:
    manifest = H.write_manifest(tmp_path / "manifest.jsonl", RESUME_ROWS)
    out, job = tmp_path / "out", "resume-job"
    args = run_args(manifest, str(out), job, shard_size=4, batch_size=2)
    logs = tmp_path / "logs"
    commits = out / job / "_commits"

    proc = H.start_linegen(args, cwd=tmp_path, log_dir=logs)
    sid = proc.pid  # start_new_session: session id == group id == the leader's pid
    try:
        H.wait_for_commit(proc, commits)
        members = H.live_in_group(sid)
        os.killpg(sid, signal.SIGKILL)
        proc.wait(10)
        # the group, embedded Ray's daemons (gcs_server, raylet, dashboard agents) included, is gone
        left_in_group = H.wait_until_gone(lambda: H.live_in_group(sid), 10)
        assert not left_in_group, f"left in the group after SIGKILL: {left_in_group}"
        # Ray's worker processes (the actor, idle workers) run in process groups of their own
        # within the session; they must not outlive the cluster for long
        escaped = H.live_in_session(sid)
        print(f"group members at kill: {[str(p) for p in members]}")
        print(f"session members outside the group right after the kill: {[str(p) for p in escaped]}")
        left = H.wait_until_gone(lambda: H.live_in_session(sid), 30)
        assert not left, f"processes of the killed run still alive after 30 s: {[str(p) for p in left]}"
    finally:
        H.kill_session(proc)
    H.finish_linegen(proc, 5)

    # what the killed run committed (read only now: an escaped actor could still have committed)
    committed = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in commits.glob("*.json")}
    data_before = {}
    for name in committed:
        sid_ = name[: -len(".json")]
        for kind in ("images", "stats"):
            p = out / job / kind / f"{sid_}.parquet"
            data_before[p] = (p.read_bytes(), p.stat().st_mtime_ns)
    assert 0 < len(committed) < 10, f"{len(committed)} of 10 shards committed before the kill"
    orphans = [p.name for p in (out / job).rglob(".tmp-*")]
    print(f"temp files left by the killed run: {orphans}")

    second = H.run_linegen(args, timeout=RUN_TIMEOUT, cwd=tmp_path, log_dir=logs)
    assert second.returncode == 0, second.describe()
    files = H.local_files(out)
    success = json.loads(files[f"{job}/_SUCCESS"])
    assert success["images"] == {"done": 40, "total": 40}
    assert success["generated_this_run"] == 40 - 4 * len(committed)
    for name, (data, mtime) in committed.items():  # the committed shards were not redone
        p = commits / name
        assert (p.read_bytes(), p.stat().st_mtime_ns) == (data, mtime), name
    for p, (data, mtime) in data_before.items():
        assert (p.read_bytes(), p.stat().st_mtime_ns) == (data, mtime), p
    real = {k: v for k, v in files.items() if not Path(k).name.startswith(".tmp-")}
    assert set(real) == H.expected_layout(job, 10)
    assert H.marker_problems(files, job) == []
    ids = []
    for k in sorted(k for k in real if k.startswith(f"{job}/images/")):
        ids += H.read_parquet(files[k]).column("item_id").to_pylist()
    assert len(ids) == len(set(ids)) == 40

    markers_after_second = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in commits.glob("*.json")}
    success_after_second = (out / job / "_SUCCESS").read_bytes()
    third = H.run_linegen(args, timeout=RUN_TIMEOUT, cwd=tmp_path, log_dir=logs)
    assert third.returncode == 0, third.describe()
    assert third.json["generated_this_run"] == 0 and third.json["images"] == {"done": 40, "total": 40}
    assert (out / job / "_SUCCESS").read_bytes() == success_after_second  # answered from it, not rewritten
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in commits.glob("*.json")} == markers_after_second


# =========================================================================== 3. actor killed


@pytest.fixture
def ray_local():
    import ray

    with local_ray():  # a new cluster of our own, never someone else's `ray start`
        yield ray


def _spec(manifest: Path, out: Path, job_id: str, **kw):
    from linegen.settings.cache_choice import CacheChoice
    from linegen.settings.model_choice import ModelChoice
    from linegen.workers.models.config import SamplingParams
    from linegen.jobs.spec import JobSpec

    return JobSpec(job_id=job_id, manifest=str(manifest), out=str(out),
                   model=ModelChoice("test-tiny", random_weights=True),
                   cache=CacheChoice("linear", "1/4"), sampling=SamplingParams(cfg_scale=2.0, top_k=0), **kw)


def test_actor_killed_mid_job_is_replaced_and_items_stay_exactly_once(ray_local, tmp_path: Path) -> None:
    from linegen.jobs.driver import run_job
    from linegen.jobs.prepare import prepare_job

    ray = ray_local
    manifest = H.write_manifest(tmp_path / "manifest.jsonl", E2E_ROWS)
    out, job = tmp_path / "out", "kill-actor"
    spec = _spec(manifest, out, job, shard_size=4, batch_size=3)
    first_commit, killed = threading.Event(), threading.Event()
    events: list[str] = []
    outcome: dict = {}

    def progress(p) -> None:
        events.append(p.event)
        if p.event.endswith(" committed") and not first_commit.is_set():
            first_commit.set()
            # hold the driver here (it cannot hand out more shards) until the actor is dead, so
            # the kill certainly lands while worker-0 still owns unfinished shards
            killed.wait(60)

    def target() -> None:
        try:
            outcome["summary"] = run_job(prepare_job(spec), progress=progress)
        except BaseException as e:  # noqa: BLE001 - reported below
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    name = f"linegen-{job}-worker-0"
    deadline = time.monotonic() + 120
    actor = None
    while actor is None:
        assert thread.is_alive(), outcome
        assert time.monotonic() < deadline, f"actor {name} never appeared"
        try:
            actor = ray.get_actor(name, namespace="linegen")
        except ValueError:
            time.sleep(0.1)
    try:
        assert first_commit.wait(120), f"no shard committed; events {events}"
        committed_at_kill = sorted(p.name for p in (out / job / "_commits").glob("*.json"))
        ray.kill(actor, no_restart=True)
        gone_by = time.monotonic() + 30
        while time.monotonic() < gone_by:  # the name is released once the actor is dead
            try:
                ray.get_actor(name, namespace="linegen")
                time.sleep(0.1)
            except ValueError:
                break
    finally:
        killed.set()
    thread.join(180)
    assert not thread.is_alive(), f"run_job still running 180 s after the kill; events {events}"
    assert "error" not in outcome, f"run_job failed: {outcome.get('error')!r}; events {events}"
    assert len(committed_at_kill) < 5, committed_at_kill

    summary = outcome["summary"]
    assert summary["images"] == {"done": 17, "total": 17} and summary["shards"] == {"done": 5, "total": 5}
    files = H.local_files(out)
    # a writer killed mid-put may leave a hidden temp file (readers skip '.tmp-*'); nothing else
    litter = sorted(k for k in files if Path(k).name.startswith(".tmp-"))
    print(f"temp files left by the killed actor: {litter}")
    files = {k: v for k, v in files.items() if k not in litter}
    assert set(files) == H.expected_layout(job, 5)
    assert H.marker_problems(files, job) == []
    assert json.loads(files[f"{job}/_SUCCESS"])["images"]["done"] == 17
    ids = H.committed_item_ids(files, job)
    assert len(ids) == len(set(ids)) == 17
    pairs = set()
    for k in sorted(k for k in files if k.startswith(f"{job}/images/")):
        t = H.read_parquet(files[k])
        pairs |= set(zip(t.column("row").to_pylist(), t.column("replica").to_pylist()))
    assert pairs == {(r, k) for r, s in enumerate(E2E_ROWS) for k in range(s["count"])}
    # the replacement actor did the rest
    workers = set()
    for k in (k for k in files if k.startswith(f"{job}/stats/")):
        workers |= set(H.read_parquet(files[k]).column("worker").to_pylist())
    assert f"linegen-{job}-worker-1" in workers, workers
    assert "worker restarted" in events
    # and the driver leaves no actor of the job behind
    for i in range(2):
        deadline = time.monotonic() + 20
        while True:
            try:
                ray.get_actor(f"linegen-{job}-worker-{i}", namespace="linegen")
            except ValueError:
                break
            assert time.monotonic() < deadline, f"worker-{i} still alive after the job"
            time.sleep(0.2)


def test_actor_reports_a_storage_outage_instead_of_hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the output store stays unreachable (longer than --storage-outage-budget, 2 s here) while
    an actor takes a new shard, the shard must come back as failed (so the driver requeues it or
    fails the job), not vanish: an engine thread that dies on the error leaves the driver waiting
    for that shard forever."""
    import socket

    from linegen.jobs.manifest import Conditioning, parse_manifest
    from linegen.settings.cache_choice import CacheChoice
    from linegen.settings.model_choice import ModelChoice
    from linegen.jobs.plan import Plan
    from linegen.workers.models.config import SamplingParams
    from linegen.jobs.sink import ShardSink
    from linegen.jobs.storage import open_storage
    from linegen.workers.actor import GenerationActor

    with socket.socket() as s:  # a port with nothing listening: the S3 server is down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"AWS_ACCESS_KEY_ID": "AKTEST", "AWS_SECRET_ACCESS_KEY": "secret",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    storage = open_storage("s3://bucket/prefix", endpoint_url=f"http://127.0.0.1:{port}",
                           max_attempts=1, connect_timeout=1)
    from linegen.jobs.outage import Outage

    sink = ShardSink(storage, "outage", "test-tiny", "full", 1.0, outage=Outage(2.0))
    rows = parse_manifest(b'{"class_id": 1, "count": 2}\n', "m.jsonl", Conditioning("class", 1000))
    shard = Plan(rows, job_seed=0, sampling=SamplingParams(cfg_scale=2.0, top_k=0), shard_size=4)[0]
    actor = GenerationActor(ModelChoice("test-tiny", random_weights=True), CacheChoice(), sink,
                            batch_size=2, worker_name="w0")
    try:
        actor.info()  # the model loads on the actor's own thread; the 10 s are for the shard
        actor.submit(shard, 1)
        deadline = time.monotonic() + 10
        got = None
        while got is None and time.monotonic() < deadline:
            got = actor.next_outcome(1.0)
        assert got is not None, "no outcome within 10 s for a shard whose storage is down (the job would hang)"
        assert got.shard_id == shard.shard_id and got.status == "failed", got
        assert str(port) in (got.error or "") or "S3" in (got.error or ""), got
    finally:
        actor.shutdown()


def test_run_with_ray_auth_mode_token_in_env(tmp_path: Path) -> None:
    """RAY_AUTH_MODE=token is what a user exports to talk to a token-auth cluster (and what an
    in-process ray.init() leaves in os.environ); the embedded run must still work."""
    manifest = H.write_manifest(tmp_path / "manifest.jsonl", [{"class_id": 1, "count": 2}])
    out = tmp_path / "out"
    result = H.run_linegen(run_args(manifest, str(out), "tok", shard_size=2, batch_size=2),
                           env={"RAY_AUTH_MODE": "token"}, timeout=RUN_TIMEOUT, cwd=tmp_path,
                           log_dir=tmp_path / "logs")
    assert result.returncode == 0, result.describe()
    assert result.json["images"]["done"] == 2


# =========================================================================== 4. S3 failures


def _s3_run_args(s3_server, manifest: Path, out: str, job: str, **kw) -> list[str]:
    return run_args(manifest, out, job, extra=["--s3-endpoint-url", s3_server.endpoint_url], **kw)


def test_s3_wrong_credentials(s3_server, tmp_bucket: str, tmp_path: Path) -> None:
    manifest = H.write_manifest(tmp_path / "manifest.jsonl", E2E_ROWS)
    env = {**s3_server.env(), "AWS_SECRET_ACCESS_KEY": "wrong" + s3_server.secret_key[5:]}
    result = H.run_linegen(_s3_run_args(s3_server, manifest, f"s3://{tmp_bucket}/p", "creds",
                                        shard_size=4, batch_size=3),
                           env=env, timeout=120, cwd=tmp_path, log_dir=tmp_path / "logs")
    assert result.returncode not in (0, None), result.describe()
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "credentials" in err[0], result.describe()
    assert s3_server.secret_key not in result.stderr
    assert H.s3_keys(s3_server.client(), tmp_bucket) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "manifest.jsonl"]


def test_s3_missing_bucket(s3_server, tmp_path: Path) -> None:
    s3_server.start()
    manifest = H.write_manifest(tmp_path / "manifest.jsonl", E2E_ROWS)
    bucket = f"missing-{uuid.uuid4().hex[:12]}"
    result = H.run_linegen(_s3_run_args(s3_server, manifest, f"s3://{bucket}/p", "nobucket",
                                        shard_size=4, batch_size=3),
                           env=s3_server.env(), timeout=120, cwd=tmp_path, log_dir=tmp_path / "logs")
    assert result.returncode not in (0, None), result.describe()
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and bucket in err[0], result.describe()
    assert "does not exist" in err[0]
    names = {b["Name"] for b in s3_server.client().list_buckets().get("Buckets", [])}
    assert bucket not in names  # not even created as a side effect (SeaweedFS creates on PUT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "manifest.jsonl"]


STOP_ROWS = [{"class_id": 1, "count": 30}, {"class_id": 2, "count": 30}]  # 60 images, 15 shards


def test_s3_server_stopped_mid_job(s3_server, tmp_bucket: str, tmp_path: Path) -> None:
    """The S3 server killed (SIGKILL) mid-job and restarted: the job rides the outage out (issue 24:
    before, every shard's attempts were spent during it and the job failed)."""
    manifest = H.write_manifest(tmp_path / "manifest.jsonl", STOP_ROWS)
    job, prefix = "outage", "p"
    args = _s3_run_args(s3_server, manifest, f"s3://{tmp_bucket}/{prefix}", job, shard_size=4, batch_size=2)
    args += ["--max-attempts", "1", "--storage-outage-budget", "2m"]  # one spent attempt fails the job
    client = s3_server.client()
    proc = H.start_linegen(args, env=s3_server.env(), cwd=tmp_path, log_dir=tmp_path / "logs")
    running_when_stopped = False
    try:
        deadline = time.monotonic() + 180
        while not H.s3_keys(client, tmp_bucket, f"{prefix}/{job}/_commits/"):
            assert proc.poll() is None, H.finish_linegen(proc, 5).describe()
            assert time.monotonic() < deadline, "no shard committed within 180 s"
            time.sleep(0.1)
        os.kill(s3_server.pid, signal.SIGKILL)  # our own weed child, by PID
        s3_server.stop()  # reaps it
        running_when_stopped = proc.poll() is None
        time.sleep(4)
    finally:
        s3_server.start()  # always: other tests share the server
    result = H.finish_linegen(proc, RUN_TIMEOUT)
    assert running_when_stopped, "the job finished before the server was down; nothing was tested"
    assert result.returncode is not None, "the job hung after the S3 server came back\n" + result.describe()

    print(f"job after the outage: exit {result.returncode}; stderr tail: {result.stderr[-300:]!r}")
    files = H.s3_files(client, tmp_bucket, prefix)
    # in every outcome: a marker only for a shard whose files are complete and are the committed ones
    assert H.marker_problems(files, job) == []
    ids = H.committed_item_ids(files, job)
    assert len(ids) == len(set(ids))
    assert result.returncode == 0, result.describe()
    assert "storage unreachable since" in result.stderr, result.describe()
    assert len(H.markers(files, job)) == 15 and len(ids) == 60
    summary = json.loads(files[f"{job}/_SUCCESS"])
    assert summary["images"]["done"] == 60 and summary["recovery_this_run"]["failed_attempts"] == 0


# =========================================================================== 5. bad manifests


# name -> (file name, bytes, substrings stderr must contain, substrings it must not)
BAD_MANIFESTS: dict[str, tuple[str, bytes, list[str], list[str]]] = {
    "unknown_field": ("unknown.jsonl", b'{"class_id": 1}\n{"class_id": 2, "colour": "red"}\n',
                      ["unknown.jsonl:2", "'colour'", "unknown field"], ["unknown.jsonl:1"]),
    "prompt_and_class_id": ("both.jsonl", b'{"class_id": 1, "prompt": "a cat"}\n',
                            ["both.jsonl:1", "prompt", "class_id"], []),
    "count_zero": ("count0.jsonl", b'{"class_id": 1, "count": 0}\n',
                   ["count0.jsonl:1", "'count'"], []),
    "class_id_1000": ("class1000.jsonl", b'{"class_id": 999}\n{"class_id": 1000}\n',
                      ["class1000.jsonl:2", "'class_id'", "0..999"], ["class1000.jsonl:1"]),
    "prompt_for_class_model": ("prompt.jsonl", b'{"prompt": "a red fox", "count": 2}\n',
                               ["prompt.jsonl:1", "'prompt'"], []),
    "empty_file": ("empty.jsonl", b"", ["empty.jsonl", "no rows"], []),
    "not_utf8": ("latin1.jsonl", b'{"class_id": 1}\n{"class_id": 2, "id": "caf\xe9"}\n',
                 ["latin1.jsonl:2", "UTF-8"], ["latin1.jsonl:1"]),
    "csv_wrong_header": ("header.csv", b"klass_id,count\n1,2\n",
                         ["header.csv:1", "'klass_id'"], []),
    "all_bad_rows_reported": ("many.jsonl",
                              b'{"class_id": 1}\n{"class_id": 2, "count": -1}\n{"class_id": 3}\n'
                              b'{"class_id": "7"}\n',
                              ["many.jsonl:2", "'count'", "many.jsonl:4", "'class_id'", "2 problems"],
                              ["many.jsonl:1", "many.jsonl:3"]),
    # hostile input (issue 15, A): each once a traceback or a "valid" manifest that could never run
    "huge_int": ("hugeint.jsonl", b'{"class_id": 1, "count": ' + b"7" * 4400 + b"}\n",
                 ["hugeint.jsonl:1", "'count'", "4400 digits"], ["Traceback"]),
    "huge_int_csv": ("hugeint.csv", b"class_id\n" + b"7" * 4400 + b"\n",
                     ["hugeint.csv:2", "'class_id'", "4400 digits"], ["Traceback"]),
    "deep_json": ("deep.jsonl", b'{"class_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
                  ["deep.jsonl:1", "nested too deeply"], ["Traceback"]),
    "lone_surrogate": ("surrogate.jsonl", b'{"class_id": 1, "id": "\\ud800"}\n',
                       ["surrogate.jsonl:1", "'id'", "surrogate"], ["Traceback"]),
    "count_1e18": ("count1e18.jsonl", b'{"class_id": 1, "count": 1000000000000000000}\n',
                   ["count1e18.jsonl:1", "'count'", "1..1,000,000,000"], ["MemoryError"]),
    "long_line": ("long.jsonl", b'{"class_id": 1, "id": "' + b"x" * (2 << 20) + b'"}\n',
                  ["long.jsonl:1", "at most 1 MiB"], ["Traceback"]),
}


@pytest.fixture(scope="module")
def bad_manifest_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`linegen run` on every bad manifest (each only parses and exits: in-process, tests/cli_runner.py)."""
    base = tmp_path_factory.mktemp("bad-manifests")
    for name, (fname, data, _, _) in BAD_MANIFESTS.items():
        (base / fname).write_bytes(data)
    results = {name: H.invoke_linegen(run_args(base / fname, str(base / f"out-{name}"), f"bad-{name}",
                                               shard_size=4, batch_size=3), cwd=base)
               for name, (fname, _, _, _) in BAD_MANIFESTS.items()}
    return {"base": base, "results": results}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_bad_manifest_is_refused_and_nothing_is_written(case: str, bad_manifest_runs: dict) -> None:
    fname, _, must, must_not = BAD_MANIFESTS[case]
    base: Path = bad_manifest_runs["base"]
    result: H.Result = bad_manifest_runs["results"][case]
    assert result.returncode not in (0, None), result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    for text in must:
        assert text in result.stderr, f"{text!r} missing from stderr\n{result.describe()}"
    for text in must_not:
        assert text not in result.stderr, f"{text!r} in stderr\n{result.describe()}"
    assert not (base / f"out-{case}").exists()  # not even the folder
    # and nothing anywhere else: the folder holds only the manifests
    assert sorted(p.name for p in base.iterdir()) == sorted(v[0] for v in BAD_MANIFESTS.values())


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_bad_manifest_validate(case: str, bad_manifest_runs: dict) -> None:
    fname, _, must, must_not = BAD_MANIFESTS[case]
    path = bad_manifest_runs["base"] / fname
    r = H.invoke_linegen(["validate", str(path), "--model", "test-tiny"], cwd=bad_manifest_runs["base"])
    assert r.returncode != 0, r
    assert "Traceback" not in r.stderr
    for text in must:
        assert text in r.stderr, f"{text!r} missing from validate's stderr:\n{r.stderr}"
    for text in must_not:
        assert text not in r.stderr
    # --json lists the same issues, machine-readable
    r = H.invoke_linegen(["validate", str(path), "--model", "test-tiny", "--json"])
    assert r.returncode != 0
    doc = json.loads(r.stdout)
    assert doc["valid"] is False and doc["issues"]
    assert all(i["file"] == str(path) for i in doc["issues"])
