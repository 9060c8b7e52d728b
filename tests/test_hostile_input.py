"""Hostile manifests and ids (issue 15, A): every one is a ManifestError/UserError naming the line
and field, never another exception, and nothing is planned from it.

The same inputs also go through `linegen run` and `linegen validate` as subprocesses in
tests/test_jobs.py (BAD_MANIFESTS), which checks the one-line error and that nothing is written.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from linegen.errors import UserError
from linegen.jobs.manifest import ManifestError, ManifestRow, parse_manifest, parse_rows
from linegen.jobs.manifest.rows import MAX_COUNT, MAX_IMAGES, MAX_LINE_BYTES, MAX_TEXT_CHARS
from linegen.jobs.plan import Plan, legacy_fingerprint
from linegen.jobs.spec import check_job_id
from linegen.workers.models.config import SamplingParams


def issues_of(data: bytes, name: str = "m.jsonl"):
    with pytest.raises(ManifestError) as err:
        parse_manifest(data, name)
    str(err.value).encode("utf-8")  # the message itself must be printable
    return err.value.issues


def one(data: bytes, name: str = "m.jsonl"):
    issues = issues_of(data, name)
    assert len(issues) == 1, issues
    return issues[0]


# integers beyond Python's 4300-digit int() limit
@pytest.mark.parametrize("field", ["count", "class_id", "seed", "top_k"])
def test_huge_integer_in_jsonl_and_csv_names_line_and_field(field: str) -> None:
    digits = "7" * 4400
    row = '{"class_id": 1, "%s": %s}' % (field, digits) if field != "class_id" else '{"class_id": %s}' % digits
    issue = one((row + "\n").encode())
    assert (issue.line, issue.field) == (1, field) and "4400 digits" in issue.message
    csv = f"class_id,{field}\n1,{digits}\n" if field != "class_id" else f"class_id\n{digits}\n"
    issue = one(csv.encode(), "m.csv")
    assert (issue.line, issue.field) == (2, field) and "4400 digits" in issue.message


def test_huge_python_int_in_rows_is_refused() -> None:
    with pytest.raises(ManifestError, match=r"rows\[0\]: field 'count'.*digits"):
        parse_rows([{"class_id": 1, "count": 10**5000}])


# nesting the JSON scanner cannot follow
def test_deeply_nested_json_is_refused() -> None:
    deep = '{"class_id": ' + "[" * 100_000 + "]" * 100_000 + "}\n"
    issue = one(b'{"class_id": 1}\n' + deep.encode())
    assert issue.line == 2 and "nested too deeply" in issue.message


# lone surrogates: valid JSON, not valid text; the plan digest must not crash either
@pytest.mark.parametrize("field", ["id", "prompt"])
def test_lone_surrogate_is_refused(field: str) -> None:
    row = {"class_id": 1, "id": "\ud800"} if field == "id" else {"prompt": "a \udfff cat"}
    issue = one((json.dumps(row) + "\n").encode())
    assert (issue.line, issue.field) == (1, field) and "surrogate" in issue.message


def test_unknown_field_named_by_a_surrogate_or_newline_prints_on_one_line() -> None:
    issues = issues_of(b'{"class_id": 1, "\\ud800": 1, "a\\nb": 2}\n')
    text = "\n".join(str(i) for i in issues)
    assert len(text.splitlines()) == 2 and "\\ud800" in text and "a\\nb" in text
    text.encode("utf-8")


def test_fingerprint_of_a_surrogate_item() -> None:
    # the manifest rules refuse a lone surrogate, but a row can be built by hand
    row = ManifestRow(0, 1, None, 1, 1, None, "\ud800", None, None, None, None)
    plan = Plan([row], job_seed=0, sampling=SamplingParams(), shard_size=1)
    assert len(plan.fingerprint()) == 16 and len(legacy_fingerprint(plan)) == 16


# bounds per row and per job, checked at validation
def test_count_bounds_per_row_and_per_job() -> None:
    issue = one(b'{"class_id": 1, "count": 1000000000000000000}\n')
    assert issue.field == "count" and f"1..{MAX_COUNT:,}" in issue.message
    assert parse_rows([{"class_id": 1, "count": MAX_COUNT}])[0].count == MAX_COUNT  # a billion images fit
    rows = [{"class_id": 1, "count": MAX_COUNT}] * (MAX_IMAGES // MAX_COUNT + 1)
    with pytest.raises(ManifestError, match=f"at most {MAX_IMAGES:,}"):
        parse_rows(rows)


# every sampling override range-checked, including numbers beyond float
def test_sampling_overrides_beyond_float_are_range_checked() -> None:
    issue = one(('{"class_id": 1, "cfg_scale": %s}\n' % ("9" * 400)).encode())
    assert issue.field == "cfg_scale" and "0..1000" in issue.message
    issue = one(b"class_id,top_k\n1,10000000000000000000000000000000000000000\n", "m.csv")
    assert issue.field == "top_k"
    with pytest.raises(ValueError, match="cfg_scale must be"):
        SamplingParams(cfg_scale=10**400)
    from linegen.settings.resolve import Settings

    with pytest.raises(UserError, match="top_k must be"):
        Settings.from_flags(model="test-tiny", random_weights=True, top_k=10**40)


# line and field sizes
def test_long_lines_and_long_fields_are_refused() -> None:
    long_line = b'{"class_id": 1, "id": "' + b"x" * (MAX_LINE_BYTES + 10) + b'"}\n'
    issue = one(b'{"class_id": 1}\n' + long_line)
    assert issue.line == 2 and "at most 1 MiB" in issue.message
    issue = one(b"class_id,id\n1," + b"x" * (MAX_LINE_BYTES + 1) + b"\n", "m.csv")
    assert issue.line == 2 and "at most 1 MiB" in issue.message
    with pytest.raises(ManifestError, match=rf"rows\[0\]: field 'prompt'.*at most {MAX_TEXT_CHARS}"):
        parse_rows([{"prompt": "y" * (MAX_TEXT_CHARS + 1)}])


def test_long_parquet_cell_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"prompt": ["ok", "z" * (MAX_TEXT_CHARS + 1)]}), path)
    issue = one(path.read_bytes(), "m.parquet")
    assert (issue.line, issue.field) == (2, "prompt") and str(MAX_TEXT_CHARS) in issue.message


def test_validating_a_huge_line_takes_no_more_memory_than_the_file(tmp_path: Path) -> None:
    size = 64 << 20
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"class_id": 1, "prompt": "')
        f.write(b"p" * size)
        f.write(b'"}\n')
    code = ("import resource, sys\n"
            "from linegen.jobs.manifest import ManifestError, read_manifest\n"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n    read_manifest(sys.argv[1])\nexcept ManifestError as e:\n    print(str(e).splitlines()[-1])\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)\n")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    message, grown = r.stdout.strip().splitlines()
    assert "at most 1 MiB" in message
    assert int(grown) < 1.5 * size, f"validating a {size >> 20} MiB line grew RSS by {int(grown) >> 20} MiB"


# job ids
@pytest.mark.parametrize("bad", ["job\n", "job\r", "\njob", "a..b", "-x", "", "x" * 129])
def test_bad_job_ids_are_refused(bad: str) -> None:
    with pytest.raises(UserError, match="job id"):
        check_job_id(bad)
    assert check_job_id("job-1.a_b") == "job-1.a_b"


# --------------------------------------------------------------------------- hostile job folders
# `linegen` through the CLI; none of these start Ray. The read-only --out case runs as a real
# subprocess (it needs its own mount namespace); the rest run in-process (tests/cli_runner.py).

try:
    import jobs_helpers as H
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import jobs_helpers as H


def _cli(args: list[str], cwd: Path) -> H.Result:
    return H.invoke_linegen(args, cwd=cwd)


def _one_line_error(r: H.Result, *fragments: str) -> str:
    assert r.returncode not in (0, None), r.describe()
    assert "Traceback" not in r.stderr, r.describe()
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error:"), r.describe()
    for f in fragments:
        assert f in last, f"{f!r} not in {last!r}"
    return last


def test_read_only_out_is_a_one_line_error(tmp_path: Path) -> None:
    """An existing --out on a read-only filesystem (a tmpfs mounted read-only in a user+mount
    namespace, since root ignores permission bits)."""
    manifest = H.write_manifest(tmp_path / "m.jsonl", [{"class_id": 1}])
    ro = tmp_path / "ro"
    ro.mkdir()
    script = f'mount -t tmpfs -o ro tmpfs {ro} && exec {H.LINEGEN} run {manifest} --out {ro} --job-id j ' \
             + " ".join(H.MODEL_ARGS)
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=120,
                       env=H.clean_env())
    result = H.Result(["unshare", script], r.returncode, r.stdout, r.stderr, 0.0)
    _one_line_error(result, str(ro), "not writable", "Read-only file system")


@pytest.fixture
def job_folder(tmp_path: Path) -> tuple[Path, str]:
    """A prepared job (job.json, manifest copy, plan.json; no shards), made without Ray."""
    from linegen.jobs.prepare import prepare_job
    from linegen.jobs.spec import JobSpec

    manifest = H.write_manifest(tmp_path / "m.jsonl", [{"class_id": 1, "count": 2}])
    spec = JobSpec.from_flags(manifest=str(manifest), out=str(tmp_path / "out"), job_id="j", model="test-tiny",
                              random_weights=True)
    prepare_job(spec)
    return tmp_path, "j"


DAMAGE = {
    "job.json": [b"{not json", b'{"job_id": "j", "bogus": 1}', b"[1, 2]", b'{"job_id": "j", "manifest": 3}'],
    "plan.json": [b"\x00garbage", b'{"fingerprint": 7}'],
}


@pytest.mark.parametrize("name, damage", [(n, d) for n, ds in DAMAGE.items() for d in ds])
def test_damaged_job_folder_is_named_by_every_command(job_folder, name: str, damage: bytes) -> None:
    base, job = job_folder
    out = base / "out"
    target = out / job / name
    target.write_bytes(damage)
    run = _cli(["run", str(base / "m.jsonl"), "--out", str(out), "--job-id", job, *H.MODEL_ARGS], base)
    _one_line_error(run, str(target))
    assert target.read_bytes() == damage  # nothing rewritten
    if name == "job.json":  # status/resume read the spec; a damaged plan shows up as a status error
        for args in (["status", job, "--out", str(out)], ["resume", job, "--out", str(out)]):
            _one_line_error(_cli(args, base), str(target))
        listed = _cli(["list", "--out", str(out), "--json"], base)
        assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.describe()
        (doc,) = json.loads(listed.stdout)
        assert doc["job_id"] == job and str(target) in doc["reason"] and "\n" not in doc["reason"]
    else:
        status = _cli(["status", job, "--out", str(out), "--json"], base)
        assert status.returncode == 0 and "Traceback" not in status.stderr, status.describe()
        assert any("plan.json" in e for e in status.json["errors"])
