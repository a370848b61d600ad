"""The whole preprocessing run: read -> tokens -> windowed pack -> Parquet shards + manifest.

Also the length pass behind ``packwise report`` (same readers and token stage, lengths only).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .pack_stage import StreamPacker
from .ray_engine import check_engine, require_ray
from .readers import open_input
from .tokenizer_backend import TextEncoder, check_backend
from .tokens import resolve_tokenizer, token_batches, train_on_input
from .writer import ShardWriter

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
    if path is not None:
        p = Path(path)
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode() + b"\0" + f.read_bytes())
        return f"{p}#sha256:{h.hexdigest()[:16]}"
    if hasattr(tokenizer, "to_str"):
        return "object#sha256:" + hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:16]
    return f"object:{getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)}"


def _prepare(source, *, tokenizer, train_tokenizer, text_column, tokens_column, labels_column, template, batch_size, format,
             tokenizer_backend="auto"):  # fmt: skip
    check_backend(tokenizer_backend)
    if tokens_column is not None and (tokenizer is not None or train_tokenizer):
        raise ValueError("pass either --tokens-column or a tokenizer (--tokenizer / --train-tokenizer), not both")
    if tokens_column is None and (tokenizer is None) == (not train_tokenizer):
        raise ValueError("pass exactly one of --tokenizer PATH, --train-tokenizer or --tokens-column COLUMN")
    if tokens_column is not None:
        columns = [tokens_column] + ([labels_column] if labels_column else [])
    else:
        columns = [text_column]
    inp = open_input(source, columns, batch_size=batch_size, format=format)
    tok_path = None
    if isinstance(tokenizer, (str, Path)):
        tok_path, tokenizer = tokenizer, resolve_tokenizer(tokenizer)
    elif train_tokenizer:
        tokenizer = train_on_input(inp.batches(), text_column, template)
    return inp, tokenizer, tok_path


def _encoder(tokenizer, tokens_column, backend: str) -> TextEncoder | None:
    """The text encoder of a run (``None`` when the ids come from a token column)."""
    return None if tokens_column is not None else TextEncoder(tokenizer, backend)


def _stage(inp, encoder, text_column, tokens_column, labels_column, template, progress):
    """Token batches of the input, reporting ``(rows, tokens)`` of each to ``progress``."""
    for tb in token_batches(
        inp.batches(),
        tokenizer=encoder,
        text_column=text_column,
        tokens_column=tokens_column,
        labels_column=labels_column,
        template=template,
    ):
        if progress is not None:
            progress(tb.rows_read, int(tb.offsets[-1]))
        yield tb


def pack_to_parquet(
    source,
    output,
    *,
    max_tokens: int,
    tokenizer=None,
    train_tokenizer: bool = False,
    text_column: str = "text",
    tokens_column: str | None = None,
    labels_column: str | None = None,
    template: Callable[[object], str] | None = None,
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
    tokenizer_backend: str = "auto",
) -> PackResult:
    """Pack ``source`` into Parquet shards under ``output`` (see ``packwise pack``).

    ``engine="ray"`` runs tokenization and packing on Ray Data (``pip install 'packwise[ray]'``;
    ``ray_address`` or ``$RAY_ADDRESS`` names a cluster, else a local Ray is started): each block of
    ``block_rows`` input rows is packed on its own by the same windowed packer, so the output
    differs from the local engine's only where blocks end; shards, manifest and resume are the same.

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
    StreamPacker(max_tokens, algorithm, oversize, window=window, seed=seed)  # validate before reading
    check_engine(engine)
    if engine == "ray":
        if isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer)) or block_rows < 1:
            raise ValueError(f"--block-rows must be an integer >= 1 (input rows per Ray pack block), got {block_rows!r}")
        require_ray()
    inp, tok, tok_path = _prepare(
        source,
        tokenizer=tokenizer,
        train_tokenizer=train_tokenizer,
        text_column=text_column,
        tokens_column=tokens_column,
        labels_column=labels_column,
        template=template,
        batch_size=batch_size,
        format=format,
        tokenizer_backend=tokenizer_backend,
    )
    encoder = _encoder(tok, tokens_column, tokenizer_backend)
    settings = {
        "input": str(source) if isinstance(source, (str, Path)) else inp.name,
        "max_tokens": int(max_tokens),
        "algorithm": algorithm,
        "window": int(window),
        "oversize": oversize,
        "seed": seed,
        "text_column": None if tokens_column else text_column,
        "tokens_column": tokens_column,
        "labels_column": labels_column,
        "template": None if template is None else getattr(template, "__qualname__", repr(template)),
        "tokenizer": None if tok is None else _tokenizer_id(tok, tok_path),
        "engine": engine,
        "block_rows": int(block_rows) if engine == "ray" else None,
    }
    writer = ShardWriter(output, settings=settings, fingerprint=inp.fingerprint(), shard_rows=shard_rows, overwrite=overwrite)
    if writer.state == "complete":
        return PackResult(Path(output), "complete", len(writer.manifest["shards"]), writer.manifest)
    state, resumed = writer.state, len(writer.shards)
    if train_tokenizer and hasattr(tok, "save"):
        from .atomic import atomic_path

        with atomic_path(Path(output) / "tokenizer.json") as tmp:
            tok.save(str(tmp))
    try:
        if engine == "local":
            packer = StreamPacker(max_tokens, algorithm, oversize, window=window, seed=seed)
            for tb in _stage(inp, encoder, text_column, tokens_column, labels_column, template, progress):
                for rows in packer.add(tb):
                    writer.write(rows)
            for rows in packer.finish():
                writer.write(rows)
            stats = packer.stats
        else:
            from .ray_engine import RayPackRun, ray_session

            with ray_session(ray_address):
                if encoder is not None:  # decide the backend on the driver: every worker then uses the same
                    next(_stage(inp, encoder, text_column, None, None, template, None), None)
                run = RayPackRun(
                    inp, tokenizer=encoder, text_column=text_column, tokens_column=tokens_column, labels_column=labels_column,
                    template=template, max_tokens=max_tokens, algorithm=algorithm, oversize=oversize, window=window,
                    seed=seed, block_rows=block_rows, progress=progress,
                )  # fmt: skip
                for rows in run.rows():
                    writer.write(rows)
            stats = run.stats
    except BaseException:
        writer.wait()  # no shard write left running behind the error
        raise
    if stats.rows_in == 0:
        raise ValueError(f"input: {inp.name} has no rows: empty input, nothing to pack")
    if stats.sequences == 0:
        raise ValueError(f"input: {inp.name} has {stats.rows_in} rows but no tokens: nothing to pack")
    backend = None if encoder is None else encoder.describe()
    manifest = writer.close({**stats.to_dict(), "tokenizer_backend": backend})
    return PackResult(Path(output), state, resumed, manifest)


def dataset_lengths(
    source,
    *,
    tokenizer=None,
    train_tokenizer: bool = False,
    text_column: str = "text",
    tokens_column: str | None = None,
    template: Callable[[object], str] | None = None,
    batch_size: int = 8192,
    format: str | None = None,
    progress: Progress | None = None,
    tokenizer_backend: str = "auto",
) -> np.ndarray:
    """Token length of every non-empty row of ``source`` (int64), streaming; for ``packwise report``."""
    inp, tok, _ = _prepare(
        source,
        tokenizer=tokenizer,
        train_tokenizer=train_tokenizer,
        text_column=text_column,
        tokens_column=tokens_column,
        labels_column=None,
        template=template,
        batch_size=batch_size,
        format=format,
        tokenizer_backend=tokenizer_backend,
    )
    parts, rows = [], 0
    for tb in _stage(inp, _encoder(tok, tokens_column, tokenizer_backend), text_column, tokens_column, None, template, progress):
        parts.append(tb.lengths)
        rows += tb.rows_read
    if rows == 0:
        raise ValueError(f"input: {inp.name} has no rows: empty input, nothing to report")
    lengths = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if lengths.shape[0] == 0:
        raise ValueError(f"input: {inp.name} has {rows} rows but no tokens: nothing to report")
    return lengths.astype(np.int64, copy=False)
