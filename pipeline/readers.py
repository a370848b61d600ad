"""Streaming readers: any supported input becomes an iterator of ``pyarrow.RecordBatch``.

Nothing here reads a whole dataset: Parquet is read batch by batch with the columns pushed down,
JSON Lines and CSV through pyarrow's incremental block readers, Arrow IPC files memory-mapped, and
Hugging Face datasets through ``.iter(batch_size)``.  Every batch knows where it came from, so a
later stage can name the file and row of a bad value.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from ._prefetch import prefetched

FORMATS: tuple[str, ...] = ("parquet", "json", "csv", "arrow")
_SUFFIXES = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
    ".csv": "csv",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
}
_BLOCK_BYTES = 8 << 20
_MAX_BLOCK_BYTES = 1 << 30  # pyarrow's block size is an int32; a row needs to fit one block


@dataclass(frozen=True)
class Located:
    """One record batch and where it starts: ``source`` (a file or dataset name) and ``first_row``
    (its first row's index inside that source) and ``row`` (its first row's index in the whole input)."""

    batch: Any
    source: str
    first_row: int
    row: int


def read(source, columns: Sequence[str] | None = None, *, batch_size: int = 8192, format: str | None = None):
    """Stream ``source`` as ``pyarrow.RecordBatch`` objects holding only ``columns``.

    ``source`` is a Parquet / JSON Lines / CSV / Arrow IPC (Feather) file, a folder or glob of
    them, a folder written by ``datasets.Dataset.save_to_disk``, or a Hugging Face ``Dataset`` /
    ``IterableDataset`` (``load_dataset(..., streaming=True)`` included).

    Example:
        >>> import tempfile, pyarrow as pa, pyarrow.parquet as pq
        >>> from packwise.pipeline import read
        >>> path = tempfile.mkdtemp() + "/t.parquet"
        >>> pq.write_table(pa.table({"text": ["a", "b", "c"], "n": [1, 2, 3]}), path)
        >>> [b.to_pydict() for b in read(path, columns=["text"], batch_size=2)]
        [{'text': ['a', 'b']}, {'text': ['c']}]
    """
    for located in open_input(source, columns, batch_size=batch_size, format=format).batches():
        yield located.batch


def open_input(source, columns: Sequence[str] | None = None, *, batch_size: int = 8192, format: str | None = None):
    """Resolve ``source`` once (files, format, row count, fingerprint) without reading its rows."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 row, got {batch_size}")
    columns = None if columns is None else list(dict.fromkeys(columns))
    if _is_hf_dataset(source):
        return _HFInput(source, columns, batch_size)
    return _FileInput(source, columns, batch_size, format)


def _is_hf_dataset(source) -> bool:
    mod = type(source).__module__
    return mod.startswith("datasets.") and type(source).__name__ in ("Dataset", "IterableDataset")


def _missing(columns, have, where: str) -> None:
    if columns is None:
        return
    gone = [c for c in columns if c not in have]
    if gone:
        raise ValueError(
            f"{where}: column {gone[0]!r} not found (columns: {list(have)}); "
            f"pass the name of an existing column"
        )


class _FileInput:
    def __init__(self, source, columns, batch_size, format):
        self.columns, self.batch_size = columns, batch_size
        self.name = str(source)
        self.files, self.format = _resolve_files(source, format)
        self._hf_fingerprint = _saved_dataset_fingerprint(source)

    @property
    def num_rows(self) -> int | None:
        """Rows in the input when the format says so cheaply (Parquet, Arrow files), else ``None``."""
        if self.format != "parquet":
            return None
        import pyarrow.parquet as pq

        try:
            return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)
        except Exception:
            return None

    def fingerprint(self) -> str:
        """Names, sizes and modification times of the input files (cheap; no content read)."""
        h = hashlib.sha256(self.format.encode())
        if self._hf_fingerprint:
            h.update(self._hf_fingerprint.encode())
        for f in self.files:
            st = f.stat()
            h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def batches(self) -> Iterator[Located]:
        """The input's record batches in order, decoded one or two ahead on a background thread."""
        return prefetched(self._batches())

    def _batches(self) -> Iterator[Located]:
        row = 0
        for path in self.files:
            first = 0
            for batch in _guard(_FILE_READERS[self.format](path, self.columns, self.batch_size), path, self.format):
                if batch.num_rows == 0:
                    continue
                yield Located(batch, str(path), first, row)
                first += batch.num_rows
                row += batch.num_rows


def _guard(batches: Iterator, path: Path, format: str) -> Iterator:
    """Re-raise pyarrow's errors as ``ValueError`` naming the file and the fix."""
    import pyarrow as pa

    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except ValueError as err:
            if type(err) is ValueError:
                raise
            raise ValueError(f"{path}: cannot read it as {format} ({err}); check the file is complete and valid") from None
        except (pa.ArrowException, OSError) as err:
            raise ValueError(f"{path}: cannot read it as {format} ({err}); check the file is complete and valid") from None
        yield batch


def _resolve_files(source, format: str | None) -> tuple[list[Path], str]:
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    text = str(source)
    path = Path(text)
    if path.is_dir():
        state = path / "state.json"
        if state.is_file():  # datasets.Dataset.save_to_disk
            names = [d["filename"] for d in json.loads(state.read_text())["_data_files"]]
            return [path / n for n in names], "arrow"
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _SUFFIXES and not p.name.startswith("."))
        where = f"folder {path}"
    elif any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in _glob.glob(text, recursive=True) if Path(p).is_file())
        where = f"glob {text!r}"
    elif path.is_file():
        files = [path]
        where = str(path)
    else:
        raise ValueError(f"input: no file or folder at {text}; pass an existing path, folder or glob")
    if not files:
        raise ValueError(f"input: {where} holds no data files ({', '.join(sorted(_SUFFIXES))}); empty input")
    if format is None:
        kinds = {_SUFFIXES.get(p.suffix.lower()) for p in files}
        if None in kinds:
            bad = next(p for p in files if p.suffix.lower() not in _SUFFIXES)
            raise ValueError(f"{bad}: unknown file type {bad.suffix!r}; pass --format one of {FORMATS}")
        if len(kinds) > 1:
            raise ValueError(f"input: {where} mixes formats {sorted(kinds)}; point at one format or pass a glob")
        format = kinds.pop()
    return files, format


def _saved_dataset_fingerprint(source) -> str | None:
    state = Path(str(source)) / "state.json"
    if state.is_file():
        return str(json.loads(state.read_text()).get("_fingerprint"))
    return None


def _parquet(path: Path, columns, batch_size) -> Iterator:
    import pyarrow.parquet as pq

    # no memory map and no pre-buffering: both keep pages of the whole file resident as it is read
    f = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    _missing(columns, f.schema_arrow.names, str(path))
    yield from f.iter_batches(batch_size=batch_size, columns=columns)


def _json(path: Path, columns, batch_size) -> Iterator:
    import pyarrow.json as pj

    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip()
    if not head and path.stat().st_size < 4096:
        return  # an empty file: zero rows (the pipeline then reports an empty input)
    if head.startswith(b"["):
        raise ValueError(
            f"{path}: is one JSON array; packwise streams JSON Lines (one object per line): convert it, "
            f"e.g. python -c \"import json,sys; [print(json.dumps(r)) for r in json.load(open(sys.argv[1]))]\" {path}"
        )

    def blocks(block_size):
        reader = pj.open_json(path, read_options=pj.ReadOptions(block_size=block_size))
        _missing(columns, reader.schema.names, str(path))
        for batch in reader:
            yield batch.select(columns) if columns is not None else batch

    yield from _growing_blocks(blocks, path, "json")


def _csv(path: Path, columns, batch_size) -> Iterator:
    import pyarrow.csv as pc

    # quoted values may hold newlines: without newlines_in_values a block can end inside one and
    # the rows after it are silently misread (or "parser out of sync")
    parse = pc.ParseOptions(newlines_in_values=True)
    convert = pc.ConvertOptions(include_columns=columns)

    def blocks(block_size):
        read_options = pc.ReadOptions(block_size=block_size)
        if columns is not None:
            _missing(columns, pc.open_csv(path, read_options=read_options, parse_options=parse).schema.names, str(path))
        return pc.open_csv(path, read_options=read_options, parse_options=parse, convert_options=convert)

    yield from _growing_blocks(blocks, path, "csv")


def _growing_blocks(open_blocks, path: Path, format: str) -> Iterator:
    """Batches of ``open_blocks(block_size)`` (a pyarrow CSV / JSON block reader).

    A row longer than a block makes pyarrow fail with "straddling object": reopen with a block
    four times larger and skip the rows already yielded (parsing is deterministic), up to
    ``_MAX_BLOCK_BYTES``.  A parse error names the file row: pyarrow counts rows within a block.
    """
    import re

    import pyarrow as pa

    done, block_size = 0, _BLOCK_BYTES
    while True:
        skip = done
        try:
            for batch in open_blocks(block_size):
                if skip >= batch.num_rows:
                    skip -= batch.num_rows
                    continue
                batch, skip = batch.slice(skip), 0
                done += batch.num_rows
                yield batch
            return
        except pa.ArrowInvalid as err:
            text = str(err)
            if "straddl" in text and block_size < _MAX_BLOCK_BYTES:
                block_size = min(4 * block_size, _MAX_BLOCK_BYTES)
                continue
            if "straddl" in text:
                raise ValueError(f"{path}: row {done} is longer than {_MAX_BLOCK_BYTES:,} bytes (the largest block pyarrow reads); split it before packing") from None
            row = re.search(r"in row (\d+)", text)
            bad = done + int(row.group(1)) if row else _csv_row_of_wrong_width(path) if "Expected" in text else None
            where = f"a row at or after row {done}" if bad is None else f"row {bad}"
            raise ValueError(f"{path}: cannot read it as {format}: {where} ({text}); fix or remove that row (data rows count from 0)") from None


def _csv_row_of_wrong_width(path: Path) -> int | None:
    """The first data row whose field count differs from the header's (pyarrow does not say)."""
    import csv

    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = csv.reader(f)
        width = len(next(rows, []))
        return next((i for i, r in enumerate(rows) if len(r) != width), None)


def _arrow(path: Path, columns, batch_size) -> Iterator:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    source = pa.memory_map(str(path))
    try:
        reader = ipc.open_file(source)
        schema = reader.schema
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    except pa.ArrowInvalid:
        source.seek(0)
        reader = ipc.open_stream(source)
        schema = reader.schema
        batches = iter(reader)
    _missing(columns, schema.names, str(path))
    for batch in batches:
        batch = batch.select(columns) if columns is not None else batch
        for start in range(0, batch.num_rows, batch_size):
            yield batch.slice(start, batch_size)


_FILE_READERS = {"parquet": _parquet, "json": _json, "csv": _csv, "arrow": _arrow}


class _HFInput:
    """A Hugging Face ``Dataset`` or ``IterableDataset``, read ``batch_size`` rows at a time as Arrow."""

    format = "hf"

    def __init__(self, ds, columns, batch_size):
        names = ds.column_names
        label = f"{type(ds).__name__}({getattr(ds.info, 'dataset_name', None) or 'in memory'})"
        if names is not None:
            _missing(columns, names, label)
        self.ds = ds.select_columns(columns) if columns is not None else ds
        self.columns, self.batch_size, self.name = columns, batch_size, label
        self.files: list[Path] = []

    @property
    def num_rows(self) -> int | None:
        try:
            return len(self.ds)
        except TypeError:
            return None

    def fingerprint(self) -> str:
        fp = getattr(self.ds, "_fingerprint", None)
        if fp is None:  # IterableDataset: its description is all we have without reading it
            fp = repr((self.ds.info.dataset_name, self.ds.info.config_name, str(self.ds.info.splits), self.ds.column_names))
        return hashlib.sha256(f"hf\0{fp}".encode()).hexdigest()

    def batches(self) -> Iterator[Located]:
        row = 0
        for table in self.ds.with_format("arrow").iter(batch_size=self.batch_size):
            _missing(self.columns, table.column_names, self.name)
            for batch in table.combine_chunks().to_batches():
                if batch.num_rows:
                    yield Located(batch, self.name, row, row)
                    row += batch.num_rows
