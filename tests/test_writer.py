"""Image/stats Parquet encoding (jobs.writer), output keys (jobs.layout) and ShardSink commits."""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from linegen.jobs import layout, writer
from linegen.jobs.plan import Item, Shard
from linegen.jobs.sink import ShardSink
from linegen.jobs.storage import open_storage

H, W, N_TOKENS = 8, 8, 4



class Wrapped:
    """A storage that behaves as ``inner`` except for the methods a test overrides."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

def make_items(n: int, start_row: int = 0) -> list[Item]:
    items = []
    for i in range(n):
        row = start_row + i
        prompt_row = row % 2 == 1
        items.append(Item(
            item_id=f"r{row:07d}-00000", row=row, replica=0, seed=1000 + row,
            class_id=None if prompt_row else row % 1000, prompt=f"a photo {row}" if prompt_row else None,
            user_id=f"u{row}" if row % 3 == 0 else None,
            cfg_scale=4.0, temperature=1.0, top_k=2000, top_p=1.0,
        ))
    return items


def make_arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, H, W, 3), dtype=np.uint8)
    tokens = rng.integers(0, 16384, size=(n, N_TOKENS), dtype=np.int64)
    return images, tokens


def stats_row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "job_id": "job-1", "shard_id": "shard-00000", "attempt": 1, "worker": "w0", "node": "n0",
        "device": "cpu", "model": "tiny", "cache_policy": "linear", "cache_ratio": 0.25,
        "batch_size": 4, "images": 4, "tokens": 16, "wall_s": 0.5, "tokens_per_s": 32.0,
        "images_per_s": 8.0, "kv_cache_bytes": 1024, "peak_memory_bytes": 4096,
        "prompts_truncated": 0, "compile_s": 0.0, "decode_path": "eager",
        "started_at": 1_700_000_000.25, "finished_at": 1_700_000_000.75,
    }
    row.update(overrides)
    return row


def worker_stats_row() -> dict[str, Any]:
    """What a worker reports: no identity fields, the sink fills them in."""
    row = stats_row()
    for k in ("job_id", "shard_id", "attempt", "model", "cache_policy", "cache_ratio"):
        del row[k]
    return row


# --------------------------------------------------------------------------- layout


def test_layout_keys() -> None:
    assert layout.spec_key("j") == "j/job.json"
    assert layout.manifest_key("j", "jsonl") == "j/manifest.jsonl"
    assert layout.manifest_key("j", ".csv") == "j/manifest.csv"
    assert layout.image_key("j", "shard-00003") == "j/images/shard-00003.parquet"
    assert layout.stats_key("j", "shard-00003") == "j/stats/shard-00003.parquet"
    assert layout.commit_key("j", "shard-00003") == "j/_commits/shard-00003.json"
    assert layout.commits_prefix("j") == "j/_commits/"
    assert layout.success_key("j") == "j/_SUCCESS"
    for bad in ("", "a/b", ".."):
        with pytest.raises(ValueError):
            layout.image_key(bad, "shard-00000")
        with pytest.raises(ValueError):
            layout.commit_key("j", bad)


def test_committed_shards_lists_only_markers(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path))
    assert layout.committed_shards(storage, "j") == set()
    storage.put("j/_commits/shard-00000.json", b"{}")
    storage.put("j/_commits/shard-00002.json", b"{}")
    storage.put("j/_commits/notes.txt", b"x")
    storage.put("j/images/shard-00001.parquet", b"x")
    storage.put("j2/_commits/shard-00001.json", b"{}")
    assert layout.committed_shards(storage, "j") == {"shard-00000", "shard-00002"}


# --------------------------------------------------------------------------- PNG


def test_encode_png_round_trip_and_order() -> None:
    images, _ = make_arrays(6)
    pngs = writer.encode_pngs(images, workers=3)
    assert len(pngs) == 6
    for png, img in zip(pngs, images):
        assert png == writer.encode_png(img)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), img)
    with pytest.raises(ValueError):
        writer.encode_png(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        writer.encode_png(np.zeros((4, 4, 3), np.float32))


# --------------------------------------------------------------------------- image table

EXPECTED_IMAGE_SCHEMA = [
    ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    ("item_id", pa.string()), ("job_id", pa.string()), ("row", pa.int64()), ("replica", pa.int32()),
    ("id", pa.string()),
    ("class_id", pa.int32()), ("prompt", pa.string()), ("prompt_tokens", pa.int32()),
    ("prompt_truncated", pa.bool_()), ("seed", pa.int64()),
    ("cfg_scale", pa.float64()), ("temperature", pa.float64()), ("top_k", pa.int64()), ("top_p", pa.float64()),
    ("model", pa.string()), ("cache_policy", pa.string()), ("cache_ratio", pa.float64()),
    ("cache_options", pa.string()),
    ("tokens", pa.list_(pa.int32())), ("width", pa.int32()), ("height", pa.int32()),
]


@pytest.fixture(scope="module")
def image_parquet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Item], np.ndarray, np.ndarray]:
    n = 250
    items = make_items(n)
    images, tokens = make_arrays(n)
    info = [None if it.prompt is None else (it.row % 7 + 1, it.row % 5 == 0) for it in items]
    table = writer.image_table(items, images, tokens, job_id="j", model="tiny", cache_policy="linear",
                               cache_ratio=0.25, prompt_info=info)
    path = tmp_path_factory.mktemp("img") / "shard-00000.parquet"
    path.write_bytes(writer.to_parquet_bytes(table))
    return path, items, images, tokens


def test_image_parquet_schema_rows_and_row_groups(image_parquet) -> None:
    path, items, images, tokens = image_parquet
    pf = pq.ParquetFile(path)
    assert [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)] == [100, 100, 50]
    table = pf.read()
    assert [(f.name, f.type) for f in table.schema] == EXPECTED_IMAGE_SCHEMA

    meta = json.loads(table.schema.metadata[b"huggingface"])
    features = meta["info"]["features"]
    assert list(features) == [name for name, _ in EXPECTED_IMAGE_SCHEMA]
    assert features["image"] == {"_type": "Image"}
    assert features["item_id"] == {"dtype": "string", "_type": "Value"}
    assert features["tokens"]["_type"] == "Sequence"

    rows = table.to_pylist()
    for i in (0, 1, 3, 5, 249):
        r, it = rows[i], items[i]
        assert r["item_id"] == it.item_id and r["row"] == it.row and r["replica"] == it.replica
        assert r["seed"] == it.seed and r["id"] == it.user_id
        assert r["class_id"] == it.class_id and r["prompt"] == it.prompt
        assert (r["class_id"] is None) != (r["prompt"] is None)
        if it.prompt is None:
            assert r["prompt_tokens"] is None and r["prompt_truncated"] is None
        else:
            assert (r["prompt_tokens"], r["prompt_truncated"]) == (it.row % 7 + 1, it.row % 5 == 0)
        assert r["model"] == "tiny" and r["cache_policy"] == "linear" and r["cache_ratio"] == 0.25
        assert r["job_id"] == "j"
        assert r["tokens"] == tokens[i].tolist()
        assert (r["width"], r["height"]) == (W, H)
        assert r["image"]["path"] == f"{it.item_id}.png"
        decoded = np.asarray(Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB"))
        np.testing.assert_array_equal(decoded, images[i])


def test_image_table_rejects_bad_shapes() -> None:
    items = make_items(3)
    images, tokens = make_arrays(3)
    kw = dict(job_id="j", model="m", cache_policy="full", cache_ratio=1.0)
    with pytest.raises(ValueError, match="3 items"):
        writer.image_table(items, images[:2], tokens, **kw)
    with pytest.raises(ValueError, match="3 items"):
        writer.image_table(items, images, tokens[:2], **kw)
    with pytest.raises(ValueError, match="uint8"):
        writer.image_table(items, images.astype(np.float32), tokens, **kw)
    with pytest.raises(ValueError, match="int32"):
        writer.image_table(items, images, tokens + 2**40, **kw)


def test_load_dataset_decodes_images(image_parquet, hf_datasets) -> None:
    datasets, home = hf_datasets
    path, items, images, tokens = image_parquet
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train",
                               cache_dir=str(home / "datasets"))
    assert isinstance(ds.features["image"], datasets.Image)
    assert len(ds) == 250
    first = ds[0]
    assert isinstance(first["image"], Image.Image)
    assert first["image"].size == (W, H)
    np.testing.assert_array_equal(np.asarray(first["image"].convert("RGB")), images[0])
    assert first["item_id"] == items[0].item_id and first["tokens"] == tokens[0].tolist()


# --------------------------------------------------------------------------- stats table


def test_stats_table_types_and_round_trip(tmp_path: Path) -> None:
    rows = [stats_row(), stats_row(attempt=2, kv_cache_bytes=None,
                                   started_at=datetime(2024, 1, 1, tzinfo=timezone.utc))]
    table = writer.stats_table(rows)
    path = tmp_path / "s.parquet"
    path.write_bytes(writer.to_parquet_bytes(table))
    back = pq.read_table(path)
    assert back.schema.names == list(writer.STATS_COLUMNS)
    assert back.schema.names == [
        "job_id", "shard_id", "attempt", "worker", "node", "device", "model", "cache_policy",
        "cache_ratio", "batch_size", "images", "tokens", "wall_s", "tokens_per_s", "images_per_s",
        "kv_cache_bytes", "peak_memory_bytes", "prompts_truncated", "compile_s", "decode_path",
        "started_at", "finished_at"]
    types = {f.name: f.type for f in back.schema}
    assert types["attempt"] == pa.int32()
    assert types["cache_ratio"] == types["wall_s"] == pa.float64()
    assert types["batch_size"] == types["kv_cache_bytes"] == pa.int64()
    assert types["started_at"] == types["finished_at"] == pa.timestamp("us", tz="UTC")
    out = back.to_pylist()
    assert out[0]["started_at"] == datetime.fromtimestamp(1_700_000_000.25, tz=timezone.utc)
    assert out[1]["started_at"] == datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert out[1]["kv_cache_bytes"] is None and out[1]["attempt"] == 2
    assert writer.stats_table([]).schema == writer.STATS_SCHEMA


def test_stats_table_bad_keys_and_values() -> None:
    row = stats_row()
    del row["wall_s"], row["node"]
    with pytest.raises(ValueError, match=r"row 0: missing node, wall_s"):
        writer.stats_table([row])
    with pytest.raises(ValueError, match=r"row 1: unexpected gpu_util"):
        writer.stats_table([stats_row(), stats_row(gpu_util=0.9)])
    with pytest.raises(ValueError, match="batch_size"):
        writer.stats_table([stats_row(batch_size="four")])
    with pytest.raises(ValueError, match="started_at"):
        writer.stats_table([stats_row(started_at="yesterday")])


# --------------------------------------------------------------------------- sink


def make_shard(n: int = 5, index: int = 0) -> Shard:
    """Shard `index` of a plan whose rows (count 1, seed 1000 + row) expand to make_items' items."""
    from linegen.jobs.manifest import ManifestRow
    from linegen.jobs.plan import Plan
    from linegen.workers.models.config import SamplingParams

    rows = [ManifestRow(index=it.row, line=it.row + 1, prompt=it.prompt, class_id=it.class_id, count=1, seed=it.seed,
                        id=it.user_id, cfg_scale=None, temperature=None, top_k=None, top_p=None)
            for it in make_items(n * (index + 1))]
    shard = Plan(rows, job_seed=0, sampling=SamplingParams(), shard_size=n)[index]
    assert list(shard.items) == make_items(n, start_row=index * n)
    return shard


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_sink_commit_writes_files_then_marker(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path))
    sink = ShardSink(storage, "job-1", "tiny", "linear", 0.25)
    shard = make_shard()
    images, tokens = make_arrays(5)
    assert not sink.is_committed(shard.shard_id) and sink.read_commit(shard.shard_id) is None

    assert sink.commit(shard, 1, tokens, images, [worker_stats_row(), worker_stats_row()]) is True
    assert sorted(storage.list("job-1/")) == [
        "job-1/_commits/shard-00000.json", "job-1/images/shard-00000.parquet",
        "job-1/stats/shard-00000.parquet"]
    img_path = tmp_path / "job-1/images/shard-00000.parquet"
    stats_path = tmp_path / "job-1/stats/shard-00000.parquet"
    marker_path = tmp_path / "job-1/_commits/shard-00000.json"
    assert marker_path.stat().st_mtime_ns >= max(img_path.stat().st_mtime_ns, stats_path.stat().st_mtime_ns)

    marker = sink.read_commit(shard.shard_id)
    assert marker is not None and sink.is_committed(shard.shard_id)
    assert marker["shard_id"] == "shard-00000" and marker["attempt"] == 1 and marker["images"] == 5
    assert marker["first_item_id"] == shard.items[0].item_id
    assert marker["last_item_id"] == shard.items[-1].item_id
    assert isinstance(marker["finished_at"], float)
    for name, path in (("images", img_path), ("stats", stats_path)):
        data = path.read_bytes()
        assert marker["files"][name]["sha256"] == hashlib.sha256(data).hexdigest()
        assert marker["files"][name]["bytes"] == len(data)
    assert layout.committed_shards(storage, "job-1") == {"shard-00000"}

    assert pq.read_table(img_path).column("item_id").to_pylist() == [it.item_id for it in shard.items]
    stats = pq.read_table(stats_path).to_pylist()
    assert len(stats) == 2
    assert {(r["job_id"], r["shard_id"], r["attempt"], r["model"], r["cache_policy"], r["cache_ratio"])
            for r in stats} == {("job-1", "shard-00000", 1, "tiny", "linear", 0.25)}


def test_sink_second_commit_changes_nothing(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path))
    sink = ShardSink(storage, "job-1", "tiny", "linear", 0.25)
    shard = make_shard()
    images, tokens = make_arrays(5)
    assert sink.commit(shard, 1, tokens, images, [worker_stats_row()])
    before = snapshot(tmp_path)
    other_images, other_tokens = make_arrays(5, seed=1)
    assert sink.commit(shard, 2, other_tokens, other_images, [worker_stats_row()]) is False
    assert snapshot(tmp_path) == before


def test_sink_loses_marker_race(tmp_path: Path) -> None:
    """Another attempt's marker lands while we upload: we report False and keep its marker."""
    storage = open_storage(str(tmp_path))
    sink = ShardSink(storage, "job-1", "tiny", "linear", 0.25)
    shard = make_shard()
    images, tokens = make_arrays(5)
    key = layout.commit_key("job-1", shard.shard_id)

    class Racing(Wrapped):
        """Storage whose marker appears just before our conditional put."""

        def exists(self, k: str) -> bool:
            return False  # both pre-checks miss the other attempt

        def put_if_absent(self, k: str, data: bytes) -> bool:
            if k == key:  # attempt 7 commits first, through the plain sink
                assert sink.commit(shard, 7, tokens, images, [worker_stats_row()]) is True
            return storage.put_if_absent(k, data)

    racing_sink = ShardSink(Racing(storage), "job-1", "tiny", "linear", 0.25)  # type: ignore[arg-type]
    assert racing_sink.commit(shard, 1, tokens, images, [worker_stats_row()]) is False
    assert sink.read_commit(shard.shard_id).attempt == 7
    # the loser wrote nothing a reader sees, and left nothing behind (issue 12, item 5)
    assert storage.list("job-1/") == ["job-1/_commits/shard-00000.json", "job-1/images/shard-00000.parquet",
                                      "job-1/stats/shard-00000.parquet"]


def test_sink_rejects_incomplete_shard_and_writes_nothing(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path))
    sink = ShardSink(storage, "job-1", "tiny", "linear", 0.25)
    shard = make_shard(5)
    images, tokens = make_arrays(5)
    with pytest.raises(ValueError, match="incomplete"):
        sink.commit(shard, 1, tokens[:4], images[:4], [worker_stats_row()])
    with pytest.raises(ValueError, match="incomplete"):
        sink.commit(shard, 1, tokens, images[:4], [worker_stats_row()])
    with pytest.raises(ValueError, match="missing"):  # bad stats fail before any write too
        sink.commit(shard, 1, tokens, images, [{"worker": "w0"}])
    with pytest.raises(ValueError, match="disagrees"):
        sink.commit(shard, 1, tokens, images, [{**worker_stats_row(), "shard_id": "shard-00009"}])
    assert storage.list("") == []


def test_sink_storage_failure_leaves_no_marker(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path))
    shard = make_shard()
    images, tokens = make_arrays(5)

    class FailingStats(Wrapped):
        def put(self, key: str, data: bytes) -> None:
            if "stats" in key:
                raise OSError("disk full")
            storage.put(key, data)

    sink = ShardSink(FailingStats(storage), "job-1", "tiny", "linear", 0.25)  # type: ignore[arg-type]
    with pytest.raises(OSError):
        sink.commit(shard, 1, tokens, images, [worker_stats_row()])
    assert not storage.exists(layout.commit_key("job-1", shard.shard_id))
    # A retry overwrites the orphan image file and commits.
    assert ShardSink(storage, "job-1", "tiny", "linear", 0.25).commit(shard, 2, tokens, images, [worker_stats_row()])


def test_sink_pickles(tmp_path: Path) -> None:
    sink = ShardSink(open_storage(str(tmp_path)), "job-1", "tiny", "linear", 0.25)
    clone = pickle.loads(pickle.dumps(sink))
    shard = make_shard(3, index=2)
    images, tokens = make_arrays(3)
    assert clone.commit(shard, 1, tokens, images, [worker_stats_row()]) is True
    assert sink.is_committed("shard-00002")
    assert sink.read_commit("shard-00002")["images"] == 3
    assert os.path.exists(tmp_path / "job-1/images/shard-00002.parquet")


def test_sink_crash_between_marker_and_publish_is_recovered(tmp_path: Path) -> None:
    """The committing process dies right after its marker: readers get the staged bytes, and
    `publish_pending` (run before _SUCCESS) moves them; the published files match the marker."""
    from linegen.jobs.sink import committed_file, publish_pending, read_commit

    storage = open_storage(str(tmp_path))
    shard = make_shard()
    images, tokens = make_arrays(5)

    class DiesBeforeMoving(Wrapped):
        def move(self, src: str, dst: str, **kw: Any) -> None:
            raise KeyboardInterrupt  # the process is gone

    with pytest.raises(KeyboardInterrupt):
        ShardSink(DiesBeforeMoving(storage), "job-1", "tiny", "linear", 0.25).commit(  # type: ignore[arg-type]
            shard, 1, tokens, images, [worker_stats_row()])
    marker = read_commit(storage, "job-1", shard.shard_id)
    assert storage.list("job-1/images/") == []  # nothing published: a glob sees nothing yet
    staged = committed_file(storage, marker, "images")
    assert hashlib.sha256(staged).hexdigest() == marker["files"]["images"]["sha256"]
    assert publish_pending(storage, "job-1") == 1
    for kind in ("images", "stats"):
        data = storage.get(marker["files"][kind]["key"])
        assert hashlib.sha256(data).hexdigest() == marker["files"][kind]["sha256"]
    assert storage.list("job-1/_attempts/") == []
    assert publish_pending(storage, "job-1") == 0


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_racing_attempts_publish_only_the_winner(tmp_path: Path, backend: str, request) -> None:
    """Several attempts of one shard commit at once with different bytes (stats timings always
    differ): exactly one wins, the published files are its bytes, the losers leave nothing."""
    import threading

    if backend == "local":
        storage = open_storage(str(tmp_path))
    else:
        server, bucket = request.getfixturevalue("s3_env"), request.getfixturevalue("tmp_bucket")
        storage = open_storage(f"s3://{bucket}/p", endpoint_url=server.endpoint_url)
    shard = make_shard()
    barrier = threading.Barrier(4)
    results: list[bool] = []

    def attempt(i: int) -> None:
        images, tokens = make_arrays(5, seed=i)
        sink = ShardSink(storage, "job-1", "tiny", "linear", 0.25)
        barrier.wait()
        results.append(sink.commit(shard, i + 1, tokens, images, [worker_stats_row()]))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [False, False, False, True]
    marker = json.loads(storage.get(layout.commit_key("job-1", shard.shard_id)))
    for kind in ("images", "stats"):
        data = storage.get(marker["files"][kind]["key"])
        assert hashlib.sha256(data).hexdigest() == marker["files"][kind]["sha256"]
    assert sorted(storage.list("job-1/")) == ["job-1/_commits/shard-00000.json", "job-1/images/shard-00000.parquet",
                                              "job-1/stats/shard-00000.parquet"]


def test_class_names_are_a_class_label(hf_datasets, tmp_path: Path) -> None:
    """A model that names its classes (the built-in one) gets a ClassLabel class_id column."""
    from linegen.workers.builtin.shapes import CLASS_NAMES

    datasets, home = hf_datasets
    items = [it for it in make_items(10) if it.class_id is not None]
    images, tokens = make_arrays(len(items))
    table = writer.image_table(items, images, tokens, job_id="j", model="m", cache_policy="full", cache_ratio=1.0,
                               class_names=CLASS_NAMES)
    path = tmp_path / "c.parquet"
    path.write_bytes(writer.to_parquet_bytes(table))
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(home / "datasets"))
    feature = ds.features["class_id"]
    assert isinstance(feature, datasets.ClassLabel) and list(feature.names) == list(CLASS_NAMES)
    assert feature.int2str(ds[0]["class_id"]) == CLASS_NAMES[items[0].class_id]
    assert ds[0]["job_id"] == "j"
