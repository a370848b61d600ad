"""Helpers of ``packwise pack``: load a chat template function, render the end-of-run summary."""

from __future__ import annotations

import importlib


def load_template(spec: str | None):
    """``module:function`` -> the function (renders one chat/messages value to text), or ``None``."""
    if spec is None:
        return None
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"--template must look like module:function, got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--template {spec}: cannot import it ({err}); check the module is on PYTHONPATH") from None
    if not callable(fn):
        raise ValueError(f"--template {spec}: {name} is not a function")
    return fn


def render_summary(result) -> None:
    """The summary table of a pack run: rows in/out, padding before/after, distance to the bound."""
    from rich.table import Table

    m = result.manifest
    s, cap = m["stats"], m["settings"]["max_tokens"]
    table = Table(title=f"packwise pack -> {result.output} ({m['settings']['algorithm']}, {cap} tokens per row)")
    table.add_column("", justify="left")
    table.add_column("value", justify="right")
    lines = [
        ("input rows", f"{s['rows_in']:,}"),
        ("empty rows skipped", f"{s['empty_rows']:,}"),
        ("sequences", f"{s['sequences']:,}"),
        ("tokens in", f"{s['tokens_in']:,}"),
        ("tokens out", f"{s['tokens_out']:,}"),
        ("truncated tokens", f"{s['truncated_tokens']:,}"),
        ("dropped sequences (tokens)", f"{s['dropped_sequences']:,} ({s['dropped_tokens']:,})"),
        ("packed rows", f"{s['rows_out']:,}"),
        ("padding before (pad to max)", f"{100 * s['padding_before']:.2f}%"),
        ("padding after (packed)", f"{100 * s['padding_after']:.2f}%"),
        ("lower bound L1 (rows)", f"{s['lower_bound_l1']:,}"),
        ("rows over L1", f"{100 * s['rows_over_bound']:.3f}%"),
        ("shards", f"{len(m['shards']):,}"),
    ]
    for name, value in lines:
        table.add_row(name, value)
    _console().print(table)


def _console():
    """Stdout console; wide enough for the tables when the output is a file or a pipe."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=140)
