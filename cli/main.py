"""The `linegen` command: every command registered here, each a thin layer over the Python API.

Each command lives in its own module and calls one function of jobs/ or cluster/; nothing here
imports torch or ray at module level, so `--help` answers at once and the commands that only talk
to a cluster or storage never load the GPU stack.
"""
from __future__ import annotations

import typer

from linegen.cli import bench, cost, evaluate, generate, models, monitor, remote, run, tune, watch
from linegen.cli.errors import JsonErrorsGroup, handle_errors
from linegen.cli.flags import with_flags

app = typer.Typer(
    name="linegen",
    help="Generate large synthetic image datasets with autoregressive (LlamaGen) models and a "
         "line-level compressed KV cache (LineAR), on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain help text: with rich markup, "[output] out" (a config section) would vanish as a tag.
    rich_markup_mode=None,
    cls=JsonErrorsGroup,
)

COMMANDS = [
    ("models", models.models_command),
    ("generate", generate.generate_command),
    ("run", run.run_command),
    ("validate", run.validate_command),
    ("bench", bench.bench_command),
    ("eval", evaluate.eval_command),
    ("grid", evaluate.grid_command),
    ("tune", tune.tune_command),
    ("submit", remote.submit_command),
    ("list", remote.list_command),
    ("status", remote.status_command),
    ("logs", remote.logs_command),
    ("cancel", remote.cancel_command),
    ("resume", remote.resume_command),
    ("monitor", monitor.monitor_command),
    ("cost", cost.cost_command),
    ("dashboard", watch.dashboard_command),
    ("report", watch.report_command),
]
for _name, _command in COMMANDS:
    app.command(_name)(handle_errors(with_flags(_command)))
