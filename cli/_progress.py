"""A rich progress bar on stderr fed by the pipeline's ``progress(rows, tokens)`` callback."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def progress_bar(description: str, total_rows: int | None) -> Iterator[Callable[[int, int], None]]:
    """Yield ``update(rows, tokens)``; shows rows, tokens/s and, when ``total_rows`` is known, an ETA."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("rows")]
    columns += [TextColumn("{task.fields[rate]} tok/s"), TimeElapsedColumn()]
    if total_rows is not None:
        columns.append(TimeRemainingColumn())
    start, tokens = time.perf_counter(), 0
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total_rows, rate="-")

        def update(rows: int, new_tokens: int) -> None:
            nonlocal tokens
            tokens += new_tokens
            rate = tokens / max(time.perf_counter() - start, 1e-9)
            bar.update(task, advance=rows, rate=f"{rate:,.0f}")

        yield update
