"""Turn the errors a user can fix into one line on stderr (and one JSON object on stdout with --json)
and a non-zero exit, never a traceback."""
from __future__ import annotations

import functools
import json
import sys
from typing import Callable, TypeVar

import typer
from typer.core import TyperGroup

from linegen.errors import UserError

F = TypeVar("F", bound=Callable)


def fail(message: str, code: int = 1, as_json: bool = False) -> None:
    """The message on stderr; with --json also ``{"error": message}`` on stdout, for scripts.
    Credentials in any URL of the message are redacted (`cluster.address.redact_text`)."""
    from linegen.cluster.address import redact_text

    message = redact_text(message)
    typer.echo(f"error: {message}", err=True)
    if as_json:
        typer.echo(json.dumps({"error": message}))
    raise typer.Exit(code)


class JsonErrorsGroup(TyperGroup):
    """The `linegen` group: a usage error (unknown option, missing argument) under --json is also
    ``{"error": ...}`` on stdout, like every other error; the exit code stays click's (2)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = sys.argv[1:] if args is None else list(args)
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                              **extra)
        except typer.TyperException as e:  # typer's (vendored) click usage errors derive from it
            if "--json" in argv:
                typer.echo(json.dumps({"error": e.format_message()}))
            e.show()
            sys.exit(e.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


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
