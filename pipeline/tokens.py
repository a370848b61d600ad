"""Text to tokens, batch by batch: tokenize text columns (joined), a row rendered by a template or
a chat column rendered by a chat template, or read a token column.

Every stage output is a ``TokenBatch``: CSR token arrays (``offsets``, ``values``, optional
``labels``) plus the global input row of each sequence, so lengths are ``np.diff(offsets)``.
How a row becomes text is a ``TextSpec``; ``TextRows`` binds it to a tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from . import chat as _chat
from ._arrow import numpy_view
from ._prefetch import available_cores, ordered_map
from .tokenizer import load_tokenizer
from .tokenizer_backend import as_encoder

TEXT_SEPARATOR = "\n\n"  # between the values of several text columns (empty values are left out)
IGNORE = -100  # the label of a token not trained on
_EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eot_id|>")
_BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>")


@dataclass(frozen=True)
class TokenBatch:
    """Sequences of one input batch, CSR-shaped: sequence ``k`` is ``values[offsets[k]:offsets[k + 1]]``.

    ``rows`` are the sequences' global input row numbers (int64, increasing); rows with no tokens
    are left out and counted in ``empty``.  ``labels`` (optional) is parallel to ``values``.
    ``source`` names the file the batch came from and ``source_row0`` is the global row of that
    file's first row, so a message can say ``{source} row {row - source_row0}``.
    """

    offsets: np.ndarray
    values: np.ndarray
    rows: np.ndarray
    labels: np.ndarray | None = None
    rows_read: int = 0
    empty: int = 0
    sequence_label: np.ndarray | None = None  # KTO: a boolean per sequence (parallel to ``rows``)
    source: str = "input"
    source_row0: int = 0

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


@dataclass(frozen=True)
class TextSpec:
    """How an input row becomes the text that is tokenized.

    ``columns``: one text column, or several whose values are joined with ``TEXT_SEPARATOR``
    (``"instruction,input,output"`` is split at commas); ``template``: a function of the whole
    row (a dict of every column) returning its text; ``chat``: ``"chatml"`` or ``"tokenizer"``
    renders the chat column (``columns[0]``, or ``messages`` / ``conversations`` when ``columns``
    is ``None``), with ``system`` / ``tools`` columns when present; ``train_on="assistant"``
    labels only the assistant turns.  ``add_bos`` / ``add_eos`` put the tokenizer's BOS / EOS
    token around every non-empty document.

    Example:
        >>> TextSpec("instruction,input,output").columns
        ('instruction', 'input', 'output')
        >>> TextSpec(None, chat="chatml").has_labels, TextSpec(None, chat="chatml").read_columns
        (True, None)
    """

    columns: Sequence[str] | str | None = ("text",)
    template: Callable[[dict], str] | None = field(default=None, compare=False)
    chat: str | None = None
    train_on: str | None = None
    add_bos: bool = False
    add_eos: bool = False
    response: bool = False
    separator: str = TEXT_SEPARATOR

    def __post_init__(self):
        cols = self.columns
        if isinstance(cols, str):
            cols = tuple(c.strip() for c in cols.split(","))
        if cols is not None:
            cols = tuple(cols)
            if not cols or not all(cols):
                raise ValueError(f"--text-column must name one or more columns (comma-separated), got {self.columns!r}")
        object.__setattr__(self, "columns", cols)
        if self.template is not None and self.chat is not None:
            raise ValueError("pass either --template or --chat-template, not both")
        if self.chat is not None and self.chat not in _chat.CHAT_TEMPLATES:
            raise ValueError(f"--chat-template must be one of {_chat.CHAT_TEMPLATES}, got {self.chat!r}")
        if self.chat is not None and cols is not None and len(cols) != 1:
            raise ValueError(f"--chat-template renders one chat column; --text-column names {len(cols)}: {','.join(cols)}")
        train_on = self.train_on or ("assistant" if self.chat or self.response else "all")
        if train_on not in _chat.TRAIN_ON:
            raise ValueError(f"--train-on must be one of {_chat.TRAIN_ON}, got {train_on!r}")
        if train_on == "assistant" and self.chat is None and not self.response:
            raise ValueError(
                "--train-on assistant needs --chat-template or a prompt/response layout (it marks the assistant turns); pass --train-on all"
            )
        object.__setattr__(self, "train_on", train_on)
        if cols is None and self.chat is None and self.template is None:
            object.__setattr__(self, "columns", ("text",))

    @property
    def read_columns(self) -> list[str] | None:
        """The columns the reader must deliver (``None``: all of them, for a template or a chat row)."""
        return None if self.template is not None or self.chat is not None else list(self.columns)

    @property
    def has_labels(self) -> bool:
        return self.train_on == "assistant"

    def describe(self) -> dict:
        """The settings that decide the tokens (recorded in the manifest)."""
        name = None if self.template is None else getattr(self.template, "__qualname__", repr(self.template))
        return {
            "text_column": None if self.columns is None else ",".join(self.columns),
            "template": name,
            "chat_template": self.chat,
            "train_on": self.train_on,
            "add_bos": self.add_bos,
            "add_eos": self.add_eos,
            **({"response_column": self.columns[-1], "separator": self.separator} if self.response else {}),
        }


def special_token_id(tokenizer, kind: str) -> int | None:
    """The tokenizer's ``"bos"`` or ``"eos"`` token id: a ``transformers`` tokenizer's own, else an
    added special token with a well-known name (``</s>``, ``<|endoftext|>``, ``<s>``, ...)."""
    tid = getattr(tokenizer, f"{kind}_token_id", None)
    if tid is not None:
        return int(tid)
    decoder = getattr(tokenizer, "added_tokens_decoder", None)
    if decoder is None and hasattr(tokenizer, "get_added_tokens_decoder"):
        decoder = tokenizer.get_added_tokens_decoder()
    special = {t.content: int(i) for i, t in (decoder or {}).items() if t.special}
    return next((special[n] for n in (_EOS_NAMES if kind == "eos" else _BOS_NAMES) if n in special), None)


class TextRows:
    """A ``TextSpec`` bound to a tokenizer: renders the rows of record batches and tokenizes them.

    Example:
        >>> import pyarrow as pa
        >>> from packwise.pipeline.readers import Located
        >>> from packwise.pipeline.tokenizer import train_byte_bpe
        >>> tok = train_byte_bpe(["ab cd"] * 20, vocab_size=260)
        >>> rows = TextRows(TextSpec("a,b", add_eos=True), tok)
        >>> b = pa.record_batch({"a": ["ab", ""], "b": ["cd", None]})
        >>> offsets, values, labels = rows.tokenize(Located(b, "mem", 0, 0))
        >>> tok.decode(values[offsets[0]:offsets[1]].tolist(), skip_special_tokens=False), offsets.tolist()
        ('ab\\n\\ncd<|endoftext|>', [0, 5, 5])
    """

    def __init__(self, spec: TextSpec, tokenizer):
        self.encoder = as_encoder(tokenizer)  # the backend (HF tokenizers or fastokens) that encodes the texts
        self.spec, self.tokenizer = spec, self.encoder.tokenizer
        self.bos = self._special("bos") if spec.add_bos else None
        self.eos = self._special("eos") if spec.add_eos else None
        self.render = None
        if spec.chat == "chatml":
            self.render = _chat.chatml
            _warn_split_chatml(self.tokenizer)
        elif spec.chat == "tokenizer":
            self.render = _chat.hf_template(self.tokenizer)

    def _special(self, kind: str) -> int:
        tid = special_token_id(self.tokenizer, kind)
        if tid is None:
            raise ValueError(
                f"--add-{kind}: the tokenizer has no {kind.upper()} token (no {kind}_token and no special token named "
                f"{' or '.join(_EOS_NAMES[:3] if kind == 'eos' else _BOS_NAMES[:3])}); pass --no-add-{kind}, or a tokenizer with one"
            )
        return tid

    @property
    def has_labels(self) -> bool:
        """Whether ``tokenize`` gives labels (an engine that builds columns ahead needs to know)."""
        return self.spec.has_labels

    def texts(self, loc) -> Iterator[str]:
        """The full text of every row of one located batch."""
        texts, _, seg_row = self._segments(loc)
        if self.render is None and not self.spec.response:
            yield from texts
            return
        bounds = np.searchsorted(seg_row, np.arange(loc.batch.num_rows + 1))
        for a, b in zip(bounds[:-1], bounds[1:]):
            yield "".join(texts[a:b])

    def tokenize(self, loc) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(offsets, values, labels)`` of one located batch, one sequence per row (labels: assistant mode only)."""
        texts, trainable, seg_row = self._segments(loc)
        seg_offsets, values = self.encoder.encode(texts)
        seg_len = np.diff(seg_offsets)
        row_len = np.bincount(seg_row, weights=seg_len, minlength=loc.batch.num_rows).astype(np.int64)
        offsets = np.zeros(row_len.shape[0] + 1, np.int64)
        np.cumsum(row_len, out=offsets[1:])
        labels = None
        if self.spec.has_labels:
            labels = np.where(np.repeat(trainable, seg_len), values, np.int32(IGNORE)).astype(np.int32)
        if self.bos is not None or self.eos is not None:
            offsets, values, labels = _add_specials(offsets, values, labels, self.bos, self.eos)
        return offsets, values, labels

    def _segments(self, loc) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Texts to encode, whether each is trained on, and the batch row of each (increasing)."""
        batch, n = loc.batch, loc.batch.num_rows
        if self.render is not None:
            return self._chat_segments(loc)
        if self.spec.template is not None:
            texts = [self._apply_template(loc, i, row) for i, row in enumerate(batch.to_pylist())]
        elif self.spec.response:
            return _prompt_response(loc, self.spec.columns, self.spec.separator)
        elif len(self.spec.columns) == 1:
            texts = _text_column(loc, self.spec.columns[0]).to_pylist()
        else:
            cols = [_text_column(loc, c, nulls=True).to_pylist() for c in self.spec.columns]
            texts = [TEXT_SEPARATOR.join(v for v in values if v) for values in zip(*cols)]
        return texts, np.ones(n, np.bool_), np.arange(n, dtype=np.int64)

    def _apply_template(self, loc, i: int, row: dict) -> str:
        fn = self.spec.template
        name = getattr(fn, "__qualname__", repr(fn))
        try:
            text = fn(row)
        except Exception as err:
            raise ValueError(
                f"{loc.source} row {loc.first_row + i}: --template {name} raised {type(err).__name__}: {err}; "
                f"fix the template (it receives the whole row, a dict of column -> value: {sorted(row)}) or that row"
            ) from None
        if not isinstance(text, str):
            raise ValueError(
                f"{loc.source} row {loc.first_row + i}: --template {name} returned {type(text).__name__}, expected str; "
                f"return the row's text"
            )
        return text

    def _chat_segments(self, loc):
        batch = loc.batch
        names = batch.schema.names
        name = self.spec.columns[0] if self.spec.columns else next((c for c in _chat.MESSAGE_COLUMNS if c in names), None)
        if name is None or name not in names:
            wanted = repr(name) if name else "'messages' or 'conversations'"
            raise ValueError(
                f"{loc.source}: no chat column {wanted} (columns: {names}); pass --text-column naming the column of messages"
            )
        values = batch.column(name).to_pylist()
        extra = {k: batch.column(k).to_pylist() if k in names else [None] * len(values) for k in ("system", "tools")}
        texts, trainable, seg_row = [], [], []
        for i, value in enumerate(values):
            where = f"{loc.source} row {loc.first_row + i}: column {name!r}"
            messages = _chat.messages_of(value, where)
            try:
                segments = self.render(messages, extra["system"][i], extra["tools"][i])
            except ValueError as err:
                if str(err).startswith("--chat-template"):
                    raise ValueError(f"{where}: {err}") from None
                raise ValueError(f"{where}: --chat-template {self.spec.chat} cannot render it ({err}); check the row") from None
            except Exception as err:
                raise ValueError(
                    f"{where}: --chat-template {self.spec.chat} cannot render it ({type(err).__name__}: {err}); "
                    f"check the row, or pass --chat-template chatml"
                ) from None
            for text, train in segments:
                texts.append(text)
                trainable.append(train)
                seg_row.append(i)
        return texts, np.array(trainable, np.bool_), np.array(seg_row, np.int64)


def _warn_split_chatml(tokenizer) -> None:
    """Warn when the tokenizer splits the ChatML markers into pieces (no such special tokens): the
    rows get longer and the model never sees the markers it was trained with."""
    if tokenizer is None:
        return
    split = [t for t, ids in zip(_chat.CHATML_TOKENS, encode(tokenizer, list(_chat.CHATML_TOKENS))) if len(ids) != 1]
    if split:
        import warnings

        warnings.warn(
            f"--chat-template chatml: the tokenizer has no special token {' or '.join(split)}, so every marker is split "
            f"into several tokens; use a tokenizer with the ChatML tokens, or --chat-template tokenizer with its own template",
            UserWarning,
            stacklevel=3,
        )


def _prompt_response(loc, columns: Sequence[str], separator: str):
    """Two segments per row: the prompt columns joined (with ``separator`` after them), then the
    response (the last column), trainable; a null prompt column is an empty value."""
    n = loc.batch.num_rows
    prompts = [_text_column(loc, c, nulls=True).to_pylist() for c in columns[:-1]]
    responses = _text_column(loc, columns[-1]).to_pylist()
    texts = []
    for i in range(n):
        head = TEXT_SEPARATOR.join(p[i] for p in prompts if p[i])
        texts += [head + separator if head else "", responses[i]]
    return texts, np.tile(np.array([False, True]), n), np.repeat(np.arange(n, dtype=np.int64), 2)


def _add_specials(offsets, values, labels, bos: int | None, eos: int | None):
    """BOS before and EOS after every non-empty sequence (labelled ``IGNORE`` when labels are kept)."""
    lengths = np.diff(offsets)
    extra = (lengths > 0).astype(np.int64) * ((bos is not None) + (eos is not None))
    new_offsets = offsets + np.concatenate(([0], np.cumsum(extra)))
    shift = np.repeat(new_offsets[:-1] - offsets[:-1] + (bos is not None), lengths)
    pos = np.arange(values.shape[0], dtype=np.int64) + shift
    out = np.empty(int(new_offsets[-1]), np.int32)
    out[pos] = values
    out_labels = None
    if labels is not None:
        out_labels = np.full(out.shape[0], IGNORE, np.int32)
        out_labels[pos] = labels
    full = np.flatnonzero(lengths > 0)
    if bos is not None:
        out[new_offsets[full]] = bos
    if eos is not None:
        out[new_offsets[full + 1] - 1] = eos
    return new_offsets, out, out_labels


def token_batches(
    located_batches,
    *,
    tokenizer=None,
    text: TextSpec | None = None,
    tokens_column: str | None = None,
    labels_column: str | None = None,
    workers: int | None = None,
    label_column: str | None = None,
) -> Iterator[TokenBatch]:
    """Turn located record batches into ``TokenBatch`` objects.

    With ``tokens_column`` the ids are read as they are (any integer list type, cast to int32);
    otherwise each row is rendered by ``text`` (a ``TextSpec``; default: the ``text`` column) and
    tokenized with ``tokenizer`` (a HF tokenizer, or a ``TextEncoder`` choosing the backend; or a
    ``TextRows`` binding both).  Batches are tokenized on ``workers`` threads (default: every
    core), in order.

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
    rows_of = None if tokens_column is not None else (tokenizer if isinstance(tokenizer, TextRows) else TextRows(text or TextSpec(), tokenizer))
    if rows_of is None:
        tokenized = ((loc, None) for loc in located_batches)
    else:
        tokenized = ordered_map(lambda loc: (loc, rows_of.tokenize(loc)), located_batches,
                                available_cores() if workers is None else workers)  # fmt: skip
    for loc, encoded in tokenized:
        labels = None
        if encoded is None:
            ids = _list_column(loc, tokens_column)
            _check_ids(loc, tokens_column, ids, low=0)
            offsets, values = _csr(ids)
        else:
            offsets, values, labels = encoded
        if labels_column is not None:
            lab = _list_column(loc, labels_column)
            _check_ids(loc, labels_column, lab, low=-(2**31))
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
        flags = None if label_column is None else _bool_column(loc, label_column)[keep]
        yield TokenBatch(offsets, values, rows.astype(np.int64), labels, rows_read=n, empty=n - keep.shape[0],
                         sequence_label=flags, source=loc.source, source_row0=loc.row - loc.first_row)  # fmt: skip


def _check_ids(loc, name: str, column, low: int) -> None:
    """Every id in ``[low, 2**31)`` (token ids >= 0; labels may be negative, e.g. -100), or a
    ``ValueError`` naming the file, row and value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = _list_values(column)
    if len(values) == 0:
        return
    lo, hi = pc.min_max(values).values()
    if lo.as_py() >= low and hi.as_py() < 2**31:
        return
    bad = pc.or_(pc.less(values, pa.scalar(low, pa.int64())), pc.greater_equal(values, pa.scalar(2**31, pa.int64())))
    k = int(pc.index(bad, True).as_py())
    row = _row_of_value(column, k)
    what = "a token id" if low == 0 else "a label"
    rule = "token ids must be in [0, 2**31); -100 and other masks belong in --labels-column" if low == 0 else "labels must fit int32"
    raise ValueError(f"{loc.source} row {loc.first_row + row}: column {name!r} holds {what} {values[k].as_py()}; {rule}")


def _bool_column(loc, name: str) -> np.ndarray:
    """KTO's per-row boolean ``name`` column of one batch, or a ``ValueError`` naming a null row."""
    column = loc.batch.column(name)
    if column.null_count:
        i = _first_null(column)
        raise ValueError(f"{loc.source} row {loc.first_row + i}: column {name!r} is null; KTO needs true (desirable) or false per row")
    return column.to_numpy(zero_copy_only=False).astype(np.bool_)


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
    values = _list_values(column)
    if values.null_count:
        row = _row_of_value(column, _first_null(values))
        raise ValueError(f"{loc.source} row {loc.first_row + row}: column {name!r} holds a null token id; drop or fix that row")
    return column


def _list_values(column):
    """The values a list array's rows hold (a sliced list array's ``values`` hold more)."""
    first = int(column.offsets[0].as_py())
    return column.values.slice(first, int(column.offsets[-1].as_py()) - first)


def _row_of_value(column, k: int) -> int:
    """The row of a list array that holds the ``k``-th of its ``_list_values``."""
    offsets = column.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    return int(np.searchsorted(offsets - offsets[0], k, side="right")) - 1


def _text_column(loc, name: str, nulls: bool = False):
    """The string column ``name`` of one batch (nulls are an error unless ``nulls``)."""
    import pyarrow as pa

    if name not in loc.batch.schema.names:
        raise ValueError(f"{loc.source}: column {name!r} not found (columns: {loc.batch.schema.names}); pass --text-column naming it")
    column = loc.batch.column(name)
    if column.null_count and not nulls:
        i = _first_null(column)
        raise ValueError(f"{loc.source} row {loc.first_row + i}: column {name!r} is null; drop or fill that row")
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or pa.types.is_null(column.type)):
        raise ValueError(
            f"{loc.source}: column {name!r} has type {column.type}, not text; pass --text-column naming a text column, "
            f"--tokens-column for token ids, --chat-template for a messages column, or --template for a whole row"
        )
    return column


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


def train_on_input(located_batches, text: TextSpec | None = None, vocab_size: int = 8192):
    """Train a byte-level BPE on the text of an input stream (for offline runs without a tokenizer);
    with a ChatML chat template its markers become special tokens."""
    from .tokenizer import train_byte_bpe

    spec = text or TextSpec()
    specials = _chat.CHATML_TOKENS if spec.chat == "chatml" else ()
    rows = TextRows(TextSpec(spec.columns, spec.template, spec.chat, spec.train_on, response=spec.response, separator=spec.separator), None)

    def texts():
        for loc in located_batches:
            yield from rows.texts(loc)

    return train_byte_bpe(texts(), vocab_size=vocab_size, special_tokens=specials)


class Unlabeled:
    """Sequences whose labels are all -100 (they would train on nothing): refused, naming the
    input row, unless ``allow``; ``count`` is how many were kept."""

    def __init__(self, allow: bool):
        self.allow, self.count, self.labelled = bool(allow), 0, False

    def check(self, tb) -> None:
        if tb.labels is None or len(tb) == 0:
            return
        self.labelled = True
        seq = np.repeat(np.arange(len(tb)), tb.lengths)
        trained = np.bincount(seq, weights=tb.labels != IGNORE, minlength=len(tb))
        bad = np.flatnonzero(trained == 0)
        if bad.shape[0] and not self.allow:  # the message is the same whatever the engine's batches
            raise ValueError(
                f"input row {int(tb.rows[bad[0]])}: every label is -100, so it would train on nothing (a chat with no "
                f"assistant turn, or an empty response); drop or fix the row, or pass --allow-unlabeled to keep such rows"
            )
        self.count += int(bad.shape[0])
