"""Property-based fuzzing of the manifest readers (issue 15, A10): whatever bytes arrive as a JSON
Lines, CSV or Parquet manifest, the readers give either rows that plan, or a ManifestError whose
every issue is one printable line naming the file, never any other exception."""
from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linegen.jobs.manifest import ALLOWED_FIELDS, Conditioning, ManifestError, parse_manifest, total_items
from linegen.jobs.plan import Plan
from linegen.workers.models.config import SamplingParams

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONDITIONINGS = st.sampled_from([None, Conditioning("class", num_classes=10), Conditioning("text")])

# Values that have broken readers before: huge and negative ints, floats beyond range, lone
# surrogates, control characters, deep nesting, wrong types.
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**30, max_value=10**60),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["\ud800", "a\udfffb", "x\r\ny", "\x00", "", "  ", "1_000", "٣"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                           max_size=3), max_leaves=8)
KEYS = st.one_of(st.sampled_from(ALLOWED_FIELDS), st.text(max_size=8))
RECORDS = st.dictionaries(KEYS, VALUES, max_size=6)


def check(data: bytes, name: str, conditioning) -> None:
    try:
        rows = parse_manifest(data, name, conditioning)
    except ManifestError as e:
        assert e.issues
        for issue in e.issues:
            text = str(issue)
            assert text.startswith(name) and "\n" not in text and "\r" not in text, text
            text.encode("utf-8")  # printable on any terminal
        return
    assert rows
    for row in rows:
        assert (row.prompt is None) != (row.class_id is None)
        assert row.count >= 1
    plan = Plan(rows, job_seed=0, sampling=SamplingParams(), shard_size=7)
    assert len(plan.fingerprint()) == 16 and plan.items == total_items(rows)
    if plan.items <= 5000:
        assert sum(len(s.items) for s in plan) == plan.items


@FUZZ
@given(data=st.binary(max_size=400), name=st.sampled_from(["m.jsonl", "m.csv", "m.parquet"]),
       conditioning=CONDITIONINGS)
def test_arbitrary_bytes(data: bytes, name: str, conditioning) -> None:
    check(data, name, conditioning)


def _json_line(record: dict) -> bytes:
    return json.dumps(record, ensure_ascii=True).encode()  # ensure_ascii: surrogates travel as escapes


@FUZZ
@given(records=st.lists(RECORDS, max_size=5), junk=st.lists(st.binary(max_size=30), max_size=2),
       conditioning=CONDITIONINGS)
def test_jsonl_of_arbitrary_objects(records: list, junk: list, conditioning) -> None:
    lines = [_json_line(r) for r in records] + junk
    check(b"\n".join(lines) + b"\n", "m.jsonl", conditioning)


@FUZZ
@given(header=st.lists(KEYS, min_size=1, max_size=4),
       cells=st.lists(st.lists(st.text(max_size=12) | st.integers().map(str), max_size=5), max_size=5),
       conditioning=CONDITIONINGS)
def test_csv_of_arbitrary_cells(header: list, cells: list, conditioning) -> None:
    import csv

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(cells)
    check(buf.getvalue().encode("utf-8", "surrogatepass"), "m.csv", conditioning)


COLUMN = st.one_of(
    st.lists(st.integers(min_value=-2**63, max_value=2**63 - 1) | st.none(), min_size=1, max_size=4)
      .map(lambda v: pa.array(v, pa.int64())),
    st.lists(st.floats() | st.none(), min_size=1, max_size=4).map(lambda v: pa.array(v, pa.float64())),
    st.lists(st.text(max_size=10) | st.none(), min_size=1, max_size=4).map(
        lambda v: pa.array([None if s is None else s.encode("utf-8", "replace").decode() for s in v], pa.string())),
    st.lists(st.booleans(), min_size=1, max_size=4).map(lambda v: pa.array(v, pa.bool_())),
    st.lists(st.lists(st.integers(min_value=0, max_value=5), max_size=3), min_size=1, max_size=4).map(pa.array),
)


@FUZZ
@given(columns=st.dictionaries(KEYS.filter(lambda k: "\x00" not in k), COLUMN, min_size=1, max_size=4),
       flip=st.none() | st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
       conditioning=CONDITIONINGS)
def test_parquet_of_arbitrary_columns(columns: dict, flip, conditioning) -> None:
    n = min(len(c) for c in columns.values())
    try:
        table = pa.table({k: c.slice(0, n) for k, c in columns.items()})
    except (pa.ArrowException, ValueError):
        return  # not a table pyarrow can build: nothing to feed the reader
    sink = io.BytesIO()
    pq.write_table(table, sink)
    data = bytearray(sink.getvalue())
    if flip is not None:  # a corrupted byte somewhere in the file
        at, value = flip
        data[at % len(data)] = value
    check(bytes(data), "m.parquet", conditioning)


def test_fuzz_strategies_reach_the_hostile_values() -> None:
    """The strategies above include the inputs that once crashed the readers (sanity check)."""
    with pytest.raises(ManifestError):
        parse_manifest(b'{"class_id": ' + b"9" * 5000 + b"}\n", "m.jsonl")
