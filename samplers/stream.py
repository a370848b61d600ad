"""Streaming batching for ``IterableDataset`` sources: windowed packing and bucketing with a
bounded buffer, sharded by DataLoader worker and by DDP rank (once: an HF ``IterableDataset``
shards itself by worker, and by rank through ``split_dataset_by_node``)."""

from __future__ import annotations

from collections.abc import Mapping
from itertools import islice
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from ..packing import WindowPacker
from ..packing.core import validate_capacity
from . import _kernels
from ._planned import epoch_rng, resolve_replicas
from .bucket import _edges


def _length_fn(length: str | Callable[[Any], int]) -> Callable[[Any], int]:
    if callable(length):
        return length

    def of(example):
        value = example[length]
        return value if isinstance(value, (int, np.integer)) else len(value)

    return of


class _ShardedStream(IterableDataset):
    """Reads ``source``, keeps every k-th example for this (rank, worker), in windows."""

    def __init__(self, source: Iterable, length, window: int, seed: int, num_replicas, rank):
        self.source = source
        self.length = _length_fn(length)
        self.window = validate_capacity(window, "window")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self.num_replicas, self.rank = resolve_replicas(num_replicas, rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Seed the next pass with ``(seed, epoch)`` (and call the source's ``set_epoch`` if any)."""
        self.epoch = int(epoch)
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)

    def _shard(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * workers + worker, self.num_replicas * workers

    def _reader(self) -> tuple[Iterable, int, int]:
        """``(source to read, shard, shards)``: an HF ``IterableDataset`` is split by node with its own
        ``split_dataset_by_node`` (unless it already was) and shards itself by DataLoader worker, so
        it is read whole here; any other source is sharded by position over (rank, worker)."""
        if not _is_hf_stream(self.source):
            return (self.source, *self._shard())
        split = getattr(self.source, "_distributed", None)
        if split is not None:
            if self.num_replicas > 1 and (split.world_size, split.rank) != (self.num_replicas, self.rank):
                raise ValueError(
                    f"the source was split with split_dataset_by_node(rank={split.rank}, world_size={split.world_size}) "
                    f"but this stream is rank {self.rank} of num_replicas={self.num_replicas}; split it for this rank, "
                    f"or pass the unsplit dataset (the stream then splits it once)"
                )
            return self.source, 0, 1
        if self.num_replicas == 1:
            return self.source, 0, 1
        from datasets.distributed import split_dataset_by_node

        return split_dataset_by_node(self.source, rank=self.rank, world_size=self.num_replicas), 0, 1

    def _windows(self) -> Iterator[tuple[list, np.ndarray, np.ndarray]]:
        """``(examples, lengths, stream rows)`` per window of this shard (rows count the read source)."""
        source, shard, shards = self._reader()
        held: list = []
        rows: list[int] = []
        for i, example in enumerate(source):
            if i % shards != shard:
                continue
            held.append(example)
            rows.append(i)
            if len(held) == self.window:
                yield held, self._lengths(held, rows), np.asarray(rows, np.int64)
                held, rows = [], []
        if held:
            yield held, self._lengths(held, rows), np.asarray(rows, np.int64)

    def _lengths(self, examples: list, rows: list[int]) -> np.ndarray:
        out = np.fromiter((self.length(e) for e in examples), np.int64, len(examples))
        bad = np.flatnonzero(out < 1)
        if bad.shape[0]:
            raise ValueError(
                f"stream row {rows[int(bad[0])]} has length {int(out[bad[0]])}; every example needs >= 1 token: "
                f"filter empty examples upstream"
            )
        return out


def _is_hf_stream(source) -> bool:
    """An HF ``datasets.IterableDataset`` (it knows its shards and splits itself by worker)."""
    return type(source).__module__.startswith("datasets.") and hasattr(source, "n_shards") and hasattr(source, "shard")


def _cut(example, length: int, start: int, stop: int):
    """``example`` with every sequence field of ``length`` items cut to ``[start, stop)``."""
    if not isinstance(example, Mapping):
        raise ValueError(
            f"oversize='truncate' or 'split' cuts dict examples, got {type(example).__name__}; cut long examples upstream"
        )
    return {
        k: v[start:stop] if not isinstance(v, (str, bytes)) and hasattr(v, "__len__") and len(v) == length else v
        for k, v in example.items()
    }


def _too_long(lengths: np.ndarray, rows: np.ndarray, max_tokens: int, fix: str) -> None:
    i = int(np.flatnonzero(lengths > max_tokens)[0])
    raise ValueError(f"stream row {int(rows[i])} has length {int(lengths[i])} > max_tokens={max_tokens}; {fix}")


class PackedIterable(_ShardedStream):
    """Pack a stream into bins of ``max_tokens`` with windowed best fit; yields lists of examples.

    Bins stay open across windows (:class:`packwise.packing.WindowPacker`), so the buffer holds
    about ``max_age * window`` examples whatever the stream's size.  Each (rank, worker) shard
    reads every ``num_replicas * num_workers``-th example; closed bins are shuffled per window with
    ``(seed, epoch, shard)``.  Use with ``DataLoader(stream, batch_size=None, collate_fn=...)``.
    An HF ``IterableDataset`` (``load_dataset(..., streaming=True)``) is not sharded by position:
    it shards itself by worker, and by rank through ``split_dataset_by_node`` (applied here unless
    the source already was split, which is then checked against ``rank``/``num_replicas``).

    ``oversize``: ``"error"`` (default), ``"truncate"`` (keep the first ``max_tokens`` tokens),
    ``"split"`` (cut into ``max_tokens``-token pieces, each packed on its own) or ``"drop"``, as in
    ``packwise pack``; cutting needs ``length`` to be a field name and dict examples (every sequence
    field as long as that field is cut, other fields are copied).  ``truncated_tokens`` and
    ``dropped`` count what the last pass lost (in this process: workers keep their own).

    Example:
        >>> from packwise.samplers import PackedIterable
        >>> docs = [{"ids": [0] * n} for n in (5, 3, 4, 2, 6)]
        >>> stream = PackedIterable(docs, max_tokens=10, length="ids", window=5, num_replicas=1, rank=0)
        >>> sorted(sum(len(d["ids"]) for d in batch) for batch in stream)
        [10, 10]
    """

    def __init__(
        self,
        source: Iterable,
        max_tokens: int,
        length: str | Callable[[Any], int] = "input_ids",
        *,
        window: int = 1000,
        max_age: int = 4,
        rows_per_batch: int = 1,
        oversize: Literal["error", "truncate", "split", "drop"] = "error",
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        super().__init__(source, length, window, seed, num_replicas, rank)
        self.max_tokens = validate_capacity(max_tokens, "max_tokens")
        self.max_age = validate_capacity(max_age, "max_age")
        self.rows_per_batch = validate_capacity(rows_per_batch, "rows_per_batch")
        if oversize not in ("error", "truncate", "split", "drop"):
            raise ValueError(f"oversize must be 'error', 'truncate', 'split' or 'drop', got {oversize!r}")
        if oversize in ("truncate", "split") and not isinstance(length, str):
            raise ValueError(
                f"oversize={oversize!r} cuts the token field: pass length=<field name> (e.g. 'input_ids'), not a function"
            )
        self.oversize = oversize
        self.shuffle = bool(shuffle)
        self.truncated_tokens = 0
        self.dropped = 0

    def __iter__(self) -> Iterator[list]:
        shard, _ = self._shard()
        rng = epoch_rng(self.seed, self.epoch, 100 + shard)
        packer = WindowPacker(self.max_tokens, window=self.window, max_age=self.max_age)
        self.truncated_tokens = self.dropped = 0
        held: dict[int, Any] = {}
        next_id = 0
        pending: list[list] = []  # closed bins waiting to fill a batch of rows_per_batch
        for examples, lengths, rows in self._windows():
            if int(lengths.max()) > self.max_tokens:
                examples, lengths = self._fit(examples, lengths, rows)
                if not examples:
                    continue
            held.update(zip(range(next_id, next_id + len(examples)), examples))
            done = packer.add(lengths, start=next_id)
            next_id += len(examples)
            yield from self._emit(done, held, pending, rng, final=False)
        yield from self._emit(packer.flush(), held, pending, rng, final=True)

    def _fit(self, examples: list, lengths: np.ndarray, rows: np.ndarray) -> tuple[list, np.ndarray]:
        """Apply ``oversize`` to a window holding examples longer than ``max_tokens``."""
        cap = self.max_tokens
        if self.oversize == "error":
            _too_long(lengths, rows, cap, "pass oversize='truncate' or 'split', or cut long examples before streaming")
        out, sizes = [], []
        for example, n in zip(examples, lengths.tolist()):
            if n <= cap:
                out.append(example)
                sizes.append(n)
            elif self.oversize == "drop":
                self.dropped += 1
            else:
                stops = range(cap, n + cap, cap) if self.oversize == "split" else (cap,)
                for stop in stops:
                    out.append(_cut(example, n, stop - cap, min(stop, n)))
                    sizes.append(min(stop, n) - stop + cap)
                self.truncated_tokens += n - cap if self.oversize == "truncate" else 0
        return out, np.asarray(sizes, np.int64)

    def _emit(self, done, held: dict, rows: list, rng, final: bool) -> Iterator[list]:
        bins = np.arange(done.num_bins)
        if self.shuffle:
            bins = rng.permutation(bins)
        offsets, ids = done.offsets.tolist(), done.ids.tolist()
        for b in bins.tolist():
            rows.append([held.pop(i) for i in ids[offsets[b] : offsets[b + 1]]])
            if len(rows) == self.rows_per_batch:
                yield [e for row in rows for e in row]
                rows.clear()
        if final and rows:
            yield [e for row in rows for e in row]
            rows.clear()


class BucketedIterable(_ShardedStream):
    """Bucket a stream by length into padded batches of cost ``len * max length <= max_tokens``.

    Every window of ``window`` examples (per shard) is shuffled and cut bucket by bucket with the
    same kernel as :class:`BucketBatchSampler`; each bucket's unfinished last batch waits for the
    next window, so the buffer stays under ``window`` plus one batch per bucket.  ``buckets`` is a
    sequence of upper edges, or a number of buckets estimated (equal token share) from the first
    window.  Yields lists of examples.

    Example:
        >>> from packwise.samplers import BucketedIterable
        >>> docs = [{"ids": [0] * n} for n in (3, 90, 5, 88, 4, 91)]
        >>> stream = BucketedIterable(docs, max_tokens=200, length="ids", buckets=[10], num_replicas=1, rank=0)
        >>> sorted(len(batch) for batch in stream)
        [1, 2, 3]
    """

    def __init__(
        self,
        source: Iterable,
        max_tokens: int | None = None,
        length: str | Callable[[Any], int] = "input_ids",
        *,
        batch_size: int | None = None,
        buckets: int | Sequence[int] = 16,
        window: int = 1000,
        oversize: str = "error",
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        super().__init__(source, length, window, seed, num_replicas, rank)
        if max_tokens is None and batch_size is None:
            raise ValueError("give max_tokens (a padded-token budget) or batch_size")
        self.max_tokens = None if max_tokens is None else validate_capacity(max_tokens, "max_tokens")
        self.batch_size = None if batch_size is None else validate_capacity(batch_size, "batch_size")
        if oversize not in ("error", "drop"):
            raise ValueError(f"oversize must be 'error' or 'drop', got {oversize!r}")
        self.oversize = oversize
        self.buckets = buckets if isinstance(buckets, (int, np.integer)) else _edges(buckets, np.zeros(1), "buckets")
        self.shuffle = bool(shuffle)
        self.dropped = 0

    def __iter__(self) -> Iterator[list]:
        shard, _ = self._shard()
        rng = epoch_rng(self.seed, self.epoch, 200 + shard)
        edges = None if isinstance(self.buckets, (int, np.integer)) else self.buckets
        carry: list = []
        carry_len = np.zeros(0, np.int64)
        for examples, lengths, rows in self._windows():
            if self.max_tokens is not None:
                over = lengths > self.max_tokens
                if over.any():
                    if self.oversize == "error":
                        _too_long(lengths, rows, self.max_tokens, "raise max_tokens, truncate upstream, or pass oversize='drop'")
                    self.dropped += int(over.sum())
                    examples = [e for e, o in zip(examples, over.tolist()) if not o]
                    lengths = lengths[~over]
            if edges is None:
                edges = _edges(int(self.buckets), lengths, "buckets") if lengths.shape[0] else None
            carry, carry_len = carry + examples, np.concatenate((carry_len, lengths))
            if edges is not None:
                carry, carry_len = yield from self._cut(carry, carry_len, edges, rng, final=False)
        if carry:
            if edges is None:
                edges = np.zeros(0, np.int64)
            yield from self._cut(carry, carry_len, edges, rng, final=True)

    def _cut(self, examples: list, lengths: np.ndarray, edges: np.ndarray, rng, final: bool):
        n = lengths.shape[0]
        num_buckets = edges.shape[0] + 1
        items = rng.permutation(n) if self.shuffle else np.arange(n, dtype=np.int64)
        key = np.searchsorted(edges, lengths, side="left").astype(np.int64)
        order, groups = _kernels.group_by_key(items.astype(np.int64), key, num_buckets)
        caps = np.full(num_buckets, self.batch_size or 0, np.int64)
        offsets, group, _, _, _ = _kernels.cut_padded(order, lengths[:, None], groups, caps, self.max_tokens or 0)
        last = np.ones(group.shape[0], np.bool_)
        last[:-1] = group[1:] != group[:-1]
        full = self.batch_size is not None and self.max_tokens is None
        ready = np.ones(group.shape[0], np.bool_) if final else ~last
        if full and not final:  # a fixed-size last batch that is already full can go now
            ready |= np.diff(offsets) == self.batch_size
        emit = np.flatnonzero(ready)
        if self.shuffle:
            emit = emit[rng.permutation(emit.shape[0])]
        order_list, off = order.tolist(), offsets.tolist()
        for b in emit.tolist():
            yield [examples[i] for i in order_list[off[b] : off[b + 1]]]
        waiting = np.concatenate([order[offsets[b] : offsets[b + 1]] for b in np.flatnonzero(~ready)] or [np.zeros(0, np.int64)])
        return [examples[i] for i in waiting.tolist()], lengths[waiting]


class _SourceShard(_ShardedStream):
    """This (rank, worker)'s shard of one source, read the way ``PackedIterable`` reads its source."""

    def __iter__(self) -> Iterator[Any]:
        source, shard, shards = self._reader()
        return islice(iter(source), shard, None, shards)


class _DeficitMix:
    """One (rank, worker) shard of every source, interleaved by token deficit: the next example
    comes from the source furthest below its target share of the tokens emitted so far (ties go to
    the lower source id), so the realised token shares stay within one example of the targets."""

    def __init__(self, shards: list[Iterable], weights: np.ndarray, length, until: str, source_key, tokens: np.ndarray):
        self.shards, self.weights, self.length = shards, weights, length
        self.until, self.source_key = until, source_key
        self.tokens = tokens

    def __iter__(self) -> Iterator[Any]:
        iters = [iter(s) for s in self.shards]
        active = self.weights > 0
        self.tokens[:] = 0
        while active.any():
            deficit = np.where(active, self.tokens / np.where(active, self.weights, 1.0), np.inf)
            i = int(np.argmin(deficit))
            try:
                example = next(iters[i])
            except StopIteration:
                if self.until == "first":
                    return
                active[i] = False
                continue
            self.tokens[i] += max(int(self.length(example)), 0)
            yield self._tag(example, i)

    def _tag(self, example, i: int):
        key = self.source_key
        if key is None:
            return example
        if not isinstance(example, Mapping):
            raise ValueError(f"source_key={key!r} tags dict examples, got a {type(example).__name__}; pass source_key=None")
        if key in example:
            raise ValueError(
                f"an example of source {i} already has a {key!r} field; pass another source_key or source_key=None"
            )
        return {**example, key: i}


class MixedPackedIterable(PackedIterable):
    """Pack several streams mixed at target token proportions (``weights``), as :class:`PackedIterable`.

    Each (rank, DataLoader worker) reads its own disjoint shard of *every* source (every
    ``num_replicas * num_workers``-th example of each, as ``PackedIterable`` does for one source;
    an HF ``IterableDataset`` is split by rank with ``split_dataset_by_node`` and shards itself by
    worker) and interleaves them by deficit: the next example comes from the source whose tokens so
    far are furthest below ``weight * total``, so every prefix of the mixed stream holds the target
    token shares to within one example per source.  No randomness goes into the mix; the packed
    bins are shuffled per window with ``(seed, epoch, shard)`` as in ``PackedIterable``, so the
    output is a pure function of (sources, weights, seed, epoch, world size, workers).

    ``until="first"`` stops when any source with a positive weight runs out (the proportions hold
    to the end); ``"all"`` drains the others afterwards (the tail is off-target).  Dict examples get
    their source id in ``source_key`` (default ``"source"``; ``None`` leaves examples untouched), for
    per-source losses.  ``tokens`` holds this process's tokens per source of the last pass.

    Example:
        >>> from packwise.samplers import MixedPackedIterable
        >>> a = [{"ids": [1] * 4} for _ in range(6)]
        >>> b = [{"ids": [2] * 2} for _ in range(6)]
        >>> stream = MixedPackedIterable({"a": a, "b": b}, {"a": 0.5, "b": 0.5}, max_tokens=8, length="ids",
        ...                              num_replicas=1, rank=0, shuffle=False)
        >>> [[ex["source"] for ex in batch] for batch in stream]
        [[0, 0], [0, 0], [1, 1, 1, 1], [1, 1]]
        >>> stream.tokens.tolist()      # b ran out first: a is one example ahead
        [16, 12]
    """

    def __init__(
        self,
        sources: Mapping[str, Iterable] | Sequence[Iterable],
        weights: Mapping[str, float] | Sequence[float],
        max_tokens: int,
        length: str | Callable[[Any], int] = "input_ids",
        *,
        until: Literal["first", "all"] = "first",
        source_key: str | None = "source",
        **kwargs: Any,
    ):
        names, streams = _named_sources(sources)
        super().__init__(streams, max_tokens, length, **kwargs)
        self.names = names
        self.weights = _target_shares(weights, names)
        if until not in ("first", "all"):
            raise ValueError(f"until must be 'first' (stop at the first exhausted source) or 'all', got {until!r}")
        self.until = until
        self.source_key = source_key
        self.tokens = np.zeros(len(names), np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Seed the next pass with ``(seed, epoch)`` and pass the epoch to every source that takes it."""
        self.epoch = int(epoch)
        for src in self.source:
            if hasattr(src, "set_epoch"):
                src.set_epoch(epoch)

    def _reader(self) -> tuple[Iterable, int, int]:
        shards = [_SourceShard(src, self.length, self.window, self.seed, self.num_replicas, self.rank) for src in self.source]
        return _DeficitMix(shards, self.weights, self.length, self.until, self.source_key, self.tokens), 0, 1


def _named_sources(sources) -> tuple[list[str], list[Iterable]]:
    if isinstance(sources, Mapping):
        names, streams = [str(k) for k in sources], list(sources.values())
    else:
        streams = list(sources)
        names = [str(i) for i in range(len(streams))]
    if not streams:
        raise ValueError("sources is empty; give at least one iterable dataset")
    return names, streams


def _target_shares(weights, names: list[str]) -> np.ndarray:
    """``weights`` (a dict by source name or a sequence) as float64 shares summing to 1."""
    if isinstance(weights, Mapping):
        unknown = sorted(set(map(str, weights)) - set(names))
        if unknown:
            raise ValueError(f"weights name {unknown} but the sources are {names}; give one weight per source name")
        values = [weights.get(n, weights.get(int(n), 0.0) if n.isdigit() else 0.0) for n in names]
    else:
        values = list(weights)
    w = np.asarray(values, dtype=np.float64)
    if w.shape != (len(names),):
        raise ValueError(f"weights has {w.shape[0] if w.ndim else 0} entries for {len(names)} sources; give one per source")
    bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
    if bad.shape[0]:
        raise ValueError(f"weights[{names[int(bad[0])]!r}] = {float(w[bad[0]])!r}; weights must be finite and >= 0")
    if not w.sum() > 0:
        raise ValueError("weights sum to 0; give at least one source a positive weight")
    return w / w.sum()
