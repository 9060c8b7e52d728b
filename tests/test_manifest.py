"""Manifest parsing and validation: every problem is reported, with file, line and field."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from linegen.jobs.manifest import (
    Conditioning,
    ManifestError,
    ManifestIssue,
    ManifestRow,
    parse_manifest,
    read_manifest,
    total_items,
)

CLASS = Conditioning("class", num_classes=10)
TEXT = Conditioning("text")


def jsonl(*objs: object) -> bytes:
    return "".join(json.dumps(o) + "\n" for o in objs).encode()


def issues_of(data: bytes, name: str = "m.jsonl", conditioning=None) -> list[ManifestIssue]:
    with pytest.raises(ManifestError) as err:
        parse_manifest(data, name, conditioning)
    return err.value.issues


def where(issues: list[ManifestIssue]) -> list[tuple[int | None, str | None]]:
    return [(i.line, i.field) for i in issues]


def one_issue(data: bytes, name: str = "m.jsonl", conditioning=None) -> ManifestIssue:
    issues = issues_of(data, name, conditioning)
    assert len(issues) == 1, issues
    return issues[0]


# ---------------------------------------------------------------- good manifests

ROWS = [
    {"class_id": 3, "count": 2, "seed": 42, "id": "a"},
    {"class_id": 7},
    {"class_id": 0, "count": 5, "cfg_scale": 1.5, "temperature": 0.9, "top_k": 0, "top_p": 0.95},
]


def test_good_jsonl_parses_with_defaults():
    rows = parse_manifest(jsonl(*ROWS), "m.jsonl", CLASS)
    assert rows[0] == ManifestRow(index=0, line=1, prompt=None, class_id=3, count=2, seed=42,
                                  id="a", cfg_scale=None, temperature=None, top_k=None,
                                  top_p=None)
    assert rows[1].count == 1 and rows[1].seed is None and rows[1].id is None
    assert (rows[2].cfg_scale, rows[2].temperature, rows[2].top_k, rows[2].top_p) == \
        (1.5, 0.9, 0, 0.95)
    assert total_items(rows) == 8


def test_jsonl_csv_and_parquet_give_the_same_rows(tmp_path):
    from_jsonl = parse_manifest(jsonl(*ROWS), "m.jsonl")
    csv = (b"class_id,count,seed,id,cfg_scale,temperature,top_k,top_p\n"
           b"3,2,42,a,,,,\n"
           b"7,,,,,,,\n"
           b"0,5,,,1.5,0.9,0,0.95\n")
    from_csv = parse_manifest(csv, "m.csv")
    path = tmp_path / "m.parquet"
    # from_pylist infers the schema from the first row only, so name every column
    columns = ["class_id", "count", "seed", "id", "cfg_scale", "temperature", "top_k", "top_p"]
    pq.write_table(pa.table({c: [r.get(c) for r in ROWS] for c in columns}), path)
    from_parquet = read_manifest(str(path))

    def content(rows):  # line numbering differs by format (CSV has a header line)
        return [(r.index, r.class_id, r.count, r.seed, r.id, r.cfg_scale, r.temperature,
                 r.top_k, r.top_p) for r in rows]

    assert content(from_csv) == content(from_jsonl) == content(from_parquet)
    assert [r.line for r in from_jsonl] == [1, 2, 3]
    assert [r.line for r in from_csv] == [2, 3, 4]
    assert [r.line for r in from_parquet] == [1, 2, 3]


def test_text_prompts_and_json_extension():
    data = b'{"prompt": "a red fox"}\n{"prompt": "  spaces kept  ", "count": 3}\n'
    rows = parse_manifest(data, "prompts.json", TEXT)
    assert [r.prompt for r in rows] == ["a red fox", "  spaces kept  "]
    assert total_items(rows) == 4


def test_blank_lines_skipped_but_line_numbers_stay_physical():
    data = b'\n{"class_id": 1}\n   \n\r\n{"class_id": 2}\n\n'
    rows = parse_manifest(data, "m.jsonl")
    assert [(r.index, r.line) for r in rows] == [(0, 2), (1, 5)]


def test_crlf_bom_and_multiline_csv_fields():
    # line 4 is an all-empty row, as spreadsheets export them: skipped like a blank line
    data = '\ufeffprompt,count\r\n"two\r\nlines",2\r\n,\r\nplain,\r\n'.encode()
    rows = parse_manifest(data, "m.csv")
    assert [(r.prompt, r.count, r.line, r.index) for r in rows] == \
        [("two\r\nlines", 2, 2, 0), ("plain", 1, 5, 1)]


def test_csv_numbers_as_text():
    rows = parse_manifest(b"class_id,seed,cfg_scale\n 3 ,+7,2\n", "m.csv")
    assert (rows[0].class_id, rows[0].seed, rows[0].cfg_scale) == (3, 7, 2.0)


def test_null_means_absent_and_int_accepted_for_floats():
    rows = parse_manifest(jsonl({"class_id": 1, "prompt": None, "seed": None, "cfg_scale": 4}),
                          "m.jsonl")
    assert rows[0].prompt is None and rows[0].seed is None
    assert rows[0].cfg_scale == 4.0 and isinstance(rows[0].cfg_scale, float)


def test_boundary_values_are_valid():
    rows = parse_manifest(jsonl(
        {"class_id": 9, "seed": 0},
        {"class_id": 0, "seed": 2**63 - 1},
        {"class_id": 0, "seed": 2**63 - 3, "count": 3},
        {"class_id": 0, "cfg_scale": 0, "top_p": 1, "top_k": 0, "temperature": 1e-3},
    ), "m.jsonl", CLASS)
    assert len(rows) == 4


def test_parquet_nulls_mean_absent(tmp_path):
    table = pa.table({"prompt": ["a", None], "class_id": pa.array([None, 4], pa.int64()),
                      "count": pa.array([None, 2], pa.int32())})
    path = tmp_path / "mixed.parquet"
    pq.write_table(table, path)
    rows = read_manifest(str(path))
    assert [(r.prompt, r.class_id, r.count, r.line) for r in rows] == \
        [("a", None, 1, 1), (None, 4, 2, 2)]


# ---------------------------------------------------------------- bad rows

@pytest.mark.parametrize("row, field, fragment", [
    ({"class_id": 1, "count": 0}, "count", "integer in 1..1,000,000,000, got 0"),
    ({"class_id": 1, "count": -2}, "count", "integer in 1.."),
    ({"class_id": 1, "count": 2.5}, "count", "integer in 1.."),
    ({"class_id": 1, "count": "3"}, "count", "(string)"),
    ({"class_id": 1, "count": True}, "count", "(boolean)"),
    ({"class_id": True}, "class_id", "(boolean)"),
    ({"class_id": 3.0}, "class_id", "got 3.0"),
    ({"class_id": 3.5}, "class_id", "integer"),
    ({"class_id": "3"}, "class_id", "integer"),
    ({"class_id": -1}, "class_id", "integer >= 0"),
    ({"prompt": ""}, "prompt", "non-empty string"),
    ({"prompt": "   "}, "prompt", "non-empty string"),
    ({"prompt": 5}, "prompt", "non-empty string"),
    ({"prompt": ["a"]}, "prompt", "(array)"),
    ({"class_id": 1, "seed": -1}, "seed", "0..2**63-1"),
    ({"class_id": 1, "seed": 2**63}, "seed", "0..2**63-1"),
    ({"class_id": 1, "seed": 1.0}, "seed", "integer"),
    ({"class_id": 1, "seed": 2**63 - 2, "count": 3}, "seed", "seed + count - 1"),
    ({"class_id": 1, "id": 7}, "id", "string"),
    ({"class_id": 1, "id": ""}, "id", "non-empty string"),
    ({"class_id": 1, "cfg_scale": -0.5}, "cfg_scale", "in 0..1000"),
    ({"class_id": 1, "cfg_scale": 1e6}, "cfg_scale", "in 0..1000"),
    ({"class_id": 1, "cfg_scale": "4"}, "cfg_scale", "number"),
    ({"class_id": 1, "temperature": 0}, "temperature", "> 0"),
    ({"class_id": 1, "temperature": 1e400}, "temperature", "finite"),  # json inf
    ({"class_id": 1, "top_k": -1}, "top_k", "in 0..2147483647"),
    ({"class_id": 1, "top_k": 10**40}, "top_k", "in 0..2147483647"),
    ({"class_id": 1, "top_k": 10.0}, "top_k", "integer"),
    ({"class_id": 1, "top_p": 0}, "top_p", "(0, 1]"),
    ({"class_id": 1, "top_p": 1.01}, "top_p", "(0, 1]"),
    ({"class_id": 1, "colour": "red"}, "colour", "unknown field"),
])
def test_each_bad_field_names_file_line_and_field(row, field, fragment):
    data = jsonl({"class_id": 0}, row)
    issue = one_issue(data, "dir/m.jsonl")
    assert (issue.file, issue.line, issue.field) == ("dir/m.jsonl", 2, field)
    assert fragment in issue.message


def test_issue_text_format():
    issue = one_issue(jsonl({"class_id": 1}, {"class_id": 1}, {"class_id": 1, "count": 0}),
                      "path/to/m.jsonl")
    assert str(issue) == "path/to/m.jsonl:3: field 'count': must be an integer in 1..1,000,000,000, got 0"
    assert str(ManifestIssue("m.csv", None, None, "boom")) == "m.csv: boom"


def test_unknown_field_lists_allowed_fields_and_suggests():
    issue = one_issue(jsonl({"promt": "x", "prompt": "y"}))
    assert issue.field == "promt"
    assert "class_id, count, seed, id, cfg_scale, temperature, top_k, top_p" in issue.message
    assert "did you mean 'prompt'" in issue.message


def test_both_and_neither_prompt_and_class_id():
    issues = issues_of(jsonl({"class_id": 1}, {"prompt": "x", "class_id": 2}, {"count": 3}))
    assert where(issues) == [(2, None), (3, None)]
    assert "both" in issues[0].message and "neither" in issues[1].message


def test_all_issues_reported_at_once_with_exact_lines():
    data = jsonl(
        {"class_id": 1},                 # 1 ok
        {"class_id": 1, "count": 0},     # 2 bad
        {"class_id": 2},                 # 3 ok
        {"prompt": "x"},                 # 4 ok (no conditioning given)
        {"class_id": "x"},               # 5 bad
        {"class_id": 3},                 # 6 ok
        {"class_id": 4, "top_p": 2},     # 7 bad
    )
    issues = issues_of(data)
    assert where(issues) == [(2, "count"), (5, "class_id"), (7, "top_p")]


def test_several_problems_in_one_row_are_all_reported():
    issues = issues_of(jsonl({"class_id": -1, "count": 0, "top_k": -1, "bogus": 1}))
    assert sorted(i.field for i in issues) == ["bogus", "class_id", "count", "top_k"]
    assert {i.line for i in issues} == {1}


def test_invalid_json_and_non_objects_report_their_lines():
    data = b'{"class_id": 1}\n{"class_id": \n\n[1, 2]\n"text"\n{"class_id": 2}\n'
    issues = issues_of(data)
    assert where(issues) == [(2, None), (4, None), (5, None)]
    assert "not valid JSON" in issues[0].message
    assert "got array" in issues[1].message and "got string" in issues[2].message


def test_json_array_file_gets_a_hint():
    issue = one_issue(b'[{"class_id": 1},\n', "m.json")
    assert issue.line == 1 and "JSON Lines" in issue.message


def test_duplicate_key_in_object():
    issue = one_issue(b'{"class_id": 1, "class_id": 2}\n')
    assert (issue.line, issue.field) == (1, "class_id")


def test_undecodable_utf8_names_the_line():
    data = b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n{"prompt": "fine"}\n'
    issue = one_issue(data)
    assert issue.line == 2 and "UTF-8" in issue.message
    issue = one_issue(b"prompt\nok\ncaf\xe9\n", "m.csv")
    assert issue.line == 3 and "UTF-8" in issue.message
    # a Parquet string column holding bytes that are not UTF-8 (found by the fuzzer: a traceback)
    prompts = pa.array([b"ok", b"caf\xe9", b"fine"], pa.binary()).view(pa.string())
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"prompt": prompts}), buf)
    issue = one_issue(buf.getvalue().to_pybytes(), "m.parquet")
    assert (issue.line, issue.field) == (2, "prompt") and "UTF-8" in issue.message, issue


def test_duplicate_ids():
    issues = issues_of(jsonl({"class_id": 1, "id": "x"}, {"class_id": 2, "id": "y"},
                             {"class_id": 3, "id": "x"}, {"class_id": 4, "id": "x"}))
    assert where(issues) == [(3, "id"), (4, "id")]
    assert "first used on line 1" in issues[0].message


@pytest.mark.parametrize("data, name", [(b"", "m.jsonl"), (b"\n\n", "m.jsonl"),
                                        (b"", "m.csv"), (b"prompt,count\n", "m.csv")])
def test_empty_manifest(data, name):
    issue = one_issue(data, name)
    assert issue.line is None and "no rows" in issue.message


def test_empty_parquet(tmp_path):
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"class_id": pa.array([], pa.int64())}), path)
    with pytest.raises(ManifestError, match="no rows"):
        read_manifest(str(path))


def test_unknown_extension():
    issue = one_issue(b'{"class_id": 1}\n', "m.txt")
    assert issue.file == "m.txt" and ".jsonl" in issue.message and ".parquet" in issue.message


# ---------------------------------------------------------------- model-dependent checks

def test_class_range_and_conditioning_kind():
    data = jsonl({"class_id": 9}, {"class_id": 10}, {"prompt": "a cat"})
    issues = issues_of(data, conditioning=CLASS)
    assert where(issues) == [(2, "class_id"), (3, "prompt")]
    assert "0..9" in issues[0].message
    assert "no text conditioning" in issues[1].message

    issue = one_issue(jsonl({"prompt": "a cat"}, {"class_id": 1}), conditioning=TEXT)
    assert (issue.line, issue.field) == (2, "class_id")
    assert "no class conditioning" in issue.message


def test_model_checks_skipped_without_conditioning():
    rows = parse_manifest(jsonl({"class_id": 5000}, {"prompt": "x"}), "m.jsonl")
    assert len(rows) == 2


# ---------------------------------------------------------------- CSV specifics

def test_csv_bad_cells():
    data = (b"class_id,count,seed,id\n"   # 1
            b"3,,,\n"                      # 2 ok, empty = absent
            b"3.5,,,\n"                    # 3 class_id
            b"abc,0,,\n"                   # 4 class_id, count
            b"1_000,,x,\n"                 # 5 class_id, seed
            b"4,1,2\n"                     # 6 wrong number of fields
            b"5,,,only-text-is-fine\n")    # 7 ok
    issues = issues_of(data, "m.csv")
    assert where(issues) == [(3, "class_id"), (4, "class_id"), (4, "count"),
                             (5, "class_id"), (5, "seed"), (6, None)]
    assert "expected 4 fields" in issues[-1].message and "got 3" in issues[-1].message


def test_csv_header_problems():
    issues = issues_of(b"promt,count,extra\nx,1,2\n", "m.csv")
    assert where(issues) == [(1, "promt"), (1, "extra"), (1, None)]
    assert "did you mean 'prompt'" in issues[0].message
    assert "'prompt' or a 'class_id' column" in issues[2].message


def test_csv_header_after_blank_lines_and_duplicate_column():
    issue = one_issue(b"\nprompt,prompt\na,b\n", "m.csv")
    assert (issue.line, issue.field) == (2, "prompt")


def test_csv_line_numbers_follow_multiline_records():
    data = b'prompt,count\n"a\nb\nc",1\nok,0\n'
    issue = one_issue(data, "m.csv")
    assert (issue.line, issue.field) == (5, "count")


# ---------------------------------------------------------------- Parquet specifics

def test_parquet_bad_rows_use_row_numbers(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"class_id": pa.array([1, None, 3.5, 2]),
                             "count": pa.array([1, 1, 1, 0])}), path)
    issues = issues_of(path.read_bytes(), str(path))
    # class_id is a float column here: every present value is a float, so 1.0 is rejected too
    assert where(issues) == [(1, "class_id"), (2, None), (3, "class_id"),
                             (4, "class_id"), (4, "count")]
    assert all(i.file == str(path) for i in issues)


def test_parquet_unknown_and_missing_columns(tmp_path):
    path = tmp_path / "cols.parquet"
    pq.write_table(pa.table({"text": ["a"], "count": [1]}), path)
    issues = issues_of(path.read_bytes(), "cols.parquet")
    assert where(issues) == [(None, "text"), (None, None)]


def test_unreadable_parquet():
    issue = one_issue(b"definitely not parquet", "m.parquet")
    assert issue.line is None and "cannot read Parquet" in issue.message


# ---------------------------------------------------------------- error object and reading

def test_error_lists_first_50_and_counts_the_rest():
    data = jsonl(*({"class_id": 1, "count": 0} for _ in range(60)))
    with pytest.raises(ManifestError) as err:
        parse_manifest(data, "m.jsonl")
    assert len(err.value.issues) == 60
    text = str(err.value)
    assert "m.jsonl:50:" in text and "m.jsonl:51:" not in text
    assert "... and 10 more" in text and "60 problems" in text


def test_read_manifest_local_path_and_missing_file(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(jsonl({"class_id": 1, "count": 2}))
    assert total_items(read_manifest(str(path))) == 2
    with pytest.raises(ManifestError, match="file not found") as err:
        read_manifest(str(tmp_path / "nope.jsonl"))
    assert err.value.issues[0].file == str(tmp_path / "nope.jsonl")
    with pytest.raises(ManifestError, match="unsupported location"):
        read_manifest("gs://bucket/m.jsonl")


def test_read_manifest_from_real_s3(s3_env, tmp_bucket):
    s3_env.client().put_object(Bucket=tmp_bucket, Key="m.jsonl", Body=jsonl({"prompt": "x"}, {"prompt": "y", "count": 2}))
    rows = read_manifest(f"s3://{tmp_bucket}/m.jsonl", TEXT, endpoint_url=s3_env.endpoint_url)
    assert [r.prompt for r in rows] == ["x", "y"] and rows[1].count == 2
    with pytest.raises(ManifestError) as err:
        read_manifest(f"s3://{tmp_bucket}/missing.jsonl", endpoint_url=s3_env.endpoint_url)
    assert err.value.issues[0].file == f"s3://{tmp_bucket}/missing.jsonl"


def test_conditioning_validates_itself():
    with pytest.raises(ValueError):
        Conditioning("image")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Conditioning("class", num_classes=0)


def test_importing_does_not_pull_heavy_packages():
    code = ("import sys, linegen.jobs.manifest, linegen.jobs.plan; "
            "heavy = [m for m in ('torch', 'ray', 'pyarrow', 'boto3') if m in sys.modules]; "
            "assert not heavy, heavy")
    repo_root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo_root)
