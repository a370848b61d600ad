"""The whole preprocessing run: read -> tokens -> windowed pack -> Parquet shards + manifest.

Also the length pass behind ``packwise report`` (same readers and token stage, lengths only).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ._paths import refuse_overlap, run_reads
from .pack_stage import StreamPacker, check_pack_settings, warm_up
from .layouts import Layout, input_layout, layout_options, needs_detection
from .lock import output_lock
from .ray_engine import RayShards, check_engine, require_ray
from .readers import CsvDialect, CsvHeader, open_input
from .tokenizer_backend import TextEncoder, check_backend
from .tokens import TEXT_SEPARATOR, TextRows, TextSpec, Unlabeled, resolve_tokenizer, token_batches, train_on_input
from .writer import _ROW_GROUP, TRAINED_TOKENIZER, ShardWriter

Progress = Callable[[int, int], None]
DEFAULT_BLOCK_ROWS = 100_000  # --engine ray: input rows per pack block (10 default windows)


@dataclass(frozen=True)
class PackResult:
    """What ``pack_to_parquet`` did: ``state`` is ``"new"``, ``"resume"`` or ``"complete"`` (up to date)."""

    output: Path
    state: str
    resumed_shards: int
    manifest: dict


def _tokenizer_id(tokenizer, path) -> str:
    """The tokenizer's identity for resume checks: its files' content (names relative to the folder),
    never the path, so ``./tok.json``, an absolute path or a symlink to it name the same tokenizer."""
    if path is not None:
        p = Path(path).resolve()
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        h = hashlib.sha256()
        for f in files:
            name = f.relative_to(p).as_posix() if p.is_dir() else ""
            h.update(name.encode() + b"\0" + f.read_bytes())
        return f"{'folder' if p.is_dir() else 'file'}#sha256:{h.hexdigest()[:16]}"
    if hasattr(tokenizer, "to_str"):
        return "object#sha256:" + hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:16]
    return f"object:{getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)}"


def check_token_source(tokenizer, train_tokenizer, tokens_column, labels_column, tokenizer_backend) -> None:
    """Exactly one source of token ids (a tokenizer, a trained one, or a token column), checked before any reading."""
    check_backend(tokenizer_backend)
    if tokens_column is not None and (tokenizer is not None or train_tokenizer):
        raise ValueError("pass either --tokens-column or a tokenizer (--tokenizer / --train-tokenizer), not both")
    if tokens_column is None and (tokenizer is None) == (not train_tokenizer):
        raise ValueError("pass exactly one of --tokenizer PATH, --train-tokenizer or --tokens-column COLUMN")
    if labels_column is not None and tokens_column is None:
        raise ValueError("--labels-column needs --tokens-column (labels parallel to token ids); a tokenizer makes no labels, drop --labels-column")


def _prepare(source, *, tokenizer, train_tokenizer, text, tokens_column, labels_column, batch_size, format, csv_header,
             tokenizer_backend="auto", rows_class=TextRows, also_read=(), csv_dialect=None):  # fmt: skip
    check_token_source(tokenizer, train_tokenizer, tokens_column, labels_column, tokenizer_backend)
    if tokens_column is not None:
        if text.add_bos or text.add_eos or text.chat or text.template:
            raise ValueError(
                "--tokens-column reads token ids as they are: --add-bos/--add-eos, --chat-template and --template "
                "need a tokenizer (--tokenizer PATH or --train-tokenizer)"
            )
        columns = [tokens_column] + ([labels_column] if labels_column else [])
    else:
        columns = text.read_columns if text.read_columns is None else text.read_columns + list(also_read)
    inp = open_input(source, columns, batch_size=batch_size, format=format, csv_header=csv_header, csv_dialect=csv_dialect)
    tok_path = None
    if isinstance(tokenizer, (str, Path)):
        tok_path, tokenizer = tokenizer, resolve_tokenizer(tokenizer)
    elif train_tokenizer:
        tokenizer = train_on_input(inp.batches(), text)
    # checks BOS/EOS and the chat template now; the backend is decided on the first batch encoded
    rows = None if tokenizer is None else rows_class(text, TextEncoder(tokenizer, tokenizer_backend))
    return inp, rows, tokenizer, tok_path


def text_spec(text_column, template, chat_template, train_on, add_bos, add_eos, algorithm: str | None, tokenizing: bool,
              response: bool = False, separator: str = TEXT_SEPARATOR) -> TextSpec:  # fmt: skip
    """The ``TextSpec`` of a run; ``add_eos=None`` means on for ``concat`` (documents would run
    together) when the run tokenizes, off otherwise."""
    if add_eos is None:
        add_eos = algorithm == "concat" and tokenizing
    return TextSpec(text_column, template, chat_template, train_on, bool(add_bos), bool(add_eos), response, separator)


def run_text(source, options: dict, format, csv_header, tokenizer, rest: tuple,
             csv_dialect: CsvDialect | None = None) -> tuple[Layout | None, TextSpec, CsvHeader]:  # fmt: skip
    """The layout (``None`` when ``options`` name a column option: text_column, tokens_column,
    template, chat_template), the ``TextSpec`` of the run and the CSV header; ``rest`` is
    ``(train_on, add_bos, add_eos, algorithm, tokenizing)`` as ``text_spec`` takes them."""
    train_on, add_bos, add_eos, algorithm, tokenizing = rest
    layout, found = None, {"response": False, "separator": TEXT_SEPARATOR}
    if needs_detection(*options.values()):
        layout = input_layout(source, format=format, csv_header=csv_header, csv_dialect=csv_dialect)
        found = layout_options(layout, tokenizer)
        csv_header = csv_header if found.pop("csv_header") else False
        options = {**options, **found}
    spec = text_spec(options["text_column"], options["template"], options["chat_template"], train_on, add_bos, add_eos,
                     algorithm, tokenizing, found["response"], found["separator"])  # fmt: skip
    return layout, spec, csv_header


def rows_of_layout(layout: Layout | None, share_prompt: bool, algorithm: str, oversize: str, engine: str):
    """``TextRows``, or for a DPO layout ``PairRows`` (one ``[P C (P) R]`` sequence per pair), after
    refusing the settings that would cut a pair."""
    if layout is not None and layout.label is not None and engine != "local":
        raise ValueError(f"layout {layout.name}: the Ray engine does not carry the per-sequence {layout.label!r} column; "
                         f"pack this input with --engine local")  # fmt: skip
    if layout is not None and layout.label is not None and (algorithm == "concat" or oversize == "split"):
        raise ValueError(
            f"layout {layout.name}: each sequence keeps its {layout.label!r} column; --algorithm concat and --oversize split "
            f"would cut it: use a packer such as window_bfd"
        )
    if layout is None or layout.pair is None:
        if share_prompt:
            raise ValueError("--share-prompt applies to preference pairs (chosen/rejected columns); drop it for this input")
        return TextRows
    from functools import partial

    from .preference import PairRows

    if algorithm == "concat" or oversize in ("truncate", "split"):
        raise ValueError(
            f"layout {layout.name}: a preference pair is packed whole; --algorithm concat and --oversize truncate/split "
            f"would cut it: use a packer such as window_bfd with --oversize error or drop"
        )
    return partial(PairRows, pair=layout.pair, share_prompt=share_prompt)


def _stage(inp, rows, tokens_column, labels_column, progress, unlabeled: "Unlabeled | None" = None, label_column=None):
    """Token batches of the input, reporting ``(rows, tokens)`` of each to ``progress``; ``unlabeled``
    checks every sequence with labels trains on something; ``label_column``: KTO's per-row boolean."""
    for tb in token_batches(inp.batches(), tokenizer=rows, tokens_column=tokens_column, labels_column=labels_column,
                            label_column=label_column):  # fmt: skip
        if progress is not None:
            progress(tb.rows_read, int(tb.offsets[-1]))
        if unlabeled is not None:
            unlabeled.check(tb)
        yield tb


def pack_to_parquet(
    source,
    output,
    *,
    max_tokens: int,
    tokenizer=None,
    train_tokenizer: bool = False,
    text_column: str | Sequence[str] | None = None,
    tokens_column: str | None = None,
    labels_column: str | None = None,
    template: Callable[[dict], str] | None = None,
    chat_template: str | None = None,
    train_on: str | None = None,
    add_bos: bool = False,
    add_eos: bool | None = None,
    csv_header: CsvHeader = True,
    csv_dialect: CsvDialect | None = None,
    algorithm: str = "window_bfd",
    window: int = 10_000,
    oversize: str = "error",
    shard_rows: int = 8192,
    seed: int | None = None,
    overwrite: bool = False,
    batch_size: int = 8192,
    format: str | None = None,
    progress: Progress | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    tail_pass: bool = False,
    tokenizer_backend: str = "auto",
    allow_unlabeled: bool = False,
    share_prompt: bool = False,
) -> PackResult:
    """Pack ``source`` into Parquet shards under ``output`` (see ``packwise pack``).

    ``engine="ray"`` runs tokenization and packing on Ray Data (``pip install 'packwise[ray]'``;
    ``ray_address`` or ``$RAY_ADDRESS`` names a cluster, else a local Ray is started): each block of
    ``block_rows`` input rows is packed on its own by the same windowed packer and written as its
    own shards by the worker; the driver writes the manifest last, and a rerun redoes only the
    blocks not complete. The output differs from the local engine's only where blocks end;
    ``tail_pass=True`` repacks every block's last open rows together on the driver (padding within
    0.1 points of local). See docs/ray.md.

    How rows become text: ``text_column`` (default ``text``; several comma-separated columns are
    joined with ``TEXT_SEPARATOR``), ``template`` (a function of the whole row), or
    ``chat_template`` (``"chatml"`` / ``"tokenizer"``) over a ``messages`` / ``conversations``
    column, with ``train_on="assistant"`` (the default with a chat template) writing ``labels``
    that are -100 outside the assistant turns.  ``add_eos`` (default: on for ``concat``) /
    ``add_bos`` mark document boundaries with the tokenizer's EOS / BOS token.

    ``tokenizer_backend`` (``auto``, ``hf``, ``fastokens``; see ``tokenizer_backend``) picks the
    library that encodes the text; every backend gives the same ids, so it is not a setting that
    blocks a resume; the one used is recorded in ``manifest["stats"]["tokenizer_backend"]``.

    Example:
        >>> import tempfile, pyarrow as pa, pyarrow.parquet as pq
        >>> from packwise.pipeline import pack_to_parquet, PackedDataset
        >>> d = tempfile.mkdtemp()
        >>> ids = pa.array([[1, 2, 3], [4, 5], [6], [7, 8, 9, 10]], pa.list_(pa.int32()))
        >>> pq.write_table(pa.table({"input_ids": ids}), d + "/in.parquet")
        >>> r = pack_to_parquet(d + "/in.parquet", d + "/out", max_tokens=5, tokens_column="input_ids")
        >>> r.manifest["stats"]["rows_out"], r.manifest["stats"]["tokens_out"]
        (2, 10)
    """
    check_pack_settings(max_tokens, algorithm, oversize, window, seed)  # before reading
    refuse_overlap([("output", output)], run_reads(source, tokenizer=tokenizer), folders=True)  # nothing over what it reads
    check_engine(engine)
    if engine == "local":
        warm_up(algorithm, oversize, labels_column is not None or train_on is not None)  # overlaps the reading
    if engine == "ray":
        if isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer)) or block_rows < 1:
            raise ValueError(f"--block-rows must be an integer >= 1 (input rows per Ray pack block), got {block_rows!r}")
        require_ray()
    check_token_source(tokenizer, train_tokenizer, tokens_column, labels_column, tokenizer_backend)
    layout, text, csv_header = run_text(source, dict(text_column=text_column, tokens_column=tokens_column, template=template,
                                        chat_template=chat_template), format, csv_header, tokenizer,
                                        (train_on, add_bos, add_eos, algorithm, tokens_column is None), csv_dialect)  # fmt: skip
    rows_class = rows_of_layout(layout, share_prompt, algorithm, oversize, engine)
    inp, text_rows, tok, tok_path = _prepare(
        source,
        tokenizer=tokenizer,
        train_tokenizer=train_tokenizer,
        text=text,
        tokens_column=tokens_column,
        labels_column=labels_column,
        batch_size=batch_size,
        format=format,
        csv_header=csv_header,
        tokenizer_backend=tokenizer_backend,
        rows_class=rows_class,
        also_read=() if layout is None else layout.also_read,
        csv_dialect=csv_dialect,
    )
    text_settings = {k: None for k in text.describe()} if tokens_column else text.describe()
    settings = {
        "input": inp.identity,
        "max_tokens": int(max_tokens),
        "algorithm": algorithm,
        "window": int(window),
        "oversize": oversize,
        "seed": seed,
        **text_settings,
        "tokens_column": tokens_column,
        "labels_column": labels_column,
        "tokenizer": None if tok is None else _tokenizer_id(tok, tok_path),
        "engine": engine,
        "block_rows": int(block_rows) if engine == "ray" else None,
        **({"tail_pass": bool(tail_pass)} if engine == "ray" else {}),
        **({"layout": layout.name} if layout is not None else {}),
        **({"allow_unlabeled": True} if allow_unlabeled else {}),
        **({"share_prompt": bool(share_prompt)} if layout is not None and layout.pair else {}),
    }
    with output_lock(output):  # one run per output folder
        writer_class = RayShards if engine == "ray" else ShardWriter  # Ray: the workers write the shards, this commits
        writer = writer_class(output, settings=settings, fingerprint=inp.fingerprint(), shard_rows=shard_rows, overwrite=overwrite,
                              also_writes=(TRAINED_TOKENIZER,) if train_tokenizer else ())  # fmt: skip
        if writer.state == "complete":
            return PackResult(Path(output), "complete", len(writer.manifest["shards"]), writer.manifest)
        state, resumed = writer.state, len(writer.shards)
        if train_tokenizer and hasattr(tok, "save"):
            from .atomic import atomic_path

            with atomic_path(Path(output) / TRAINED_TOKENIZER) as tmp:
                tok.save(str(tmp))
        try:
            if engine == "local":
                packer = StreamPacker(max_tokens, algorithm, oversize, window=window, seed=seed, part_rows=_ROW_GROUP)
                unlabeled = Unlabeled(allow_unlabeled)
                kto = None if layout is None else layout.label
                for tb in _stage(inp, text_rows, tokens_column, labels_column, progress, unlabeled, kto):
                    for rows in packer.add(tb):
                        writer.write(rows)
                for rows in packer.finish():
                    writer.write(rows)
                stats = packer.stats
            else:
                from .ray_engine import RayPackRun, ray_session

                with ray_session(ray_address):
                    first = next(iter(inp.batches()), None) if text_rows is not None else None
                    if first is not None:  # decide the backend on the driver: every worker then uses the same
                        text_rows.tokenize(first)
                    run = RayPackRun(
                        inp, tokenizer=text_rows, text=text, tokens_column=tokens_column, labels_column=labels_column,
                        max_tokens=max_tokens, algorithm=algorithm, oversize=oversize, window=window,
                        seed=seed, block_rows=block_rows, tail_pass=tail_pass, progress=progress,
                        allow_unlabeled=allow_unlabeled, also_read=() if layout is None else layout.also_read,
                    )  # fmt: skip
                    run.write(writer)
                stats, unlabeled = run.stats, run.unlabeled
        except BaseException:
            writer.abort()  # no shard write left running behind the error, nothing more published
            raise
        if stats.rows_in == 0:
            raise ValueError(f"input: {inp.name} has no rows: empty input, nothing to pack")
        if stats.sequences == 0:
            raise ValueError(f"input: {inp.name} has {stats.rows_in} rows but no tokens: nothing to pack")
        backend = None if text_rows is None else text_rows.encoder.describe()
        # counted where labels were made (without them every token trains), by the local stage or the Ray blocks
        kept = {"unlabeled_sequences": unlabeled.count} if unlabeled.labelled else {}
        if layout is not None and layout.pair:
            kept["pairs"] = stats.sequences
        notes = inp.notes if engine == "local" else {}  # Ray's own CSV reader counts nothing
        manifest = writer.close({**stats.to_dict(), **kept, "tokenizer_backend": backend, **notes})
        return PackResult(Path(output), state, resumed, manifest)


def dataset_lengths(
    source,
    *,
    tokenizer=None,
    train_tokenizer: bool = False,
    text_column: str | Sequence[str] | None = None,
    tokens_column: str | None = None,
    template: Callable[[dict], str] | None = None,
    chat_template: str | None = None,
    add_bos: bool = False,
    add_eos: bool = False,
    csv_header: CsvHeader = True,
    csv_dialect: CsvDialect | None = None,
    batch_size: int = 8192,
    format: str | None = None,
    progress: Progress | None = None,
    tokenizer_backend: str = "auto",
    share_prompt: bool = False,
    notes: dict | None = None,
) -> np.ndarray:
    """Token length of every non-empty row of ``source`` (int64), streaming; for ``packwise report``.

    Takes the text options of ``pack_to_parquet``, so the lengths are those that run would pack.
    ``notes``, when given, receives what the reader noticed (``readers.QUOTED_LINE_BREAKS`` of a CSV).
    """
    check_token_source(tokenizer, train_tokenizer, tokens_column, None, tokenizer_backend)
    layout, text, csv_header = run_text(source, dict(text_column=text_column, tokens_column=tokens_column, template=template,
                                   chat_template=chat_template), format, csv_header, tokenizer,
                                   ("all", add_bos, add_eos, None, True), csv_dialect)  # fmt: skip
    inp, rows, _, _ = _prepare(
        source,
        tokenizer=tokenizer,
        train_tokenizer=train_tokenizer,
        text=text,
        tokens_column=tokens_column,
        labels_column=None,
        batch_size=batch_size,
        format=format,
        csv_header=csv_header,
        tokenizer_backend=tokenizer_backend,
        rows_class=rows_of_layout(layout, share_prompt, "window_bfd", "error", "local"),
        also_read=() if layout is None else layout.also_read,
        csv_dialect=csv_dialect,
    )
    parts, n = [], 0
    for tb in _stage(inp, rows, tokens_column, None, progress):
        parts.append(tb.lengths)
        n += tb.rows_read
    if notes is not None:
        notes.update(inp.notes)
    if n == 0:
        raise ValueError(f"input: {inp.name} has no rows: empty input, nothing to report")
    lengths = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if lengths.shape[0] == 0:
        raise ValueError(f"input: {inp.name} has {n} rows but no tokens: nothing to report")
    return lengths.astype(np.int64, copy=False)
