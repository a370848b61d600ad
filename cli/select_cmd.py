"""``packwise select`` output: the summary tables. The selection itself is ``packwise.pipeline.select_run``."""

from __future__ import annotations

from ..pipeline.select_run import SelectResult


def render_select_summary(result: SelectResult, max_clusters: int = 20) -> None:
    """Rows in/out (per cluster, largest first), what was found, and the time."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console = console if console.is_terminal else Console(width=140)
    if result.up_to_date:
        console.print(f"{result.output} is up to date (manifest.json with the same settings and inputs); nothing to do")
        return
    t = Table(title=f"packwise select --method {result.method} -> {result.output}")
    t.add_column("", justify="left")
    t.add_column("value", justify="right")
    t.add_row("rows in", f"{result.rows_in:,}")
    t.add_row("rows out", f"{result.rows_out:,} ({100 * result.rows_out / max(result.rows_in, 1):.1f}%)")
    for name, value in result.notes:
        t.add_row(name, value)
    t.add_row("time", f"{result.seconds:.1f}s")
    console.print(t)
    if result.per_cluster:
        c = Table(title=f"per cluster (largest {min(max_clusters, len(result.per_cluster))} of {len(result.per_cluster)})")
        for col in ("cluster", "rows in", "rows out"):
            c.add_column(col, justify="right")
        for cl, a, b in sorted(result.per_cluster, key=lambda r: (-r[1], r[0]))[:max_clusters]:
            c.add_row(str(cl), f"{a:,}", f"{b:,}")
        console.print(c)
