"""Concurrent-safe jobs (issue 12, item 5) and a reused job id naming what differs (issue 15, C5).

- The job's identity (job.json) is claimed with a conditional put before any shard work: of
  drivers started together with one job id, those whose settings differ from the claim are
  refused, naming the setting; those with the same settings go on together.
- Two identical `linegen run` at once: every item exactly once, every marker's checksums match
  its files, and what a reader's glob over images/ sees is only ever committed shards.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from linegen.errors import UserError
from linegen.jobs.plan import derive_seed
from linegen.jobs.prepare import prepare_job
from linegen.jobs.spec import JobSpec

try:
    import jobs_helpers as H
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import jobs_helpers as H

pytestmark = pytest.mark.timeout(420)


def spec(manifest: str, out: str, **kw) -> JobSpec:
    return JobSpec.from_flags(manifest=manifest, out=out, job_id=kw.pop("job_id", "j"), model="test-tiny",
                              random_weights=True, **kw)


# --------------------------------------------------------------------------- a reused job id: what differs


def test_a_reused_job_id_names_the_setting_that_differs(tmp_path: Path, monkeypatch) -> None:
    manifest = H.write_manifest(tmp_path / "m.jsonl", [{"class_id": 1, "count": 3}])
    out = str(tmp_path / "out")
    monkeypatch.chdir(tmp_path)
    prepare_job(spec("m.jsonl", out, seed=1, shard_size=2))
    # the same file by another spelling is the same job: it resumes
    prepare_job(spec(str(manifest), out, seed=1, shard_size=2))
    prepare_job(spec("./sub/../m.jsonl", out, seed=1, shard_size=2))
    for kw, named, differ in (
            ({"seed": 2, "shard_size": 2}, "seed: 2 here, 1 in the job", 1),
            ({"seed": 1, "shard_size": 3}, "shard_size: 3 here, 2 in the job", 1),
            ({"seed": 1, "shard_size": 2, "cache": "streaming", "cache_ratio": "1/2"},
             "cache.policy: 'streaming' here, 'full' in the job; cache.ratio: '1/2' here, None in the job", 2),
            ({"seed": 1, "shard_size": 2, "top_k": 5}, "sampling.top_k: 5 here", 1),
            ({"seed": 1, "shard_size": 2, "format": "webdataset"}, "format: 'webdataset' here, 'parquet'", 1)):
        with pytest.raises(UserError) as err:
            prepare_job(spec(str(manifest), out, **kw))
        message = str(err.value)
        assert named in message and "\n" not in message, message
        assert message.count(" here, ") == differ, message  # only the settings that differ
    other = H.write_manifest(tmp_path / "other.jsonl", [{"class_id": 1, "count": 3}])
    with pytest.raises(UserError, match=r"manifest: '.*other\.jsonl' here, '.*m\.jsonl' in the job"):
        prepare_job(spec(str(other), out, seed=1, shard_size=2))


# --------------------------------------------------------------------------- the claim


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_drivers_racing_for_one_job_id_get_one_identity(tmp_path: Path, backend: str, request) -> None:
    """Six drivers prepare one job id at the same moment, with seeds 1, 1, 2, 2, 3, 3: one
    identity is claimed, the drivers with its seed proceed, every other one is refused naming
    `seed`, and the manifest copy and plan.json are the claimant's."""
    manifest = str(H.write_manifest(tmp_path / "m.jsonl", [{"class_id": 1, "count": 4}]))
    env = {}
    if backend == "local":
        out = str(tmp_path / "out")
    else:
        server, bucket = request.getfixturevalue("s3_env"), request.getfixturevalue("tmp_bucket")
        out, env = f"s3://{bucket}/runs", {"s3_endpoint_url": server.endpoint_url}
    seeds = [1, 1, 2, 2, 3, 3]
    barrier = threading.Barrier(len(seeds))
    results: dict[int, str] = {}

    def driver(i: int) -> None:
        s = spec(manifest, out, seed=seeds[i], **env)
        barrier.wait()
        try:
            prepare_job(s)
            results[i] = "ok"
        except UserError as e:
            results[i] = str(e)

    threads = [threading.Thread(target=driver, args=(i,)) for i in range(len(seeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    from linegen.jobs.prepare import load_job, read_plan

    recorded = load_job(out, "j", env.get("s3_endpoint_url"))
    for i, outcome in results.items():
        if seeds[i] == recorded.seed:
            assert outcome == "ok", outcome
        else:
            assert f"seed: {seeds[i]} here, {recorded.seed} in the job" in outcome, outcome
    assert len(results) == len(seeds)
    storage = prepare_job(spec(manifest, out, seed=recorded.seed, **env)).storage
    assert read_plan(storage, "j")["items"] == 4


# --------------------------------------------------------------------------- two real runs


ROWS = [{"class_id": 1, "count": 20}, {"class_id": 2, "count": 20}]  # 40 images, 10 shards of 4


def run_args(manifest: Path, out: Path, *extra: str) -> list[str]:
    return ["run", str(manifest), "--out", str(out), "--job-id", "twin", *H.MODEL_ARGS, "--shard-size", "4",
            "--batch-size", "2", "--json", *extra]


def test_two_runs_with_different_seeds_one_proceeds_the_other_names_seed(tmp_path: Path) -> None:
    manifest = H.write_manifest(tmp_path / "m.jsonl", ROWS)
    out = tmp_path / "out"
    procs = [H.start_linegen(run_args(manifest, out, "--seed", str(seed)), cwd=tmp_path, log_dir=tmp_path / "logs")
             for seed in (1, 2)]
    try:
        results = [H.finish_linegen(p, 300) for p in procs]
    finally:
        for p in procs:
            H.kill_session(p)
    ok = [r for r in results if r.returncode == 0]
    refused = [r for r in results if r.returncode not in (0, None)]
    assert len(ok) == 1 and len(refused) == 1, "\n".join(r.describe() for r in results)
    last = refused[0].stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "seed:" in last and "Traceback" not in refused[0].stderr, last
    winner_seed = json.loads((out / "twin" / "job.json").read_text())["seed"]
    assert f"seed: {3 - winner_seed} here, {winner_seed} in the job" in last
    files = H.local_files(out)
    assert H.marker_problems(files, "twin") == []
    rows = []
    for key in H.published_images(files, "twin"):
        rows += H.read_parquet(files[key]).select(["row", "replica", "seed"]).to_pylist()
    assert len(rows) == 40 and all(r["seed"] == derive_seed(winner_seed, r["row"], r["replica"]) for r in rows)


def test_two_identical_runs_at_once_stay_exactly_once(tmp_path: Path) -> None:
    manifest = H.write_manifest(tmp_path / "m.jsonl", ROWS)
    out = tmp_path / "out"
    job = out / "twin"
    seen_uncommitted: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        # what a reader's glob sees must always be committed: list images/, then the markers
        while not stop.is_set():
            published = sorted(p.name for p in (job / "images").glob("*")) if (job / "images").is_dir() else []
            markers = {p.stem for p in (job / "_commits").glob("*.json")} if (job / "_commits").is_dir() else set()
            seen_uncommitted.extend(n for n in published if n.split(".")[0] not in markers)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    procs = [H.start_linegen(run_args(manifest, out), cwd=tmp_path, log_dir=tmp_path / "logs") for _ in range(2)]
    try:
        results = [H.finish_linegen(p, 300) for p in procs]
    finally:
        stop.set()
        for p in procs:
            H.kill_session(p)
    watcher.join(5)
    assert all(r.returncode == 0 for r in results), "\n".join(r.describe() for r in results)
    assert seen_uncommitted == [], f"a glob over images/ saw uncommitted files: {seen_uncommitted[:5]}"
    files = H.local_files(out)
    assert H.marker_problems(files, "twin") == []
    ids = H.committed_item_ids(files, "twin")
    assert len(ids) == len(set(ids)) == 40
    assert set(files) == H.expected_layout("twin", 10)  # nothing else: no loser's file, no staged leftover
    generated = [json.loads(r.stdout[r.stdout.find("{"):])["generated_this_run"] for r in results]
    assert sum(generated) == 40, generated  # each shard counted once, by the run whose marker won
    print(f"images committed by each run: {generated}")
