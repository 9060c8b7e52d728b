"""`--format webdataset` (issue 15, D): tar shards of KEY.png, KEY.json and KEY.tokens.npy,
committed by the same marker protocol as Parquet, read back with the `webdataset` library and with
plain `tarfile`, and exactly once after a SIGKILL of the run and a resume."""
from __future__ import annotations

import io
import json
import os
import signal
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from linegen.jobs.plan import Item

try:
    import jobs_helpers as H
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import jobs_helpers as H

pytestmark = pytest.mark.timeout(420)


def _items(n: int) -> list[Item]:
    return [Item(item_id=f"r{i:07d}-00000", row=i, replica=0, seed=100 + i, class_id=i % 3, prompt=None,
                 user_id=f"u{i}" if i % 2 else None, cfg_scale=2.0, temperature=1.0, top_k=0, top_p=1.0)
            for i in range(n)]


def _samples_tarfile(path_or_bytes) -> dict[str, dict[str, bytes]]:
    data = path_or_bytes.read_bytes() if isinstance(path_or_bytes, Path) else path_or_bytes
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            key, _, ext = m.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def test_shard_tar_reads_back_with_tarfile_and_webdataset(tmp_path: Path) -> None:
    import webdataset as wds

    from linegen.jobs.webdataset import shard_tar

    rng = np.random.default_rng(0)
    items = _items(5)
    images = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    tokens = rng.integers(0, 512, (5, 4), dtype=np.int64)
    kw = dict(job_id="j", model="m", cache_policy="linear", cache_ratio=0.25, class_names=("a", "b", "c"))
    data = shard_tar(items, images, tokens, **kw)
    assert shard_tar(items, images, tokens, **kw) == data  # the bytes depend on the images only
    path = tmp_path / "shard-00000.tar"
    path.write_bytes(data)

    plain = _samples_tarfile(path)
    assert list(plain) == [it.item_id for it in items]
    for it, img, grid in zip(items, images, tokens):
        s = plain[it.item_id]
        assert set(s) == {"png", "json", "tokens.npy"}
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(s["png"])).convert("RGB")), img)
        np.testing.assert_array_equal(np.load(io.BytesIO(s["tokens.npy"])), grid.astype(np.int32))
        meta = json.loads(s["json"])
        assert (meta["item_id"], meta["job_id"], meta["seed"], meta["class_id"]) == (it.item_id, "j", it.seed, it.class_id)
        assert meta["class_name"] == "abc"[it.class_id] and meta["id"] == it.user_id
        assert (meta["width"], meta["height"]) == (8, 8)

    got = list(wds.WebDataset(str(path), shardshuffle=False).decode("rgb8"))
    assert [s["__key__"] for s in got] == [it.item_id for it in items]
    np.testing.assert_array_equal(got[2]["png"], images[2])
    assert got[2]["json"]["seed"] == items[2].seed
    np.testing.assert_array_equal(got[2]["tokens.npy"], tokens[2].astype(np.int32))


def test_webdataset_job_survives_sigkill_and_resumes_exactly_once(tmp_path: Path) -> None:
    import webdataset as wds

    manifest = H.write_manifest(tmp_path / "m.jsonl", [{"class_id": 1, "count": 20}, {"class_id": 2, "count": 20}])
    out, job = tmp_path / "out", "wds-job"
    args = ["run", str(manifest), "--out", str(out), "--job-id", job, *H.MODEL_ARGS, "--shard-size", "4",
            "--batch-size", "2", "--format", "webdataset", "--json"]
    commits = out / job / "_commits"
    proc = H.start_linegen(args, cwd=tmp_path, log_dir=tmp_path / "logs")
    try:
        H.wait_for_commit(proc, commits)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        H.kill_session(proc)
    H.finish_linegen(proc, 5)
    before = {p.name: p.read_bytes() for p in commits.glob("*.json")}
    assert 0 < len(before) < 10, f"{len(before)} of 10 shards committed before the kill"

    second = H.run_linegen(args, timeout=300, cwd=tmp_path, log_dir=tmp_path / "logs")
    assert second.returncode == 0, second.describe()
    assert second.json["images"] == {"done": 40, "total": 40}
    assert second.json["generated_this_run"] == 40 - 4 * len(before)
    for name, data in before.items():  # committed shards were not redone
        assert (commits / name).read_bytes() == data
    files = H.local_files(out)
    assert set(files) == H.expected_layout(job, 10, image_ext="tar")
    assert H.marker_problems(files, job) == []

    tars = sorted(str(p) for p in (out / job / "images").glob("*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False))
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys)) == 40
    assert sorted(keys) == sorted(f"r{row:07d}-{rep:05d}" for row in (0, 1) for rep in range(20))
    plain = {}
    for t in tars:
        plain.update(_samples_tarfile(Path(t)))
    assert sorted(plain) == sorted(keys)
    first = json.loads(plain["r0000001-00003"]["json"])
    assert first["class_id"] == 2 and first["job_id"] == job and first["model"] == "test-tiny"
    assert Image.open(io.BytesIO(plain["r0000001-00003"]["png"])).size == (32, 32)
    assert np.load(io.BytesIO(plain["r0000001-00003"]["tokens.npy"])).shape == (64,)
