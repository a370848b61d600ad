"""The Ray Data engine: the same ``pack`` and ``select`` as the local engine, spread over a cluster.

Why a separate engine and not a rewrite: the algorithms stay the local ones (``token_batches``,
``StreamPacker``, ``ShardWriter``, ``kmeans`` / ``KMeans.assign``, ``semantic_dedup``); Ray only
decides where they run.

``pack``: ``ray.data.read_parquet`` / ``read_json`` / ``read_csv`` / ``from_arrow`` (a Hugging Face
``Dataset``'s Arrow table) / ``from_huggingface`` (a streaming ``IterableDataset``) ->
tokenize and measure lengths in ``map_batches`` on Arrow batches -> ``repartition`` into blocks of
exactly ``block_rows`` input rows (so the cut points depend on the input, never on the cluster) ->
one task per block (``_pack_write_block``) packs it with its own ``StreamPacker`` and writes its
own shards, ``shard-<block>-<k>.parquet``, through the local writer's ``_OpenShard`` (temporary
name, fsync, rename), then a small record of its stats and shards. The driver sees only block
references and records: ``RayShards`` (a ``ShardWriter``) commits the shard list and writes the
manifest last, so no packed row passes through it. A rerun keeps the blocks whose record and
shards are intact and redoes the rest; the packing is deterministic, so the result is the same
bytes. With ``tail_pass`` each block's last window's open rows go to a tail file and the driver
repacks them all together (``shard-tail-*``), so block ends cost no padding. Rows are numbered
globally on the workers, and ``--seed`` shuffles each window with the key ``(block << 32) | window``,
so with a single block the output is byte-identical to the local engine's.

``select`` runs in ``pipeline/ray_select.py`` on the session, input and error helpers here.

Example (needs ``pip install 'packwise[ray]'``)::

    packwise pack data.parquet out/ --max-tokens 2048 --tokens-column input_ids --engine ray
    packwise select emb.parquet sel/ --method dedup --embeddings-column emb --engine ray --ray-address auto
"""

from __future__ import annotations

import json
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Callable

import numpy as np

from ._arrow import list_array
from ._paths import inside, shown
from .pack_stage import PackedRows, PackStats, StreamPacker
from .readers import Located, check_json_lines
from .tokens import TextRows, Unlabeled, token_batches
from .writer import ShardWriter

ENGINES: tuple[str, ...] = ("local", "ray")
_INSTALL = "pip install 'packwise[ray]'"


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
        for f in inp.files:  # Arrow's parser, in Ray's reader too, crashes on too deep a row: packwise's scan first
            check_json_lines(f)
        ds = ray.data.read_json(files, lines=True, file_extensions=None)
    elif inp.format == "csv" and inp.csv_header is True:
        ds = ray.data.read_csv(files, file_extensions=None, parse_options=inp.csv_dialect.parse_options())
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
                ids.append(list_array(offsets, values))
                if lab is not None:
                    labels.append(list_array(offsets, lab))
        cols = {"input_ids": pa.chunked_array(ids, type=pa.list_(pa.int32()))}
        if tokenizer.has_labels:
            cols["labels"] = pa.chunked_array(labels, type=pa.list_(pa.int32()))
    cols["length"] = pc.fill_null(pc.list_value_length(cols["input_ids"]), 0).cast(pa.int32())
    return pa.table(cols)


BLOCKS = ".packwise-blocks"  # per-block records and tails of the run in progress (removed by the commit)


def block_shard_name(block: int, k: int) -> str:
    """The ``k``-th shard of pack block ``block``: fixed by the input and the settings, not by the cluster."""
    return f"shard-{block:06d}-{k:04d}.parquet"


def _record_path(output: Path, block: int) -> Path:
    return output / BLOCKS / f"block-{block:06d}.json"


def _tail_path(output: Path, block: int) -> Path:
    return output / BLOCKS / f"tail-{block:06d}.parquet"


class StoppedByDriver(RuntimeError):
    """A block task that saw its run's stop marker: the driver is unwinding, nothing more is written."""


def _check_stop(cfg: dict, block: int) -> None:
    """Raise once the driver has created this run's stop marker (see ``_stop_tasks``)."""
    if Path(cfg["stop"]).exists():
        raise StoppedByDriver(f"block {block}: the driver stopped the run")


def _stop_tasks(ray, pending: dict, marker: Path) -> None:
    """Stop the in-flight block tasks before the driver's error goes on: each looks for ``marker``
    before every file it writes, so this waits at most one shard write. Not ``ray.cancel(force=True)``:
    in Ray 2.60 a forced cancel that races a task's completion aborts the driver process."""
    if not pending:
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    ray.wait(list(pending), num_returns=len(pending))
    marker.unlink(missing_ok=True)  # left behind if a second Ctrl-C cut the wait: its tasks still stop


def _write_block_shards(output: Path, block: int, table, shard_rows: int, check=lambda: None) -> list[dict]:
    """A block's packed rows as shards of ``shard_rows`` rows in row groups of the local writer's
    size, each through its ``_OpenShard`` (hidden temporary file, fsync, rename): same bytes as local.
    ``check`` runs before each shard and raises to stop."""
    from .writer import _ROW_GROUP, _OpenShard

    entries = []
    for k, first in enumerate(range(0, table.num_rows, shard_rows)):
        check()
        part, shard = table.slice(first, shard_rows), _OpenShard(output / block_shard_name(block, k))
        for g in range(0, part.num_rows, _ROW_GROUP):
            group = part.slice(g, _ROW_GROUP)
            shard.count(group)
            shard.write(group)
        entries.append(shard.close())
    return entries


def _pack_write_block(table, block: int, row0: int, cfg: dict) -> dict:
    """On a worker: pack one block of tokenized input rows (global row numbers from ``row0``), write
    its shards, and with ``tail_pass`` its last window's open rows to a tail file; the block's
    record, written last, is what the driver commits and what a rerun trusts."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from .atomic import atomic_path
    from .writer import _table

    output, capacity, seed = Path(cfg["output"]), cfg["max_tokens"], cfg["seed"]
    _check_stop(cfg, block)
    packer = StreamPacker(capacity, cfg["algorithm"], cfg["oversize"], window=cfg["window"])
    located, first = [], row0
    for b in table.to_batches():
        located.append(Located(b, cfg["source"], first, first))
        first += b.num_rows
    windows = []  # (packed rows of one window, its number in the block)

    def keep(rows: PackedRows) -> None:
        windows.append((_table(rows, cfg["has_labels"]), packer.stats.windows - 1))

    unlabeled = Unlabeled(cfg["allow_unlabeled"])  # the local stage's check, naming the global input row
    for tb in token_batches(located, tokens_column="input_ids", labels_column="labels" if cfg["has_labels"] else None):
        unlabeled.check(tb)
        for rows in packer.add(tb):
            keep(rows)
    for rows in packer.finish():
        keep(rows)
    tail = None
    if cfg["tail_pass"] and windows:
        last, w = windows[-1]
        full = pc.equal(pc.list_value_length(last.column("input_ids")), capacity)
        tail, windows[-1] = last.filter(pc.invert(full)), (last.filter(full), w)
    if seed is not None:  # each window's rows shuffled like the local packer's; block 0's keys are local's
        windows = [(t.take(pa.array(np.random.default_rng([seed, (block << 32) | w]).permutation(t.num_rows))), w) for t, w in windows]
    tables = [t for t, _ in windows]
    shards = _write_block_shards(output, block, pa.concat_tables(tables) if tables else pa.table({}), cfg["shard_rows"],
                                 check=lambda: _check_stop(cfg, block))
    tail_info = None
    if tail is not None and tail.num_rows:
        tail_info = {"rows": tail.num_rows, "tokens": _list_total(tail, "input_ids"), "pieces": _list_total(tail, "seq_lens")}
        s = packer.stats
        s.rows_out, s.tokens_out, s.pieces_out = (s.rows_out - tail_info["rows"], s.tokens_out - tail_info["tokens"],
                                                  s.pieces_out - tail_info["pieces"])  # fmt: skip
        with atomic_path(_tail_path(output, block)) as tmp:
            import pyarrow.parquet as pq

            pq.write_table(tail, tmp)
    _check_stop(cfg, block)
    record = {"block": block, "row0": row0, "rows": table.num_rows, "stats": packer.stats.to_dict(), "shards": shards, "tail": tail_info,
              "unlabeled": unlabeled.count}  # fmt: skip
    with atomic_path(_record_path(output, block)) as tmp:
        tmp.write_text(json.dumps(record, sort_keys=True))
    return record


def _list_total(table, column: str) -> int:
    import pyarrow.compute as pc

    return int(pc.sum(pc.list_value_length(table.column(column))).as_py() or 0)


# --- pack: driver side --------------------------------------------------------------------------
def _valid_record(output: Path, path: Path) -> dict | None:
    """A block record whose shards (and tail) are all present with readable footers and the recorded
    rows and counts; ``None`` for anything else (the block is redone)."""
    import pyarrow.parquet as pq

    try:
        rec = json.loads(path.read_text())
        for i, s in enumerate(rec["shards"]):
            meta = pq.read_metadata(inside(output, s["file"], path, f"shards[{i}].file"))  # a record may not reach out
            info = json.loads(meta.metadata[b"packwise"].decode())
            if meta.num_rows != s["rows"] or info != {k: s[k] for k in ("rows", "tokens", "sequences")}:
                return None
        if rec["tail"] is not None and pq.read_metadata(_tail_path(output, rec["block"])).num_rows != rec["tail"]["rows"]:
            return None
        int(rec["unlabeled"])  # a record without the count (an older packwise's) is redone
        return rec
    except (OSError, ValueError, KeyError, TypeError):  # missing, truncated or foreign files
        return None


class RayShards(ShardWriter):
    """The driver's half of a Ray pack: the workers write the block shards, this commits them.

    Same folder contract as ``ShardWriter`` (settings check, run marker, ``--overwrite``, manifest
    last). A rerun with the same settings keeps every block whose record and shards are intact
    (``done``, by block id) and deletes what else an interrupted run left; the tail pass writes its
    rows through the inherited streaming writer as ``shard-tail-*.parquet``.
    """

    def _open(self, overwrite: bool) -> None:
        self.done: dict[int, dict] = {}
        self._block_shards = 0
        super()._open(overwrite)
        if self.state == "new":
            shutil.rmtree(self.output / BLOCKS, ignore_errors=True)

    def _resume(self) -> None:
        for path in sorted((self.output / BLOCKS).glob("block-*.json")):
            rec = _valid_record(self.output, path)
            if rec is not None:
                self.done[int(rec["block"])] = rec
        self.shards = [s for b in sorted(self.done) for s in self.done[b]["shards"]]
        named = {s["file"] for s in self.shards}
        for path in self.output.glob("shard-*.parquet"):  # shards of unfinished blocks and of the tail pass
            if path.name not in named:
                path.unlink()
        self.state = "resume" if self.done else "new"

    def _shard_name(self, k: int) -> str:
        return f"shard-tail-{k - self._block_shards:04d}.parquet"

    def commit_blocks(self, records: list[dict]) -> None:
        """Name the blocks' shards in block order (every block is done); the tail pass's shards follow."""
        self.shards = [s for rec in records for s in rec["shards"]]
        self._block_shards = len(self.shards)
        for tmp in self.output.glob(".shard-*.tmp"):  # left by workers that died mid-shard (their block was redone)
            tmp.unlink()

    def close(self, stats: dict) -> dict:
        manifest = super().close(stats)
        shutil.rmtree(self.output / BLOCKS, ignore_errors=True)
        return manifest


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
    """Pack on Ray: ``write(shards)`` runs every block on the workers and sets ``stats`` (merged ``PackStats``)."""

    def __init__(self, inp, *, tokenizer: TextRows | None, text, tokens_column, labels_column, max_tokens, algorithm,
                 oversize, window, seed, block_rows, tail_pass: bool = False,
                 progress: Callable[[int, int], None] | None = None, allow_unlabeled: bool = False,
                 also_read: tuple[str, ...] = ()):  # fmt: skip
        self.inp, self.max_tokens, self.algorithm, self.seed = inp, max_tokens, algorithm, seed
        self.oversize, self.window, self.tail_pass = oversize, window, bool(tail_pass)
        self.block_rows, self.progress = int(block_rows), progress
        self.has_labels = labels_column is not None or (tokens_column is None and tokenizer.has_labels)
        self.columns = ([tokens_column] + ([labels_column] if labels_column else [])) if tokens_column else text.read_columns
        if self.columns is not None and not tokens_column:  # a layout's other columns (a pair's responses)
            self.columns += [c for c in also_read if c not in self.columns]
        self.tok_kwargs = dict(tokenizer=tokenizer, tokens_column=tokens_column, labels_column=labels_column,
                               source=f"{shown(inp.name)} (a Ray block)")  # fmt: skip
        self.block_kwargs = dict(max_tokens=max_tokens, algorithm=algorithm, oversize=oversize, window=window, seed=seed,
                                 has_labels=self.has_labels, tail_pass=self.tail_pass, source=shown(inp.name),
                                 allow_unlabeled=bool(allow_unlabeled))  # fmt: skip
        self.stats: PackStats | None = None
        self.unlabeled = Unlabeled(allow_unlabeled)  # the blocks' all -100 sequences, counted as the local stage does
        self.blocks = self.skipped = 0

    def dataset(self):
        """The lazy Ray pipeline: read -> tokenize -> blocks of exactly ``block_rows`` input rows."""
        ds = read_dataset(self.inp, self.columns)
        ds = ds.map_batches(_tokenize_batch, batch_format="pyarrow", fn_kwargs=self.tok_kwargs)
        return ds.repartition(target_num_rows_per_block=self.block_rows, strict=True)

    def write(self, shards: RayShards) -> None:
        """Pack and write every block that ``shards`` does not hold yet, then (``tail_pass``) repack
        the blocks' open rows here; the caller's ``shards.close`` writes the manifest."""
        ctx = require_ray().data.DataContext.get_current()
        bars = ctx.enable_progress_bars
        ctx.enable_progress_bars = bars and self.progress is None  # a caller's progress bar replaces Ray's
        try:
            with _task_errors():
                records = self._blocks(shards)
        finally:
            ctx.enable_progress_bars = bars
        shards.commit_blocks(records)
        parts = [rec["stats"] for rec in records]
        self.unlabeled.labelled = self.has_labels
        self.unlabeled.count = sum(int(rec["unlabeled"]) for rec in records)
        if self.tail_pass:
            parts.append(self._tail(shards, records))
        self.stats = merge_stats(parts, self.max_tokens, self.algorithm)

    def _blocks(self, shards: RayShards) -> list[dict]:
        """Block records in input order: kept from ``shards.done`` or made by a task; at most two
        tasks per CPU in flight, so the object store holds a bounded number of blocks."""
        ray = require_ray()
        task = ray.remote(num_cpus=1)(_pack_write_block)
        stop = shards.output.resolve() / BLOCKS / f"stop-{uuid.uuid4().hex}"  # this run's, never a stale one
        cfg = {**self.block_kwargs, "output": str(shards.output.resolve()), "shard_rows": shards.shard_rows, "stop": str(stop)}
        limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        records: dict[int, dict] = {}
        pending: dict = {}  # task ref -> block id

        def collect(wait_all: bool) -> None:
            while pending and (wait_all or len(pending) >= limit):
                done, _ = ray.wait(list(pending), num_returns=1)
                b = pending.pop(done[0])
                try:
                    records[b] = self._count(ray.get(done[0]))
                except Exception as err:  # report the first bad block in input order, as the local engine would
                    for ref, earlier in sorted(((r, e) for r, e in pending.items() if e < b), key=lambda x: x[1]):
                        del pending[ref]
                        try:
                            ray.get(ref)
                        except Exception as first:
                            raise first from None
                    raise err

        block = row = 0
        try:
            for bundle in self.dataset().iter_internal_ref_bundles():
                for ref, meta in zip(bundle.block_refs, bundle.metadata):
                    rec = shards.done.get(block)
                    if rec is not None and rec["row0"] == row and rec["rows"] == meta.num_rows:
                        records[block] = self._count(rec)
                        self.skipped += 1
                    else:
                        pending[task.remote(ref, block, row, cfg)] = block
                    collect(wait_all=False)
                    block, row = block + 1, row + meta.num_rows
            collect(wait_all=True)
        except BaseException:  # no task may go on writing behind the caller
            _stop_tasks(ray, pending, stop)
            raise
        return [records[b] for b in range(block)]

    def _count(self, rec: dict) -> dict:
        self.blocks += 1
        if self.progress is not None:
            self.progress(rec["stats"]["rows_in"], rec["stats"]["tokens_in"])
        return rec

    def _tail(self, shards: RayShards, records: list[dict]) -> dict:
        """Repack every block's open rows together (in block order, the same windowed packer and
        seed as a local run) and write them through ``shards``; returns the output-side stats."""
        import pyarrow.parquet as pq

        from .tokens import TokenBatch

        tails = [rec for rec in records if rec["tail"]]
        total = sum(rec["tail"]["pieces"] for rec in tails)
        src, start = np.empty(total, np.int64), np.empty(total, np.int64)  # tail piece -> input row, first token
        packer = StreamPacker(self.max_tokens, self.algorithm, self.oversize, window=self.window, seed=self.seed)
        n = 0

        def put(rows: PackedRows) -> None:
            ids = rows.source_index
            shards.write(PackedRows(rows.token_offsets, rows.tokens, rows.labels, rows.seq_offsets, rows.seq_lens,
                                    src[ids], start[ids] + rows.source_start))  # fmt: skip

        for rec in tails:
            t = pq.read_table(_tail_path(shards.output, rec["block"]))
            lens, tokens = _csr(t, "seq_lens")[1], _csr(t, "input_ids")[1]
            m = lens.shape[0]
            src[n : n + m], start[n : n + m] = _csr(t, "source_index")[1], _csr(t, "source_start")[1]
            offsets = np.zeros(m + 1, np.int64)
            np.cumsum(lens, out=offsets[1:])
            labels = _csr(t, "labels")[1] if self.has_labels else None
            for rows in packer.add(TokenBatch(offsets, tokens, np.arange(n, n + m, dtype=np.int64), labels)):
                put(rows)
            n += m
        for rows in packer.finish():
            put(rows)
        s = packer.stats
        return PackStats(self.max_tokens, self.algorithm, rows_out=s.rows_out, tokens_out=s.tokens_out,
                         pieces_out=s.pieces_out, windows=s.windows).to_dict()  # fmt: skip


def _csr(table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (offsets from 0, values), zero-copy."""
    col = table.column(name).combine_chunks()
    off = np.asarray(col.offsets, np.int64)
    return off - off[0], np.asarray(col.values)[off[0] : off[-1]]
