"""`linegen models`: the registry."""
from __future__ import annotations

import json

import typer

from linegen.cli.flags import Json


def models_command(as_json: bool = Json, wide: bool = typer.Option(
        False, "--wide", help="Descriptions in a column (wider than 80 columns); by default each folds under its model.")) -> None:
    """List the registered models."""
    from linegen.settings.model_choice import model_table

    rows = model_table()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    from linegen.cli.render import print_whole, whole_column

    default = next((r["name"] for r in rows if r["default"]), None)
    table = Table(title="linegen models" + (f" (default: {default})" if default else ""))
    names = [r["name"] for r in rows]
    whole_column(table, "name", names)
    # short headers: the table fits 80 columns (`--wide` adds the descriptions as a column)
    for col, head in (("conditioning", "cond"), ("layers", "layers"), ("dim", "dim"), ("image_size", "px"),
                      ("tokens", "tokens"), ("weights", "weights")):
        whole_column(table, head, [r[col] for r in rows])
    if wide:
        table.add_column("description", min_width=20)
    for name, r in zip(names, rows):
        cells = [name, r["conditioning"], str(r["layers"]), str(r["dim"]), str(r["image_size"]), str(r["tokens"]),
                 r["weights"]]
        table.add_row(*cells, *([r["description"]] if wide else []))
    print_whole(table)
    if not wide:  # each description on lines of its own, folded to the terminal, never cutting a name
        from rich.console import Console

        console = Console()
        for name, r in zip(names, rows):
            console.print(f"[bold]{name}[/bold]: {r['description']}", highlight=False)
