"""Ctrl-C and SIGTERM during ``pack`` and ``select``: stop, say what is kept and how to go on.

The signal becomes an exception in the main thread, so the run unwinds as on any error: the
writer aborts (no half-written shard is published, the complete ones stay), the output lock is
released, and then one line names what the output folder holds and how to resume. The exit code
is the shell's for a signal: 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import typer

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived (a ``BaseException``: no ``except Exception`` may swallow it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum: int, frame) -> None:
    for s in _SIGNALS:  # a second signal must not cut the clean-up that the first one started
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


@contextmanager
def stop_on_signals(kept: Callable[[], str], resume: str) -> Iterator[None]:
    """Run the block with SIGINT / SIGTERM turned into ``Interrupted``; on one, print
    ``interrupted (SIGTERM): {kept()}; {resume}`` on stderr and exit 128 + the signal number.
    Off the main thread (an app embedding the command) signals cannot be caught: the block just runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _raise) for s in _SIGNALS}
    try:
        yield
    except Interrupted as stop:
        typer.echo(f"interrupted ({signal.Signals(stop.signum).name}): {kept()}; {resume}", err=True)
        raise typer.Exit(code=128 + stop.signum) from None
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def complete_shards(output: Path) -> str:
    """What an interrupted run left in ``output``: its published shards (never a partial one)."""
    from ..pipeline._paths import shown  # not at import: the pipeline package loads numba

    n = len(list(output.glob("shard-*.parquet"))) if output.is_dir() else 0
    return f"{n} complete shard{'' if n == 1 else 's'} in {shown(output)}"
