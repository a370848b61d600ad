"""Text to tokens, batch by batch: tokenize a text (or rendered chat) column, or read a token column.

Every stage output is a ``TokenBatch``: CSR token arrays (``offsets``, ``values``) plus the global
input row of each sequence, so lengths are ``np.diff(offsets)`` straight from Arrow list offsets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ._arrow import arrow_array, numpy_view
from ._prefetch import available_cores, ordered_map
from .tokenizer import load_tokenizer
from .tokenizer_backend import as_encoder


@dataclass(frozen=True)
class TokenBatch:
    """Sequences of one input batch, CSR-shaped: sequence ``k`` is ``values[offsets[k]:offsets[k + 1]]``.

    ``rows`` are the sequences' global input row numbers (int64, increasing); rows with no tokens
    are left out and counted in ``empty``.  ``labels`` (optional) is parallel to ``values``.
    """

    offsets: np.ndarray
    values: np.ndarray
    rows: np.ndarray
    labels: np.ndarray | None = None
    rows_read: int = 0
    empty: int = 0

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def resolve_tokenizer(path: str | Path):
    """A tokenizer from a local path: a ``tokenizer.json`` file, or a ``transformers`` tokenizer folder.

    Folders with a ``tokenizer_config.json`` load through ``transformers.AutoTokenizer`` (offline);
    anything else must be a Hugging Face ``tokenizers`` JSON file (or a folder holding one).
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"tokenizer: nothing at {path}; pass --tokenizer with a tokenizer.json file or a tokenizer folder")
    if path.is_dir() and (path / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    try:
        return load_tokenizer(path)
    except Exception as err:
        if isinstance(err, ValueError) and type(err) is ValueError:
            raise
        raise ValueError(f"tokenizer: {path} is not a valid tokenizers JSON file ({err})") from None


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of ``texts`` without special tokens, for a ``tokenizers`` or ``transformers`` tokenizer."""
    if hasattr(tokenizer, "encode_batch_fast"):
        return [e.ids for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
    if hasattr(tokenizer, "encode_batch"):
        return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def token_batches(
    located_batches,
    *,
    tokenizer=None,
    text_column: str = "text",
    tokens_column: str | None = None,
    labels_column: str | None = None,
    template: Callable[[object], str] | None = None,
    workers: int | None = None,
) -> Iterator[TokenBatch]:
    """Turn located record batches into ``TokenBatch`` objects.

    With ``tokens_column`` the ids are read as they are (any integer list type, cast to int32);
    otherwise ``text_column`` is tokenized with ``tokenizer`` (after ``template(value)`` when given:
    use it to render a chat/messages column to text): a HF tokenizer, or a ``TextEncoder`` choosing
    the backend.  Batches are tokenized on ``workers`` threads (default: every core), in order.

    Example:
        >>> import pyarrow as pa
        >>> from packwise.pipeline.readers import Located
        >>> from packwise.pipeline.tokens import token_batches
        >>> b = pa.record_batch({"input_ids": pa.array([[1, 2], [], [3]], pa.list_(pa.int32()))})
        >>> tb = next(token_batches([Located(b, "mem", 0, 0)], tokens_column="input_ids"))
        >>> tb.lengths.tolist(), tb.rows.tolist(), tb.empty
        ([2, 1], [0, 2], 1)
    """
    if tokens_column is None and tokenizer is None:
        raise ValueError("pass a tokenizer (--tokenizer PATH or --train-tokenizer) or a token column (--tokens-column)")
    if tokens_column is not None:
        encoded = ((loc, _list_column(loc, tokens_column)) for loc in located_batches)
    else:
        encoder = as_encoder(tokenizer)
        encoded = ordered_map(lambda loc: (loc, _tokenize(loc, encoder, text_column, template)), located_batches,
                              available_cores() if workers is None else workers)  # fmt: skip
    for loc, ids in encoded:
        offsets, values = _csr(ids)
        labels = None
        if labels_column is not None:
            lab = _list_column(loc, labels_column)
            lab_offsets, labels = _csr(lab)
            bad = np.flatnonzero(np.diff(lab_offsets) != np.diff(offsets))
            if bad.shape[0]:
                i = int(bad[0])
                raise ValueError(
                    f"{loc.source} row {loc.first_row + i}: column {labels_column!r} has {int(np.diff(lab_offsets)[i])} "
                    f"labels for {int(np.diff(offsets)[i])} tokens; labels must be parallel to the token ids"
                )
        lengths = np.diff(offsets)
        keep = np.flatnonzero(lengths > 0)
        rows = loc.row + keep
        n = lengths.shape[0]
        if keep.shape[0] != n:
            offsets = np.concatenate(([0], np.cumsum(lengths[keep]))).astype(np.int64)
        yield TokenBatch(offsets, values, rows.astype(np.int64), labels, rows_read=n, empty=n - keep.shape[0])


def _first_null(column) -> int:
    import pyarrow.compute as pc

    return int(pc.index(pc.is_null(column), True).as_py())


def _list_column(loc, name: str):
    import pyarrow as pa

    column = loc.batch.column(name)
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)) or not pa.types.is_integer(
        column.type.value_type
    ):
        raise ValueError(f"{loc.source}: column {name!r} has type {column.type}; expected a list of integer token ids")
    if column.null_count:
        i = _first_null(column)
        raise ValueError(f"{loc.source} row {loc.first_row + i}: column {name!r} is null; drop or fill that row")
    if column.values.null_count:
        raise ValueError(f"{loc.source} rows {loc.first_row}..: column {name!r} holds null token ids; clean the column")
    return column


def _tokenize(loc, tokenizer, text_column: str, template):
    import pyarrow as pa

    column = loc.batch.column(text_column)
    if column.null_count:
        i = _first_null(column)
        raise ValueError(f"{loc.source} row {loc.first_row + i}: column {text_column!r} is null; drop or fill that row")
    if template is not None:
        texts = []
        for i, value in enumerate(column.to_pylist()):
            text = template(value)
            if not isinstance(text, str):
                raise ValueError(
                    f"{loc.source} row {loc.first_row + i}: the template returned {type(text).__name__}, expected str"
                )
            texts.append(text)
    else:
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise ValueError(
                f"{loc.source}: column {text_column!r} has type {column.type}, not text; pass --text-column "
                f"naming a text column, --tokens-column for token ids, or a template for chat columns"
            )
        texts = column.to_pylist()
    offsets, values = as_encoder(tokenizer).encode(texts)
    ids = arrow_array(values, pa.int32())
    if offsets[-1] >= 2**31:
        return pa.LargeListArray.from_arrays(arrow_array(offsets, pa.int64()), ids)
    return pa.ListArray.from_arrays(arrow_array(offsets, pa.int32()), ids)


def _csr(column) -> tuple[np.ndarray, np.ndarray]:
    """(int64 offsets from 0, int32 values) of a list array, without a Python loop per row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    offsets = column.offsets
    offsets = numpy_view(offsets, offsets.type.to_pandas_dtype()).astype(np.int64)
    values = column.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    if values.type != pa.int32():
        try:
            values = pc.cast(values, pa.int32())
        except pa.ArrowInvalid as err:
            raise ValueError(f"token ids do not fit int32 ({err}); token ids must be < 2**31") from None
    return offsets - offsets[0], numpy_view(values, np.int32)


def train_on_input(located_batches, text_column: str, template=None, vocab_size: int = 8192):
    """Train a byte-level BPE on the text of an input stream (for offline runs without a tokenizer)."""
    from .tokenizer import train_byte_bpe

    def texts():
        for loc in located_batches:
            column = loc.batch.column(text_column)
            values = column.to_pylist()
            for i, v in enumerate(values):
                if v is None:
                    raise ValueError(f"{loc.source} row {loc.first_row + i}: column {text_column!r} is null; drop or fill that row")
                yield template(v) if template is not None else v

    return train_byte_bpe(texts(), vocab_size=vocab_size)
