"""Turn the errors a user can fix into one line on stderr and a non-zero exit, never a traceback."""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

import typer

F = TypeVar("F", bound=Callable)


def user_errors() -> tuple[type[BaseException], ...]:
    from linegen.cluster.jobs_api import ClusterError
    from linegen.jobs.errors import UserError
    from linegen.jobs.manifest import ManifestError
    from linegen.jobs.storage import StorageError

    return (UserError, ManifestError, StorageError, ClusterError)


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def handle_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except user_errors() as e:
            fail(str(e))
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
