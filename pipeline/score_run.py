"""``packwise score``: every input row with a model's ``loss``, ``logprob_sum`` and ``tokens``.

The same machinery as ``pack``: readers and token stage in, ``ShardWriter`` out (atomic shards,
manifest written last, resume after the complete shards, one run per folder under the lock).
Rows are scored in chunks that start at multiples of ``chunk_rows`` (a divisor of the shard size),
so a resumed run packs and scores exactly the rows the interrupted one would have, and its shards
are byte-identical.  The scoring itself is :func:`packwise.packing.score.score_csr`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ._paths import refuse_overlap, run_reads
from .lock import output_lock
from .readers import CsvHeader, Located, open_input
from .run import PackResult, Progress, _prepare, _tokenizer_id, text_spec
from .tokens import token_batches
from .writer import ShardWriter

SCORE_COLUMNS: tuple[str, ...] = ("loss", "logprob_sum", "tokens")
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
_MAX_CHUNK = 2048  # input rows packed and scored together at most


def load_model(folder, dtype: str = "float32", device=None):
    """A local HF causal LM folder -> the model in eval mode (CUDA when there is one).

    Weights load from ``*.safetensors`` only (a pickled ``pytorch_model.bin`` is never read), with
    no remote code; any failure is a ``ValueError`` naming the folder and the fix.
    """
    import torch

    path = check_model_folder(folder, dtype)
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=getattr(torch, dtype), use_safetensors=True, local_files_only=True, trust_remote_code=False
        )
    except Exception as err:  # noqa: BLE001 - any load failure is a bad model folder
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"--model {path}: cannot load a causal LM from it ({type(err).__name__}: {message[:300]}); fix or replace the folder") from None
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval()


def check_model_folder(folder, dtype: str = "float32") -> Path:
    """The checks that need no loading: a folder with ``config.json`` and safetensors weights."""
    path = Path(folder)
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {DTYPES}, got {dtype!r}")
    if not path.is_dir():
        raise ValueError(f"--model {path}: not a folder; pass a local Hugging Face model folder (config.json + *.safetensors)")
    if not (path / "config.json").is_file():
        raise ValueError(f"--model {path}: no config.json; pass the folder save_pretrained wrote")
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.glob("*.bin"))
        hint = f" (it has {pickled[0]}, a pickle packwise never loads: convert it with save_pretrained(safe_serialization=True))" if pickled else ""
        raise ValueError(f"--model {path}: no *.safetensors weights{hint}")
    return path


def _chunk_rows(shard_rows: int) -> int:
    """The largest divisor of ``shard_rows`` up to ``_MAX_CHUNK``: chunks never cross a shard."""
    return max(d for d in range(1, min(shard_rows, _MAX_CHUNK) + 1) if shard_rows % d == 0)


@dataclass
class _Pending:
    """Input rows read but not scored yet: the Arrow rows and their tokens (CSR over every row,
    empty rows included with length 0)."""

    tables: list = field(default_factory=list)
    lengths: list = field(default_factory=list)
    values: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    rows: int = 0

    def add(self, table, lengths: np.ndarray, values: np.ndarray, labels: np.ndarray | None) -> None:
        self.tables.append(table)
        self.lengths.append(lengths)
        self.values.append(values)
        self.labels.append(labels)
        self.rows += table.num_rows

    def take(self, k: int):
        """The first ``k`` rows as ``(table, offsets, values, labels)``; the rest stay pending."""
        import pyarrow as pa

        table = pa.concat_tables(self.tables, promote_options="default")
        lengths = np.concatenate(self.lengths)
        values = np.concatenate(self.values)
        mixed = [v if lab is None else lab for v, lab in zip(self.values, self.labels)]  # a batch without labels scores all
        labels = None if all(lab is None for lab in self.labels) else np.concatenate(mixed)
        cut = int(lengths[:k].sum())
        head = (table.slice(0, k), np.concatenate(([0], np.cumsum(lengths[:k]))).astype(np.int64), values[:cut],
                None if labels is None else labels[:cut])  # fmt: skip
        self.tables, self.lengths, self.values, self.labels, self.rows = [], [], [], [], 0
        if k < table.num_rows:
            self.add(table.slice(k), lengths[k:], values[cut:], None if labels is None else labels[cut:])
        return head


def _skip(batches: Iterator[Located], skip: int) -> Iterator[Located]:
    """``batches`` without the input's first ``skip`` rows (those already in complete shards)."""
    for loc in batches:
        n = loc.batch.num_rows
        if loc.row + n <= skip:
            continue
        if loc.row < skip:
            k = skip - loc.row
            loc = Located(loc.batch.slice(k), loc.source, loc.first_row + k, loc.row + k)
        yield loc


def _chunks(batches, *, text_rows, tokens_column, labels_column, start: int, chunk_rows: int):
    """``(table, offsets, values, labels)`` of consecutive input rows, cut at multiples of ``chunk_rows``."""
    import pyarrow as pa

    pending, row = _Pending(), start
    for loc in batches:
        tb = next(token_batches([loc], tokenizer=text_rows, tokens_column=tokens_column, labels_column=labels_column), None)
        n = loc.batch.num_rows
        lengths = np.zeros(n, np.int64)
        if tb is not None:
            lengths[tb.rows - loc.row] = tb.lengths
        values = np.zeros(0, np.int64) if tb is None else tb.values
        labels = None if tb is None else tb.labels
        pending.add(pa.Table.from_batches([loc.batch]), lengths, values, labels)
        while pending.rows and pending.rows >= chunk_rows - row % chunk_rows:
            k = chunk_rows - row % chunk_rows
            row += k
            yield pending.take(k)
    if pending.rows:
        yield pending.take(pending.rows)


def _scored_table(table, result):
    """The input rows plus ``loss``, ``logprob_sum`` and ``tokens``."""
    import pyarrow as pa

    table = table.append_column("loss", pa.array(result.loss, pa.float32()))
    table = table.append_column("logprob_sum", pa.array(result.logprob_sum, pa.float64()))
    return table.append_column("tokens", pa.array(result.tokens, pa.int64()))


def _check_columns(schema_names: Sequence[str], source: str) -> None:
    clash = [c for c in SCORE_COLUMNS if c in schema_names]
    if clash:
        raise ValueError(
            f"input: {source} already has a column {clash[0]!r}, which score writes; rename or drop it first "
            f"(score adds {', '.join(SCORE_COLUMNS)})"
        )


def _check_lengths(lengths: np.ndarray, max_tokens: int, source: str, first_row: int) -> None:
    """A row longer than a packed forward is bad input, named by its row in the whole input."""
    from ..packing.core import first_over

    i = first_over(lengths, max_tokens)
    if i is not None:
        raise ValueError(
            f"input: {source} row {first_row + i} has {int(lengths[i])} tokens, more than --max-tokens {max_tokens}; "
            f"raise --max-tokens to at least {int(lengths.max())} (score never cuts a row)"
        )


def score_to_parquet(
    source,
    output,
    *,
    model: str | Path,
    max_tokens: int,
    tokens_column: str | None = None,
    labels_column: str | None = None,
    text_column: str | Sequence[str] | None = None,
    template: Callable[[dict], str] | None = None,
    chat_template: str | None = None,
    train_on: str | None = None,
    add_bos: bool = False,
    add_eos: bool = False,
    csv_header: CsvHeader = True,
    format: str | None = None,
    dtype: str = "float32",
    attention: str = "auto",
    shard_rows: int = 8192,
    overwrite: bool = False,
    batch_size: int = 8192,
    progress: Progress | None = None,
) -> PackResult:
    """Score every row of ``source`` with the causal LM in folder ``model`` (see ``packwise score``).

    Text is tokenized with the model folder's tokenizer (the text options are those of
    ``pack_to_parquet``), or ``tokens_column`` (and ``labels_column``, -100 = not scored) is read
    as it is.  Shards under ``output`` hold every input row, in order, plus ``loss`` (mean
    negative log-likelihood over the row's scored tokens, NaN when it has none), ``logprob_sum``
    and ``tokens`` (the count of scored tokens).
    """
    from ..packing.score import ATTENTIONS, _check_capacity, score_csr

    _check_capacity(max_tokens, np.zeros(0, np.int64))
    if isinstance(shard_rows, bool) or not isinstance(shard_rows, (int, np.integer)) or shard_rows < 1:
        raise ValueError(f"--shard-rows must be an integer >= 1, got {shard_rows!r}")
    if attention not in ATTENTIONS:
        raise ValueError(f"--attention must be one of {ATTENTIONS}, got {attention!r}")
    refuse_overlap([("output", output)], run_reads(source, model=model), folders=True)  # nothing over what it reads
    model_path = check_model_folder(model, dtype)
    if tokens_column is None and not any((model_path / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")):
        raise ValueError(f"--model {model_path}: no tokenizer in the folder (tokenizer.json); pass --tokens-column, or save the tokenizer there")
    text = text_spec(text_column, template, chat_template, train_on, add_bos, add_eos, None, tokens_column is None)
    inp, text_rows, _, _ = _prepare(
        source, tokenizer=None if tokens_column else model_path, train_tokenizer=False, text=text, tokens_column=tokens_column,
        labels_column=labels_column, batch_size=batch_size, format=format, csv_header=csv_header,
    )  # fmt: skip
    full = open_input(source, None, batch_size=batch_size, format=format, csv_header=csv_header)
    lm = load_model(model_path, dtype)
    text_settings = {k: None for k in text.describe()} if tokens_column else text.describe()
    settings = {
        "command": "score",
        "input": inp.identity,
        "model": _tokenizer_id(None, model_path),
        "max_tokens": int(max_tokens),
        "dtype": dtype,
        "attention": attention,
        "device": str(next(lm.parameters()).device.type),
        **text_settings,
        "tokens_column": tokens_column,
        "labels_column": labels_column,
    }
    with output_lock(output):
        writer = ShardWriter(output, settings=settings, fingerprint=full.fingerprint(), shard_rows=shard_rows, overwrite=overwrite)
        if writer.state == "complete":
            return PackResult(Path(output), "complete", len(writer.manifest["shards"]), writer.manifest)
        state, resumed = writer.state, len(writer.shards)
        totals = {k: sum(s[k] for s in writer.shards) for k in ("rows", "sequences", "tokens")}
        try:
            done = writer.skip_done()
            chunks = _chunks(_skip(full.batches(), done), text_rows=text_rows, tokens_column=tokens_column,
                             labels_column=labels_column, start=done, chunk_rows=_chunk_rows(shard_rows))  # fmt: skip
            row = done
            for table, offsets, values, labels in chunks:
                _check_columns(table.schema.names, inp.name)
                _check_lengths(np.diff(offsets), max_tokens, inp.name, row)
                row += table.num_rows
                result = score_csr(lm, offsets, values, max_tokens, labels=labels, attention=attention)
                writer.write_table(_scored_table(table, result))
                totals["rows"] += table.num_rows
                totals["sequences"] += int((result.tokens > 0).sum())
                totals["tokens"] += int(result.tokens.sum())
                if progress is not None:
                    progress(table.num_rows, int(offsets[-1]))
        except BaseException:
            writer.abort()
            raise
        if totals["rows"] == 0:
            raise ValueError(f"input: {inp.name} has no rows: empty input, nothing to score")
        stats = {"rows_in": totals["rows"], "scored_rows": totals["sequences"], "scored_tokens": totals["tokens"]}
        manifest = writer.close(stats)
        return PackResult(Path(output), state, resumed, manifest)
