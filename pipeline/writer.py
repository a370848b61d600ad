"""Atomic, resumable Parquet shard writer with a manifest written last.

Layout of an output folder::

    shard-00000.parquet ...   packed rows: input_ids, [labels], seq_lens, source_index, source_start, [source]
    .packwise-run.json        settings + input fingerprint of the run in progress (removed at the end)
    manifest.json             written last: fingerprint, settings, shards, statistics

Each shard is written under a temporary name and renamed, so a shard file under its final name is
complete.  Rows are encoded into the open shard one Parquet row group at a time on one background
thread (pyarrow releases the GIL while it encodes), so encoding overlaps reading and packing; the
thread works in submission order with a bounded backlog, and the manifest waits for the last
shard.  A rerun with the same settings skips the rows of the complete shards (the packing is
deterministic, so the rows it replays are the same) and writes the rest; other settings are
refused unless ``overwrite=True`` (a run that stopped before its first shard kept nothing, so it
may be retried with any settings).  ``overwrite`` removes only what the previous manifest lists
(or, for a stopped run, the shards carrying packwise's footer) and packwise's temporaries; a file
packwise did not write that is in the way is named in the error and left alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ._arrow import list_array
from ._paths import inside, refuse_stray, shown
from .atomic import atomic_path, os_error_message, publish, temp_beside
from .pack_stage import PackedRows

MANIFEST = "manifest.json"
RUN_MARKER = ".packwise-run.json"
FORMAT = "packwise.packed/1"
_ROW_GROUP = 1024
_BACKLOG = 8  # row groups queued for the encoder at most (bounded memory)
_NO_STATISTICS = ("input_ids", "labels")  # min/max of token ids serve no reader and cost ~15% of the encoding


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.parquet"


TRAINED_TOKENIZER = "tokenizer.json"  # what --train-tokenizer saves beside the shards


def _owned_files(output: Path, previous: dict) -> set[Path]:
    """What ``--overwrite`` may remove: the files the previous run's manifest lists (for a run that
    stopped, its marker and the shards carrying packwise's footer), and packwise's own temporaries.
    Nothing else in the folder was written by packwise, so nothing else is ever deleted."""
    if "shards" in previous:
        names = {s.get("file") for s in previous["shards"] if isinstance(s, dict)} | {MANIFEST}
    else:
        names = {p.name for p in output.glob("shard-*.parquet") if _packwise_shard(p)}
    if str((previous.get("settings") or {}).get("tokenizer") or "").startswith("object#"):  # trained, so saved here
        names.add(TRAINED_TOKENIZER)
    owned = {output / n for n in names | {RUN_MARKER} if isinstance(n, str) and n == Path(n).name and n not in ("", ".", "..")}
    owned |= {p for n in ("shard-*", MANIFEST, RUN_MARKER, TRAINED_TOKENIZER) for p in output.glob(f".{n}.*.tmp")}
    return {p for p in owned if p.is_symlink() or p.is_file()}


def _packwise_shard(path: Path, key: bytes = b"packwise") -> bool:
    """Whether ``path`` is a shard packwise published (its footer carries packwise's ``key``:
    ``packwise`` for pack's shards, ``packwise.select`` for select's)."""
    import pyarrow.parquet as pq

    try:
        return key in (pq.read_metadata(path).metadata or {})
    except Exception:
        return False


def _read_manifest(path: Path) -> dict:
    """The previous run's manifest; a ``manifest.json`` packwise did not write is in the way."""
    try:
        data = json.loads(path.read_text()) if path.is_file() and not path.is_symlink() else None
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or not str(data.get("format", "")).startswith("packwise.packed/"):
        raise ValueError(
            f"output: {path} is in the way: it is not a packwise manifest, so packwise did not write it and leaves it "
            f"alone; move it away or choose another output folder"
        )
    return data


def _shard_entry(path: Path, info: dict) -> dict:
    """A shard's manifest entry: its counts, byte size (the cheap up-to-date check) and sha256."""
    return {"file": path.name, **info, "bytes": path.stat().st_size, "sha256": sha256_of(path)}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def first_stale_shard(output: Path, manifest: dict) -> int | None:
    """Index of the first shard listed in ``manifest`` that is missing or not its recorded size
    (``None``: all present).  A cheap check (no hashing); ``packwise verify`` checks the content."""
    for k, entry in enumerate(manifest.get("shards", [])):
        path = output / entry["file"]
        if not path.is_file() or ("bytes" in entry and path.stat().st_size != entry["bytes"]):
            return k
    return None


class ShardWriter:
    """Write ``PackedRows`` into shards of ``shard_rows`` rows under ``output``.

    ``state`` after construction: ``"new"``, ``"resume"`` (``skip_rows`` rows already in complete
    shards) or ``"complete"`` (a manifest with the same settings exists: nothing to do).

    Example:
        >>> import tempfile, numpy as np
        >>> from packwise.pipeline.pack_stage import PackedRows
        >>> from packwise.pipeline.writer import ShardWriter
        >>> out = tempfile.mkdtemp()
        >>> w = ShardWriter(out, settings={"max_tokens": 4}, fingerprint="f", shard_rows=2)
        >>> rows = PackedRows(np.array([0, 3, 4]), np.arange(4, dtype=np.int32), None, np.array([0, 2, 3]),
        ...                   np.array([2, 1, 1], np.int32), np.array([0, 1, 2]), np.zeros(3, np.int64))
        >>> w.write(rows)
        >>> [s["file"] for s in w.close({"rows_out": 2})["shards"]]
        ['shard-00000.parquet']
    """

    def __init__(
        self,
        output,
        *,
        settings: dict,
        fingerprint: str,
        shard_rows: int = 8192,
        overwrite: bool = False,
        also_writes: tuple[str, ...] = (),
    ):
        if isinstance(shard_rows, bool) or not isinstance(shard_rows, (int, np.integer)) or shard_rows < 1:
            raise ValueError(f"shard_rows must be an integer >= 1, got {shard_rows!r}")
        self.output = Path(output)
        if self.output.exists() and not self.output.is_dir():
            raise ValueError(f"output: {self.output} is a file; pass a folder path for the shards")
        self.settings, self.fingerprint, self.shard_rows = settings, fingerprint, int(shard_rows)
        self.run = {"format": FORMAT, "fingerprint": fingerprint, "settings": settings}
        self.shards: list[dict] = []
        self.skip_rows = 0
        self.state = "new"
        self._rows_seen = 0
        self._buffer: list = []  # Arrow tables of rows not yet sent to the encoder
        self._buffered = 0
        self._shard: _OpenShard | None = None
        self._opened: list[_OpenShard] = []  # shards of this run not yet known to be published
        self._encoder = _Encoder()
        self._has_labels: bool | None = None
        self.also_writes = tuple(also_writes)  # other files the run writes here (tokenizer.json): never over one not ours
        self.output.mkdir(parents=True, exist_ok=True)
        self._open(overwrite)

    def _open(self, overwrite: bool) -> None:
        manifest, marker = self.output / MANIFEST, self.output / RUN_MARKER
        previous = None
        if os.path.lexists(manifest):
            previous = _read_manifest(manifest)
        elif marker.is_file() and any(self.output.glob("shard-*.parquet")):
            previous = json.loads(marker.read_text())
        elif marker.is_file():  # a run that stopped before its first shard: nothing to keep, any settings may retry
            marker.unlink()
        same = previous is not None and all(previous.get(k) == v for k, v in self.run.items())
        if previous is None:
            refuse_stray(self.output, set(), (MANIFEST, *self.also_writes))
        elif overwrite or not same:
            if not overwrite:
                raise ValueError(
                    f"output: {self.output} holds packwise output made with other settings or inputs "
                    f"({self._difference(previous)}); pass --overwrite to replace it, or choose another output folder"
                )
            owned = _owned_files(self.output, previous)
            refuse_stray(self.output, owned, (MANIFEST, *self.also_writes))  # before anything is removed
            for path in owned:
                path.unlink(missing_ok=True)
            previous = None
        for tmp in list(self.output.glob(".shard-*.tmp")):  # left by a killed run (the lock says none runs now)
            tmp.unlink()
        if previous is not None and manifest.is_file():
            stale = first_stale_shard(self.output, previous)
            if stale is None:
                self.state = "complete"
                self.manifest = previous
                return
            self._reopen(previous, stale)
        if previous is not None:
            self._resume()
        self._write_marker()

    def _reopen(self, manifest: dict, stale: int) -> None:
        """Turn a complete output whose shard ``stale`` is missing or resized back into a run in
        progress: the marker first (a kill leaves a resumable run), then drop the manifest and the
        listed shards from ``stale`` on (files this writer wrote; the rerun writes them again)."""
        self._write_marker()
        (self.output / MANIFEST).unlink()
        for entry in manifest["shards"][stale:]:
            name = str(entry["file"])
            if name.startswith("shard-") and name.endswith(".parquet") and Path(name).name == name:  # never outside output
                (self.output / name).unlink(missing_ok=True)

    def _write_marker(self) -> None:
        marker = self.output / RUN_MARKER
        try:
            with atomic_path(marker) as tmp:
                tmp.write_text(json.dumps(self.run, indent=2, sort_keys=True))
        except OSError as err:
            raise os_error_message(err, marker) from None

    def _difference(self, previous: dict) -> str:
        if previous.get("fingerprint") != self.fingerprint and "fingerprint" in previous:
            return "the input files changed"
        old = previous.get("settings")
        if not isinstance(old, dict):
            return f"settings {old}"
        diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in self.settings.items() if old.get(k) != v]
        return ", ".join(diff) or "format"

    def _resume(self) -> None:
        import pyarrow.parquet as pq

        k = 0
        while (self.output / shard_name(k)).is_file():
            path = self.output / shard_name(k)
            try:
                info = json.loads(pq.read_metadata(path).metadata[b"packwise"].decode())
            except Exception as err:  # not written by this writer (it never publishes a partial shard)
                raise ValueError(
                    f"output: {path} is not a complete packwise shard ({err}); delete it (a rerun writes it again) or pass --overwrite"
                ) from None
            if info["rows"] != self.shard_rows and (self.output / shard_name(k + 1)).is_file():
                raise ValueError(f"output: {path} has {info['rows']} rows, not {self.shard_rows}; pass --overwrite")
            self.shards.append(_shard_entry(path, info))
            k += 1
        stray = sorted(p.name for p in self.output.glob("shard-*.parquet") if p.name not in {s["file"] for s in self.shards})
        if stray:
            raise ValueError(f"output: {self.output} has {stray[0]} after a missing shard; pass --overwrite")
        self.skip_rows = sum(s["rows"] for s in self.shards)
        self.state = "resume" if self.shards else "new"

    # --- writing --------------------------------------------------------------------------------
    def write(self, rows: PackedRows) -> None:
        """Buffer ``rows``; write every full shard (rows already in complete shards are skipped)."""
        if self._has_labels is None:
            self._has_labels = rows.labels is not None
        self.write_table(_table(rows, self._has_labels))  # zero-copy views of the NumPy arrays

    def skip_done(self) -> int:
        """For a caller that does not produce the rows already in complete shards again: count them
        as written and return how many they are (the input rows to skip)."""
        self._rows_seen = max(self._rows_seen, self.skip_rows)
        return self.skip_rows

    def write_table(self, table) -> None:
        """Buffer an Arrow table of output rows as they are (``packwise score``: input rows plus
        score columns; a ``tokens`` column, when present, is what the manifest counts as tokens)."""
        if self.state == "complete":
            raise ValueError("output is complete already; nothing to write")
        start = self._rows_seen
        self._rows_seen += table.num_rows
        if self._rows_seen <= self.skip_rows:
            return
        if start < self.skip_rows:
            table = table.slice(self.skip_rows - start)
        self._buffer.append(table)
        self._buffered += table.num_rows
        self._send(final=False)

    def _send(self, final: bool) -> None:
        """Hand row groups to the encoder: full ones, and with ``final`` the remainder too."""
        import pyarrow as pa

        while self._buffered:
            room = self.shard_rows - (self._shard.rows if self._shard else 0)
            take = min(_ROW_GROUP, room, self._buffered)
            if take < min(_ROW_GROUP, room) and not final:
                return
            merged = pa.concat_tables(self._buffer)
            group, rest = merged.slice(0, take), merged.slice(take)
            self._buffer, self._buffered = ([rest] if rest.num_rows else []), rest.num_rows
            if self._shard is None:
                self._shard = _OpenShard(self.output / self._shard_name(len(self.shards) + self._encoder.shards_queued))
                self._opened = [s for s in self._opened if not s.published] + [self._shard]
            self._shard.count(group)
            self._encoder.submit(self._shard.write, group)
            if self._shard.rows == self.shard_rows:
                self._end_shard()

    def _shard_name(self, k: int) -> str:
        """File name of the ``k``-th shard this writer writes (the Ray engine names its own)."""
        return shard_name(k)

    def _end_shard(self) -> None:
        self._encoder.submit(self._shard.close, shard=True)
        self._shard = None
        self.shards += self._encoder.finished()

    def wait(self) -> None:
        """Block until every queued row group is on disk (re-raising an encoding error); call it
        before giving up on a run so no write is left running behind the caller."""
        self.shards += self._encoder.finished(wait=True)

    def abort(self) -> None:
        """Give up on the run after an error: let queued writes finish or fail, publish nothing
        more, and remove the open shard's temporary file (complete shards stay for the rerun)."""
        self._encoder.abort()
        for shard in self._opened:
            shard.discard()
        self._opened, self._shard = [], None

    def close(self, stats: dict, extra: dict | None = None) -> dict:
        """Write the last shard, then ``manifest.json`` (with ``extra``'s keys, e.g. a mix's
        ``sources``); return the manifest."""
        if self.state == "complete":
            return self.manifest
        self._send(final=True)
        if self._shard is not None:
            self._end_shard()
        self.wait()
        manifest = {**self.run, "shard_rows": self.shard_rows, "shards": self.shards, "stats": stats, **(extra or {})}
        try:
            with atomic_path(self.output / MANIFEST) as tmp:
                tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        except OSError as err:
            raise os_error_message(err, self.output / MANIFEST, "rerun (the complete shards are kept)") from None
        os.unlink(self.output / RUN_MARKER)
        self.state = "complete"
        self.manifest = manifest
        return manifest


class _OpenShard:
    """A shard being written: a hidden temporary file until ``close`` renames it.

    ``count`` runs on the caller's thread; ``write`` and ``close`` only on the encoder thread."""

    def __init__(self, path: Path):
        self.path, self.rows, self.tokens, self.sequences = path, 0, 0, 0
        self.published = False
        self._tmp: Path | None = None
        self._writer = None

    def count(self, group) -> None:
        import pyarrow.compute as pc

        self.rows += group.num_rows
        if "seq_lens" not in group.schema.names:  # score rows: one sequence per row with tokens
            tokens = group.column("tokens")
            self.tokens += int(pc.sum(tokens).as_py() or 0)
            self.sequences += int(pc.sum(pc.greater(tokens, 0).cast("int64")).as_py() or 0)
            return
        self.tokens += int(pc.sum(pc.list_value_length(group.column("input_ids"))).as_py() or 0)
        self.sequences += int(pc.sum(pc.list_value_length(group.column("seq_lens"))).as_py() or 0)

    def write(self, group) -> None:
        import pyarrow.parquet as pq

        try:
            if self._writer is None:
                self._tmp = temp_beside(self.path)
                stats = [_statistics_path(f) for f in group.schema if f.name not in _NO_STATISTICS]
                self._writer = pq.ParquetWriter(self._tmp, group.schema, compression="zstd", use_dictionary=False, write_statistics=stats)
            self._writer.write_table(group, row_group_size=_ROW_GROUP)
        except OSError as err:
            self.discard()
            raise os_error_message(err, self.path, "rerun (it resumes after the complete shards)") from None

    def close(self) -> dict:
        """Write the footer and publish; a shard whose footer cannot be written is never published."""
        info = {"rows": self.rows, "tokens": self.tokens, "sequences": self.sequences}
        try:
            self._writer.add_key_value_metadata({"packwise": json.dumps(info, sort_keys=True)})
            self._writer.close()
            self._writer = None
            publish(self._tmp, self.path)
            self._tmp, self.published = None, True
        except OSError as err:
            self.discard()
            raise os_error_message(err, self.path, "rerun (it resumes after the complete shards)") from None
        return _shard_entry(self.path, info)

    def discard(self) -> None:
        """Drop the temporary file (after an error); the final name is never touched."""
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:
                pass  # the same error again: the file goes anyway
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)


def _statistics_path(field) -> str:
    """The Parquet column path of ``field`` whose min/max are kept (a list column's elements)."""
    import pyarrow as pa

    return f"{field.name}.list.element" if pa.types.is_list(field.type) or pa.types.is_large_list(field.type) else field.name


class _Encoder:
    """One background thread running jobs in submission order, with at most ``_BACKLOG`` queued."""

    def __init__(self):
        self._pool: ThreadPoolExecutor | None = None
        self._failed: BaseException | None = None  # after one job fails the rest are skipped
        self._jobs: deque[tuple[Future, bool]] = deque()
        self._closed: list[dict] = []  # entries of shards closed on disk, not yet collected
        self.shards_queued = 0  # shard closes submitted and not yet collected

    def submit(self, fn, *args, shard: bool = False) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="packwise-shard-encoder")
        while len(self._jobs) >= _BACKLOG:
            self._collect_oldest()
        self._jobs.append((self._pool.submit(self._run, fn, *args), shard))
        self.shards_queued += shard

    def _run(self, fn, *args):
        """Run one job unless an earlier one failed: a shard whose row group was not written must
        not be closed and published by the job queued after it."""
        if self._failed is not None:
            raise self._failed
        try:
            return fn(*args)
        except BaseException as err:
            self._failed = err
            raise

    def _collect_oldest(self) -> None:
        future, shard = self._jobs.popleft()
        result = future.result()  # re-raises the job's error here, on the caller's thread
        if shard:
            self._closed.append(result)

    def finished(self, wait: bool = False) -> list[dict]:
        """Entries of the shards closed so far, in order (every queued one with ``wait``)."""
        while self._jobs and (wait or self._jobs[0][0].done()):
            self._collect_oldest()
        done, self._closed = self._closed, []
        self.shards_queued -= len(done)
        if wait and self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        return done

    def abort(self) -> None:
        """Let the queued jobs finish (or be skipped after a failure), drop their errors, end the thread."""
        for future, _ in self._jobs:
            future.exception()
        self._jobs.clear()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def _table(rows: PackedRows, has_labels: bool):
    """The rows as an Arrow table (list<int32> token columns); offsets must fit int32, so a batch of
    rows holding 2**31 tokens or more is cut into several record batches."""
    import pyarrow as pa

    limit = 2**31 - 1
    if int(rows.token_offsets[-1]) > limit:
        cut = int(np.searchsorted(rows.token_offsets, limit, side="right")) - 1
        return pa.concat_tables([_table(_slice(rows, 0, cut), has_labels), _table(_slice(rows, cut, rows.num_rows), has_labels)])

    columns = {"input_ids": list_array(rows.token_offsets, rows.tokens, pa.int32())}
    if has_labels:
        columns["labels"] = list_array(rows.token_offsets, rows.labels, pa.int32())
    columns["seq_lens"] = list_array(rows.seq_offsets, rows.seq_lens, pa.int32())
    columns["source_index"] = list_array(rows.seq_offsets, rows.source_index, pa.int64())
    columns["source_start"] = list_array(rows.seq_offsets, rows.source_start.astype(np.int32), pa.int32())
    if rows.sequence_label is not None:  # KTO: one boolean per sequence, parallel to seq_lens
        columns["label"] = pa.ListArray.from_arrays(pa.array(rows.seq_offsets.astype(np.int32)), pa.array(rows.sequence_label, pa.bool_()))
    if rows.source is not None:  # a mixed pack: each sequence's source id (names in the manifest's "sources")
        columns["source"] = list_array(rows.seq_offsets, rows.source.astype(np.int32, copy=False), pa.int32())
    return pa.table(columns)


def _slice(rows: PackedRows, a: int, b: int) -> PackedRows:
    t0, t1 = int(rows.token_offsets[a]), int(rows.token_offsets[b])
    s0, s1 = int(rows.seq_offsets[a]), int(rows.seq_offsets[b])
    return PackedRows(
        rows.token_offsets[a : b + 1] - t0,
        rows.tokens[t0:t1],
        None if rows.labels is None else rows.labels[t0:t1],
        rows.seq_offsets[a : b + 1] - s0,
        rows.seq_lens[s0:s1],
        rows.source_index[s0:s1],
        rows.source_start[s0:s1],
        None if rows.sequence_label is None else rows.sequence_label[s0:s1],
        None if rows.source is None else rows.source[s0:s1],
    )


def read_manifest(output) -> dict:
    """The manifest of a finished pack in ``output``; a ``ValueError`` naming the fix otherwise."""
    path = Path(output) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{output}: no {MANIFEST}; not a finished packwise pack output (run packwise pack to the end)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable ({err}); rerun packwise pack with --overwrite") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("shards"), list):
        raise ValueError(f"{path}: not a packwise manifest (format {FORMAT}); pass the folder packwise pack wrote")
    return manifest


def verify_shards(output) -> list[str]:
    """Recompute every listed shard's sha256; return one line per missing or changed shard."""
    output = Path(output)
    bad = []
    for entry in read_manifest(output)["shards"]:
        path = output / entry["file"]
        if not path.is_file():
            bad.append(f"{path}: missing")
        elif sha256_of(path) != entry.get("sha256"):
            bad.append(f"{path}: content differs from the sha256 in {MANIFEST}")
    return bad


def read_shard(path: Path, read):
    """``read(path)``, with a missing or corrupt shard reported by name and with the fix."""
    import pyarrow as pa

    try:
        return read(path)
    except (OSError, pa.ArrowException) as err:
        what = "is missing" if not path.is_file() else f"is corrupt ({' '.join(str(err).split())})"
        raise ValueError(
            f"packed dataset: shard {shown(path)} {what}; run packwise verify {shown(path.parent)} to list every bad shard, "
            "then delete them and rerun packwise pack with the same arguments"
        ) from None


def shard_files(root: Path, manifest: dict) -> list[Path]:
    """The manifest's shard files, each checked to lie inside ``root`` (the manifest is a file anyone may edit)."""
    listed_in = root / MANIFEST
    return [inside(root, s.get("file"), listed_in, f"shards[{i}].file") for i, s in enumerate(manifest["shards"])]


def source_names(manifest: dict) -> list[str] | None:
    """The names of a mixed pack's sources, indexed by the shards' ``source`` ids (``None``: one input)."""
    sources = manifest.get("sources")
    return None if not isinstance(sources, list) else [str(s.get("name")) for s in sources]
