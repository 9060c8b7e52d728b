"""The `linegen` command. Each command lives in its own module and calls one function of jobs/ or
cluster/; nothing here imports torch or ray at module level, so `--help` answers at once."""
from __future__ import annotations

import typer

app = typer.Typer(
    name="linegen",
    help="Generate large synthetic image datasets with autoregressive (LlamaGen) models and a "
         "line-level compressed KV cache (LineAR), on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

from linegen.cli import bench, cost, evaluate, generate, models, monitor, remote, run, tune  # noqa: E402  (each module registers its commands on `app`)

__all__ = ["app", "bench", "cost", "evaluate", "generate", "models", "monitor", "remote", "run", "tune"]
