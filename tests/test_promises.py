"""Overnight jobs that keep their promises: the same command is the same job, no flag is
silently ignored, cache options are checked per policy, progress shows up in log files, and the
hints the tool prints are commands that work as printed.

One real embedded run (test-tiny, 6 images) serves the run-level checks; the rest is validation
that happens before any work, checked through the CLI (CliRunner) and the Python API.
"""
from __future__ import annotations

import inspect
import json
import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from linegen.cli.main import app

ROWS = [{"class_id": 1, "count": 2}, {"class_id": 2, "count": 2, "seed": 5}, {"class_id": 3, "count": 2}]


def _manifest(path: Path, rows=ROWS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


# --------------------------------------------------------------------------- 1. job identity


def _spec(manifest: Path, out: Path, **kw):
    from linegen.jobs.spec import JobSpec

    return JobSpec.from_flags(manifest=str(manifest), out=str(out), model="test-tiny", **kw)


def test_without_job_id_the_same_command_is_the_same_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = _manifest(tmp_path / "classes.jsonl")
    a, b = _spec(m, tmp_path / "out"), _spec(m, tmp_path / "out")
    assert a.job_id == b.job_id
    assert re.fullmatch(r"classes-[0-9a-f]{12}", a.job_id), a.job_id  # readable: the manifest's stem
    # relative and absolute spellings of the manifest are one job
    monkeypatch.chdir(tmp_path)
    assert _spec(Path("classes.jsonl"), tmp_path / "out").job_id == a.job_id
    # what does not change an image does not change the job
    assert _spec(m, tmp_path / "out", batch_size=3, workers=1, log_every=5).job_id == a.job_id


@pytest.mark.parametrize("change", ["manifest", "seed", "cache", "sampling", "model", "out", "shard_size"])
def test_a_changed_manifest_or_setting_is_another_job(tmp_path: Path, change: str) -> None:
    m = _manifest(tmp_path / "classes.jsonl")
    base = _spec(m, tmp_path / "out")
    kw: dict = {}
    out = tmp_path / "out"
    if change == "manifest":
        _manifest(m, ROWS + [{"class_id": 4}])
    elif change == "seed":
        kw["seed"] = 1
    elif change == "cache":
        kw.update(cache="linear", cache_ratio="1/4")
    elif change == "sampling":
        kw["top_k"] = 3
    elif change == "model":
        kw["random_weights"] = True
    elif change == "out":
        out = tmp_path / "other"
    elif change == "shard_size":
        kw["shard_size"] = 2
    assert _spec(m, out, **kw).job_id != base.job_id


def test_default_seed_is_fixed() -> None:
    from linegen.cli.flags import SamplingFlags
    from linegen.settings.resolve import Settings

    assert SamplingFlags().seed == 0
    assert inspect.signature(Settings.from_flags).parameters["seed"].default == 0


# Per-row sampling overrides and extra columns (img2dataset's save_additional_columns).
RUN_ROWS = [{"class_id": 1, "count": 2, "source": "web", "score": 1},
            {"class_id": 2, "count": 2, "seed": 5, "cfg_scale": 3.5, "top_k": 7, "score": 2.5},
            {"class_id": 3, "count": 2, "temperature": 0.9, "source": "book", "ok": True}]


@pytest.fixture(scope="module")
def twice(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`linegen run` of one manifest twice without --job-id, output not a terminal (CliRunner)."""
    base = tmp_path_factory.mktemp("twice")
    m = _manifest(base / "classes.jsonl", RUN_ROWS)
    args = ["run", str(m), "--out", str(base / "out"), "--model", "test-tiny", "--random-weights",
            "--shard-size", "2", "--log-every", "0.2", "--cache", "linear", "--cache-ratio", "1/4",
            "--cache-option", "anchors=2", "--top-p", "0.9", "--keep-columns", "source,score",
            "--keep-columns", "ok", "--image-format", "webp", "--image-quality", "90"]
    first = _cli(*args)
    second = _cli(*args)
    return {"first": first, "second": second, "out": base / "out", "manifest": m}


def test_run_twice_is_one_job_answered_from_markers(twice: dict) -> None:
    first, second = twice["first"], twice["second"]
    assert first.exit_code == 0, first.output + first.stderr
    assert second.exit_code == 0, second.output + second.stderr
    jobs = [p.name for p in twice["out"].iterdir()]
    assert len(jobs) == 1 and jobs[0].startswith("classes-"), jobs
    assert f"job {jobs[0]}" in first.stderr and f"job {jobs[0]}" in second.stderr
    assert "cache linear 1/4 (anchors=2) (from flag)" in " ".join(first.stderr.split())
    assert "nothing to generate" in second.stdout  # every shard already committed: no image twice


def test_list_fits_80_columns_without_cutting_ids(twice: dict) -> None:
    (job,) = [p.name for p in twice["out"].iterdir()]
    r = _cli("list", "--out", str(twice["out"]))
    assert r.exit_code == 0, r.stderr
    assert max(len(ln) for ln in r.stdout.splitlines()) <= 80, r.stdout
    assert job in r.stdout and "SUCCEEDED" in r.stdout and "6/6 100%" in r.stdout
    wide = _cli("list", "--out", str(twice["out"]), "--wide").stdout
    assert job in wide and "img/s" in wide
    doc = json.loads(_cli("list", "--out", str(twice["out"]), "--json").stdout)
    assert doc[0]["job_id"] == job and doc[0]["images"] == {"done": 6, "total": 6}


def _walk(doc, path="$"):
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield f"{path}.{k}", k, v
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _walk(v, f"{path}[{i}]")


def test_every_json_document_uses_the_documented_shapes(twice: dict) -> None:
    """Counts are {"done", "total"}, an unknown is null (never "n/a"), in every --json output."""
    (job,) = [p.name for p in twice["out"].iterdir()]
    out, m = str(twice["out"]), str(twice["manifest"])
    commands = [["status", job, "--out", out], ["list", "--out", out], ["cost", job, "--out", out],
                ["validate", m, "--keep-columns", "*"], ["cost", "--estimate", m, "--model", "test-tiny", "--gpu", "H100"],
                ["run", m, "--out", out, "--model", "test-tiny", "--keep-columns", "*", "--dry-run"]]
    for args in commands:
        r = _cli(*args, "--json")
        doc = json.loads(r.stdout)
        for where, key, value in _walk(doc):
            assert value != "n/a", (args, where)
            if key in ("images", "shards") and not isinstance(value, int):
                assert isinstance(value, dict) and set(value) == {"done", "total"}, (args, where, value)


def test_progress_lines_when_stderr_is_not_a_terminal(twice: dict) -> None:
    lines = [ln for ln in twice["first"].stderr.splitlines() if ln.startswith("progress ")]
    assert lines, twice["first"].stderr
    last = lines[-1]
    assert re.search(r"job classes-[0-9a-f]{12}: 6/6 images \(100%\)", last), last
    # the last line is the run's own numbers (its summary's rate and cost), not an empty snapshot's
    assert re.search(r", [0-9]+\.[0-9]{2} images/s, ", last) and "n/a" not in last, last
    (job,) = [p.name for p in twice["out"].iterdir()]
    summary = json.loads((twice["out"] / job / "_SUCCESS").read_text())
    from linegen.workers.units import money

    assert f"{money(summary['cost']['usd'])} so far" in last, (last, summary["cost"])


def test_progress_log_paces_its_lines() -> None:
    from linegen.jobs.progress_lines import ProgressLog
    from linegen.jobs.progress import Progress

    now = [0.0]
    out: list[str] = []
    log = ProgressLog("j", out.append, every_s=30, clock=lambda: now[0])

    def p(done, event=""):
        return Progress(images_done=done, images_total=100, shards_done=0, shards_total=4, images_per_s=2.0,
                        eta_s=(100 - done) / 2, event=event, usd=0.000084)

    for t, done in ((0, 0), (10, 20), (29, 58), (31, 62), (45, 90)):
        now[0] = t
        log(p(done))
    now[0] = 50
    log(p(100, "finished"))
    assert [ln.split(": ", 1)[1].split(",")[0] for ln in out] == ["0/100 images (0%)", "62/100 images (62%)",
                                                                   "100/100 images (100%)"]
    assert "ETA 19s" in out[1] and "$0.000084 so far" in out[1]


def test_logs_render_progress_readably_and_json_keeps_them_raw() -> None:
    from linegen.jobs.progress_lines import readable

    raw = ('starting\n{"progress": {"images_done": 3, "images_total": 6, "shards_done": 1, "shards_total": 3, '
           '"images_per_s": 1.5, "eta_s": 2.0, "event": "shard-00000 committed", "usd": 0.0001}}\n'
           '{"summary": {"job_id": "j", "images": {"done": 6, "total": 6}, "cost": {"usd": 0.0002}}}\n')
    # chunks cut anywhere (a log stream is not line-aligned)
    text = "".join(readable([raw[:30], raw[30:95], raw[95:]], job_id="j"))
    assert "{" not in text, text
    assert "starting" in text and "3/6 images (50%)" in text and "shard-00000 committed" in text
    assert "finished: 6/6 images" in text and "$0.000200" in text


def test_hints_are_commands_that_work_as_printed() -> None:
    from linegen.jobs.hints import resume
    from linegen.jobs.remote.attempts import derive_state

    assert resume("r3", cluster="http://head:8265") == "linegen resume r3 --cluster http://head:8265"
    assert resume("r3", out="/data/my out") == "linegen resume r3 --out '/data/my out'"
    state, reason = derive_state([], None, None, cluster_known=True,
                                 resume_hint=resume("r3", cluster="http://head:8265"))
    assert state == "INCOMPLETE" and "`linegen resume r3 --cluster http://head:8265`" in reason


def test_rows_carry_every_setting_and_the_kept_columns(twice: dict) -> None:
    import linegen

    (job,) = [p.name for p in twice["out"].iterdir()]
    rows = sorted(linegen.read_images(str(twice["out"]), job).to_pylist(), key=lambda r: r["item_id"])
    assert len(rows) == 6
    by_row = {r["row"]: r for r in rows}
    assert (by_row[1]["cfg_scale"], by_row[1]["top_k"]) == (3.5, 7)  # the row's own values
    assert by_row[2]["temperature"] == pytest.approx(0.9)
    assert [r["top_p"] for r in rows] == [pytest.approx(0.9)] * 6  # the job's --top-p
    assert by_row[0]["cfg_scale"] != 3.5  # the model's default where the row gives none
    # every option of the policy that ran, the flag's and the defaults (a later change of a default
    # must not change what a row says made it)
    from linegen.workers.cache import make_policy

    ran = make_policy("linear", ratio="1/4", anchors=2).options()
    assert ran["anchors"] == 2 and len(ran) > 5
    assert all(r["cache_policy"] == "linear" and json.loads(r["cache_options"]) == ran for r in rows)
    assert (by_row[0]["source"], by_row[0]["score"], by_row[0]["ok"]) == ("web", 1.0, None)
    assert (by_row[1]["source"], by_row[1]["score"]) == (None, 2.5)
    assert (by_row[2]["source"], by_row[2]["ok"]) == ("book", True)
    assert all(r["image"]["bytes"][8:12] == b"WEBP" and r["image"]["path"].endswith(".webp") for r in rows)


@pytest.mark.parametrize("rows, keep, expect", [
    ([{"class_id": 1, "src": "a"}], None, "field 'src': unknown field"),
    ([{"class_id": 1, "src": "a"}, {"class_id": 2, "src": 3}], ["src"], "rows[1]: field 'src': kept column: rows[0] holds a string"),
    ([{"class_id": 1, "src": [1, 2]}], ["*"], "kept column: must be a string, number or boolean"),
    ([{"class_id": 1, "n": 2**70}], ["n"], "rows[0]: field 'n': kept column: integer 1180591620717411303424 does not fit 64 bits"),
])
def test_kept_columns_are_validated_for_type(tmp_path: Path, rows, keep, expect) -> None:
    import linegen

    with pytest.raises(linegen.ManifestError, match=re.escape(expect)):
        linegen.run(rows, out=str(tmp_path / "o"), model="test-tiny", keep_columns=keep)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags, expect", [
    (["--keep-columns", "model"], "one of linegen's image columns"),
    (["--keep-columns", "seed"], "is a manifest field"),
    (["--image-format", "gif"], "--image-format must be one of png, jpeg, webp"),
    (["--image-quality", "90"], "--image-quality applies to --image-format jpeg or webp"),
    (["--image-format", "jpeg", "--image-quality", "101"], "--image-quality must be an integer in 1..100"),
])
def test_output_flags_are_checked(tmp_path: Path, flags, expect) -> None:
    m = _manifest(tmp_path / "m.jsonl")
    r = _cli("run", str(m), "--out", str(tmp_path / "o"), "--model", "test-tiny", "--dry-run", *flags)
    assert r.exit_code == 1 and expect in r.stderr, r.stderr


def test_csv_and_parquet_manifests_keep_columns(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from linegen.jobs.manifest import kept_columns, parse_manifest

    rows = parse_manifest(b"class_id,url\n1,http://a\n2,\n", "m.csv", keep=("url",))
    assert [r.extra for r in rows] == [(("url", "http://a"),), (("url", None),)]
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"class_id": [1, 2], "w": [3, None], "caption": ["x", "y"]}), buf)
    rows = parse_manifest(buf.getvalue().to_pybytes(), "m.parquet", keep=("*",))
    assert kept_columns(rows) == (("caption", "string"), ("w", "integer"))


def test_generator_takes_ray_data_float_columns_and_missing_values() -> None:
    """Ray Data types an integer column with a missing value as float64 (seed 42 -> 42.0, absent -> NaN)."""
    import numpy as np

    import linegen

    gen = linegen.Generator(model="test-tiny", random_weights=True, batch_size=4)
    batch = {"row": np.array([0.0, 1.0]), "class_id": np.array([1.0, 2.0]), "count": np.array([1.0, 2.0]),
             "seed": np.array([42.0, np.nan]), "top_k": np.array([np.nan, 5.0]), "id": np.array(["a", None], dtype=object)}
    out = gen(batch)
    assert out["seed"][0] == 42 and out["top_k"][1:] == [5, 5] and out["id"] == ["a", None, None]
    assert len(out["image"]) == 3 and "cache_options" in out and "job_id" not in out


# --------------------------------------------------------------------------- 2. no flag silently ignored


@pytest.mark.parametrize("flags, expect", [
    (["--cache-option", "preset=paper"], "--cache-option needs a compressing --cache"),
    (["--cache-ratio", "7"], "--cache-ratio needs a compressing --cache"),
    (["--cache-lines", "2"], "--cache-lines needs a compressing --cache"),
    (["--cache", "linear", "--cache-ratio", "7"], "cache ratio must be in (0, 1]"),
    (["--cache", "linear", "--cache-option", "foo=1"], "has no option 'foo'"),
    (["--cache", "linear", "--cache-option", "anchors=abc"], "anchors must be an integer"),
    (["--cache", "linear", "--cache-option", "anchors=true"], "anchors must be an integer"),
    (["--cache", "snapkv", "--cache-option", "kernel=2"], "kernel must be an odd integer in 1..255"),
    (["--cache", "snapkv", "--cache-option", "kernel=-3"], "kernel must be an odd integer"),
    (["--cache", "snapkv", "--cache-option", "kernel=999999"], "kernel must be an odd integer"),
    (["--cache", "streaming", "--cache-option", "sinks=-1"], "sinks must be an integer"),
    (["--cache", "rkv", "--cache-option", "threshold=nan"], "threshold must be a number in 0..1"),
    (["--cache", "full", "--cache-option", "anchors=3"], "--cache full keeps every token"),
    (["--cache", "full", "--cache-ratio", "1/4"], "--cache full keeps every token"),
    (["--memory-budget", "lots"], "cannot read memory size"),
    (["--log-every", "0"], "--log-every must be"),
])
@pytest.mark.parametrize("command", ["run", "run --dry-run", "generate", "submit"])
def test_bad_cache_settings_are_refused_before_any_work(tmp_path: Path, command: str, flags, expect) -> None:
    m = _manifest(tmp_path / "m.jsonl")
    out = tmp_path / "out"
    if command == "generate":
        if "--log-every" in flags:
            return  # a job flag
        args = ["generate", "--class-id", "1", "--out", str(out)]
    elif command == "submit":
        args = ["submit", str(m), "--out", str(out), "--cluster", "http://127.0.0.1:9"]  # nothing listens
    else:
        args = [*command.split(), str(m), "--out", str(out)]
    r = _cli(*args, "--model", "test-tiny", "--random-weights", *flags)
    assert r.exit_code != 0
    assert expect in r.stderr, r.stderr
    assert "Traceback" not in r.output + r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_memory_sizes_up_to_pib_and_what_cannot_fit(tmp_path: Path) -> None:
    from linegen.workers.sizes import parse_bytes

    assert parse_bytes("1PiB") == 2**50 and parse_bytes("2KiB") == 2048 and parse_bytes("1.5PB") == 15 * 10**14
    with pytest.raises(ValueError, match="more than any machine"):
        parse_bytes("9" * 400 + "PiB")
    r = _cli("generate", "--class-id", "1", "--out", str(tmp_path / "g"), "--model", "test-tiny", "--random-weights",
             "--memory-budget", "1B")
    assert r.exit_code == 1 and "Traceback" not in r.output + r.stderr
    assert "memory budget 1 B is too small for one sequence" in r.stderr


def test_every_option_has_a_schema_matching_its_policy() -> None:
    """The schema and the policy's constructor agree on every key and default, and the
    --cache-option help lists every key (tune writes selected_lines: the help names it)."""
    from linegen.cli.flags import CacheFlags
    from linegen.workers.cache import POLICIES, SCHEMAS

    help_text = next(f.metadata["option"].help for f in __import__("dataclasses").fields(CacheFlags)
                     if f.name == "cache_options")
    assert set(SCHEMAS) == set(POLICIES)
    for name, cls in POLICIES.items():
        params = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                  if p.kind is p.KEYWORD_ONLY}
        assert params == {k: o.default for k, o in SCHEMAS[name].items()}, name
        for key in params:
            assert re.search(rf"\b{key}=", help_text), key
    assert "selected_lines=" in help_text


def test_every_preset_passes_its_schema() -> None:
    from linegen.workers.cache import PRESETS, check_options

    for policy, presets in PRESETS.items():
        for values in presets.values():
            check_options(policy, values)


def test_config_entry_options_are_checked_with_the_file_named(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[models.test-tiny]\ncache = "snapkv"\ncache_ratio = "1/4"\ncache_options = { kernel = 4 }\n')
    m = _manifest(tmp_path / "m.jsonl")
    r = _cli("run", str(m), "--out", str(tmp_path / "o"), "--model", "test-tiny", "--config", str(cfg), "--dry-run")
    assert r.exit_code == 1 and str(cfg) in r.stderr and "kernel must be an odd integer" in r.stderr


EXAMPLE = str(Path(__file__).resolve().parent.parent / "examples" / "classes.jsonl")


@pytest.mark.parametrize("args, expect", [
    (["eval", "--policies", "full,snapkv/nope", "--samples", "2"], "preset"),
    (["eval", "--policies", "full,linear", "--cache-ratio", "7", "--samples", "2"], "cache ratio must be in (0, 1]"),
    (["tune", "--cache-ratio", "0", "--no-write"], "cache ratio must be in (0, 1]"),
    (["tune", "--finalists", "-1", "--no-write"], "--finalists must be >= 0"),
    # a class-conditional model's prompts file is refused before it is read against text conditioning
    (["tune", "--prompts", "no-such-file.jsonl", "--no-write"], "--prompts is for text-to-image models"),
    (["bench", "--policies", "full,nope", "--model", "test-tiny"], "unknown cache policy 'nope'"),
    # per-head budgets: only for compressing policies, and shares the model can take
    (["tune", "--policies", "full+heads", "--no-write"], "per-head budgets (+heads) are for the compressing"),
    (["eval", "--policies", "nope+heads", "--samples", "2"], "unknown cache policy 'nope'"),
    (["run", EXAMPLE, "--out", "/tmp/never", "--cache", "linear", "--cache-option",
      "head_shares=1,x", "--dry-run"], "head_shares must be empty"),
    (["run", EXAMPLE, "--out", "/tmp/never", "--cache", "linear", "--cache-option",
      "head_shares=1,2/1,1", "--dry-run"], "head_shares has 2 layers x 2 heads; the model has 4 x 4"),
    (["bench", "--policies", "full", "--model", "test-tiny", "--memory-budget", "1ZiB"], "cannot read memory size"),
])
def test_eval_tune_bench_check_cache_settings_first(args, expect) -> None:
    r = _cli(*args)
    assert r.exit_code != 0 and expect in r.stderr, r.stderr
    assert "Traceback" not in r.output + r.stderr


def test_validate_checks_against_the_model_run_uses(tmp_path: Path) -> None:
    m = _manifest(tmp_path / "m.jsonl", [{"class_id": 207}])
    r = _cli("validate", str(m))
    assert r.exit_code == 1 and "class 207 is out of range" in r.stderr + r.stdout
    import linegen

    with pytest.raises(linegen.ManifestError):
        linegen.validate([{"class_id": 207}])
    assert not math.isnan(linegen.validate([{"class_id": 3}]).items)
