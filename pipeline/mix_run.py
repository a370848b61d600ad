"""The mixture runs: ``pack_mixture`` (``packwise pack A B ... OUT --mix``) and ``report_mixture``
(``packwise report A B ... --mix``) over the stage, plan and interleave of ``mix``.

Each source is opened with its own layout detection and the same text options, staged (its encoder
released once it is), planned and packed; ``pack_mixture`` writes shards and a manifest under the
output lock, ``report_mixture`` counts the rows per source in a temporary staging folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ._paths import refuse_overlap, run_reads, shown
from .mix import (STAGE, MixedStream, MixSpec, Progress, Source, Staged, clean_stage, mixture_fingerprint, plan,
                  proportion_tolerance, source_entries, stage_source)  # fmt: skip
from .pack_stage import PackedRows, StreamPacker, check_pack_settings, warm_up


def pack_mixture(sources: Sequence[Source], output, *, mix: MixSpec, max_tokens: int, algorithm: str = "window_bfd", window: int = 10_000,
                 oversize: str = "error", shard_rows: int = 8192, seed: int | None = None, overwrite: bool = False,
                 progress: Progress | None = None, allow_unlabeled: bool = False, **text):  # fmt: skip
    """Pack ``sources`` into one output whose tokens follow ``mix`` (see ``mix`` and ``packwise
    pack --mix``). ``text``: the text options of ``pack_to_parquet`` (``tokenizer``,
    ``text_column``, ``chat_template``, ``csv_header``, ... as ``_open_all`` takes them), applied
    to every source, each with its own layout detection. Every sequence keeps its source id (the
    shards' ``source`` column; the manifest's ``sources`` lists them with target and realised
    proportions). Returns a ``PackResult``."""
    from .run import PackResult

    check_pack_settings(max_tokens, algorithm, oversize, window, seed)
    names = [s.name for s in sources]
    mix.check_names(names)
    for s in sources:
        refuse_overlap([("output", output)], run_reads(s.path, tokenizer=text.get("tokenizer")), folders=True)
    warm_up(algorithm, oversize, True)
    opened = _open_all(sources, algorithm, **text)
    common = _packing(max_tokens, algorithm, window, oversize, seed, text)
    settings = _settings(sources, opened, mix, text.get("tokenizer"), common, allow_unlabeled)
    fingerprints = [o.inp.fingerprint() for o in opened]
    return _run(sources, opened, output, settings, mixture_fingerprint(names, fingerprints), fingerprints, mix,
                dict(shard_rows=shard_rows, overwrite=overwrite, progress=progress, allow_unlabeled=allow_unlabeled), PackResult)  # fmt: skip


def report_mixture(sources: Sequence[Source], *, mix: MixSpec, max_tokens: int, oversize: str = "truncate", window: int = 10_000,
                   progress: Progress | None = None, **text) -> dict:  # fmt: skip
    """What ``pack_mixture`` with ``window_bfd`` would make of ``sources``, without writing it
    (``packwise report A B ... --mix``): per source its tokens, sequences, padding share and realised
    against target proportion, as ``source_report`` gives for a pack output. ``text``: the text
    options of ``pack_mixture``. Sources are staged in a temporary folder, removed at the end."""
    import tempfile

    from .source_report import SourceCounts

    check_pack_settings(max_tokens, "window_bfd", oversize, window, None)
    mix.check_names([s.name for s in sources])
    opened = _open_all(sources, "window_bfd", **text)
    settings = _packing(max_tokens, "window_bfd", window, oversize, None, text)
    counts = SourceCounts(len(sources), int(max_tokens))
    with tempfile.TemporaryDirectory(prefix="packwise-mix-") as folder:
        m = _mix(sources, opened, Path(folder), settings, mix, progress, True)
        for rows in m.rows():
            counts.add(rows.seq_offsets, rows.seq_lens, rows.source)
    return counts.report("mixture of " + ", ".join(s.name for s in sources), [s.name for s in sources],
                         [{"target": float(t)} for t in m.targets])  # fmt: skip


def _packing(max_tokens: int, algorithm: str, window: int, oversize: str, seed: int | None, text: dict) -> dict:
    """The packing settings of a mixture run (and the token columns its staging reads)."""
    return dict(max_tokens=int(max_tokens), algorithm=algorithm, window=int(window), oversize=oversize, seed=seed,
                tokens_column=text.get("tokens_column"), labels_column=text.get("labels_column"))  # fmt: skip


def _open_all(sources: Sequence[Source], algorithm: str, *, tokenizer=None, tokens_column=None, labels_column=None, text_column=None,
              template=None, chat_template=None, train_on=None, add_bos=False, add_eos=None, csv_header=True, csv_dialect=None,
              batch_size=8192, format=None, tokenizer_backend="auto") -> list:  # fmt: skip
    """Every source opened for tokenizing with the same text options (``_open_source``)."""
    from .run import check_token_source

    from .tokens import resolve_tokenizer

    check_token_source(tokenizer, False, tokens_column, labels_column, tokenizer_backend)
    loaded = resolve_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer  # once, for every source
    options = dict(text_column=text_column, tokens_column=tokens_column, template=template, chat_template=chat_template)
    read = dict(labels_column=labels_column, batch_size=batch_size, format=format, csv_header=csv_header, csv_dialect=csv_dialect,
                tokenizer_backend=tokenizer_backend)  # fmt: skip
    rest = (train_on, add_bos, add_eos, algorithm, tokens_column is None)
    return [_open_source(s, tokenizer, loaded, options, rest, read) for s in sources]


@dataclass
class _Opened:
    """A source opened for reading: its input, layout, text spec and tokenizing rows."""

    inp: object
    layout: object
    text: object
    rows: object
    tokenizer: object
    backend: dict | None = None

    def release(self) -> None:
        """Drop the tokenizing rows once the source is staged (a fastokens encoder holds ~40 MB), keeping
        which backend encoded it."""
        if self.rows is not None:
            self.backend, self.rows = self.rows.encoder.describe(), None


def _open_source(source: Source, tokenizer, loaded, options: dict, rest: tuple, read: dict) -> _Opened:
    """Detect ``source``'s layout (unless a column option is given) and open it for tokenizing with
    ``loaded`` (the ``tokenizer`` option, a path or an object, loaded)."""
    from .run import _prepare, rows_of_layout, run_text

    layout, text, header = run_text(source.path, options, read["format"], read["csv_header"], tokenizer, rest, read["csv_dialect"])
    if layout is not None and (layout.pair is not None or layout.label is not None):
        raise ValueError(
            f"source {source.name} ({shown(source.path)}): layout {layout.name} keeps a per-pair or per-sequence label; "
            f"a mixture packs sequences of text, chat or prompt/response layouts: pack it on its own"
        )
    rows_class = rows_of_layout(layout, False, rest[3], "error", "local")
    inp, rows, tok, _ = _prepare(source.path, tokenizer=loaded, train_tokenizer=False, text=text, tokens_column=options["tokens_column"],
                                 labels_column=read["labels_column"], batch_size=read["batch_size"], format=read["format"],
                                 csv_header=header, tokenizer_backend=read["tokenizer_backend"], rows_class=rows_class,
                                 also_read=() if layout is None else layout.also_read, csv_dialect=read["csv_dialect"])  # fmt: skip
    return _Opened(inp, layout, text, rows, tok)


def _settings(sources, opened, mix: MixSpec, tokenizer, common: dict, allow_unlabeled: bool) -> dict:
    """The run's settings: every input (identity, layout, text options), the mix and the packing."""
    from .run import _tokenizer_id

    tokens_column = common["tokens_column"]
    inputs = [{"name": s.name, "input": o.inp.identity, "layout": None if o.layout is None else o.layout.name,
               **({} if tokens_column else o.text.describe())} for s, o in zip(sources, opened)]  # fmt: skip
    first = opened[0]
    tok = first.tokenizer
    return {
        "inputs": inputs,
        **mix.describe(),
        **common,
        "add_bos": None if tokens_column else first.text.add_bos,
        "add_eos": None if tokens_column else first.text.add_eos,
        "tokenizer": None if tok is None else _tokenizer_id(tok, tokenizer if isinstance(tokenizer, (str, Path)) else None),
        "engine": "local",
        **({"allow_unlabeled": True} if allow_unlabeled else {}),
    }


@dataclass
class _Mixture:
    """A staged and planned mixture: its packer, and the tokens and sequences per source of the rows so far."""

    staged: list
    targets: np.ndarray
    takes: list
    stream: MixedStream
    packer: StreamPacker
    unlabeled: object
    tokens: np.ndarray
    sequences: np.ndarray

    def rows(self) -> Iterator[PackedRows]:
        """The packed rows (with source ids), counted per source as they go."""
        for rows in _packed(self.packer, self.stream):
            self.tokens += np.bincount(rows.source, weights=rows.seq_lens, minlength=len(self.staged)).astype(np.int64)
            self.sequences += np.bincount(rows.source, minlength=len(self.staged))
            yield rows


def _mix(sources, opened, folder: Path, settings: dict, mix: MixSpec, progress, allow_unlabeled: bool, part_rows=None) -> _Mixture:
    """Stage every source under ``folder``, refuse one with no tokens, plan the takes and set up the packer."""
    from .run import _stage
    from .tokens import Unlabeled

    unlabeled = Unlabeled(allow_unlabeled)
    cap = settings["max_tokens"]
    staged = []
    for k, (s, o) in enumerate(zip(sources, opened)):
        batches = _stage(o.inp, o.rows, settings["tokens_column"], settings["labels_column"], progress, unlabeled)
        staged.append(stage_source(s, batches, folder, k, cap, settings["algorithm"], settings["oversize"]))
        o.release()
    for s in staged:
        _refuse_empty(s)
    sizes = np.array([s.tokens if mix.by == "tokens" else s.lengths.shape[0] for s in staged], np.float64)
    targets = mix.targets([s.source.name for s in staged], sizes)
    takes = plan(staged, targets, mix)
    stream = MixedStream(staged, takes, mix.by)
    packer = StreamPacker(cap, settings["algorithm"], settings["oversize"], window=settings["window"], seed=settings["seed"],
                          part_rows=part_rows, row_order=stream.row_order)  # fmt: skip
    n = len(staged)
    return _Mixture(staged, targets, takes, stream, packer, unlabeled, np.zeros(n, np.int64), np.zeros(n, np.int64))


def _run(sources, opened, output, settings: dict, fingerprint: str, fingerprints: list, mix: MixSpec, opts: dict, result_class):
    """Under the output lock: stage, plan, pack and write, or return the complete output as it is."""
    from .lock import output_lock
    from .writer import _ROW_GROUP, ShardWriter

    with output_lock(output):
        writer = ShardWriter(output, settings=settings, fingerprint=fingerprint, shard_rows=opts["shard_rows"], overwrite=opts["overwrite"])
        if writer.state == "complete":
            return result_class(Path(output), "complete", len(writer.manifest["shards"]), writer.manifest)
        state, resumed = writer.state, len(writer.shards)
        folder = Path(output) / STAGE
        clean_stage(folder)
        folder.mkdir(exist_ok=True)
        try:
            m = _mix(sources, opened, folder, settings, mix, opts["progress"], opts["allow_unlabeled"], _ROW_GROUP)
            for rows in m.rows():
                writer.write(rows)
        except BaseException:
            writer.abort()
            raise
        finally:
            clean_stage(folder)
        entries = source_entries(m.staged, m.takes, m.targets, m.tokens, m.sequences, fingerprints,
                                 [None if o.layout is None else o.layout.name for o in opened])  # fmt: skip
        stats = _stats(m.packer, m.staged, opened, m.unlabeled)
        tolerance = proportion_tolerance(settings["max_tokens"], int(m.tokens.sum()), m.targets)
        stats["proportion_tolerance"] = tolerance if mix.by == "tokens" else None
        manifest = writer.close(stats, {"sources": entries})
        return result_class(Path(output), state, resumed, manifest)


def _packed(packer: StreamPacker, stream: MixedStream) -> Iterator[PackedRows]:
    for tb in stream.batches():
        for rows in packer.add(tb):
            yield stream.restore(rows)
    for rows in packer.finish():
        yield stream.restore(rows)


def _refuse_empty(staged: Staged) -> None:
    """A source with no tokens cannot take any share: a ``ValueError`` naming it."""
    if staged.tokens == 0:
        c = staged.counts
        raise ValueError(
            f"source {staged.source.name} ({shown(staged.source.path)}): no tokens ({c['rows_in']} rows, {c['empty_rows']} empty, "
            f"{c['dropped_sequences']} dropped by --oversize drop); remove it from the inputs or fix the file"
        )


def _stats(packer: StreamPacker, staged: Sequence[Staged], opened, unlabeled) -> dict:
    """The packer's statistics with the input-side counts of every source (what staging cut or dropped)."""
    from .readers import QUOTED_LINE_BREAKS

    stats = packer.stats.to_dict()
    for key in ("rows_in", "empty_rows", "oversize_sequences", "truncated_tokens", "dropped_sequences", "dropped_tokens"):
        stats[key] = sum(s.counts[key] for s in staged)
    if unlabeled.labelled:
        stats["unlabeled_sequences"] = unlabeled.count
    breaks = [o.inp.notes[QUOTED_LINE_BREAKS] for o in opened if QUOTED_LINE_BREAKS in o.inp.notes]
    if breaks:
        stats[QUOTED_LINE_BREAKS] = sum(breaks)
    backends = [o.backend for o in opened if o.backend is not None]
    stats["tokenizer_backend"] = backends[0] if backends else None
    return stats
