"""`import linegen`: one namespace, a light import, the Python API, and Ray Data's Generator.

The tests that run jobs share one embedded Ray (the `embedded_ray` fixture): `linegen.run` uses
a Ray that is already initialised instead of starting its own."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import linegen

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("jobs", "cli", "workers", "cluster", "benchmarks")


def _py(code: str, cwd: Path, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_import_is_light_and_namespaced(tmp_path: Path) -> None:
    code = ("import importlib.util, json, sys, linegen\n"
            "f, g, e = linegen.run, linegen.Generator, linegen.UserError\n"  # names resolve without the GPU stack
            f"print(json.dumps({{'heavy': [m for m in ('torch', 'ray') if m in sys.modules], "
            f"'top': [n for n in {TOP_LEVEL!r} if importlib.util.find_spec(n) is not None]}}))")
    r = _py(code, cwd=tmp_path)  # outside the repository: only the installed package is visible
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"heavy": [], "top": []}


def test_regular_install_puts_only_linegen_on_the_path(tmp_path: Path) -> None:
    import shutil

    source, target = tmp_path / "src", tmp_path / "site"
    # Build from a copy: an in-tree build would leave build/ and egg-info litter in the checkout.
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                                 "out", "runs", ".pytest_cache"))
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(source)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    installed = {p.name for p in target.iterdir() if not p.name.endswith(".dist-info")}
    assert installed - {"bin"} == {"linegen"}, installed  # bin/: the `linegen` script
    code = ("import importlib, importlib.util, json, pkgutil, linegen\n"
            "mods = [m.name for m in pkgutil.walk_packages(linegen.__path__, 'linegen.')]\n"
            "for m in mods: importlib.import_module(m)\n"
            "from linegen.workers.models.registry import get_spec\n"
            "w = get_spec('linegen-shapes-c2i').builtin_weights\n"
            f"print(json.dumps({{'file': linegen.__file__, 'mods': mods, 'weights': [__import__('os').path.isfile(p) for p in w], "
            f"'top': [n for n in {TOP_LEVEL!r} if importlib.util.find_spec(n) is not None]}}))")
    r = _py(code, cwd=tmp_path, env={"PYTHONPATH": str(target)})
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    assert doc["file"].startswith(str(target)) and doc["top"] == [] and doc["weights"] == [True, True]
    for module in ("linegen.jobs.storage.s3", "linegen.jobs.remote.submit", "linegen.workers.cache.linear",
                   "linegen.cli.main", "linegen.bench.engine_bench", "linegen.api"):
        assert module in doc["mods"]


def test_run_rows_returns_images(embedded_ray, tmp_path: Path) -> None:
    import os
    import time

    # what a killed earlier run left mid-write of its live progress, a minute ago: a finished run removes it
    killed = tmp_path / "api-rows" / ".tmp-_progress.json-0123456789ab"
    killed.parent.mkdir()
    killed.write_bytes(b"{half")
    os.utime(killed, (time.time() - 60, time.time() - 60))
    result = linegen.run([{"class_id": 1, "count": 3}], out=str(tmp_path), model="test-tiny", job_id="api-rows")
    assert isinstance(result, linegen.JobResult) and result.images == 3 and result.generated_this_run == 3
    assert not killed.exists()
    table = result.read_table(columns=["item_id", "class_id", "image", "tokens"])
    assert table.num_rows == 3 and set(table.column("class_id").to_pylist()) == {1}
    assert all(img["bytes"][:8] == b"\x89PNG\r\n\x1a\n" for img in table.column("image").to_pylist())
    again = linegen.run([{"class_id": 1, "count": 3}], out=str(tmp_path), model="test-tiny", job_id="api-rows")
    assert again.generated_this_run == 0 and again.images == 3  # resumed: nothing twice


def test_bad_rows_name_the_row_and_write_nothing(tmp_path: Path) -> None:
    with pytest.raises(linegen.ManifestError) as e:
        linegen.run([{"class_id": 1}, {"class_id": 2, "count": 0}, "x"], out=str(tmp_path / "o"), model="test-tiny")
    assert isinstance(e.value, linegen.UserError)
    text = str(e.value)
    assert "rows[1]: field 'count'" in text and "rows[2]:" in text and "rows[0]" not in text
    assert not (tmp_path / "o").exists()
    with pytest.raises(linegen.UserError, match="unknown cache policy"):
        linegen.run([{"class_id": 1}], out=str(tmp_path / "o"), model="test-tiny", cache="nope")
    with pytest.raises(linegen.UserError, match=r"rows\[0\]: field 'class_id': class 1000 is out of range"):
        linegen.validate([{"class_id": 1000}], model="test-tiny")
    assert linegen.validate([{"class_id": 3, "count": 4}], model="test-tiny").items == 4


@pytest.fixture(scope="module")
def api_job(embedded_ray, tmp_path_factory) -> dict:
    """One small job run through the API, read by the Generator and CLI tests below (each used to
    run its own copy of it)."""
    d = tmp_path_factory.mktemp("api-job")
    manifest = d / "m.jsonl"
    manifest.write_text('{"class_id": 1, "count": 3}\n{"class_id": 4, "count": 2, "id": "four"}\n'
                        '{"class_id": 5, "seed": 77, "top_k": 5}\n')  # the last row: its own seed and top_k
    # (rows without seed/top_k next to one with them: Ray Data makes those columns float64 with NaN)
    run = linegen.run(str(manifest), out=str(d / "o"), model="test-tiny", seed=3, job_id="j")
    expected = {r["item_id"]: r["tokens"] for r in run.read_table(columns=["item_id", "tokens"]).to_pylist()}
    return {"dir": d, "manifest": manifest, "out": d / "o", "seed": 3, "expected": expected}


def test_generator_matches_run_and_checks_rows(api_job) -> None:
    gen = linegen.Generator(model="test-tiny", seed=api_job["seed"], batch_size=2)
    out = gen.generate(linegen.read_rows(str(api_job["manifest"])))
    assert {g.item.item_id: g.tokens.tolist() for g in out} == api_job["expected"]
    with pytest.raises(linegen.UserError, match=r"rows\[0\]: field 'class_id'"):
        gen.generate([{"class_id": -1}])


@pytest.mark.timeout(300)
def test_generator_in_a_ray_data_pipeline(api_job) -> None:
    import ray

    from linegen.cluster.local import LocalCluster

    manifest, expected = api_job["manifest"], api_job["expected"]
    with LocalCluster(num_cpus=2, auth_mode="disabled", log_to_driver=False):  # reuses embedded_ray
        # the README's recipe as written for CPUs (compute=ActorPoolStrategy: Ray Data's current argument)
        ds = ray.data.from_items(linegen.read_rows(str(manifest)))
        ds = ds.map_batches(linegen.Generator, fn_constructor_kwargs={"model": "test-tiny", "seed": api_job["seed"],
                                                                      "batch_size": 4},
                            compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1, batch_size=2)
        rows = ds.take_all()
    assert len(rows) == 6
    assert {r["item_id"]: list(r["tokens"]) for r in rows} == expected
    assert {r["id"] for r in rows} == {None, "four"} and all(bytes(r["image"])[:4] == b"\x89PNG" for r in rows)


REMOTE_COMMANDS = [
    ["submit", "{manifest}", "--cluster", "http://127.0.0.1:9", "--out", "{out}", "--model", "test-tiny"],
    ["status", "j", "--out", "{out}"],
    ["list", "--out", "{out}"],
    ["cost", "j", "--out", "{out}"],
    ["logs", "j", "--cluster", "http://127.0.0.1:9"],
    ["cancel", "j", "--cluster", "http://127.0.0.1:9"],
    ["monitor", "--once", "--cluster", "http://127.0.0.1:9"],
]


def test_remote_commands_never_import_torch(api_job, tmp_path: Path) -> None:
    manifest, out = api_job["manifest"], api_job["out"]  # job "j", finished
    cases = [[a.format(manifest=manifest, out=out) for a in args] for args in REMOTE_COMMANDS]
    code = ("import json, sys\nfrom linegen.cli.main import app\nresults = []\n"
            f"for args in {cases!r}:\n"
            "    try:\n        code = app(args, standalone_mode=False) or 0\n"
            "    except SystemExit as e:\n        code = e.code\n"
            "    except BaseException as e:\n        code = type(e).__name__\n"
            "    results.append([args[0], code, 'torch' in sys.modules])\n"
            "print(json.dumps(results))")
    (tmp_path / "empty.toml").write_text("")
    r = _py(code, cwd=tmp_path, env={"LINEGEN_CONFIG": str(tmp_path / "empty.toml")})
    r = r if r.returncode == 0 else pytest.fail(r.stderr[-3000:])
    results = json.loads(r.stdout.strip().splitlines()[-1])
    assert [row[2] for row in results] == [False] * len(REMOTE_COMMANDS), results
    codes = {name: code for name, code, _ in results}
    assert codes["status"] == 0 and codes["list"] == 0 and codes["cost"] == 0  # really ran, on the job's outputs
    assert all(codes[c] == 1 for c in ("submit", "logs", "cancel", "monitor")), codes  # unreachable: one-line error


def test_preparing_a_job_for_submit_needs_no_torch(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"class_id": 1, "count": 2}\n')
    code = ("import sys\nfrom linegen.jobs.prepare import prepare_job\nfrom linegen.jobs.spec import JobSpec\n"
            f"spec = JobSpec.from_flags(manifest={str(manifest)!r}, out={str(tmp_path / 'o')!r}, job_id='p', "
            "model='test-tiny', cache='linear', cache_ratio='1/4', cache_options=['anchors=2'], memory_budget='1GiB')\n"
            "job = prepare_job(spec)\nprint(len(job.shards), 'torch' in sys.modules, 'ray' in sys.modules)")
    r = _py(code, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["1", "False", "False"]


def test_no_source_file_imports_the_old_top_level_names() -> None:
    import re

    bad = []
    pattern = re.compile(r"^\s*(from|import)\s+(jobs|workers|cluster|cli|benchmarks)[\s.]", re.M)
    for folder in ("jobs", "workers", "cluster", "cli", "benchmarks", "linegen", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            if pattern.search(path.read_text()):
                bad.append(str(path.relative_to(ROOT)))
    assert bad == []


@pytest.mark.timeout(300)
def test_run_works_after_ray_was_imported_for_a_token_cluster(tmp_path) -> None:
    """A notebook that talked to a token-auth cluster has imported ray with RAY_AUTH_MODE=token;
    Ray caches that mode, so an embedded cluster started later (auth disabled) used to cancel
    every actor creation. A fresh interpreter, since the cache is per process."""
    script = (
        "import os\n"
        "os.environ['RAY_AUTH_MODE'] = 'token'\n"
        "import ray\n"
        "os.environ.pop('RAY_AUTH_MODE')\n"
        "import linegen\n"
        f"r = linegen.run([{{'class_id': 1, 'count': 2}}], out={str(tmp_path)!r}, model='test-tiny', "
        "random_weights=True, device='cpu', job_id='after-token')\n"
        "print('images', r.images)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0 and "images 2" in r.stdout, r.stderr[-2000:]
