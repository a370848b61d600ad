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
    tokens, sequences, padding = (np.zeros(len(names), np.float64) for _ in range(3))
    rows = 0
    for path in shard_files(root, manifest):
        for batch in read_shard(path, lambda p: list(_batches(p))):
            rows += batch.num_rows
            _count(batch, capacity, tokens, sequences, padding)
    return _entries(root, manifest, names, capacity, rows, tokens, sequences, padding)


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


def _count(batch, capacity: int, tokens: np.ndarray, sequences: np.ndarray, padding: np.ndarray) -> None:
    """Add one record batch's tokens, sequences and charged padding per source."""
    offsets, lens = _list(batch, "seq_lens")
    src = _list(batch, "source")[1] if "source" in batch.schema.names else np.zeros(lens.shape[0], np.int32)
    row = np.repeat(np.arange(batch.num_rows), np.diff(offsets))
    row_tokens = np.bincount(row, weights=lens, minlength=batch.num_rows)
    charged = lens / row_tokens[row] * (capacity - row_tokens[row])
    n = tokens.shape[0]
    tokens += np.bincount(src, weights=lens, minlength=n)
    sequences += np.bincount(src, minlength=n)
    padding += np.bincount(src, weights=charged, minlength=n)


def _entries(root: Path, manifest: dict, names, capacity, rows, tokens, sequences, padding) -> dict:
    listed = manifest.get("sources") or [{}]
    total = int(tokens.sum())
    sources = []
    for k, name in enumerate(names):
        t = int(round(tokens[k]))
        sources.append({
            "name": name, "tokens": t, "sequences": int(sequences[k]),
            "padding": float(padding[k] / (t + padding[k])) if t else 0.0,
            "target": listed[k].get("target", 1.0), "realised": t / total if total else 0.0,
        })  # fmt: skip
    slots = rows * capacity
    return {"output": str(root), "max_tokens": capacity, "rows": rows, "tokens": total,
            "padding": 1.0 - total / slots if slots else 0.0, "sources": sources}  # fmt: skip
