"""benchmarks/gpu_check.sh, the script a session lent a GPU runs first, in its CPU smoke mode:
the same code path with tiny shapes, so the script never rots between GPU loans."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_smoke_mode_runs_every_policy_and_checks_tokens(tmp_path):
    env = {**os.environ, "SMOKE": "1", "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # linegen came from the script's temporary package (removed on exit), not from an installed copy
    imported = Path(proc.stderr.split("linegen from ", 1)[1].split()[0])
    assert imported.name == "__init__.py" and not imported.exists() and REPO not in imported.parents
    text = (tmp_path / "gpu_check.md").read_text()
    assert "skipped" not in text and "failed" not in text
    text, janus = text.split("## smoke-janus")  # Janus-Pro's rows are a table of their own, last
    janus_rows = [line.split("|")[1:5] for line in janus.splitlines() if line.count("|") == 14]
    assert sorted((p.strip(), r.strip(), path.strip()) for p, r, _, path in janus_rows if path.strip() in ("eager", "static")) == \
        [("full", "1", "eager"), ("full", "1", "static"), ("linear", "1/6", "eager"), ("linear", "1/6", "static")]
    table = [line for line in text.splitlines()
             if line.count("|") == 14 and line.split("|")[4].strip() in ("eager", "static")]
    policies = {line.split("|")[1].strip() + " " + line.split("|")[2].strip() for line in table}
    assert policies == {"full 1", "linear 1/4", "linear 1/6", "streaming 1/6", "h2o 1/6"}
    assert len(table) == 5 * 2 * 2  # batch and packed, eager and static
    assert "| full  | static | True | 0.0000 | True |" in text and "| linear 1/6 | static | True | 0.0000 | True |" in text
    assert "| linear+heads 1/6 | static | True | 0.0000 | True |" in text  # grouped heads, static step
