"""The Ray Data engine: the same ``pack`` and ``select`` as the local engine, spread over a cluster.

Why a separate engine and not a rewrite: the algorithms stay the local ones (``token_batches``,
``StreamPacker``, ``ShardWriter``, ``kmeans`` / ``KMeans.assign``, ``semantic_dedup``); Ray only
decides where they run.

``pack``: ``ray.data.read_parquet`` / ``read_json`` / ``read_csv`` / ``from_arrow`` (a Hugging Face
``Dataset``'s Arrow table) / ``from_huggingface`` (a streaming ``IterableDataset``) ->
tokenize and measure lengths in ``map_batches`` on Arrow batches -> ``repartition`` into blocks of
exactly ``block_rows`` input rows (so the cut points depend on the input, never on the cluster) ->
one ``StreamPacker`` per block in ``map_batches`` -> the driver reads the packed blocks in input
order and writes them through the one ``ShardWriter`` (atomic shards, manifest last, resume).
Each packed block ends with a footer row carrying its ``PackStats``; the driver turns block-local
row numbers into global ones and applies ``--seed`` per window exactly as the local packer does,
so with a single block the output is byte-identical to the local engine's.

``select`` runs in ``pipeline/ray_select.py`` on the session, input and error helpers here.

Example (needs ``pip install 'packwise[ray]'``)::

    packwise pack data.parquet out/ --max-tokens 2048 --tokens-column input_ids --engine ray
    packwise select emb.parquet sel/ --method dedup --embeddings-column emb --engine ray --ray-address auto
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import fields
from typing import Callable, Iterator

import numpy as np

from .pack_stage import PackedRows, PackStats, StreamPacker
from .readers import Located
from .tokens import TextRows, token_batches

ENGINES: tuple[str, ...] = ("local", "ray")
_INSTALL = "pip install 'packwise[ray]'"
_FOOTER = -1  # ``_window`` of the footer row that closes every packed block


class RayMissing(ImportError, ValueError):
    """Ray is not installed: an ImportError for library callers, a bad-setup ValueError (exit 2) for the CLI."""


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"--engine {engine}: use one of {', '.join(ENGINES)}")


def require_ray():
    """Import ``ray`` and ``ray.data`` or raise ``RayMissing`` naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise RayMissing(
            f"--engine ray needs Ray Data, which is not installed ({err}); install the extra: {_INSTALL}"
        ) from None
    return ray


@contextmanager
def ray_session(address: str | None = None):
    """Use a running Ray (already initialised, ``address``, or ``$RAY_ADDRESS``) or start a local one;
    a session started here is shut down on exit. Rows keep their input order (``preserve_order``)."""
    ray = require_ray()
    started = False
    if not ray.is_initialized():
        kwargs = {"address": address} if address else {"include_dashboard": False}
        ray.init(log_to_driver=False, **kwargs)
        started = True
    ctx = ray.data.DataContext.get_current()
    saved = ctx.execution_options.preserve_order, ctx.raise_original_map_exception
    ctx.execution_options.preserve_order = True
    ctx.raise_original_map_exception = True  # a worker's ValueError reaches the driver (see _task_errors)
    try:
        yield ray
    finally:
        ctx.execution_options.preserve_order, ctx.raise_original_map_exception = saved
        if started:
            ray.shutdown()


def _unwrap(err: BaseException) -> BaseException | None:
    """The plain ``ValueError`` raised inside a Ray task (under RayTaskError / UserCodeException), if any."""
    seen = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e) is ValueError:
            return e
        cause = getattr(e, "cause", None)
        e = cause if isinstance(cause, BaseException) else (e.__cause__ or e.__context__)
    return None


@contextmanager
def _task_errors():
    """Re-raise bad-input errors from workers as the plain ``ValueError`` the local engine raises
    (its message without Ray's retry advice); anything else propagates as Ray raised it."""
    try:
        yield
    except Exception as err:
        if type(err) in (ValueError, RayMissing):
            raise
        inner = _unwrap(err)
        if inner is None:
            raise
        raise ValueError(str(inner).split("\nFailed to apply UDF", 1)[0]) from None


# --- input -------------------------------------------------------------------------------------
def read_dataset(inp, columns: list[str] | None):
    """A Ray dataset over what ``open_input`` resolved (same files, same order, same columns)."""
    ray = require_ray()
    if inp.format == "hf":
        import datasets

        if isinstance(inp.ds, datasets.Dataset):  # its Arrow table (memory-mapped when on disk), rows in order
            return ray.data.from_arrow(inp.ds.flatten_indices().data.table)
        return ray.data.from_huggingface(inp.ds)  # a streaming IterableDataset
    files = [str(f) for f in inp.files]
    if inp.format == "parquet":
        ds = ray.data.read_parquet(files, file_extensions=None)
    elif inp.format == "json" and not inp.json_arrays:
        ds = ray.data.read_json(files, lines=True, file_extensions=None)
    elif inp.format == "csv" and inp.csv_header is True:
        ds = ray.data.read_csv(files, file_extensions=None)
    else:  # Arrow IPC (and save_to_disk folders): memory-mapped here, handed to the object store; JSON arrays,
        # plain text and headerless CSV: read by packwise's own readers on the driver
        import pyarrow as pa

        tables = [pa.Table.from_batches([b.batch for b in inp.batches()])]
        ds = ray.data.from_arrow(tables)
    return ds.select_columns(columns) if columns is not None else ds


# --- pack: worker side --------------------------------------------------------------------------
def _tokenize_batch(table, *, tokenizer, tokens_column, labels_column, source):
    """Arrow batch in -> ``input_ids`` (list<int32>, [labels]) and ``length`` out; token columns pass through zero-copy.

    ``tokenizer`` is a ``TextRows`` (a tokenizer bound to how rows become text) when tokenizing."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if tokens_column is not None:
        cols = {"input_ids": table.column(tokens_column)}
        if labels_column is not None:
            cols["labels"] = table.column(labels_column)
    else:
        ids, labels = [], []
        for b in table.to_batches():
            if b.num_rows:
                offsets, values, lab = tokenizer.tokenize(Located(b, source, 0, 0))
                ids.append(_lists(offsets, values))
                if lab is not None:
                    labels.append(_lists(offsets, lab))
        cols = {"input_ids": pa.chunked_array(ids, type=pa.list_(pa.int32()))}
        if tokenizer.spec.has_labels:
            cols["labels"] = pa.chunked_array(labels, type=pa.list_(pa.int32()))
    cols["length"] = pc.fill_null(pc.list_value_length(cols["input_ids"]), 0).cast(pa.int32())
    return pa.table(cols)


def _lists(offsets, values):
    import pyarrow as pa

    from ._arrow import arrow_array

    return pa.ListArray.from_arrays(arrow_array(offsets, pa.int32()), arrow_array(values, pa.int32()))


def _pack_block(table, *, max_tokens, algorithm, oversize, window, has_labels, source):
    """One block of input rows -> its packed rows (block-local ``source_index``, ``_window``) + a footer."""
    import pyarrow as pa

    from .writer import _table

    packer = StreamPacker(max_tokens, algorithm, oversize, window=window)
    parts, error = [], None

    def keep(rows: PackedRows) -> None:
        t = _table(rows, has_labels)
        parts.append(t.append_column("_window", pa.array(np.full(t.num_rows, packer.stats.windows - 1, np.int32))))

    try:
        first, located = 0, []
        for b in table.combine_chunks().to_batches():
            located.append(Located(b, source, first, first))
            first += b.num_rows
        labels = "labels" if has_labels else None
        for tb in token_batches(located, tokens_column="input_ids", labels_column=labels):
            for rows in packer.add(tb):
                keep(rows)
        for rows in packer.finish():
            keep(rows)
    except ValueError as err:
        error = str(err)
    stats = {"error": error} if error else {**packer.stats.to_dict(), "block_rows": table.num_rows}
    footer = _table(_empty_rows(has_labels), has_labels).append_column("_window", pa.array([_FOOTER], pa.int32()))
    out = pa.concat_tables(parts + [footer]) if parts and error is None else footer
    return out.append_column("_stats", pa.array([None] * (out.num_rows - 1) + [json.dumps(stats)], pa.string()))


def _empty_rows(has_labels: bool) -> PackedRows:
    z = np.zeros(0, np.int64)
    return PackedRows(np.zeros(2, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32) if has_labels else None,
                      np.zeros(2, np.int64), np.zeros(0, np.int32), z, z)  # fmt: skip


# --- pack: driver side --------------------------------------------------------------------------
def _rows_of(table, row_offset: int, has_labels: bool) -> PackedRows:
    """Arrow packed rows -> ``PackedRows`` (values zero-copy), block-local rows made global."""

    def csr(name):
        col = table.column(name)
        col = col.combine_chunks() if hasattr(col, "combine_chunks") else col
        off = np.asarray(col.offsets, np.int64)
        vals = np.asarray(col.values)[off[0] : off[-1]]
        return off - off[0], vals

    tok_off, tokens = csr("input_ids")
    seq_off, seq_lens = csr("seq_lens")
    _, src = csr("source_index")
    _, start = csr("source_start")
    labels = csr("labels")[1] if has_labels else None
    return PackedRows(tok_off, tokens, labels, seq_off, seq_lens, src + row_offset, start.astype(np.int64))


def merge_stats(parts: list[dict], capacity: int, algorithm: str) -> PackStats:
    """One ``PackStats`` from per-block ones: counts add, maxima take the max, histograms add.

    Example:
        >>> from packwise.pipeline.pack_stage import PackStats
        >>> a = PackStats(8, "bfd", rows_in=3, tokens_out=10, max_length=5, length_histogram=[0, 2]).to_dict()
        >>> b = PackStats(8, "bfd", rows_in=2, tokens_out=4, max_length=7, length_histogram=[1]).to_dict()
        >>> m = merge_stats([a, b], 8, "bfd")
        >>> m.rows_in, m.tokens_out, m.max_length, m.length_histogram
        (5, 14, 7, [1, 2])
    """
    total = PackStats(capacity, algorithm)
    hist = np.zeros(64, np.int64)
    for p in parts:
        for f in fields(PackStats):
            if f.name in ("capacity", "algorithm", "length_histogram"):
                continue
            v = p[f.name]
            cur = getattr(total, f.name)
            setattr(total, f.name, max(cur, v) if f.name in ("max_length", "max_pending_sequences") else cur + v)
        h = np.asarray(p["length_histogram"], np.int64)
        hist[: h.shape[0]] += h
    total.length_histogram = hist[: int(np.flatnonzero(hist).max(initial=-1)) + 1].tolist()
    return total


class RayPackRun:
    """Iterate ``rows()`` for the packed rows in input order; ``stats`` holds the merged ``PackStats`` after."""

    def __init__(self, inp, *, tokenizer: TextRows | None, text, tokens_column, labels_column, max_tokens, algorithm,
                 oversize, window, seed, block_rows, progress: Callable[[int, int], None] | None = None):  # fmt: skip
        self.inp, self.max_tokens, self.algorithm, self.seed = inp, max_tokens, algorithm, seed
        self.block_rows, self.progress = int(block_rows), progress
        self.has_labels = labels_column is not None or (tokens_column is None and text.has_labels)
        self.columns = ([tokens_column] + ([labels_column] if labels_column else [])) if tokens_column else text.read_columns
        self.tok_kwargs = dict(tokenizer=tokenizer, tokens_column=tokens_column, labels_column=labels_column,
                               source=f"{inp.name} (a Ray block)")  # fmt: skip
        self.pack_kwargs = dict(max_tokens=max_tokens, algorithm=algorithm, oversize=oversize, window=window,
                                has_labels=self.has_labels, source=f"{inp.name} (a Ray block)")  # fmt: skip
        self.stats: PackStats | None = None
        self.blocks = 0

    def dataset(self):
        """The lazy Ray pipeline: read -> tokenize -> exact row blocks -> pack per block."""
        ds = read_dataset(self.inp, self.columns)
        ds = ds.map_batches(_tokenize_batch, batch_format="pyarrow", fn_kwargs=self.tok_kwargs)
        ds = ds.repartition(target_num_rows_per_block=self.block_rows, strict=True)
        return ds.map_batches(_pack_block, batch_format="pyarrow", batch_size=None, fn_kwargs=self.pack_kwargs)

    def rows(self) -> Iterator[PackedRows]:
        """Packed rows in input order, written by the caller; ``stats`` is set once they are all out."""
        ctx = require_ray().data.DataContext.get_current()
        bars = ctx.enable_progress_bars
        ctx.enable_progress_bars = bars and self.progress is None  # a caller's progress bar replaces Ray's
        try:
            with _task_errors():
                yield from self._blocks()
        finally:
            ctx.enable_progress_bars = bars

    def _blocks(self) -> Iterator[PackedRows]:
        import pyarrow.compute as pc

        parts, row_offset, window_offset = [], 0, 0
        batches = (b for t in self.dataset().iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2)
                   for b in t.to_batches())  # one record batch per packed window: no copy on the driver  # fmt: skip
        for batch in batches:
            ends = np.flatnonzero(np.asarray(pc.equal(batch.column("_window"), _FOOTER).fill_null(False)))
            lo = 0
            for end in list(ends) + [batch.num_rows]:
                seg = batch.slice(lo, int(end) - lo)
                if seg.num_rows:
                    yield from self._emit(seg, row_offset, window_offset)
                if end == batch.num_rows:
                    break
                stats = json.loads(batch.column("_stats")[int(end)].as_py())
                if stats.get("error"):
                    raise ValueError(_global_rows(stats["error"], row_offset))
                parts.append(stats)
                row_offset += stats["block_rows"]
                window_offset += stats["windows"]
                self.blocks += 1
                if self.progress is not None:
                    self.progress(stats["rows_in"], stats["tokens_in"])
                lo = int(end) + 1
        self.stats = merge_stats(parts, self.max_tokens, self.algorithm)

    def _emit(self, seg, row_offset: int, window_offset: int) -> Iterator[PackedRows]:
        """Rows of one or more windows; with a seed each window's rows are shuffled like the local packer's."""
        if self.seed is None:
            yield _rows_of(seg, row_offset, self.has_labels)
            return
        import pyarrow as pa

        win = np.asarray(seg.column("_window"))
        cuts = np.flatnonzero(np.diff(win)) + 1
        for a, b in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [win.shape[0]]])):
            perm = np.random.default_rng([self.seed, window_offset + int(win[a])]).permutation(int(b - a))
            yield _rows_of(seg.slice(int(a), int(b - a)).take(pa.array(perm)), row_offset, self.has_labels)


def _global_rows(message: str, row_offset: int) -> str:
    """The packer names block-local rows ("input row 12"); the driver knows where the block starts."""
    return re.sub(r"input row (\d+)", lambda m: f"input row {int(m.group(1)) + row_offset}", message)
