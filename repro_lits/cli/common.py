"""Helpers shared by the CLI commands: logging set-up and one-line user errors."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from repro_lits.errors import UserInputError

#: Exit status for a usage or input error.
EXIT_USAGE = 2

F = TypeVar("F", bound=Callable[..., Any])


def configure_logging(verbose: bool = False) -> None:
    """Send the package's log records to standard error, one line each."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
    )


def user_errors(func: F) -> F:
    """Turn a UserInputError or an OSError into ``error: MESSAGE`` on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserInputError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(EXIT_USAGE) from None
        except OSError as err:
            # A missing, unwritable or misplaced path (or a full disk) is reported as one line.
            where = f": {err.filename}" if err.filename else ""
            typer.echo(f"error: {err.strerror or err}{where}; check the path and its permissions", err=True)
            raise typer.Exit(EXIT_USAGE) from None

    return wrapper  # type: ignore[return-value]
