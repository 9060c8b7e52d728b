"""Issue 24: nothing read from a job folder (or the config file) is trusted.

Jobs here are made without Ray: `prepare_job` writes job.json/plan.json, and the real `ShardSink`
commits each shard from arrays (real Parquet, real markers, real local storage); `linegen run`
on such a job takes the "already finished" path, which acts on the markers.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import jobs_helpers as H

JOB = "j"


def lg(args: list[str], base: Path, env: dict | None = None) -> H.Result:
    return H.run_linegen(args, timeout=120, cwd=base, env=env, log_dir=base / "logs")


def stats_row() -> dict[str, Any]:
    return {"worker": "w0", "node": "n0", "device": "cpu", "batch_size": 2, "images": 2, "tokens": 32,
            "wall_s": 0.5, "tokens_per_s": 64.0, "images_per_s": 4.0, "kv_cache_bytes": 1024,
            "peak_memory_bytes": 4096, "prompts_truncated": 0, "compile_s": 0.0, "decode_path": "eager",
            "started_at": 1_700_000_000.25, "finished_at": 1_700_000_000.75}


def prepared(base: Path, job: str = JOB, count: int = 4, shard_size: int = 2):
    from linegen.jobs.prepare import prepare_job
    from linegen.jobs.spec import JobSpec

    manifest = H.write_manifest(base / f"{job}.jsonl", [{"class_id": 1, "count": count}])
    spec = JobSpec.from_flags(manifest=str(manifest), out=str(base / "out"), job_id=job, model="test-tiny",
                              random_weights=True, shard_size=shard_size)
    return prepare_job(spec)


def commit_all(job, storage=None, *, stop_before_move: bool = False) -> None:
    """Commit every shard with the real sink; ``stop_before_move``: as if the process died right
    after each marker (the files stay staged, as after a kill)."""
    from linegen.jobs.sink import ShardSink

    sink = ShardSink.for_job(job)
    if stop_before_move:
        class Dies:
            def __getattr__(self, name: str) -> Any:
                return getattr(job.storage, name)

            def move(self, *a: Any, **kw: Any) -> None:
                raise KeyboardInterrupt
        sink.storage = Dies()  # type: ignore[assignment]
    for shard in job.shards:
        n = len(shard.items)
        rng = np.random.default_rng(len(shard.shard_id) + n)
        row = stats_row() | {"images": n}
        try:
            assert sink.commit(shard, 1, rng.integers(0, 16, size=(n, 16)),
                               rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8), [row])
        except KeyboardInterrupt:
            assert stop_before_move


def finished(base: Path, job: str = JOB, **kw: Any):
    from linegen.jobs.summary import finished_summary

    p = prepared(base, job, **kw)
    commit_all(p)
    assert finished_summary(p) is not None
    return p


def marker_path(base: Path, shard: str = "shard-00000", job: str = JOB) -> Path:
    return base / "out" / job / "_commits" / f"{shard}.json"


def edit_marker(base: Path, change, shard: str = "shard-00000") -> Path:
    path = marker_path(base, shard)
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    return path


def run_again(base: Path, job: str = JOB) -> H.Result:
    return lg(["run", str(base / f"{job}.jsonl"), "--out", str(base / "out"), "--job-id", job,
               "--shard-size", "2", *H.MODEL_ARGS], base)


def one_line_error(r: H.Result, *needles: str) -> None:
    assert r.returncode != 0, r.describe()
    assert "Traceback" not in r.stderr, r.describe()
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]  # run prints its job id first
    assert len(lines) == 1 and lines[0] == r.stderr.strip().splitlines()[-1], r.describe()
    for needle in needles:
        assert needle in lines[0], r.describe()


# ----------------------------------------------------------------------------- 1. keys confined


def test_tampered_marker_cannot_move_or_overwrite_files_outside_its_job(tmp_path: Path) -> None:
    """The issue's reproduction: attempt_token, staged and key edited so that the "already
    finished" path would move OUT/victim/images/keep.parquet onto OUT/precious.txt."""
    job = prepared(tmp_path)
    commit_all(job, stop_before_move=True)  # committed, files still staged
    out = tmp_path / "out"
    victim = out / "victim" / "images" / "keep.parquet"
    victim.parent.mkdir(parents=True)
    victim.write_bytes(b"the victim's data")
    precious = out / "precious.txt"
    precious.write_bytes(b"precious")
    planted = out / JOB / "_attempts" / "shard-00000" / "evil" / "images.parquet"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"dummy")

    def tamper(doc: dict) -> None:
        doc["attempt_token"] = "evil"
        doc["files"]["images"]["staged"] = "victim/images/keep.parquet"
        doc["files"]["images"]["key"] = "precious.txt"
    marker = edit_marker(tmp_path, tamper)

    r = run_again(tmp_path)
    one_line_error(r, str(marker), "key")
    assert victim.read_bytes() == b"the victim's data" and precious.read_bytes() == b"precious"

    # A key inside the job but naming another shard is refused the same way.
    def other_shard(doc: dict) -> None:
        doc["attempt_token"] = doc["files"]["stats"]["staged"].split("/")[3]
        doc["files"]["images"]["staged"] = doc["files"]["stats"]["staged"].replace("stats", "images")
        doc["files"]["images"]["key"] = f"{JOB}/images/shard-00001.parquet"
    edit_marker(tmp_path, other_shard)
    one_line_error(run_again(tmp_path), str(marker), "shard-00001")


def test_move_checks_sha256_and_never_overwrites(tmp_path: Path) -> None:
    from linegen.jobs.marker import DamagedMarker
    from linegen.jobs.sink import publish_pending

    job = prepared(tmp_path)
    commit_all(job, stop_before_move=True)
    out = tmp_path / "out" / JOB
    staged = next((out / "_attempts" / "shard-00000").glob("*/images.parquet"))
    good = staged.read_bytes()

    staged.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # same size, other bytes
    with pytest.raises(DamagedMarker, match="sha256 does not match"):
        publish_pending(job.storage, JOB)
    assert not (out / "images" / "shard-00000.parquet").exists()  # nothing published

    staged.write_bytes(good)
    published = out / "images" / "shard-00000.parquet"
    published.parent.mkdir(exist_ok=True)
    published.write_bytes(b"someone else's file")
    with pytest.raises(DamagedMarker, match="shard-00000.parquet"):
        publish_pending(job.storage, JOB)
    assert published.read_bytes() == b"someone else's file"  # never replaced
    published.unlink()
    assert publish_pending(job.storage, JOB) == 2
    assert published.read_bytes() == good


def test_local_storage_never_follows_a_link_out_of_out(tmp_path: Path) -> None:
    import linegen
    from linegen.jobs.storage import StorageError, open_storage

    finished(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.parquet").write_bytes(b"not yours")
    published = tmp_path / "out" / JOB / "images" / "shard-00000.parquet"
    published.unlink()
    published.symlink_to(outside / "secret.parquet")
    with pytest.raises(linegen.StorageError, match="refusing to follow"):
        linegen.read_images(str(tmp_path / "out"), JOB)
    storage = open_storage(str(tmp_path / "out"))
    (tmp_path / "out" / "elsewhere").symlink_to(outside)
    with pytest.raises(StorageError, match="outside"):
        storage.put("elsewhere/new.txt", b"x")
    assert not (outside / "new.txt").exists()
    storage.delete(f"{JOB}/images/shard-00000.parquet")  # removing the link itself is fine
    assert (outside / "secret.parquet").read_bytes() == b"not yours"


# ----------------------------------------------------------------------------- 2. verified reads


def test_read_images_checks_every_file_against_its_marker(tmp_path: Path) -> None:
    import linegen

    finished(tmp_path)
    out = str(tmp_path / "out")
    assert linegen.read_images(out, JOB).num_rows == 4
    marker = marker_path(tmp_path)
    original = marker.read_bytes()

    # a marker naming another shard's file: before, 2 rows duplicated and 2 missing, no error
    edit_marker(tmp_path, lambda d: d["files"]["images"].update(key=f"{JOB}/images/shard-00001.parquet"))
    with pytest.raises(linegen.StorageError, match=f"{marker}.*shard-00001"):
        linegen.read_images(out, JOB)

    # a wrong sha256: refused by default, read with verify=False (the size still matches)
    marker.write_bytes(original)
    edit_marker(tmp_path, lambda d: d["files"]["images"].update(sha256="0" * 64))
    with pytest.raises(linegen.StorageError, match="sha256 does not match its commit marker"):
        linegen.read_images(out, JOB)
    assert linegen.read_images(out, JOB, verify=False).num_rows == 4

    # a file cut short: the size is checked even with verify=False
    marker.write_bytes(original)
    published = tmp_path / "out" / JOB / "images" / "shard-00000.parquet"
    published.write_bytes(published.read_bytes()[:-10])
    with pytest.raises(linegen.StorageError, match="bytes, but its commit marker"):
        linegen.read_images(out, JOB, verify=False)

    # damaged markers: one StorageError naming the marker, never JSONDecodeError/KeyError/TypeError
    for damage in (b"{not json", b"[1, 2, 3]", b'{"job_id": "j"}', b"[" * 100_000 + b"]" * 100_000):
        marker.write_bytes(damage)
        with pytest.raises(linegen.StorageError, match=str(marker)) as e:
            linegen.read_images(out, JOB)
        assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- 3. tolerant parsing


SUCCESS_DAMAGE = [b"[1,2,3]", b'{"images": "lots"}', b'{"images": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                  b'{"images": {"done": 1e400}}']


@pytest.mark.parametrize("damage", SUCCESS_DAMAGE, ids=["list", "string-count", "nested", "overflow"])
def test_damaged_success_is_named_not_a_traceback(tmp_path: Path, damage: bytes) -> None:
    from linegen.jobs.remote import job_status, make_context

    finished(tmp_path)
    success = tmp_path / "out" / JOB / "_SUCCESS"
    success.write_bytes(damage)
    status = job_status(make_context(out=str(tmp_path / "out")), JOB)
    assert status.state == "DAMAGED" and str(success) in status.reason and "\n" not in status.reason
    # `run` of the finished job writes a damaged summary again from the markers
    r = run_again(tmp_path)
    assert r.returncode == 0, r.describe()
    assert json.loads(success.read_bytes())["images"] == {"done": 4, "total": 4}


def test_list_shows_a_damaged_job_and_lists_the_others(tmp_path: Path) -> None:
    finished(tmp_path, "good")
    finished(tmp_path, "bad")
    plan = tmp_path / "out" / "bad" / "plan.json"
    plan.write_text('{"fingerprint": "x", "items": 1e400, "shards": 2}')
    spec_damaged = prepared(tmp_path, "nested")
    job_json = tmp_path / "out" / "nested" / "job.json"
    job_json.write_bytes(b'{"job_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    del spec_damaged
    r = lg(["list", "--out", str(tmp_path / "out"), "--json"], tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.describe()
    docs = {d["job_id"]: d for d in json.loads(r.stdout)}
    assert docs["good"]["state"] == "SUCCEEDED"
    for job, damaged in (("bad", plan), ("nested", job_json)):
        assert docs[job]["state"] == "DAMAGED" and str(damaged) in docs[job]["reason"], docs[job]
    r = lg(["list", "--out", str(tmp_path / "out")], tmp_path, env={"COLUMNS": "200"})
    assert r.returncode == 0 and "DAMAGED" in r.stdout and "SUCCEEDED" in r.stdout, r.describe()
    for args in (["status", "bad"], ["cost", "bad"]):
        r = lg([*args, "--out", str(tmp_path / "out"), "--json"], tmp_path)
        assert "Traceback" not in r.stderr and str(plan) in r.stdout, r.describe()


def test_damaged_progress_and_outcome_files_never_raise(tmp_path: Path) -> None:
    from linegen.jobs.outcome import read_outcome
    from linegen.jobs.progress import read_live

    job = prepared(tmp_path)
    base = tmp_path / "out" / JOB
    for damage in (b"[1]", b'{"updated_at": "soon", "images_done": 1e400}', b"[" * 100_000):
        (base / "_progress.json").write_bytes(damage)
        assert read_live(job.storage, JOB) is None
        (base / "_FAILED").write_bytes(damage)
        assert read_outcome(job.storage, JOB).state == "failed"


def test_deeply_nested_config_is_one_line(tmp_path: Path) -> None:
    from linegen.settings.config_file import ConfigError, load_config

    for text in ("a = " + "[" * 2000 + "]" * 2000 + "\n", "x = " + "{a = " * 2000 + "1" + "}" * 2000 + "\n",
                 "[" + ".".join(["t"] * 2000) + "]\n"):
        cfg = tmp_path / "deep.toml"
        cfg.write_text(text)
        with pytest.raises(ConfigError, match=str(cfg)) as e:
            load_config(str(cfg))
        assert "\n" not in str(e.value)
    r = lg(["list", "--out", str(tmp_path / "out"), "--config", str(cfg)], tmp_path)
    one_line_error(r, str(cfg), "nested")


def test_guarded_reader_bounds() -> None:
    from linegen.guarded import DamagedFile, load_json, load_json_object, nesting_depth

    assert nesting_depth('{"a": "[[[[", "b": [[1]]}') == 3  # brackets in strings do not count
    with pytest.raises(DamagedFile, match="more than"):
        load_json(b"[" + b"1," * 100 + b"1]", "f.json", max_bytes=50)
    with pytest.raises(DamagedFile, match="not UTF-8"):
        load_json(b"\xff", "f.json")
    f = load_json_object(b'{"n": true, "x": NaN, "s": 3}', "f.json")
    for read, field in ((f.int, "n"), (f.float, "x"), (f.str, "s")):
        with pytest.raises(DamagedFile, match=f"f.json: damaged: field '{field}'"):
            read(field)
    assert f.int("missing", None) is None



# ----------------------------------------------------------------------------- 7. leftovers


def test_leftover_temporary_files_under_attempts_go_when_the_job_finishes(tmp_path: Path) -> None:
    """A kill during a local write leaves `.tmp-images.parquet-*` in an attempt's folder; the
    commit of another attempt never touches that folder, so before, it survived `_SUCCESS`."""
    from linegen.jobs.summary import finished_summary

    job = prepared(tmp_path)
    attempts = tmp_path / "out" / JOB / "_attempts"
    killed = attempts / "shard-00000" / "1-0123456789ab" / ".tmp-images.parquet-0123456789ab"
    killed.parent.mkdir(parents=True)
    killed.write_bytes(b"half a file")
    commit_all(job)
    assert killed.exists()  # the job runs on: another attempt's file is none of this commit's business
    assert finished_summary(job) is not None  # what `run` does once every shard is committed
    assert not killed.exists()
    assert not attempts.exists() or not any(p.is_file() for p in attempts.rglob("*"))


def test_leftover_temporary_files_of_whole_writes_go_once_stale(tmp_path: Path) -> None:
    """A SIGKILL while the driver rewrites _progress.json leaves `.tmp-_progress.json-*` in the job's
    folder (found by the WebDataset kill-and-resume test). A finished run removes such files once
    untouched for 10 s; a fresh one may be a second driver's write in flight and stays."""
    import os
    import time

    from linegen.jobs.storage import LocalStorage

    root = tmp_path / "out" / JOB
    root.mkdir(parents=True)
    stale, fresh = root / ".tmp-_progress.json-0123456789ab", root / ".tmp-_progress.json-ba9876543210"
    for f in (stale, fresh):
        f.write_bytes(b"{half")
    old = time.time() - 60
    os.utime(stale, (old, old))
    LocalStorage(tmp_path / "out").remove_leftovers(f"{JOB}/", older_than_s=10.0)
    assert not stale.exists() and fresh.exists()
