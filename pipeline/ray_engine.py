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

``select``: the vectors are read, cut into blocks of ``ASSIGN_ROWS`` rows (the local
``KMeans.assign`` block, so faiss sees the same queries and returns the same bits) and given row
ids; the k-means sample (the same rows the local engine draws) is pulled to the driver and trained
there; the index is broadcast with ``ray.put`` and rows are assigned in ``map_batches``;
semantic dedup runs per cluster in ``groupby("cluster").map_groups`` with the local
``semantic_dedup`` on each cluster's rows in the local processing order, and prototype / balance
picks run there too with the local ``select_per_cluster`` and quotas computed on the driver.

Example (needs ``pip install 'packwise[ray]'``)::

    packwise pack data.parquet out/ --max-tokens 2048 --tokens-column input_ids --engine ray
    packwise select emb.parquet sel/ --method dedup --embeddings-column emb --engine ray --ray-address auto
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .pack_stage import PackedRows, PackStats, StreamPacker
from .readers import Located
from .tokens import _tokenize, token_batches

ENGINES: tuple[str, ...] = ("local", "ray")
ASSIGN_ROWS = 65_536  # rows per KMeans.assign block (its default batch_size): same blocks, same faiss bits
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
    elif inp.format == "json":
        ds = ray.data.read_json(files, lines=True, file_extensions=None)
    elif inp.format == "csv":
        ds = ray.data.read_csv(files, file_extensions=None)
    else:  # Arrow IPC (and save_to_disk folders): memory-mapped here, handed to the object store
        import pyarrow as pa

        tables = [pa.Table.from_batches([b.batch for b in inp.batches()])]
        ds = ray.data.from_arrow(tables)
    return ds.select_columns(columns) if columns is not None else ds


# --- pack: worker side --------------------------------------------------------------------------
def _tokenize_batch(table, *, tokenizer, text_column, tokens_column, labels_column, template, source):
    """Arrow batch in -> ``input_ids`` (list<int32>, [labels]) and ``length`` out; token columns pass through zero-copy."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if tokens_column is not None:
        cols = {"input_ids": table.column(tokens_column)}
        if labels_column is not None:
            cols["labels"] = table.column(labels_column)
    else:
        parts = [_tokenize(Located(b, source, 0, 0), tokenizer, text_column, template) for b in table.to_batches() if b.num_rows]
        ids = pa.chunked_array(parts, type=pa.list_(pa.int32())) if parts else pa.chunked_array([], pa.list_(pa.int32()))
        cols = {"input_ids": ids}
    cols["length"] = pc.fill_null(pc.list_value_length(cols["input_ids"]), 0).cast(pa.int32())
    return pa.table(cols)


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

    def __init__(self, inp, *, tokenizer, text_column, tokens_column, labels_column, template, max_tokens, algorithm,
                 oversize, window, seed, block_rows, progress: Callable[[int, int], None] | None = None):  # fmt: skip
        self.inp, self.max_tokens, self.algorithm, self.seed = inp, max_tokens, algorithm, seed
        self.block_rows, self.progress = int(block_rows), progress
        self.has_labels = labels_column is not None
        self.columns = ([tokens_column] + ([labels_column] if labels_column else [])) if tokens_column else [text_column]
        self.tok_kwargs = dict(tokenizer=tokenizer, text_column=text_column, tokens_column=tokens_column,
                               labels_column=labels_column, template=template, source=f"{inp.name} (a Ray block)")  # fmt: skip
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


# --- select --------------------------------------------------------------------------------------
def _add_row_ids(block, row0: int, column: str):
    """One block of the vector column -> ``row_id`` (global) and ``emb`` (fixed-size float32 lists, validated)."""
    import pyarrow as pa
    from ray.data.block import BlockAccessor

    from ..selection.embed import _vector_block

    table = BlockAccessor.for_block(block).to_arrow()
    x = _vector_block(table.column(column).combine_chunks(), column, row0, None)
    x = np.ascontiguousarray(x, np.float32)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    return pa.table({"row_id": np.arange(row0, row0 + x.shape[0], dtype=np.int64), "emb": emb})


def _matrix(table) -> np.ndarray:
    col = table.column("emb").combine_chunks()
    return np.asarray(col.values, np.float32).reshape(len(col), col.type.list_size)


_KM_CACHE: dict = {}


def _assign_block(table, *, km):
    """Nearest centroid of every row of one ``ASSIGN_ROWS`` block (the broadcast index, cached per worker)."""
    import ray

    from ..selection.cluster import KMeans

    key = km[0].hex()
    if key not in _KM_CACHE:
        centroids, spherical, factory, nprobe = ray.get(km[0])
        _KM_CACHE.clear()
        _KM_CACHE[key] = KMeans(centroids, spherical, factory, nprobe)
    labels, dist = _KM_CACHE[key].assign(_matrix(table), batch_size=ASSIGN_ROWS)
    return table.append_column("cluster", [labels]).append_column("distance", [dist])


def _take_rows(table, *, rows):
    import ray

    wanted = ray.get(rows[0])
    ids = np.asarray(table.column("row_id"))
    return table.filter(np.isin(ids, wanted))


def _dedup_group(table, *, eps, order, key, exact):
    """Semantic dedup of one cluster, in the local engine's processing order (key, then row id)."""
    import pyarrow as pa
    import ray

    from ..selection.dedup import semantic_dedup

    rid = np.asarray(table.column("row_id"))
    dist = np.asarray(table.column("distance"), np.float64)
    if order == "hard":
        k = -dist
    elif order == "easy":
        k = dist
    elif order == "random":
        k = ray.get(key[0])[rid]
    else:
        k = rid.astype(np.float64)
    pos = np.lexsort((rid, k))
    rid = rid[pos]
    m = rid.shape[0]
    is_exact = ray.get(exact[0])[rid] if exact[0] is not None else np.zeros(m, bool)
    res = semantic_dedup(_matrix(table.take(pa.array(pos))), labels=np.zeros(m, np.int64), eps=eps, order="index",
                         exact_of=np.where(is_exact, -1, np.arange(m)))  # fmt: skip

    def glob(a):
        return np.where(a >= 0, rid[np.maximum(a, 0)], -1)

    return pa.table({"row_id": rid, "rank": res.rank, "kept": res.kept[:, 0], "nearest": glob(res.nearest),
                     "similarity": res.similarity, "duplicate_of": glob(res.duplicate_of[:, 0]),
                     "duplicate_similarity": res.duplicate_similarity[:, 0]})  # fmt: skip


def _quota_group(table, *, quotas, within, key):
    """The first ``quotas[cluster]`` rows of one cluster in the local ``select_per_cluster`` order."""
    import pyarrow as pa
    import ray

    from ..selection.prototypes import select_per_cluster

    order = np.argsort(np.asarray(table.column("row_id")), kind="stable")
    rid = np.asarray(table.column("row_id"))[order]
    if key[0] is not None:  # 'random': the whole input's seeded draw, so the order is the local engine's
        within, d = "closest", ray.get(key[0])[rid]
    else:
        d = np.asarray(table.column("distance"), np.float64)[order]
    quota = ray.get(quotas[0])[int(table.column("cluster")[0].as_py())]
    picked = select_per_cluster(np.zeros(rid.shape[0], np.int64), np.array([quota], np.int64), within=within, distances=d)
    return pa.table({"row_id": rid[picked]})


class RaySelect:
    """Vectors of ``source`` on Ray, with global row ids, for k-means, assignment and per-cluster dedup."""

    def __init__(self, inp, column: str):
        ray = require_ray()
        with _task_errors():
            base = read_dataset(inp, [column]).repartition(target_num_rows_per_block=ASSIGN_ROWS, strict=True).materialize()
            add = ray.remote(_add_row_ids)
            refs, row = [], 0
            for bundle in base.iter_internal_ref_bundles():
                for ref, meta in zip(bundle.block_refs, bundle.metadata):
                    refs.append(add.remote(ref, row, column))
                    row += meta.num_rows
            if row == 0:
                raise ValueError(f"{inp.name}: the input has no rows")
            self.ds = ray.data.from_arrow_refs(refs)
        self.n = row
        self.assigned = None

    def cluster(self, k: int, *, seed: int, niter: int, max_points_per_centroid: int):
        """Train on the local engine's sample (pulled to the driver), assign every row on the workers."""
        import dataclasses

        import ray

        from ..selection.cluster import kmeans, sample_rows

        rows = sample_rows(self.n, k, max_points_per_centroid, seed) if k >= 1 and max_points_per_centroid >= 1 else None
        part = self.ds if rows is None else self.ds.map_batches(_take_rows, batch_format="pyarrow", fn_kwargs={"rows": [ray.put(rows)]})
        with _task_errors():
            got = part.to_arrow_refs()
            import pyarrow as pa

            table = pa.concat_tables(ray.get(got)).sort_by("row_id")
        sample = _matrix(table)
        km = kmeans(sample, k, spherical=True, seed=seed, niter=niter, max_points_per_centroid=max_points_per_centroid)
        km.report = dataclasses.replace(km.report, rows=self.n, sampled=rows is not None)
        ref = ray.put((km.centroids, km.spherical, km.index_factory, km.nprobe))
        with _task_errors():
            self.assigned = self.ds.map_batches(_assign_block, batch_format="pyarrow", batch_size=None, fn_kwargs={"km": [ref]}).materialize()
        labels = np.empty(self.n, np.int64)
        dist = np.empty(self.n, np.float32)
        for b in self.assigned.select_columns(["row_id", "cluster", "distance"]).iter_batches(batch_size=None, batch_format="numpy"):
            labels[b["row_id"]] = b["cluster"]
            dist[b["row_id"]] = b["distance"]
        return km, labels, dist

    def dedup(self, labels, dist, *, eps: float, order: str, hashes=None, seed: int = 0):
        """``semantic_dedup`` of the whole input, computed per cluster in ``groupby("cluster").map_groups``."""
        import ray

        from ..selection.dedup import ORDERS, DedupResult, _eps_tuple, exact_duplicates

        eps_t = _eps_tuple(eps)
        if order not in ORDERS:
            raise ValueError(f"order={order!r}: use one of {', '.join(ORDERS)}")
        n = self.n
        exact_of = exact_duplicates(hashes) if hashes is not None else np.arange(n, dtype=np.int64)
        is_exact = exact_of != np.arange(n)
        key = ray.put(np.random.default_rng(seed).random(n)) if order == "random" else None
        kwargs = {"eps": eps_t[0], "order": order, "key": [key], "exact": [ray.put(is_exact) if hashes is not None else None]}
        rank = np.empty(n, np.int64)
        nearest = np.full(n, -1, np.int64)
        similarity = np.full(n, np.nan, np.float32)
        kept = np.zeros((n, 1), np.bool_)
        dup_of = np.full((n, 1), -1, np.int64)
        dup_sim = np.full((n, 1), np.nan, np.float32)
        for b in self._per_cluster(_dedup_group, kwargs, int(labels.max()) + 1):
            r = b["row_id"]
            rank[r], nearest[r], similarity[r] = b["rank"], b["nearest"], b["similarity"]
            kept[r, 0], dup_of[r, 0], dup_sim[r, 0] = b["kept"], b["duplicate_of"], b["duplicate_similarity"]
        return DedupResult(eps_t, labels, rank, nearest, similarity, kept, dup_of, dup_sim, exact_of, order)

    def select_per_cluster(self, quotas: np.ndarray, *, within: str, seed: int = 0) -> np.ndarray:
        """``selection.select_per_cluster`` of the whole input (ascending row ids), one cluster per group.

        ``quotas`` come from the driver (``proportional_quotas`` / ``balanced_caps`` of the cluster
        sizes); each group keeps its first ``quotas[c]`` rows in the local order."""
        import ray

        key = ray.put(np.random.default_rng(seed).random(self.n)) if within == "random" else None
        kwargs = {"quotas": [ray.put(np.asarray(quotas, np.int64))], "within": within, "key": [key]}
        parts = [b["row_id"] for b in self._per_cluster(_quota_group, kwargs, int(np.asarray(quotas).shape[0]))]
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def _per_cluster(self, fn, kwargs: dict, k: int):
        """``groupby("cluster").map_groups(fn)`` over the assigned rows; yields numpy batches."""
        with _task_errors():
            parts = max(1, min(k, 200))  # one shuffle partition per cluster, at most Ray's default
            groups = self.assigned.groupby("cluster", num_partitions=parts).map_groups(fn, batch_format="pyarrow", fn_kwargs=kwargs)
            yield from groups.iter_batches(batch_size=None, batch_format="numpy")
