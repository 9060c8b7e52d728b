"""`linegen ARGS` inside the test process, through Typer's CliRunner, for read-only CLI checks.

A subprocess costs 1-3 s of interpreter start-up and imports per call on a loaded 2-core machine;
the same command in-process costs milliseconds once the modules are imported. Use this for
commands that only read (status, list, cost, validate, models, --help) and for error paths that
stop before any work starts. Keep real subprocesses where the process is the point: signals,
process lifetimes, what a fresh interpreter imports (torch/ray), installs, and anything that
starts Ray.

The result is a `subprocess.CompletedProcess`, so a check reads the same either way.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

from typer.testing import CliRunner

from linegen.cli.main import app


@contextlib.contextmanager
def _cwd(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def invoke(args: list[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
           stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run ``linegen ARGS`` in-process. ``env``, when given, is the command's *whole* environment
    (like subprocess's ``env=``): every variable of this process not in it is unset for the call."""
    overrides: dict[str, str | None] | None = None
    if env is not None:
        overrides = {name: None for name in os.environ if name not in env}
        overrides.update(env)
    runner = CliRunner()
    with _cwd(cwd):
        result = runner.invoke(app, [str(a) for a in args], env=overrides, input=stdin, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # An escaped exception would have been a traceback on a real terminal: show it as one.
        import traceback

        trace = "".join(traceback.format_exception(result.exception))
        return subprocess.CompletedProcess(["linegen", *args], 1, result.stdout, result.stderr + trace)
    return subprocess.CompletedProcess(["linegen", *args], result.exit_code, result.stdout, result.stderr)
