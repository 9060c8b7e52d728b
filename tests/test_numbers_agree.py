"""Numbers that agree and tables that fit: one cost rounding everywhere, counts in the documented
{done, total} shape in every JSON document, where a cache setting came from, tables within 80
columns, a status that never contradicts itself, and tune/eval saying how long before they start.
All without Ray or a model run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from linegen.cli.main import app


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


def _manifest(path: Path) -> Path:
    path.write_text('{"class_id": 1, "count": 3}\n{"class_id": 2, "count": 2}\n')
    return path


def test_run_summary_and_status_round_cost_alike() -> None:
    from rich.console import Console

    from linegen.cli.jobview import cost_line
    from linegen.cli.render import summary_table

    summary = {"job_id": "j", "images": {"done": 16, "total": 16}, "shards": {"done": 1, "total": 1},
               "generated_this_run": 16, "model": "m", "cache_policy": "full", "images_per_s_this_run": 1.0,
               "device_seconds": 0.09, "images_per_device_s": 177.0, "peak_memory_bytes": 2**20, "kv_cache_bytes": 2**20,
               "cost": {"usd": 0.000084, "usd_per_1k_images": 0.00525}}
    console = Console(width=200, record=True)
    console.print(summary_table(summary))
    text = console.export_text()
    assert "$0.000084" in text and "$0.0000 " not in text
    assert cost_line({"usd": 0.000084}).startswith("$0.000084")


def test_validate_json_and_text_say_images(tmp_path: Path) -> None:
    m = _manifest(tmp_path / "m.jsonl")
    doc = json.loads(_cli("validate", str(m), "--json").stdout)
    assert doc["images"] == {"done": None, "total": 5} and "items" not in doc
    assert "5 images" in _cli("validate", str(m)).stdout


def test_dry_run_json_counts_in_the_documented_shape(tmp_path: Path) -> None:
    m = _manifest(tmp_path / "m.jsonl")
    r = _cli("run", str(m), "--out", str(tmp_path / "o"), "--model", "test-tiny", "--shard-size", "2",
             "--dry-run", "--json")
    doc = json.loads(r.stdout)
    assert doc["images"] == {"done": 0, "total": 5} and doc["shards"] == {"done": 0, "total": 3}
    assert doc["job_id"].startswith("m-") and not (tmp_path / "o").exists()


def test_cost_estimate_json_knows_the_image_count_without_a_throughput(tmp_path: Path) -> None:
    m = _manifest(tmp_path / "m.jsonl")
    r = _cli("cost", "--estimate", str(m), "--model", "test-tiny", "--gpu", "H100", "--json")
    doc = json.loads(r.stdout)
    assert doc["throughput"] is None and doc["images"] == {"done": None, "total": 5}


def test_cache_source_says_where_the_setting_came_from(tmp_path: Path) -> None:
    from linegen.jobs.spec import JobSpec
    from linegen.settings.config_file import load_config

    m = _manifest(tmp_path / "m.jsonl")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[models.linegen-shapes-c2i]\ncache = "linear"\ncache_ratio = "1/8"\n')

    def source(**kw):
        return JobSpec.from_flags(manifest=str(m), out=str(tmp_path / "o"), **kw).cache_source

    assert source(cache="linear") == "flag"
    assert source() == "default"
    assert source(config=load_config(cfg)) == f"config entry {cfg}"
    assert source(cache="auto") == "--cache auto: model default"
    assert source(cache="auto", config=load_config(cfg)) == f"--cache auto: config entry {cfg}"


def test_tune_help_says_cache_ratio_and_its_table_marks_the_shipped_default() -> None:
    from linegen.quality.tune import CandidateScore, TuneResult, render_table

    helptext = _cli("tune", "--help").stdout
    assert "--cache-ratio" in helptext and "--ratio " not in helptext
    rows = (CandidateScore("snapkv", "snapkv", {"kernel": 7}, 0.5, 0.8, 1.0),
            CandidateScore("linear/accumulate", "linear", {}, 0.2, 0.9, 1.0))
    result = TuneResult(model="m", ratio="1/6", budget_tokens=96, num_tokens=576, samples=8, seed=1,
                        sampling={"cfg_scale": 4.0, "top_k": 0, "temperature": 1.0}, rows=rows, best=rows[1],
                        wall_s=3.0, shipped="linear/accumulate")
    line = next(ln for ln in render_table(result).splitlines() if ln.startswith("| linear/accumulate"))
    assert "**chosen**" in line and "shipped default" in line


def test_tune_and_eval_estimate_and_eval_warns_on_small_n() -> None:
    from linegen.quality.evaluate import fd_warnings
    from linegen.quality.evaluate import estimate_line

    assert estimate_line(10.0, waves=1, passes=16, what="15 candidates x 8 items") == \
        "estimate: about 2m30s more for 15 candidates x 8 items (first wave took 10s)"
    (w,) = fd_warnings(20, 128, 42.0)
    assert "n = 20" in w and "--samples 256" in w
    assert fd_warnings(500, 128, 1.0) == []


def test_models_table_fits_80_columns_and_keeps_names_whole() -> None:
    from linegen.settings.model_choice import model_table

    r = _cli("models")
    assert r.exit_code == 0
    assert max(len(ln) for ln in r.stdout.splitlines()) <= 80, r.stdout
    for m in model_table():
        assert any(ln.startswith(f"{m['name']}: ") for ln in r.stdout.splitlines())  # description, whole name
        assert f" {m['name']} " in r.stdout  # the table's cell, not cut


def test_attempts_never_contradict_the_job_state() -> None:
    from linegen.jobs.remote.status import reconciled

    assert reconciled({"status": "RUNNING"}, "SUCCEEDED")["state"] == "FINISHING"
    assert reconciled({"status": "RUNNING"}, "SCHEDULED")["state"] == "SCHEDULED"
    assert reconciled({"status": "RUNNING"}, "RUNNING")["state"] == "RUNNING"
    assert reconciled({"status": "STOPPED"}, "CANCELLED") == {"status": "STOPPED", "state": "STOPPED"}


def test_a_placement_clears_a_stale_waiting_reason() -> None:
    from types import SimpleNamespace

    from linegen.jobs.tally import Tally

    t = Tally.__new__(Tally)  # only the fields waiting_now reads
    t.waiting = "waiting for resources: 0/1 workers placed (each needs 1 CPU; ...)"
    t.shape = SimpleNamespace(min_workers=1)
    assert t.waiting_now(1) == "" and t.waiting_now(0).startswith("waiting for resources: 0/1")


@pytest.mark.parametrize("command", ["generate", "run", "submit"])
def test_cache_option_help_lists_every_key(command: str) -> None:
    from linegen.workers.cache import SCHEMAS

    text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "3000"}).stdout
    for schema in SCHEMAS.values():
        for key in schema:
            assert f"{key}=" in text, (command, key)
