"""`linegen models`: the registry."""
from __future__ import annotations

import json

import typer

from linegen.cli.flags import Json


def models_command(as_json: bool = Json) -> None:
    """List the registered models."""
    from linegen.jobs.models import model_table

    rows = model_table()
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
