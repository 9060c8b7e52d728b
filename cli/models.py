"""`linegen models`: the registry."""
from __future__ import annotations

import json

import typer

from linegen.cli import options
from linegen.cli.main import app


@app.command("models")
def models_command(as_json: bool = options.Json) -> None:
    """List the registered models."""
    from linegen.workers.models.registry import DEFAULT_MODEL, MODELS

    rows = [{"name": s.name, "default": s.name == DEFAULT_MODEL, "conditioning": s.gpt.cond,
             "layers": s.gpt.n_layer, "heads": s.gpt.n_head, "dim": s.gpt.dim, "image_size": s.image_size,
             "grid": s.grid, "tokens": s.num_tokens, "prefix": s.prefix_len,
             "weights": "built-in" if s.builtin_weights else ("random" if s.random_by_design else "checkpoint"), "description": s.description}
            for s in MODELS.values()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="linegen models")
    for col in ("name", "conditioning", "layers", "dim", "image_size", "tokens", "weights", "description"):
        table.add_column(col)
    for r in rows:
        name = r["name"] + (" (default)" if r["default"] else "")
        table.add_row(name, r["conditioning"], str(r["layers"]), str(r["dim"]), str(r["image_size"]),
                      str(r["tokens"]), r["weights"], r["description"])
    Console().print(table)
