"""Exit codes: 0 success, 2 bad input (a ``ValueError`` whose message names the fix), 1 other."""

from __future__ import annotations

import functools

import typer


def exit_on_bad_input(command):
    """Turn a ``ValueError`` from a command into a one-line message on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ValueError as err:
            from ..pipeline._paths import printable

            typer.echo(f"error: {printable(str(err))}", err=True)
            raise typer.Exit(code=2) from None

    return wrapper
