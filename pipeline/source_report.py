"""Per-source numbers of a packed output (``packwise report OUT``): tokens, sequences, padding share,
and realised against target proportion, counted from the shards themselves.

A row's padding is charged to its sources in proportion to their tokens in that row, so the
sources' padding adds up to the output's; a source's padding share is its padding over its tokens
plus its padding (the share of the slots it occupies that are padding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._arrow import numpy_view
from .writer import read_manifest, read_shard, shard_files, source_names


def source_report(output) -> dict:
    """The per-source report of the pack output folder ``output`` (its manifest and shards)."""
    root = Path(output)
    manifest = read_manifest(root)
    capacity = int(manifest["settings"]["max_tokens"])
    names = source_names(manifest) or [Path(str(manifest["settings"].get("input", "input"))).stem]
    counts = SourceCounts(len(names), capacity)
    for path in shard_files(root, manifest):
        for batch in read_shard(path, lambda p: list(_batches(p))):
            offsets, lens = _list(batch, "seq_lens")
            src = _list(batch, "source")[1] if "source" in batch.schema.names else np.zeros(lens.shape[0], np.int32)
            counts.add(offsets, lens, src)
    return counts.report(str(root), names, manifest.get("sources") or [{}])


def _batches(path: Path):
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    columns = [c for c in ("seq_lens", "source") if c in f.schema_arrow.names]
    return f.iter_batches(columns=columns)


def _list(batch, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets from 0, values)`` of a list<int32> column of ``batch``."""
    col = batch.column(name)
    offsets = numpy_view(col.offsets, np.int32).astype(np.int64)
    values = numpy_view(col.values, np.int32)[offsets[0] : offsets[-1]]
    return offsets - offsets[0], values


class SourceCounts:
    """Tokens, sequences and charged padding per source, added row batch by row batch."""

    def __init__(self, sources: int, capacity: int):
        self.capacity, self.rows = int(capacity), 0
        self.tokens, self.sequences, self.padding = (np.zeros(sources, np.float64) for _ in range(3))

    def add(self, seq_offsets: np.ndarray, lens: np.ndarray, src: np.ndarray) -> None:
        """Rows given as CSR sequences: ``lens[seq_offsets[r]:seq_offsets[r + 1]]`` of sources ``src``."""
        n_rows, n = seq_offsets.shape[0] - 1, self.tokens.shape[0]
        row = np.repeat(np.arange(n_rows), np.diff(seq_offsets))
        row_tokens = np.bincount(row, weights=lens, minlength=n_rows)
        charged = lens / row_tokens[row] * (self.capacity - row_tokens[row])
        self.rows += n_rows
        self.tokens += np.bincount(src, weights=lens, minlength=n)
        self.sequences += np.bincount(src, minlength=n)
        self.padding += np.bincount(src, weights=charged, minlength=n)

    def report(self, what: str, names, listed: list) -> dict:
        """The report: totals, and per source tokens, sequences, padding share, target (from ``listed``) and realised."""
        total = int(self.tokens.sum())
        sources = []
        for k, name in enumerate(names):
            t, pad = int(round(self.tokens[k])), float(self.padding[k])
            sources.append({
                "name": name, "tokens": t, "sequences": int(self.sequences[k]), "padding": pad / (t + pad) if t else 0.0,
                "target": listed[k].get("target", 1.0), "realised": t / total if total else 0.0,
            })  # fmt: skip
        slots = self.rows * self.capacity
        return {"output": what, "max_tokens": self.capacity, "rows": self.rows, "tokens": total,
                "padding": 1.0 - total / slots if slots else 0.0, "sources": sources}  # fmt: skip
