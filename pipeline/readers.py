"""Streaming readers: any supported input becomes an iterator of ``pyarrow.RecordBatch``.

Nothing here reads a whole dataset: Parquet is read batch by batch with the columns pushed down,
JSON Lines and CSV through pyarrow's incremental block readers, a JSON array file (the Alpaca /
ShareGPT layout) rewritten block by block into JSON Lines on its way into that same reader, plain
text one line per row, Arrow IPC files memory-mapped, and Hugging Face datasets through
``.iter(batch_size)``.  Every batch knows where it came from, so a
later stage can name the file and row of a bad value.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import numpy as np

from . import _kernels
from ._paths import inside, shown
from ._prefetch import prefetched

FORMATS: tuple[str, ...] = ("parquet", "json", "csv", "text", "arrow")
CsvHeader = Union[bool, Sequence[str]]
_SUFFIXES = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
    ".csv": "csv",
    ".txt": "text",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
}
_BLOCK_BYTES = 8 << 20
_MAX_BLOCK_BYTES = 1 << 30  # pyarrow's block size is an int32; a row needs to fit one block
_DIGEST_BLOCK = 1 << 22  # the fingerprint reads each input file in blocks of this many bytes


@dataclass(frozen=True)
class Located:
    """One record batch and where it starts: ``source`` (a file or dataset name, as messages show it) and ``first_row``
    (its first row's index inside that source) and ``row`` (its first row's index in the whole input)."""

    batch: Any
    source: str
    first_row: int
    row: int


def read(
    source,
    columns: Sequence[str] | None = None,
    *,
    batch_size: int = 8192,
    format: str | None = None,
    csv_header: CsvHeader = True,
    csv_dialect: "CsvDialect | None" = None,
):
    """Stream ``source`` as ``pyarrow.RecordBatch`` objects holding only ``columns``.

    ``source`` is a Parquet / JSON Lines / JSON array (``[{...}, {...}]``) / CSV / plain text
    (``.txt``: one row per line, column ``text``) / Arrow IPC (Feather) file, a folder or glob of
    them, a folder written by ``datasets.Dataset.save_to_disk``, or a Hugging Face ``Dataset`` /
    ``IterableDataset`` (``load_dataset(..., streaming=True)`` included).  ``csv_header``: ``True``
    (the first CSV row names the columns), ``False`` (no header: columns ``f0, f1, ...``) or the
    column names of a headerless CSV; ``csv_dialect`` its delimiter, quote and escape characters.

    Example:
        >>> import tempfile, pyarrow as pa, pyarrow.parquet as pq
        >>> from packwise.pipeline import read
        >>> path = tempfile.mkdtemp() + "/t.parquet"
        >>> pq.write_table(pa.table({"text": ["a", "b", "c"], "n": [1, 2, 3]}), path)
        >>> [b.to_pydict() for b in read(path, columns=["text"], batch_size=2)]
        [{'text': ['a', 'b']}, {'text': ['c']}]
    """
    inp = open_input(source, columns, batch_size=batch_size, format=format, csv_header=csv_header, csv_dialect=csv_dialect)
    for located in inp.batches():
        yield located.batch


def open_input(
    source,
    columns: Sequence[str] | None = None,
    *,
    batch_size: int = 8192,
    format: str | None = None,
    csv_header: CsvHeader = True,
    csv_dialect: "CsvDialect | None" = None,
):
    """Resolve ``source`` once (files, format, row count, fingerprint) without reading its rows."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 row, got {batch_size}")
    columns = None if columns is None else list(dict.fromkeys(columns))
    if _is_hf_dataset(source):
        return _HFInput(source, columns, batch_size)
    return _FileInput(source, columns, batch_size, format, _csv_header(csv_header), csv_dialect or CsvDialect())


def _csv_header(header: CsvHeader) -> bool | tuple[str, ...]:
    if isinstance(header, bool):
        return header
    names = tuple(header)
    if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"--csv-columns must be distinct, non-empty column names, got {list(names)}")
    return names


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
    def __init__(self, source, columns, batch_size, format, csv_header=True, csv_dialect=None):
        self.columns, self.batch_size = columns, batch_size
        self.csv_dialect = csv_dialect or CsvDialect()
        self.notes: dict[str, int] = {}  # what the last full read noticed (QUOTED_LINE_BREAKS)
        self.name = str(source)
        self.identity = normalise_path(source)
        self.files, self.format = _resolve_files(source, format)
        self.csv_header = csv_header
        self._hf_fingerprint = _saved_dataset_fingerprint(source)

    @property
    def json_arrays(self) -> bool:
        """Whether the input's JSON files are JSON arrays (not JSON Lines)."""
        return self.format == "json" and any(_is_json_array(f) for f in self.files)

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
        """The input's content: format, CSV header setting, and each file's name, size and a streaming
        xxh3-128 hash of all its bytes (a few % of a pack's time).  Not the modification time, so
        regenerating an identical file does not look like new input."""
        h = hashlib.sha256(f"{self.format}\0{self.csv_header!r}".encode())
        if self.csv_dialect != CsvDialect():  # the default adds nothing: outputs made before the option resume
            h.update(repr(self.csv_dialect).encode())
        if self._hf_fingerprint:
            h.update(self._hf_fingerprint.encode())
        for f in self.files:
            h.update(f"{f.name}\0{_file_digest(f)}\n".encode())
        return h.hexdigest()

    def batches(self) -> Iterator[Located]:
        """The input's record batches in order, decoded one or two ahead on a background thread."""
        return prefetched(self._batches())

    def _batches(self) -> Iterator[Located]:
        row = 0
        reader = _FILE_READERS[self.format]
        if self.format == "csv":
            self.notes = {QUOTED_LINE_BREAKS: 0}
            reader = partial(_csv, header=self.csv_header, dialect=self.csv_dialect, notes=self.notes)
        for path in self.files:
            first = 0
            for batch in _guard(reader(path, self.columns, self.batch_size), path, self.format):
                if batch.num_rows == 0:
                    continue
                yield Located(batch, shown(path), first, row)
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
            raise ValueError(f"{shown(path)}: cannot read it as {format} ({err}); check the file is complete and valid") from None
        except (pa.ArrowException, OSError) as err:
            raise ValueError(f"{shown(path)}: cannot read it as {format} ({err}); check the file is complete and valid") from None
        yield batch


def _resolve_files(source, format: str | None) -> tuple[list[Path], str]:
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    text = str(source)
    path = Path(text)
    if path.is_dir():
        state = path / "state.json"
        if state.is_file():  # datasets.Dataset.save_to_disk
            return _saved_dataset_files(path, state), "arrow"
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _SUFFIXES and not p.name.startswith("."))
        where = f"folder {shown(path)}"
    elif any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in _glob.glob(text, recursive=True) if Path(p).is_file())
        where = f"glob {text!r}"
    elif path.is_file():
        files = [path]
        where = shown(path)
    else:
        raise ValueError(f"input: no file or folder at {shown(text)}; pass an existing path, folder or glob")
    if not files:
        raise ValueError(f"input: {where} holds no data files ({', '.join(sorted(_SUFFIXES))}); empty input")
    if format is None:
        kinds = {_SUFFIXES.get(p.suffix.lower()) for p in files}
        if None in kinds:
            bad = next(p for p in files if p.suffix.lower() not in _SUFFIXES)
            raise ValueError(f"{shown(bad)}: unknown file type {bad.suffix!r}; pass --format one of {FORMATS}")
        if len(kinds) > 1:
            raise ValueError(f"input: {where} mixes formats {sorted(kinds)}; point at one format or pass a glob")
        format = kinds.pop()
    return files, format


def _saved_dataset_files(folder: Path, state: Path) -> list[Path]:
    """The Arrow files a ``save_to_disk`` folder's ``state.json`` lists, each checked to lie inside the folder."""
    try:
        entries = json.loads(state.read_text())["_data_files"]
        names = [d["filename"] for d in entries]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{shown(state)}: not a datasets state.json (no _data_files[].filename: {type(err).__name__} {err}); "
            f"save the dataset again with save_to_disk"
        ) from None
    return [inside(folder, name, state, f"_data_files[{i}].filename") for i, name in enumerate(names)]


def normalise_path(source) -> str:
    """One spelling per input: ``./x``, ``x`` and ``/abs/x`` (or a symlink to it) give the same string."""
    text = os.path.abspath(os.path.expanduser(str(source)))
    return str(Path(text).resolve()) if os.path.exists(text) else text


def _file_digest(path: Path) -> str:
    """Size and xxh3-128 hash of the whole file, streamed: any edit anywhere changes it."""
    import xxhash

    h = xxhash.xxh3_128()
    with open(path, "rb", buffering=0) as f:
        for block in iter(lambda: f.read(_DIGEST_BLOCK), b""):
            h.update(block)
    return f"{path.stat().st_size}:{h.hexdigest()}"


def _saved_dataset_fingerprint(source) -> str | None:
    state = Path(str(source)) / "state.json"
    if state.is_file():
        return str(json.loads(state.read_text()).get("_fingerprint"))
    return None


def _parquet(path: Path, columns, batch_size) -> Iterator:
    import pyarrow.parquet as pq

    # no memory map and no pre-buffering: both keep pages of the whole file resident as it is read
    f = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    _missing(columns, f.schema_arrow.names, shown(path))
    yield from f.iter_batches(batch_size=batch_size, columns=columns)


_BOM = b"\xef\xbb\xbf"
MAX_JSON_DEPTH = 1000  # levels of [ and { in one row; far above real data, far below what crashes Arrow's parser


def _head(path: Path) -> bytes:
    """The file's first bytes, without a UTF-8 byte order mark and leading whitespace."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    return head.removeprefix(_BOM).lstrip()


def _is_json_array(path: Path) -> bool:
    return _head(path).startswith(b"[")


def _json(path: Path, columns, batch_size) -> Iterator:
    import pyarrow.json as pj

    head = _head(path)
    if not head and path.stat().st_size < 4096:
        return  # an empty file: zero rows (the pipeline then reports an empty input)
    is_array = head.startswith(b"[")
    if is_array and head[1:].lstrip().startswith(b"]"):
        return  # an empty array
    sources: list = []

    def blocks(block_size):
        # a JSON array is rewritten into JSON Lines on the fly; a reopened read starts a fresh one
        sources.append(_JsonArrayAsLines(path) if is_array else _JsonLines(path))

        def open_reader(source):
            reader = pj.open_json(source, read_options=pj.ReadOptions(block_size=block_size))
            _missing(columns, reader.schema.names, shown(path))
            return reader

        for batch in _arrow_blocks(open_reader, sources[-1]):
            yield _utf8_text(batch.select(columns) if columns is not None else batch, path)

    yield from _growing_blocks(blocks, path, "json")
    sources[-1].finish()


def check_json_lines(path: Path) -> None:
    """Scan a JSON Lines file for too deep rows without parsing it (for readers other than
    packwise's own, e.g. Ray Data's, which would crash on one)."""
    with _JsonLines(path) as f:
        while f.read(_BLOCK_BYTES):
            pass
        f.finish()


class _ScannedFile(io.RawIOBase):
    """A file read through a numba kernel on its way to Arrow's block readers: ``_scan`` checks
    (or rewrites in place) every block before Arrow parses it."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "rb")
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._file.readinto(buffer)
        if n:
            self.bytes_read += n
            self._scan(np.frombuffer(buffer, np.uint8, n))
        return n

    def _scan(self, block: np.ndarray) -> None:
        """Check (or rewrite in place) one block; raise a ``ValueError`` naming what is wrong."""

    def finish(self) -> None:
        """Checks once the whole file is read."""

    def close(self) -> None:
        self._file.close()
        super().close()


def _arrow_blocks(open_reader, source: _ScannedFile) -> Iterator:
    """The batches of ``open_reader(source)`` (an Arrow block reader over a Python file), then a wait
    until Arrow's I/O thread has let go of ``source``.

    That thread reads the file ahead and drops its last reference a moment after the last batch;
    if the interpreter is shutting down by then, the thread's wait for the GIL aborts the process
    ("terminate called without an active exception"). Its reference is released when ours is the
    only one left, which takes microseconds once the reader is gone.
    """
    import sys
    import time

    baseline = sys.getrefcount(source)
    reader = None
    try:
        reader = open_reader(source)
        yield from reader
    finally:
        reader = None
        deadline = time.monotonic() + 5.0
        while sys.getrefcount(source) > baseline and time.monotonic() < deadline:
            time.sleep(0.001)


def _utf8_text(batch, path: Path):
    """``batch``, or a ``ValueError`` locating the file's invalid UTF-8: Arrow's JSON reader lets
    invalid bytes into string columns (Python then fails far away, naming nothing), and its CSV
    reader makes such a column binary."""
    import pyarrow as pa

    if any(pa.types.is_binary(t) or pa.types.is_large_binary(t) for t in batch.schema.types):
        raise ValueError(invalid_utf8(path))
    try:
        batch.validate(full=True)  # checks UTF-8 at memory speed (about 10 ms for 100 MB)
    except pa.ArrowInvalid:
        raise ValueError(invalid_utf8(path)) from None
    return batch


def invalid_utf8(path: Path) -> str:
    """The message for a file that is not UTF-8: its first invalid byte, by line (1-based) and offset."""
    state = np.array([0, 0x80, 0xBF, 0, 0, -1, -1, 0], np.int64)  # see _kernels.utf8_scan
    with open(path, "rb") as fh:
        while state[5] == -1:
            block = fh.read(_BLOCK_BYTES)
            if not block:
                if state[0]:  # the file ends inside a character
                    state[5], state[6] = state[7], state[4]
                break
            _kernels.utf8_scan(np.frombuffer(block, np.uint8), state)
        if state[5] == -1:
            return f"{shown(path)}: holds text that is not UTF-8; convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        at, line = int(state[5]), int(state[6])
        fh.seek(at)
        byte = fh.read(1)
    what = f"byte 0x{byte[0]:02x}" + (" starts no complete character" if 0xC2 <= byte[0] <= 0xF4 else "")
    return (
        f"{shown(path)} line {line + 1} (byte offset {at}): invalid UTF-8 ({what}); packwise reads UTF-8 text: "
        f"convert the file (e.g. iconv -f latin1 -t utf-8) or fix that line"
    )


class _JsonLines(_ScannedFile):
    """A JSON Lines file checked for rows nested too deep for Arrow's parser (``MAX_JSON_DEPTH``)."""

    def __init__(self, path: Path):
        super().__init__(path)
        self._state = np.array([0, 0, 0, 0, -1], np.int64)

    def _scan(self, block: np.ndarray) -> None:
        _kernels.json_lines_depth(block, self._state, MAX_JSON_DEPTH)
        if self._state[4] != -1:
            raise ValueError(_too_deep(f"{shown(self.path)} line {int(self._state[4]) + 1}"))


def _too_deep(where: str) -> str:
    return (
        f"{where}: a JSON value nested more than {MAX_JSON_DEPTH} levels deep (packwise reads at most {MAX_JSON_DEPTH} "
        f"levels of [ and {{; deeper nesting crashes Arrow's JSON parser); flatten or remove that row"
    )


class _JsonArrayAsLines(_ScannedFile):
    """A JSON array file read as JSON Lines: each block is rewritten in place by a numba kernel
    (same bytes, no parse in Python), so pyarrow's streaming JSON reader parses it at JSONL speed."""

    def __init__(self, path: Path):
        super().__init__(path)
        self._state = np.array([0, 0, 0, 0, -1, 0, 0], np.int64)

    def _scan(self, block: np.ndarray) -> None:
        if self.bytes_read == block.shape[0] and block[:3].tobytes() == _BOM:  # a byte order mark opens the file
            block[:3] = 32
        _kernels.json_array_to_lines(block, self._state, MAX_JSON_DEPTH)
        if self._state[4] != -1:
            raise ValueError(self._problem())

    def _problem(self) -> str:
        at, byte = int(self._state[4]), chr(int(self._state[5]))
        if self._state[6]:
            return _too_deep(f"{shown(self.path)} row {at}")
        if at == -2:
            return f"{shown(self.path)}: text after the closing ']' of its JSON array (starting {byte!r}); a JSON array file holds one array"
        kind = {'"': "a string", "[": "an array", "n": "null", "t": "a boolean", "f": "a boolean"}.get(byte, "a number")
        return (
            f"{shown(self.path)} row {at}: the JSON array holds {kind}, not an object; every element must be an object "
            f'with one field per column, e.g. {{"text": "..."}}: rewrite the file as an array of objects or as JSON Lines'
        )

    def finish(self) -> None:
        if self._state[0] != -1:
            raise ValueError(f"{shown(self.path)}: its JSON array is not closed with ']'; the file is cut short: write it again")


@dataclass(frozen=True)
class CsvDialect:
    """How CSV records split into fields (pyarrow's ``ParseOptions``): ``--csv-delimiter``,
    ``--csv-quote`` and ``--csv-escape`` (``None``: no escape character; a doubled quote is a quote)."""

    delimiter: str = ","
    quote: str = '"'
    escape: str | None = None

    def __post_init__(self) -> None:
        for option, value in (("--csv-delimiter", self.delimiter), ("--csv-quote", self.quote), ("--csv-escape", self.escape)):
            if value is None and option == "--csv-escape":
                continue
            if not isinstance(value, str) or len(value) != 1 or not value.isascii() or value in "\r\n":
                raise ValueError(f"{option} must be one ASCII character other than a line break (\\t for a tab), got {value!r}")
        chars = [c for c in (self.delimiter, self.quote, self.escape) if c is not None]
        if len(set(chars)) != len(chars):
            raise ValueError(
                f"--csv-delimiter {self.delimiter!r}, --csv-quote {self.quote!r} and --csv-escape {self.escape!r} must be different characters"
            )

    def parse_options(self):
        import pyarrow.csv as pc

        # quoted values may hold newlines: without newlines_in_values a block can end inside one and
        # the rows after it are silently misread (or "parser out of sync")
        escape = False if self.escape is None else self.escape
        return pc.ParseOptions(delimiter=self.delimiter, quote_char=self.quote, escape_char=escape, newlines_in_values=True)


QUOTED_LINE_BREAKS = "csv_rows_with_quoted_line_breaks"  # the key of ``notes`` that counts them
_OTHER_DELIMITERS = (";", "\t", "|")


def _csv(path: Path, columns, batch_size, header: bool | tuple[str, ...] = True, dialect: CsvDialect = CsvDialect(),
         notes: dict | None = None) -> Iterator:  # fmt: skip
    """CSV records as batches; ``notes[QUOTED_LINE_BREAKS]`` grows by the records whose quoted fields hold a line break."""
    import pyarrow as pa
    import pyarrow.csv as pc

    parse = dialect.parse_options()

    def read_options(block_size):
        if header is True:
            return pc.ReadOptions(block_size=block_size)
        if header is False:
            return pc.ReadOptions(block_size=block_size, autogenerate_column_names=True)
        return pc.ReadOptions(block_size=block_size, column_names=list(header))

    convert = pc.ConvertOptions(include_columns=columns)
    sources: list = []

    def blocks(block_size):
        if columns is not None or header is True:  # from the first line alone: the rows after it may not parse with this dialect
            with open(path, "rb") as fh:
                first = io.BytesIO(fh.readline())
            names = pc.read_csv(first, read_options=read_options(block_size), parse_options=parse).schema.names
            if header is True and (columns is None or any(c not in names for c in columns)):
                _check_header(path, columns, names, dialect)
            if columns is not None:
                _missing(columns, names, shown(path))
        sources.append(_CsvFile(path, dialect))
        options = {"read_options": read_options(block_size), "parse_options": parse, "convert_options": convert}
        try:
            for batch in _arrow_blocks(lambda source: pc.open_csv(source, **options), sources[-1]):
                yield _utf8_text(batch, path)
        except pa.ArrowInvalid as err:
            if "UTF8" in str(err):  # a later block's invalid bytes in a column typed string by the first
                raise ValueError(invalid_utf8(path)) from None
            raise

    yield from _growing_blocks(blocks, path, "csv", dialect)
    if sources:
        sources[-1].finish()
        if notes is not None:
            notes[QUOTED_LINE_BREAKS] = notes.get(QUOTED_LINE_BREAKS, 0) + sources[-1].quoted_line_breaks


def _check_header(path: Path, columns, names: list[str], dialect: CsvDialect) -> None:
    """A ``ValueError`` with a hint when a wanted column is missing because the header looks wrong:
    one column split by another delimiter (``id;text``), or a first row that is data.  With
    ``columns`` None (every column, e.g. for layout detection) only the first case is an error."""
    gone = None if columns is None else next(c for c in columns if c not in names)
    missing = "" if gone is None else f" column {gone!r} not found:"
    other = next((d for d in _OTHER_DELIMITERS if len(names) == 1 and d in names[0] and d != dialect.delimiter), None)
    if other is not None:
        raise ValueError(
            f"{shown(path)}:{missing} the header {names[0]!r} is one column, split by {other!r} and not by "
            f"{dialect.delimiter!r}; pass --csv-delimiter {other!r} if the file separates its fields with {other!r}"
        )
    if gone is not None and _looks_like_data(names):
        raise ValueError(
            f"{shown(path)}: column {gone!r} not found, and the first row looks like "
            f"data, not a header ({', '.join(repr(n[:24]) for n in names[:3])}); name the columns of a headerless CSV with --csv-columns "
            f"({len(names)} comma-separated names, e.g. --csv-columns {','.join(f'c{i}' for i in range(len(names)))}) "
            f"or pass --no-header (columns {', '.join(f'f{i}' for i in range(min(len(names), 3)))}, ...)"
        )


class _CsvFile(_ScannedFile):
    """A CSV file counting its records whose quoted fields hold a line break (``_kernels.csv_quoted_breaks``)."""

    def __init__(self, path: Path, dialect: CsvDialect):
        super().__init__(path)
        self._state = np.zeros(3, np.int64)
        self._chars = (ord(dialect.delimiter), ord(dialect.quote), -1 if dialect.escape is None else ord(dialect.escape))

    def _scan(self, block: np.ndarray) -> None:
        _kernels.csv_quoted_breaks(block, self._state, *self._chars)

    @property
    def quoted_line_breaks(self) -> int:
        """Records so far whose quoted fields hold a line break (the last one counts without its newline)."""
        return int(self._state[2] + self._state[1])


def _growing_blocks(open_blocks, path: Path, format: str, dialect: CsvDialect = CsvDialect()) -> Iterator:
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
                raise ValueError(f"{shown(path)}: row {done} is longer than {_MAX_BLOCK_BYTES:,} bytes (the largest block pyarrow reads); split it before packing") from None
            row = re.search(r"in row (\d+)", text)
            bad = done + int(row.group(1)) if row else _csv_row_of_wrong_width(path, dialect) if "Expected" in text else None
            where = f"a row at or after row {done}" if bad is None else f"row {bad}"
            raise ValueError(f"{shown(path)}: cannot read it as {format}: {where} ({text}); fix or remove that row (data rows count from 0)") from None


def _csv_row_of_wrong_width(path: Path, dialect: CsvDialect) -> int | None:
    """The first data row whose field count differs from the header's (pyarrow does not say)."""
    import csv

    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        escape = {} if dialect.escape is None else {"escapechar": dialect.escape}
        rows = csv.reader(f, delimiter=dialect.delimiter, quotechar=dialect.quote, **escape)
        width = len(next(rows, []))
        return next((i for i, r in enumerate(rows) if len(r) != width), None)


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _looks_like_data(names: list[str]) -> bool:
    """A CSV header row that is probably the first record: a number, an empty or repeated name, or prose."""
    return len(set(names)) != len(names) or any(
        not n.strip() or _NUMBER.fullmatch(n.strip()) or len(n) > 40 or n.count(" ") >= 3 for n in names
    )


def _text(path: Path, columns, batch_size) -> Iterator:
    """One row per line (column ``text``); a trailing ``\\r`` is dropped, empty lines are empty rows."""
    import pyarrow as pa

    _missing(columns, ["text"], f"{shown(path)} (plain text: one column, text)")
    with open(path, "rb") as fh:
        rest = b""
        while True:
            block = fh.read(_BLOCK_BYTES)
            if not block:
                yield from _line_batches(rest, path, batch_size) if rest else ()
                return
            data = rest + block
            cut = data.rfind(b"\n")
            if cut >= 0:
                yield from _line_batches(data[:cut], path, batch_size)
            rest = data[cut + 1 :]


def _line_batches(data: bytes, path: Path, batch_size: int) -> Iterator:
    import pyarrow as pa

    lines = _lines(data, path)
    for start in range(0, len(lines), batch_size):
        yield pa.record_batch({"text": lines.slice(start, batch_size)})


def _lines(data: bytes, path: Path):
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        text = pa.array([data], pa.binary()).cast(pa.string())
    except pa.ArrowInvalid:
        raise ValueError(invalid_utf8(path)) from None
    lines = pc.split_pattern(text, "\n").flatten()
    return pc.utf8_rtrim(lines, "\r") if b"\r" in data else lines


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
    _missing(columns, schema.names, shown(path))
    for batch in batches:
        batch = batch.select(columns) if columns is not None else batch
        for start in range(0, batch.num_rows, batch_size):
            yield batch.slice(start, batch_size)


_FILE_READERS = {"parquet": _parquet, "json": _json, "csv": _csv, "text": _text, "arrow": _arrow}


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
        self.identity = label
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
