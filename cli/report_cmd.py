"""Helpers of ``packwise report``: read lengths, render the waste table, write JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..packing import WasteReport


def read_lengths(path: Path, text_column: str, tokenizer: Path | None, train: bool) -> np.ndarray:
    """Token lengths of ``text_column`` in a JSON Lines file, with a given or a freshly trained tokenizer."""
    import pyarrow.json as pj

    from ..pipeline.tokenizer import load_tokenizer, token_lengths, train_byte_bpe

    if not path.is_file():
        raise ValueError(f"input: no file at {path}")
    if (tokenizer is None) == (not train):
        raise ValueError("pass exactly one of --tokenizer PATH or --train-tokenizer")
    table = pj.read_json(path)
    if text_column not in table.column_names:
        raise ValueError(f"column {text_column!r} not in {path} (columns: {table.column_names}); pass --text-column")
    texts = table.column(text_column).to_pylist()
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise ValueError(f"{path} row {bad}: column {text_column!r} is {texts[bad]!r}, expected text")
    tok = load_tokenizer(tokenizer) if tokenizer is not None else train_byte_bpe(texts)
    return token_lengths(tok, texts)


def render_report(report: WasteReport, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"padding waste at {report.capacity} tokens per row — {title}")
    for name in ("strategy", "rows", "steps", "padding", "truncated", "seqs/row", "vs L1", "attn dense/masked"):
        table.add_column(name, justify="left" if name == "strategy" else "right", no_wrap=True)
    for s in report.strategies:
        table.add_row(
            s.name,
            f"{s.rows:,}",
            f"{s.steps:,}",
            f"{100 * s.padding_fraction:.2f}%",
            f"{100 * s.truncation_fraction:.2f}%",
            f"{s.sequences_per_row:.2f}",
            f"{s.vs_lower_bound:.4f}",
            f"{s.attention_dense / s.attention_masked:.1f}x" if s.attention_masked else "-",
        )
    console = Console()
    console.print(table)
    console.print(
        f"{report.num_sequences:,} sequences, {report.total_tokens:,} tokens; length mean {report.mean_length:.1f}, "
        f"median {report.median_length:.0f}, p99 {report.p99_length:.0f}, max {report.max_length}; "
        f"lower bounds L1={report.lower_bound_l1:,} L2={report.lower_bound_l2:,} rows"
    )


def write_json(report: WasteReport, path: Path) -> None:
    from ..pipeline.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report.to_dict(), indent=2))
