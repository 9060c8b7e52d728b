"""`linegen models`: the registry."""
from __future__ import annotations

import json

import typer

from linegen.cli.flags import Json


def models_command(as_json: bool = Json) -> None:
    """List the registered models."""
    from linegen.settings.model_choice import model_table

    rows = model_table()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    from linegen.cli.render import print_whole, whole_column

    table = Table(title="linegen models")
    names = [r["name"] + (" (default)" if r["default"] else "") for r in rows]
    whole_column(table, "name", names)
    for col in ("conditioning", "layers", "dim", "image_size", "tokens", "weights"):
        whole_column(table, col, [r[col] for r in rows])
    table.add_column("description", min_width=20)
    for name, r in zip(names, rows):
        table.add_row(name, r["conditioning"], str(r["layers"]), str(r["dim"]), str(r["image_size"]),
                      str(r["tokens"]), r["weights"], r["description"])
    print_whole(table)
