"""Turn the errors a user can fix into one line on stderr (and one JSON object on stdout with --json)
and a non-zero exit, never a traceback."""
from __future__ import annotations

import functools
import json
import sys
from typing import Callable, TypeVar

import typer

from linegen.errors import UserError

F = TypeVar("F", bound=Callable)


def fail(message: str, code: int = 1, as_json: bool = False) -> None:
    """The message on stderr; with --json also ``{"error": message}`` on stdout, for scripts."""
    typer.echo(f"error: {message}", err=True)
    if as_json:
        typer.echo(json.dumps({"error": message}))
    raise typer.Exit(code)


def handle_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            fail(str(e), as_json=bool(kwargs.get("as_json")))
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
