"""Offline selection of rows end to end (behind ``packwise select``): dedup, prototypes, balance,
decontaminate, score; on the local engine or on Ray (``engine="ray"``).

Two streaming passes over the input: the first reads embeddings (a vector column, or texts
encoded with a local sentence-transformers model into ``OUTPUT/embeddings.npy``) or a score
column; the decisions are computed with ``packwise.selection``; the second pass writes the kept
rows as atomic Parquet shards (on Ray, the workers write them and the decisions block by block).
``decisions.parquet`` (row_id, cluster, kept, reason, ...; on Ray a folder of parts) and the
clusters (``clusters/``) sit beside them; ``manifest.json`` is written last. Neither it nor
``clusters/kmeans.json`` holds a timing, so a rerun with the same seed writes every file byte for
byte; the seconds go to ``timings.json`` (beside each). A full disk or an unwritable place exits 2
naming the file (``pipeline.atomic.naming_os_errors``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

METHODS: tuple[str, ...] = ("dedup", "prototypes", "balance", "decontaminate", "score")
MANIFEST = "manifest.json"
SHARD_TAG = b"packwise.select"  # footer key of select's shards: a killed run's shards are known as packwise's
TIMINGS = "timings.json"  # the run's seconds: kept out of manifest.json so a rerun writes it byte for byte
FORMAT = "packwise.selected/1"


@dataclass
class SelectResult:
    output: Path
    method: str
    rows_in: int
    rows_out: int
    seconds: float
    per_cluster: list[tuple[int, int, int]] = field(default_factory=list)  # (cluster, rows in, rows kept)
    notes: list[tuple[str, str]] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)
    up_to_date: bool = False  # the output already held this selection: nothing was redone


def _target(n: int, target: int | None, keep: float | None, method: str) -> int:
    if (target is None) == (keep is None):
        raise ValueError(f"--method {method}: pass exactly one of --target N (rows) or --keep F (fraction)")
    if keep is not None:
        if not 0.0 <= keep <= 1.0:
            raise ValueError(f"--keep {keep}: must be a fraction in [0, 1]")
        return int(round(keep * n))
    if target < 0:
        raise ValueError(f"--target {target}: must be >= 0")
    return int(target)


def _score_block(located, column: str) -> np.ndarray:
    import pyarrow as pa

    col = located.batch.column(column)
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)):
        value = next((v for v in col.to_pylist() if v is not None), None)
        raise ValueError(
            f"{located.source} row {located.first_row}: --score-column {column} has type {col.type} (e.g. {value!r}), "
            f"not numbers; pass a numeric column or convert it"
        )
    return col.to_numpy(zero_copy_only=False).astype(np.float64)


def check_options(method, *, k, eps, order, target, keep, mode, alpha, eval_input, score_column, policy, beta, seed, shard_rows, embeddings_column, model, lowest=False) -> None:
    """Every option of ``method`` checked before anything is read or replaced (a typo under
    ``--overwrite`` must not cost the previous selection)."""
    if lowest and method != "score":
        raise ValueError(f"--lowest orders the scores of --method score; drop it for --method {method}")
    from ..selection.dedup import ORDERS
    from ..selection.policies import POLICIES

    if method not in METHODS:
        raise ValueError(f"--method {method}: use one of {', '.join(METHODS)}")
    if isinstance(shard_rows, bool) or shard_rows < 1:
        raise ValueError(f"--shard-rows {shard_rows}: must be >= 1")
    if seed < 0:
        raise ValueError(f"--seed {seed}: must be >= 0 (a seed is a non-negative integer)")
    if method != "score" and (embeddings_column is None) == (model is None):
        raise ValueError("pass exactly one of --embeddings-column C (vectors in the input) or --model PATH (encode --text-column)")
    if method in ("dedup", "prototypes", "balance") and k < 1:
        raise ValueError(f"--k {k}: must be >= 1 cluster")
    if method == "dedup":
        if not 0.0 <= eps < 2.0:
            raise ValueError(f"--eps {eps}: must be in [0, 2); a row is a near duplicate when cosine > 1 - eps")
        if order not in ORDERS:
            raise ValueError(f"--order {order}: use one of {', '.join(ORDERS)}")
    if method == "prototypes":
        if keep is None or not 0.0 <= keep <= 1.0:
            raise ValueError(f"--method prototypes needs --keep F, a fraction in [0, 1] kept per cluster (got {keep})")
        if mode not in ("hard", "easy"):
            raise ValueError(f"--mode {mode}: use 'hard' (keep far-from-centroid rows) or 'easy' (keep prototypical rows)")
    if method == "balance":
        _target(1, target, keep, method)
        if not alpha >= 0.0:
            raise ValueError(f"--alpha {alpha}: must be >= 0 (group share ~ size**alpha)")
    if method == "decontaminate" and eval_input is None:
        raise ValueError("--method decontaminate needs --eval PATH (the evaluation set, same column or model)")
    if method == "score":
        if score_column is None:
            raise ValueError("--method score needs --score-column C (a numeric column, higher = more worth keeping)")
        if policy not in POLICIES:
            raise ValueError(f"--policy {policy}: use one of {', '.join(POLICIES)}")
        if policy != "threshold":
            _target(1, target, keep, method)
        if not beta > 0.0:
            raise ValueError(f"--beta {beta}: must be > 0 (the temperature of the stochastic policies)")


_TEMPORARIES = (".shard-*.tmp", ".decisions.parquet.*.tmp", f".{MANIFEST}.*.tmp", ".embeddings.npy.tmp", ".eval_embeddings.npy.tmp")


def clear_leftovers(output: Path, *, old_selection: bool) -> None:
    """Remove temporary files a killed run left (packwise's own ``.<name>.*.tmp`` names), and with
    ``old_selection`` the files the previous selection's manifest lists (just before the new ones
    are written); nothing packwise did not write."""
    from .atomic import naming_os_errors

    if not output.is_dir():
        return
    for tmp in [p for pattern in _TEMPORARIES for p in output.glob(pattern)]:
        with naming_os_errors(tmp):
            tmp.unlink(missing_ok=True)
    if old_selection:
        for old in _ours(output) - {output / "decisions.parquet"}:  # decisions: replaced below
            with naming_os_errors(old):
                old.unlink(missing_ok=True)


def _tagged(table):
    """``table`` with ``SHARD_TAG`` in its footer: a rerun after a kill knows the file as its own."""
    return table.replace_schema_metadata({**(table.schema.metadata or {}), SHARD_TAG: b"1"})


def _ours(output: Path) -> set[Path]:
    """What a previous select run wrote in ``output``: what its manifest lists, and the shards and
    decisions a killed run published before its manifest (their footer carries ``SHARD_TAG``)."""
    from .writer import _packwise_shard

    published = [*output.glob("shard-*.parquet"), output / "decisions.parquet"]
    return previous_selection(output) | {p for p in published if p.is_file() and _packwise_shard(p, SHARD_TAG)}


def previous_selection(output: Path) -> set[Path]:
    """The files the selection's ``manifest.json`` in ``output`` lists (its shards, decisions and
    itself) and its ``timings.json``: all that ``--overwrite`` may replace.  Other files there are
    in the way, never deleted."""
    manifest = output / MANIFEST
    if not os.path.lexists(manifest):
        return set()
    try:
        data = json.loads(manifest.read_text()) if manifest.is_file() and not manifest.is_symlink() else None
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"output: {manifest} is in the way: it is not a packwise selection manifest, so packwise leaves it alone; move it away or choose another output folder")
    names = {s.get("name") for s in data.get("shards", []) if isinstance(s, dict)} | {MANIFEST, TIMINGS, data.get("decisions")}
    return {output / n for n in names if isinstance(n, str) and n == Path(n).name and n not in ("", ".", "..")}


def load_embeddings(source, output: Path, *, column: str | None, model: Path | None, text_column: str | None, fmt: str | None, progress=None, name: str = "embeddings",
                    dialect=None):
    """Embeddings of every input row: from ``column`` or by encoding ``text_column`` (``None``: the
    text of the detected layout) with ``model``."""
    from . import open_input
    from ..selection.embed import EmbeddingWriter, embed_texts, iter_column_embeddings, load_model

    if (column is None) == (model is None):
        raise ValueError("pass exactly one of --embeddings-column C (vectors in the input) or --model PATH (encode --text-column)")
    if column is not None:
        inp = open_input(source, [column], format=fmt, csv_dialect=dialect)
        rows = inp.num_rows
        if rows:  # Parquet says how many rows: stream straight into the memmap
            w = None
            for block in iter_column_embeddings((b.batch for b in inp.batches()), column):
                w = w or EmbeddingWriter(output / f"{name}.npy", rows, block.shape[1])
                w.write(block)
                if progress:
                    progress(len(block))
            return w.close()
        blocks = []
        for block in iter_column_embeddings((b.batch for b in inp.batches()), column):
            blocks.append(block)
            if progress:
                progress(len(block))
        if not blocks:
            raise ValueError(f"{source}: the input has no rows")
        rows = sum(len(b) for b in blocks)
        w = EmbeddingWriter(output / f"{name}.npy", rows, blocks[0].shape[1])
        for b in blocks:
            w.write(b)
        return w.close()
    inp, texts_of = _texts_of(source, text_column, fmt, dialect)
    rows = inp.num_rows
    if rows is None:
        rows = sum(b.batch.num_rows for b in inp.batches())
    if rows == 0:
        raise ValueError(f"{source}: the input has no rows")
    m = load_model(model)
    texts = (texts_of(b) for b in inp.batches())
    return embed_texts(m, texts, output / f"{name}.npy", rows, progress=progress)


def _texts_of(source, text_column: str | None, fmt: str | None, dialect=None):
    """``(input, batch -> texts)``: the ``text_column`` values, or with ``None`` each row's full text
    in its detected layout (Alpaca fields joined, a chat rendered as ChatML, a pair's prompt)."""
    from . import open_input

    if text_column is not None:
        return open_input(source, [text_column], format=fmt, csv_dialect=dialect), lambda b: b.batch.column(text_column).to_pylist()
    from .layouts import input_layout
    from .tokens import TextRows, TextSpec

    layout = input_layout(source, format=fmt, csv_dialect=dialect)
    spec = TextSpec(layout.columns, chat="chatml" if layout.chat else None, train_on="all", response=layout.response,
                    separator=layout.separator)  # fmt: skip
    rows = TextRows(spec, None)
    return open_input(source, spec.read_columns, format=fmt, csv_header=layout.csv_header, csv_dialect=dialect), lambda b: list(rows.texts(b))


def _write_shards(inp, output: Path, keep: np.ndarray, shard_rows: int) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .atomic import atomic_path, naming_os_errors

    shards: list[dict] = []
    pending: list = []
    pending_rows = 0

    def flush(tables):
        name = f"shard-{len(shards):05d}.parquet"
        table = pa.concat_tables(tables)
        table = _tagged(table)
        with naming_os_errors(output / name), atomic_path(output / name) as tmp:
            pq.write_table(table, tmp)
        shards.append({"name": name, "rows": table.num_rows})

    for located in inp.batches():
        b = located.batch
        mask = keep[located.row : located.row + b.num_rows]
        if not mask.any():
            continue
        t = pa.Table.from_batches([b]).filter(pa.array(mask))
        pending.append(t)
        pending_rows += t.num_rows
        while pending_rows >= shard_rows:
            table = pa.concat_tables(pending)
            flush([table.slice(0, shard_rows)])
            rest = table.slice(shard_rows)
            pending, pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
    if pending_rows:
        flush(pending)
    return shards


def _reader_notes(noticed: dict) -> list[tuple[str, str]]:
    """Summary rows for what the reader noticed: CSV records whose quoted fields hold line breaks."""
    from .readers import QUOTED_LINE_BREAKS

    n = noticed.get(QUOTED_LINE_BREAKS)
    return [] if n is None else [("CSV rows with quoted line breaks", f"{n:,}")]


def run_select(
    input: str,
    output: Path,
    *,
    method: str,
    embeddings_column: str | None = None,
    model: Path | None = None,
    text_column: str | None = None,
    k: int = 100,
    eps: float = 0.05,
    order: str = "hard",
    target: int | None = None,
    keep: float | None = None,
    mode: str = "hard",
    group_column: str | None = None,
    alpha: float = 0.5,
    exact_column: str | None = None,
    eval_input: str | None = None,
    threshold: float = 0.9,
    score_column: str | None = None,
    policy: str = "topk",
    beta: float = 1.0,
    lowest: bool = False,
    seed: int = 0,
    niter: int = 20,
    max_points_per_centroid: int = 256,
    shard_rows: int = 100_000,
    input_format: str | None = None,
    csv_dialect=None,
    overwrite: bool = False,
    progress=None,
    engine: str = "local",
    ray_address: str | None = None,
) -> SelectResult:
    """Run one selection method end to end; see the module docstring for the output layout.

    ``engine="ray"`` (dedup, prototypes, balance on an ``embeddings_column``): the vectors stay on the
    Ray workers; k-means trains on the driver on the same seeded sample as the local engine, rows
    are assigned on the workers and dedup runs per cluster there, so the decisions are the local
    engine's (tested). Only per-row decisions (a few bytes a row) reach the driver; the workers
    write the kept rows and ``decisions.parquet/part-*.parquet``.
    """
    options = dict(locals())  # every keyword above, handed on as they are
    for name in ("input", "output", "ray_address"):
        options.pop(name)
    from .lock import output_lock

    if engine != "ray":
        with output_lock(output):  # one run per output folder
            return _finished(input, output, options) or _run_select(input, output, **options)
    from .ray_engine import ray_session, require_ray

    _check_ray_select(method, embeddings_column, model)
    require_ray()
    with ray_session(ray_address), output_lock(output):
        return _finished(input, output, options) or _run_select(input, output, **options)


RAY_METHODS: tuple[str, ...] = ("dedup", "prototypes", "balance")


def _check_ray_select(method: str, embeddings_column: str | None, model) -> None:
    if method in METHODS and method not in RAY_METHODS:
        raise ValueError(f"--method {method} runs on --engine local only (it needs no clustering); --engine ray supports {', '.join(RAY_METHODS)}")
    if model is not None or embeddings_column is None:
        raise ValueError("--engine ray reads vectors from --embeddings-column C; embed the texts first (--engine local with --model writes OUTPUT/embeddings.npy)")


def _count_rows(inp) -> int:
    """Rows of an opened input: from the Parquet footer, else by reading its one column."""
    return inp.num_rows if inp.num_rows is not None else sum(b.batch.num_rows for b in inp.batches())


def _check_k(k: int, rows: int, source) -> None:
    if k > rows:
        raise ValueError(f"--k {k} is larger than the {rows} rows of {source}; pass --k <= {rows} (k-means needs a row per cluster)")


def _request(input, options: dict) -> dict:
    """What decides a selection's output: the options and the inputs' content fingerprints."""
    from . import open_input

    import dataclasses

    out = {k: str(v) if isinstance(v, Path) else v for k, v in options.items() if k not in ("progress", "overwrite", "request")}
    if out.get("csv_dialect") is not None:  # a CsvDialect: recorded as its fields
        out["csv_dialect"] = dataclasses.asdict(out["csv_dialect"])
    out["input"] = str(input)
    out["input_fingerprint"] = open_input(input, format=options["input_format"]).fingerprint()
    if options.get("eval_input") is not None:
        out["eval_fingerprint"] = open_input(options["eval_input"], format=options["input_format"]).fingerprint()
    return out


def _finished(input, output, options: dict) -> SelectResult | None:
    """The output's result when it already holds this exact selection, complete (a rerun then says
    "up to date", as ``pack`` does); else None, with ``options["request"]`` set for the manifest."""
    options["request"] = request = _request(input, options)
    path = Path(output) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    files = [s["name"] for s in manifest.get("shards", [])] + [manifest.get("decisions") or "decisions.parquet"]
    if manifest.get("request") != request or not all((Path(output) / f).exists() for f in files):
        return None
    return SelectResult(Path(output), options["method"], manifest["rows_in"], manifest["rows_out"], 0.0, manifest=manifest, up_to_date=True)


def _run_select(input, output, *, method, embeddings_column, model, text_column, k, eps, order, target, keep, mode, group_column,
                alpha, exact_column, eval_input, threshold, score_column, policy, beta, lowest, seed, niter, max_points_per_centroid,
                shard_rows, input_format, csv_dialect, overwrite, progress, engine, request=None) -> SelectResult:  # fmt: skip
    import pyarrow as pa
    import pyarrow.parquet as pq

    from . import open_input
    from ._paths import refuse_overlap, refuse_stray, run_reads
    from .atomic import atomic_path, naming_os_errors, write_text_atomic
    from .. import selection as sel
    from .ray_engine import check_engine

    t0 = time.perf_counter()
    check_engine(engine)
    check_options(method, k=k, eps=eps, order=order, target=target, keep=keep, mode=mode, alpha=alpha, eval_input=eval_input,
                  score_column=score_column, policy=policy, beta=beta, seed=seed, shard_rows=shard_rows,
                  embeddings_column=embeddings_column, model=model, lowest=lowest)  # fmt: skip
    output = Path(output)
    refuse_overlap([("output", output)], run_reads(input, model=model, eval_input=eval_input), folders=True)
    if (output / MANIFEST).exists() and not overwrite:
        raise ValueError(f"{output} already holds a selection (manifest.json); pass --overwrite to replace it")
    refuse_stray(output, _ours(output), (MANIFEST, "decisions.parquet"))  # never over a file not ours
    clear_leftovers(output, old_selection=False)
    with naming_os_errors(output):
        output.mkdir(parents=True, exist_ok=True)
    notes: list[tuple[str, str]] = []
    per_cluster: list[tuple[int, int, int]] = []
    cols: dict[str, object] = {}
    settings = {"method": method, "seed": seed, "engine": engine}
    train_seconds = None

    if method == "score":
        if score_column is None:
            raise ValueError("--method score needs --score-column C (a numeric column, higher = more worth keeping)")
        inp = open_input(input, [score_column], format=input_format, csv_dialect=csv_dialect)
        scores = np.concatenate([_score_block(b, score_column) for b in inp.batches()])
        n = scores.shape[0]
        bad = ~np.isfinite(scores)
        if bad.any():
            raise ValueError(f"--score-column {score_column}: row {int(np.flatnonzero(bad)[0])} is null or NaN; fill or drop it")
        kk = None if policy == "threshold" else _target(n, target, keep, method)
        ranked, cut = (-scores, -threshold) if lowest else (scores, threshold)  # --lowest: smaller is better (a loss)
        ids, weights = sel.select_by_score(ranked, kk, policy, beta, threshold=cut if policy == "threshold" else None, seed=seed)
        kept = np.zeros(n, bool)
        kept[ids] = True
        w = np.zeros(n, np.float32)
        w[ids] = weights
        cols = {"score": scores, "weight": w}
        reason = np.where(kept, "kept", f"score:{policy}")
        cluster = np.full(n, -1, np.int64)
        settings.update(score_column=score_column, policy=policy, beta=beta, target=kk, **({"lowest": True} if lowest else {}))
    else:
        if engine == "ray":
            from .ray_select import RaySelect

            ray_sel = RaySelect(open_input(input, [embeddings_column], format=input_format, csv_dialect=csv_dialect), embeddings_column)
            n = ray_sel.n
            if progress:
                progress(n)
        else:
            if method != "decontaminate":  # before minutes of embedding, not after
                counted = embeddings_column or text_column  # None: the detected layout's columns
                _check_k(k, _count_rows(open_input(input, None if counted is None else [counted], format=input_format, csv_dialect=csv_dialect)), input)
            x = load_embeddings(input, output, column=embeddings_column, model=model, text_column=text_column, fmt=input_format, progress=progress, dialect=csv_dialect)
            n = x.shape[0]
        settings.update(embeddings_column=embeddings_column, model=str(model) if model else None, rows=n)
        if method == "decontaminate":
            if eval_input is None:
                raise ValueError("--method decontaminate needs --eval PATH (the evaluation set, same column or model)")
            ev = load_embeddings(eval_input, output, column=embeddings_column, model=model, text_column=text_column, fmt=input_format, name="eval_embeddings", dialect=csv_dialect)
            res = sel.decontaminate(x, ev, threshold=threshold)
            kept = ~res.flagged
            cluster = np.full(n, -1, np.int64)
            reason = np.where(kept, "kept", "contaminated")
            cols = {"eval_row": res.eval_index, "similarity": res.similarity}
            notes.append(("contaminated rows", f"{int(res.flagged.sum()):,} (cosine > {threshold})"))
            settings.update(eval=str(eval_input), threshold=threshold)
        else:
            _check_k(k, n, input)
            if engine == "ray":
                km, labels, dist = ray_sel.cluster(k, seed=seed, niter=niter, max_points_per_centroid=max_points_per_centroid)
            else:
                km = sel.kmeans(x, k, spherical=True, seed=seed, niter=niter, max_points_per_centroid=max_points_per_centroid)
                labels, dist = km.assign(x)
            km.save(output / "clusters")
            r = km.report
            train_seconds = r.seconds
            notes.append(("k-means", f"k={k}, trained on {r.train_rows:,} of {r.rows:,} rows{' (sampled)' if r.sampled else ''} in {r.seconds:.1f}s"))
            cluster = labels
            settings.update(k=k, niter=niter, max_points_per_centroid=max_points_per_centroid, train_rows=r.train_rows)
            if method == "dedup":
                hashes = None
                if exact_column is not None:
                    vals = [v for b in open_input(input, [exact_column], format=input_format, csv_dialect=csv_dialect).batches() for v in b.batch.column(exact_column).to_pylist()]
                    hashes = sel.hash_rows(vals)
                if engine == "ray":
                    res = ray_sel.dedup(labels, dist, eps=eps, order=order, hashes=hashes, seed=seed)
                else:
                    res = sel.semantic_dedup(x, labels=labels, distances=dist, eps=eps, order=order, hashes=hashes, seed=seed)
                kept = res.keep_mask(eps)
                audit = res.to_arrow(eps)
                reason = np.array(audit.column("reason").to_pylist(), dtype=object)
                cols = {name: audit.column(name).to_numpy() for name in ("rank", "duplicate_of", "similarity", "nearest", "nearest_similarity")}
                notes.append(("near duplicates", f"{int((reason == 'near').sum()):,} (cosine > {1 - eps:g})"))
                notes.append(("exact duplicates", f"{int((reason == 'exact').sum()):,}"))
                settings.update(eps=eps, order=order, exact_column=exact_column)
            elif method == "prototypes":
                if keep is None:
                    raise ValueError("--method prototypes needs --keep F (fraction kept per cluster)")
                if engine == "ray" and mode in ("hard", "easy"):  # per cluster on the workers, the local rule
                    within = "farthest" if mode == "hard" else "closest"
                    ids = ray_sel.select_per_cluster(sel.proportional_quotas(np.bincount(labels), keep), within=within)
                else:  # (also the error for a bad --mode)
                    ids = sel.prototype_prune(labels, dist, keep=keep, mode=mode)
                kept = np.zeros(n, bool)
                kept[ids] = True
                reason = np.where(kept, "kept", f"prototype:{'easy' if mode == 'hard' else 'hard'}")
                cols = {"distance": dist}
                settings.update(keep=keep, mode=mode)
            else:  # balance
                tgt = _target(n, target, keep, method)
                groups, weights = labels, None
                if group_column is not None:
                    vals = [v for b in open_input(input, [group_column], format=input_format, csv_dialect=csv_dialect).batches() for v in b.batch.column(group_column).to_pylist()]
                    names, groups = np.unique(np.array([str(v) for v in vals]), return_inverse=True)
                    weights = sel.group_weights(np.bincount(groups), alpha)
                    notes.append(("groups", ", ".join(f"{nm}: {int(c):,}" for nm, c in zip(names, np.bincount(groups)))))
                if engine == "ray" and group_column is None:  # water-filled caps here, the rows per cluster on the workers
                    ids = ray_sel.select_per_cluster(sel.balanced_caps(np.bincount(labels), tgt, seed=seed), within="random", seed=seed)
                else:
                    ids = sel.balanced_subset(groups.astype(np.int64), tgt, weights=weights, seed=seed)
                kept = np.zeros(n, bool)
                kept[ids] = True
                reason = np.where(kept, "kept", "over_cap")
                cols = {"distance": dist}
                settings.update(target=tgt, group_column=group_column, alpha=alpha)
            ids_, rows_in = np.unique(cluster, return_counts=True)
            rows_kept = np.bincount(cluster, weights=kept, minlength=k)[ids_]
            per_cluster = [(int(c), int(a), int(b)) for c, a, b in zip(ids_, rows_in, rows_kept)]

    clear_leftovers(output, old_selection=True)  # the new selection is decided: only now replace the old one
    decisions = pa.table({"row_id": np.arange(n, dtype=np.int64), "cluster": cluster, "kept": kept, "reason": pa.array([str(v) for v in reason], pa.string()), **cols})
    if engine == "ray":  # the workers write the kept rows and the decisions, block by block
        from .ray_select import write_selection

        shards, parts = write_selection(open_input(input, None, format=input_format, csv_dialect=csv_dialect), output, decisions, shard_rows)
    else:
        with naming_os_errors(output / "decisions.parquet"):
            if (output / "decisions.parquet").is_dir():  # a Ray run's parts
                shutil.rmtree(output / "decisions.parquet")
            with atomic_path(output / "decisions.parquet") as tmp:
                pq.write_table(_tagged(decisions), tmp)
        inp = open_input(input, None, format=input_format, csv_dialect=csv_dialect)
        shards, parts = _write_shards(inp, output, kept, shard_rows), None
        notes += _reader_notes(inp.notes)
    if sum(s["rows"] for s in shards) != int(kept.sum()):
        raise ValueError(f"{input}: the input changed between the two passes ({n} rows first); rerun")
    seconds = time.perf_counter() - t0
    manifest = {
        "format": FORMAT,
        "input": str(input),
        "settings": settings,
        "rows_in": int(n),
        "rows_out": int(kept.sum()),
        "shards": shards,
        "decisions": "decisions.parquet",
        **({"decisions_parts": parts} if parts is not None else {}),
        **({"request": request} if request is not None else {}),
    }
    timings = {"seconds": round(seconds, 3), **({"kmeans_train_seconds": round(train_seconds, 3)} if train_seconds is not None else {})}
    write_text_atomic(output / TIMINGS, json.dumps(timings, indent=2))
    write_text_atomic(output / MANIFEST, json.dumps(manifest, indent=2))
    return SelectResult(output, method, int(n), int(kept.sum()), seconds, per_cluster, notes, manifest)
