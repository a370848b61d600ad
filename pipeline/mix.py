"""Pack several inputs as one weighted mixture: ``packwise pack A B ... OUT --mix a=0.7,b=0.3``.

Two passes, memory bounded by the window plus a few int64 per sequence:

1. **Stage.** Each source is read with its own layout detection and tokenized; its *units* (its
   sequences after ``--oversize``: truncated, dropped, or split into pieces of at most
   ``--max-tokens``) are appended to raw int32 files in ``OUTPUT/.packwise-stage`` (removed at the
   end; nothing there looks like output). Only the units' offsets, input rows and starts stay in memory.
2. **Plan and pack.** Each source's quota (its proportion of the output total, in tokens or in
   sequences) is filled by whole passes over its units, each a fresh seeded permutation, then a
   prefix of one more (a seeded partial pass): no unit repeats before its source is exhausted, and
   a source needing less than one pass is a seeded subsample. The selections are interleaved by
   deficit (``interleave``) and fed to the same windowed packer as a single input.

Tolerance, in tokens: a quota is cut at the unit boundary nearest to it, so each source's tokens are
within half a unit, at most ``max_tokens / 2``, of its quota; the realised proportions are therefore
within ``proportion_tolerance`` (recorded in the manifest) of the targets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from . import _kernels
from ._paths import shown
from .pack_stage import PackedRows, _refuse_oversize
from .tokens import TokenBatch

MIX_BY = ("tokens", "examples")
DEFAULT_MAX_REPETITION = 4.0  # Muennighoff et al. 2023: up to ~4 epochs of repeated data cost little
STAGE = ".packwise-stage"  # staging folder inside the output (tokenized sources; removed at the end)
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
_CHUNK = 8192  # units per batch handed to the packer
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Source:
    """One input of a mixture: the ``name`` that ``--mix`` and the manifest use, and its ``path``."""

    name: str
    path: str


def parse_sources(args: Sequence[str]) -> list[Source]:
    """``PATH`` (named by its file stem) or ``NAME=PATH`` arguments -> sources; two sources with
    one name are refused, naming both and the fix.

    Example:
        >>> [(s.name, s.path) for s in parse_sources(["data/c4.jsonl", "web=crawl/part.parquet"])]
        [('c4', 'data/c4.jsonl'), ('web', 'crawl/part.parquet')]
    """
    sources = [_source(str(a)) for a in args]
    seen: dict[str, str] = {}
    for s in sources:
        if s.name in seen:
            raise ValueError(
                f"inputs {shown(seen[s.name])} and {shown(s.path)} are both named {s.name!r}; name one as NAME=PATH "
                f"(e.g. {s.name}_2={shown(s.path)})"
            )
        seen[s.name] = s.path
    return sources


def _source(arg: str) -> Source:
    head, sep, tail = arg.partition("=")
    if sep and _NAME.match(head) and tail and not os.path.lexists(arg):
        return Source(head, tail)
    path = Path(arg.rstrip("/") or arg)
    name = path.name if path.is_dir() else path.stem
    if not _NAME.match(name):
        raise ValueError(
            f"input {shown(arg)}: its file name gives no usable source name ({name!r}: letters, digits, _ . - only); "
            f"name it as NAME=PATH"
        )
    return Source(name, arg)


def parse_mix(text: str) -> dict[str, float]:
    """``a=0.7,b=0.3`` -> ``{"a": 0.7, "b": 0.3}`` (weights, normalised later); a malformed,
    repeated, negative or non-finite entry is a ``ValueError`` naming it.

    Example:
        >>> parse_mix("c4=2, wiki=1")
        {'c4': 2.0, 'wiki': 1.0}
    """
    weights: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        name, sep, value = (x.strip() for x in part.partition("="))
        try:
            weight = float(value) if sep and name else None
        except ValueError:
            weight = None
        if weight is None:
            raise ValueError(f"--mix: {part!r} is not NAME=WEIGHT; write --mix a=0.7,b=0.3 with the sources' names")
        if name in weights:
            raise ValueError(f"--mix: source {name!r} is given twice; give each source one weight")
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"--mix {name}={value}: a weight must be a finite number >= 0 (0 leaves the source out)")
        weights[name] = weight
    return weights


@dataclass(frozen=True)
class MixSpec:
    """How sources are mixed: explicit ``weights`` (name -> weight), or ``temperature`` (weight ∝
    size**temperature), or neither (natural proportions); ``by`` ``"tokens"`` or ``"examples"``;
    ``tokens``: the output total in tokens (default: the inputs' total); ``max_repetition``: the most
    passes over one source; ``seed`` draws every pass and subsample."""

    weights: dict | None = None
    temperature: float | None = None
    by: str = "tokens"
    tokens: int | None = None
    max_repetition: float = DEFAULT_MAX_REPETITION
    seed: int = 0

    def __post_init__(self):
        if self.weights is not None and self.temperature is not None:
            raise ValueError("pass --mix or --temperature, not both: --mix gives the weights, --temperature derives them from the sizes")
        if self.by not in MIX_BY:
            raise ValueError(f"--mix-by must be one of {MIX_BY}, got {self.by!r}")
        if self.temperature is not None and not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"--temperature {self.temperature}: must be a finite number >= 0 (weights ∝ size**temperature; 0: uniform)")
        if self.tokens is not None and (isinstance(self.tokens, bool) or not isinstance(self.tokens, (int, np.integer)) or self.tokens < 1):
            raise ValueError(f"--mix-tokens {self.tokens}: must be an integer >= 1 (the output's tokens)")
        if not (math.isfinite(self.max_repetition) and self.max_repetition >= 1):
            raise ValueError(f"--max-repetition {self.max_repetition}: must be a number >= 1 (1: no source repeated)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"--seed {self.seed}: must be an integer >= 0")

    def check_names(self, names: Sequence[str]) -> None:
        """Every ``--mix`` name is a source and every source has a weight summing to > 0."""
        if self.weights is None:
            return
        for name in self.weights:
            if name not in names:
                raise ValueError(f"--mix: {name!r} is not a source (sources: {', '.join(names)}); use a source's name (its file stem, or NAME=PATH)")
        for name in names:
            if name not in self.weights:
                raise ValueError(f"--mix: no weight for source {name!r}; give every source a weight (0 leaves it out)")
        if sum(self.weights.values()) <= 0:
            raise ValueError("--mix: the weights sum to 0; give at least one source a weight > 0")

    def describe(self) -> dict:
        """The settings recorded in the manifest (a change means another output)."""
        return {"mix_weights": self.weights, "mix_temperature": self.temperature, "mix_by": self.by, "mix_tokens": self.tokens,
                "max_repetition": float(self.max_repetition), "mix_seed": int(self.seed)}  # fmt: skip

    def targets(self, names: Sequence[str], sizes: np.ndarray) -> np.ndarray:
        """Target proportions (summing to 1) of sources of ``sizes`` (tokens or sequences, all > 0)."""
        if self.weights is not None:
            w = np.array([self.weights[n] for n in names], np.float64)
        elif self.temperature is not None:
            w = sizes.astype(np.float64) ** self.temperature
        else:
            w = sizes.astype(np.float64)
        return w / w.sum()


# --- stage: each source's units on disk ----------------------------------------------------------
@dataclass
class Staged:
    """One source's units: tokens (and labels) in raw int32 files, offsets / input rows / first
    token of each unit in memory, and what the staging counted."""

    source: Source
    ids_path: Path
    labels_path: Path | None = None
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    starts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    counts: dict = field(default_factory=dict)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def tokens(self) -> int:
        return int(self.offsets[-1])

    def views(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Read-only memory maps of the token (and label) files."""
        ids = np.memmap(self.ids_path, np.int32, mode="r").view(np.ndarray)
        labels = None if self.labels_path is None else np.memmap(self.labels_path, np.int32, mode="r").view(np.ndarray)
        return ids, labels


_COUNTS = ("rows_in", "empty_rows", "sequences_in", "oversize_sequences", "truncated_tokens", "dropped_sequences", "dropped_tokens")


def stage_source(source: Source, batches: Iterator[TokenBatch], folder: Path, k: int, capacity: int, algorithm: str,
                 oversize: str) -> Staged:  # fmt: skip
    """Write the units of ``batches`` (one source) under ``folder``; see the module docstring."""
    staged = Staged(source, folder / f"source-{k:03d}.ids")
    counts = dict.fromkeys(_COUNTS, 0)
    offsets, rows, starts, total = [np.zeros(1, np.int64)], [], [], 0
    with open(staged.ids_path, "wb") as ids_file:
        labels_file = None
        try:
            for tb in batches:
                item, start, length, values, labels = _units(tb, capacity, algorithm, oversize, counts)
                values.tofile(ids_file)
                if labels is not None:
                    if labels_file is None:
                        staged.labels_path = folder / f"source-{k:03d}.labels"
                        labels_file = open(staged.labels_path, "wb")
                    labels.tofile(labels_file)
                offsets.append(total + np.cumsum(length))
                total += int(length.sum())
                rows.append(tb.rows[item])
                starts.append(start)
        finally:
            if labels_file is not None:
                labels_file.close()
    staged.offsets = np.concatenate(offsets)
    staged.rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    staged.starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    staged.counts = counts
    return staged


def _units(tb: TokenBatch, capacity: int, algorithm: str, oversize: str, counts: dict):
    """``(item, start, length, values, labels)`` of a batch's units after ``oversize`` (``concat``
    and ``split`` cut pieces of at most ``capacity``), counting what was cut or dropped."""
    from ..packing.core import _apply_oversize

    lengths = tb.lengths
    counts["rows_in"] += tb.rows_read
    counts["empty_rows"] += tb.empty
    counts["sequences_in"] += len(tb)
    counts["oversize_sequences"] += int((lengths > capacity).sum())
    policy = "split" if algorithm == "concat" else oversize
    if policy == "error":
        _refuse_oversize(tb, capacity)
    item, start, length, truncated, dropped = _apply_oversize(lengths, capacity, policy)
    counts["truncated_tokens"] += int(truncated)
    counts["dropped_sequences"] += int(dropped.shape[0])
    counts["dropped_tokens"] += int(lengths[dropped].sum())
    item = np.arange(len(tb), dtype=np.int64) if item is None else item
    start = np.zeros(item.shape[0], np.int64) if start is None else start.astype(np.int64)
    length = length.astype(np.int64)
    src = tb.offsets[item] + start
    values = _gather(np.ascontiguousarray(tb.values, np.int32), src, length)
    labels = None if tb.labels is None else _gather(np.ascontiguousarray(tb.labels, np.int32), src, length)
    return item, start, length, values, labels


def _gather(values: np.ndarray, src: np.ndarray, lengths: np.ndarray, out=None, dst=None) -> np.ndarray:
    """The segments ``values[src[k]:src[k] + lengths[k]]`` one after another (or into ``out`` at ``dst``)."""
    if out is None:
        dst = np.zeros(lengths.shape[0], np.int64)
        np.cumsum(lengths[:-1], out=dst[1:])
        out = np.empty(int(lengths.sum()), np.int32)
    _kernels.copy_segments(out, values, src, dst, lengths)
    return out


# --- plan: quotas, passes, interleave ------------------------------------------------------------
@dataclass(frozen=True)
class Take:
    """A source's selection: ``units`` in stream order, ``passes`` whole passes plus ``partial``
    units of one more; ``need`` the repetition its quota asked for."""

    units: np.ndarray
    passes: int
    partial: int
    need: float


def plan(staged: Sequence[Staged], targets: np.ndarray, spec: MixSpec) -> list[Take]:
    """Each source's ``Take`` for its target proportion; a source that would be repeated more
    than ``spec.max_repetition`` times is a ``ValueError`` naming it, the repetition and the fix."""
    if spec.by == "tokens":
        sizes = np.array([s.tokens for s in staged], np.float64)
        total = float(spec.tokens if spec.tokens is not None else sizes.sum())
    else:
        sizes = np.array([s.lengths.shape[0] for s in staged], np.float64)
        means = np.array([s.tokens for s in staged], np.float64) / sizes
        total = float(sizes.sum()) if spec.tokens is None else round(spec.tokens / float((targets * means).sum()))
    takes = []
    for k, s in enumerate(staged):
        quota = float(targets[k]) * total
        need = quota / float(sizes[k])
        if need > spec.max_repetition * (1 + 1e-9):
            unit = "tokens" if spec.by == "tokens" else "sequences"
            raise ValueError(
                f"source {s.source.name} ({shown(s.source.path)}): its target {targets[k]:.4f} of {total:,.0f} {unit} needs "
                f"{need:.2f} passes over its {sizes[k]:,.0f} {unit}, over --max-repetition {spec.max_repetition:g}; raise "
                f"--max-repetition to {math.ceil(need * 100) / 100:g}, lower its weight, or set a smaller --mix-tokens"
            )
        takes.append(_take(s.lengths, quota, spec, k, need))
    return takes


def _take(lengths: np.ndarray, quota: float, spec: MixSpec, k: int, need: float) -> Take:
    """Whole seeded passes, then the prefix of one more whose size is nearest the rest of ``quota``."""
    n = lengths.shape[0]
    size = float(lengths.sum()) if spec.by == "tokens" else float(n)
    passes = int(quota // size)
    rest = quota - passes * size
    perm = _permutation(spec.seed, k, passes, n)
    done = np.zeros(n + 1, np.float64)
    np.cumsum(lengths[perm] if spec.by == "tokens" else np.ones(n), out=done[1:])
    cut = int(np.searchsorted(done, rest))
    if cut > n or (cut > 0 and rest - done[cut - 1] <= done[min(cut, n)] - rest):
        cut -= 1
    if cut == n:
        passes, cut = passes + 1, 0
    whole = [_permutation(spec.seed, k, p, n) for p in range(passes)]
    units = np.concatenate(whole + [perm[:cut]]) if passes or cut else np.zeros(0, np.int64)
    return Take(units.astype(np.int64), passes, cut, need)


def _permutation(seed: int, source: int, p: int, n: int) -> np.ndarray:
    """Pass ``p`` over source ``source``'s ``n`` units: the same on every machine for a seed."""
    return np.random.default_rng([seed, source, p]).permutation(n).astype(np.int64)


def interleave(weights: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Merge the sources' unit streams so every prefix holds each source at its share: unit ``i``
    of source ``s`` (weight ``w``, tokens or 1) sits at ``(sum(w[:i]) + w[i] / 2) / sum(w)``, its
    midpoint along its source's selection, ties to the lower source. Deficit accounting: the next
    unit is always from the source furthest behind its share, so at any point each source is within
    half a unit of it. Returns ``(source, position within that source's selection)`` per slot.

    Example:
        >>> s, i = interleave([np.array([1.0, 1.0, 1.0, 1.0]), np.array([2.0, 2.0])])
        >>> s.tolist(), i.tolist()
        ([0, 1, 0, 0, 1, 0], [0, 0, 1, 2, 1, 3])
    """
    keys, srcs, pos = [], [], []
    for k, w in enumerate(weights):
        if w.shape[0] == 0:
            continue
        w = w.astype(np.float64)
        keys.append((np.cumsum(w) - w / 2) / w.sum())
        srcs.append(np.full(w.shape[0], k, np.int32))
        pos.append(np.arange(w.shape[0], dtype=np.int64))
    if not keys:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    key, src, at = np.concatenate(keys), np.concatenate(srcs), np.concatenate(pos)
    order = np.lexsort((at, src, key))
    return src[order], at[order]


# --- pack: the interleaved stream through the packer ---------------------------------------------
class MixedStream:
    """The planned units in interleaved order as ``TokenBatch`` es (``rows`` = slot numbers), and the
    map from a slot back to its source, input row and first token."""

    def __init__(self, staged: Sequence[Staged], takes: Sequence[Take], by: str):
        self.staged = list(staged)
        weights = [s.lengths[t.units] if by == "tokens" else np.ones(t.units.shape[0]) for s, t in zip(staged, takes)]
        self.source, at = interleave(weights)
        self.unit = np.zeros(at.shape[0], np.int64)
        for k, t in enumerate(takes):
            m = self.source == k
            self.unit[m] = t.units[at[m]]
        self.labels = any(s.labels_path is not None for s in staged)

    def __len__(self) -> int:
        return int(self.source.shape[0])

    def batches(self) -> Iterator[TokenBatch]:
        views = [s.views() for s in self.staged]
        for a in range(0, len(self), _CHUNK):
            b = min(a + _CHUNK, len(self))
            yield self._batch(a, b, views)

    def _batch(self, a: int, b: int, views) -> TokenBatch:
        src, unit = self.source[a:b], self.unit[a:b]
        lengths = np.zeros(b - a, np.int64)
        for k in np.unique(src):
            m = src == k
            lengths[m] = self.staged[k].lengths[unit[m]]
        offsets = np.zeros(b - a + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = np.empty(int(offsets[-1]), np.int32)
        labels = np.empty_like(values) if self.labels else None
        for k in np.unique(src):
            m = np.flatnonzero(src == k)
            start = self.staged[k].offsets[unit[m]]
            ids, lab = views[k]
            _gather(ids, start, lengths[m], values, offsets[m])
            if labels is not None:  # a source without labels trains on every token
                _gather(ids if lab is None else lab, start, lengths[m], labels, offsets[m])
        return TokenBatch(offsets, values, np.arange(a, b, dtype=np.int64), labels, rows_read=b - a, source="mixture")

    def row_order(self, slots: np.ndarray, lengths: np.ndarray, offsets: np.ndarray, order: np.ndarray) -> np.ndarray:
        """An order of a window's rows that spreads every source evenly, so each shard holds about
        the target mix however large the window: rows grouped by the source holding most of their
        tokens (each group in ``order``), then taken greedily by deficit (``deficit_order``)."""
        n_rows, sources = offsets.shape[0] - 1, len(self.staged)
        row = np.repeat(np.arange(n_rows), np.diff(offsets))
        tokens = np.bincount(row * sources + self.source[slots], weights=lengths, minlength=n_rows * sources).reshape(n_rows, sources)
        dominant = tokens.argmax(axis=1)[order]
        group = np.argsort(dominant, kind="stable")
        starts = np.searchsorted(dominant[group], np.arange(sources + 1))
        return _kernels.deficit_order(order[group].astype(np.int64), starts.astype(np.int64), tokens)

    def restore(self, rows: PackedRows) -> PackedRows:
        """Packed rows with each sequence's source id, input row (``source_index``) and first token."""
        slot = rows.source_index
        src = self.source[slot]
        index, start = np.empty(slot.shape[0], np.int64), np.empty(slot.shape[0], np.int64)
        for k in np.unique(src):
            m = src == k
            u = self.unit[slot[m]]
            index[m], start[m] = self.staged[k].rows[u], self.staged[k].starts[u] + rows.source_start[m]
        return dataclasses.replace(rows, source_index=index, source_start=start, source=src.astype(np.int32))


def proportion_tolerance(capacity: int, realised_total: int, targets: np.ndarray) -> float:
    """How far a realised token proportion may be from its target: each source is within
    ``capacity / 2`` tokens of its quota, so ``|r_s - t_s| <= capacity / 2 * (1 + S * t_s) / total``;
    the largest over the sources."""
    if realised_total <= 0:
        return 1.0
    return float((capacity / 2) * (1 + targets.shape[0] * targets.max()) / realised_total)


def source_entries(staged, takes, targets, counted: np.ndarray, sequences: np.ndarray, fingerprints, layouts) -> list[dict]:
    """The manifest's ``sources``: per source what went in, its target and what came out."""
    total = int(counted.sum())
    out = []
    for k, (s, t) in enumerate(zip(staged, takes)):
        tokens = int(counted[k])
        out.append({
            "name": s.source.name, "path": s.source.path, "fingerprint": fingerprints[k], "layout": layouts[k],
            "target": float(targets[k]), "realised": tokens / total if total else 0.0, "tokens": tokens,
            "sequences": int(sequences[k]), "tokens_in": s.tokens, "units_in": int(s.lengths.shape[0]),
            "repetition": tokens / s.tokens if s.tokens else 0.0, "full_passes": t.passes, "partial_units": t.partial,
            **{c: int(s.counts[c]) for c in _COUNTS},
        })  # fmt: skip
    return out


def mixture_fingerprint(names: Sequence[str], fingerprints: Sequence[str]) -> str:
    """One fingerprint over every source's name and content, in input order."""
    h = hashlib.sha256()
    for name, fp in zip(names, fingerprints):
        h.update(f"{name}\0{fp}\n".encode())
    return h.hexdigest()


def clean_stage(folder: Path) -> None:
    """Remove the staging folder's files (only the names staging writes), then the folder if empty."""
    if not folder.is_dir():
        return
    for p in folder.glob("source-*"):
        if p.suffix in (".ids", ".labels") and p.is_file():
            p.unlink()
    try:
        folder.rmdir()
    except OSError:
        pass  # something packwise did not write is there: left alone
