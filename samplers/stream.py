"""Streaming batching for ``IterableDataset`` sources: windowed packing and bucketing with a
bounded buffer.  A source read by position is split into canonical substreams batched on their
own, dealt to (rank, DataLoader worker) shards and resumable under any topology; an HF
``IterableDataset`` shards itself by worker, and by rank through ``split_dataset_by_node``."""

from __future__ import annotations

import hashlib
import heapq
from collections import deque
from collections.abc import Mapping
from itertools import islice
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

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

    def _canonical_windows(self, canonical: int, owned: set[int]) -> Iterator[tuple[int, list, np.ndarray, np.ndarray]]:
        """``(substream, examples, lengths, stream rows)`` per window of the ``owned`` canonical
        substreams (row ``i`` belongs to substream ``i % canonical``), as the source fills them; at
        its end, each owned substream's last partial window in substream order."""
        held: dict[int, tuple[list, list[int]]] = {s: ([], []) for s in owned}
        for i, example in enumerate(self.source):
            got = held.get(i % canonical)
            if got is None:
                continue
            got[0].append(example)
            got[1].append(i)
            if len(got[0]) == self.window:
                held[i % canonical] = ([], [])
                yield i % canonical, got[0], self._lengths(*got), np.asarray(got[1], np.int64)
        for s in sorted(owned):
            examples, rows = held[s]
            if examples:
                yield s, examples, self._lengths(examples, rows), np.asarray(rows, np.int64)

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


_UNKNOWN = 1 << 40  # the end of a substream no worker has reached yet (sums of these stay in int64)


def _take(starts: np.ndarray, stops: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """Counters after ``n`` turns of "the lowest counter goes next, ties by position", and the
    position whose turn is next (-1: all done).  Counter ``j`` runs from ``starts[j]`` to
    ``stops[j]``.  This is DataLoader's round robin over its workers (all start at 0) and a
    worker's round robin over its substreams (they start where a resume left them)."""
    starts = np.asarray(starts, np.int64)
    stops = np.maximum(np.asarray(stops, np.int64), starts)

    def before(level: int) -> int:  # turns taken below ``level``
        return int((np.clip(level, starts, stops) - starts).sum())

    total = int((stops - starts).sum())
    if n > total:
        raise ValueError(f"{n} batches were received but only {total} exist; the loader does not read this stream")
    if n == total:
        return stops.copy(), -1
    lo, hi = int(starts.min()), int(starts.max()) + n  # the level of the next turn lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if before(mid + 1) > n:
            hi = mid
        else:
            lo = mid + 1
    extra = n - before(lo)
    candidates = np.flatnonzero((starts <= lo) & (lo < stops))
    out = np.clip(lo, starts, stops)
    out[candidates[:extra]] += 1
    return out, int(candidates[extra])


class _Substream:
    """One canonical substream being played: its shuffle and its ready batches.

    Batches are numbered from 0 in the epoch; the first ``skip`` (consumed before a resume) are
    made again, to reach the same state, and dropped."""

    def __init__(self, index: int, skip: int, rng: np.random.Generator):
        self.index = index
        self.rng = rng
        self.ready: deque[list] = deque()
        self.made = 0
        self.skip = skip
        self.next = skip  # number of the next batch this substream hands out

    def offer(self, batches: Iterable[list]) -> None:
        """Number ``batches`` in order; keep those not consumed before the resume."""
        for batch in batches:
            if self.made >= self.skip:
                self.ready.append(batch)
            self.made += 1


class _CanonicalStream(_ShardedStream):
    """A stream whose batches do not depend on the topology, resumable under any topology.

    The source is split by position into ``canonical`` substreams (row ``i`` goes to substream
    ``i % canonical``), each batched on its own in windows of ``window`` of its examples, shuffled
    with ``(seed, epoch, substream)``: the batches are a pure function of (source, seed, epoch,
    ``canonical``, settings).  Physical shard ``p`` (rank x DataLoader worker, of ``num_replicas *
    num_workers <= canonical``) plays substreams ``p, p + shards, ...``, taking their batches in
    turn.  Subclasses make a substream (``_open``), feed it windows (``_feed``) and name what
    decides its batches (``_settings``).
    """

    _SHARD_SEEDS = 0  # epoch_rng stream ids: an HF stream's per-shard shuffle
    _SUBSTREAM_SEEDS = 0  # and the canonical substreams' shuffles

    def _init_canonical(self, length, canonical: int | None) -> None:
        self._length_name = length if isinstance(length, str) else getattr(length, "__qualname__", "function")
        self._canonical_given = canonical is not None
        self._restart(validate_capacity(canonical, "canonical") if canonical is not None else 8 * self.num_replicas)

    def _open(self, index: int, skip: int, rng: np.random.Generator) -> _Substream:  # pragma: no cover - abstract
        raise NotImplementedError

    def _feed(self, sub: _Substream, window: tuple | None) -> None:  # pragma: no cover - abstract
        """Batch one window ``(examples, lengths, rows)`` of ``sub`` (``None``: the source ended)."""
        raise NotImplementedError

    def _settings(self) -> tuple:  # pragma: no cover - abstract
        raise NotImplementedError

    def _new_pass(self) -> None:
        self.dropped = 0

    # --- position ----------------------------------------------------------------------------
    def _restart(self, canonical: int) -> None:
        """Start the epoch from its beginning with ``canonical`` substreams (and a fresh ledger)."""
        import torch

        if getattr(self, "canonical", None) != canonical:
            self.canonical = canonical
            # what the workers tell the main process: each substream's batch count once it ended
            # (-1 before), and in the last slot how many passes started since the epoch's start
            self._ledger = torch.zeros(canonical + 1, dtype=torch.int64).share_memory_()
        self._ledger[:canonical] = -1
        self._ledger[canonical] = 0
        self._consumed = np.zeros(canonical, np.int64)
        self._ended = np.zeros(canonical, np.bool_)
        self._turns: dict | None = None
        self._yielded: int | None = None  # batches a pass in this process handed out
        self._local_pass = 0

    def set_epoch(self, epoch: int) -> None:
        """Seed the next pass with ``(seed, epoch)``; a new epoch starts from its beginning."""
        if int(epoch) != self.epoch:
            self._restart(self.canonical)
        super().set_epoch(epoch)

    def _rotation(self, workers: int) -> int:
        """Which of this rank's groups worker 0 plays: the one an uninterrupted run would have
        served next, when the state was saved under this very topology (else group 0)."""
        turns = self._turns
        if turns is not None and (turns["num_replicas"], turns["num_workers"]) == (self.num_replicas, workers):
            return int(turns["next"][self.rank])
        return 0

    def _groups(self, workers: int) -> list[np.ndarray]:
        """The substreams each of this rank's ``workers`` plays, in DataLoader worker order."""
        shards = self.num_replicas * workers
        if shards > self.canonical:
            raise ValueError(
                f"{self.num_replicas} ranks x {workers} DataLoader workers = {shards} shards but the stream has "
                f"canonical={self.canonical} substreams; build it with canonical >= {shards} (fixed for the whole "
                f"run: it decides the batches) or use fewer workers"
            )
        turn = self._rotation(workers)
        first = self.rank * workers
        return [np.arange(first + (w + turn) % workers, self.canonical, shards) for w in range(workers)]

    # --- iteration ---------------------------------------------------------------------------
    def _unpositioned(self) -> str | None:
        """Why this stream cannot be read by position into canonical substreams (``None``: it can)."""
        if _is_hf_stream(self.source):
            return "an HF IterableDataset shards itself by worker and rank"
        return None

    def __iter__(self) -> Iterator[list]:
        if self._unpositioned() is not None:
            return self._play_shard()
        return self._play_canonical()

    def _play_shard(self) -> Iterator[list]:
        """An HF stream: batch what this (rank, worker) reads as one substream."""
        shard, _ = self._shard()
        sub = self._open(0, 0, epoch_rng(self.seed, self.epoch, self._SHARD_SEEDS + shard))
        self._new_pass()
        for window in self._windows():
            self._feed(sub, window)
            while sub.ready:
                yield sub.ready.popleft()
        self._feed(sub, None)
        yield from sub.ready

    def _play_canonical(self) -> Iterator[list]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        group = self._groups(workers)[worker]
        local = info is None
        self._new_pass()
        ledger = self._ledger
        live = []
        for s in group.tolist():
            ledger[s] = int(self._consumed[s]) if self._ended[s] else -1
            if not self._ended[s]:
                rng = epoch_rng(self.seed, self.epoch, self._SUBSTREAM_SEEDS + s)
                live.append(self._open(s, int(self._consumed[s]), rng))
        ledger[self.canonical] += 1
        if local:  # read in this process: count the batches here, for this pass
            self._yielded, self._local_pass = 0, int(ledger[self.canonical])
        by_index = {sub.index: sub for sub in live}
        windows = self._canonical_windows(self.canonical, set(by_index))
        queue = [(sub.next, i, sub) for i, sub in enumerate(live)]  # batch k of every substream, in turn
        heapq.heapify(queue)
        source_done = False
        while queue:
            _, i, sub = queue[0]
            while not sub.ready and not source_done:
                window = next(windows, None)
                if window is None:
                    source_done = True
                    for u in live:
                        self._feed(u, None)
                else:
                    self._feed(by_index[window[0]], window[1:])
            if not sub.ready:
                ledger[sub.index] = sub.next  # tell the main process: this substream has ended
                heapq.heappop(queue)
                continue
            sub.next += 1
            heapq.heapreplace(queue, (sub.next, i, sub))
            if local:
                self._yielded += 1
            yield sub.ready.popleft()

    # --- state -------------------------------------------------------------------------------
    def _settings_key(self) -> str:
        """What decides the batches besides (source, seed, epoch, canonical), hashed."""
        return hashlib.blake2b(repr((type(self).__name__, *self._settings())).encode(), digest_size=8).hexdigest()

    def _received(self, loader) -> tuple[int, int]:
        """``(batches the training loop received this pass, DataLoader workers)``."""
        if loader is None:
            passes = int(self._ledger[self.canonical])
            if self._yielded is not None and passes == self._local_pass:  # the last pass ran here
                return self._yielded, 1
            if passes > 0:
                raise ValueError(
                    "this stream is read by DataLoader workers: pass state_dict(loader=it) with it = iter(loader), "
                    "the iterator the training loop draws from (or the DataLoader itself with persistent_workers=True)"
                )
            loaded = self._turns  # nothing read since load_state_dict: keep the loaded topology's turn
            same = loaded is not None and loaded["num_replicas"] == self.num_replicas
            return 0, loaded["num_workers"] if same else 1
        it = getattr(loader, "_iterator", None) if isinstance(loader, DataLoader) else loader
        if not hasattr(it, "_num_yielded") or getattr(it, "_dataset", None) is not self:
            raise ValueError(
                "loader must be the iterator of a torch DataLoader over this stream (it = iter(loader)), or a "
                "DataLoader over it with persistent_workers=True that is being iterated"
            )
        if it._auto_collation or not getattr(it, "_in_order", True):
            raise ValueError(
                "build the DataLoader with batch_size=None (the stream yields whole batches) and in_order=True "
                "(the default), so the batches the loop received map to the substreams that made them"
            )
        return int(it._num_yielded), max(int(it._num_workers), 1)

    def state_dict(self, loader=None) -> dict:
        """Where the epoch stands: per canonical substream, the batches the training loop received.

        ``loader``: the DataLoader iterator the loop draws from (its count of returned batches,
        not what workers prefetched).  Under DDP each rank's state covers its own substreams:
        combine them with :meth:`merge_states` before loading.  A few hundred bytes of ints.
        """
        why = self._unpositioned()
        if why is not None:
            raise ValueError(
                f"{why}, so this stream cannot say which examples were consumed; save the dataset's own "
                f"state_dict(), or pass a source read by position"
            )
        received, workers = self._received(loader)
        groups = self._groups(workers)
        ledger = self._ledger[: self.canonical].numpy().copy()
        base = self._consumed
        stops = np.where(self._ended, base, np.where(ledger >= 0, ledger, _UNKNOWN))
        sizes = np.array([min(int((stops[g] - base[g]).sum()), _UNKNOWN) for g in groups], np.int64)
        per_worker, nxt = _take(np.zeros(workers, np.int64), sizes, received)
        consumed = base.copy()
        for group, n in zip(groups, per_worker.tolist()):
            consumed[group] = _take(base[group], stops[group], n)[0]
        own = np.concatenate(groups)
        ended = self._ended.copy()
        ended[own] |= (ledger[own] >= 0) & (consumed[own] == ledger[own])
        turns: list[int | None] = [None] * self.num_replicas
        turns[self.rank] = (max(nxt, 0) + self._rotation(workers)) % workers
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "canonical": self.canonical,
            "settings": self._settings_key(),
            "num_replicas": self.num_replicas,
            "num_workers": workers,
            "consumed": consumed.tolist(),
            "ended": np.flatnonzero(ended).tolist(),
            "turns": turns,
        }

    @staticmethod
    def merge_states(states: Sequence[dict]) -> dict:
        """One state from every rank's ``state_dict()`` (gathered, e.g. ``dist.all_gather_object``):
        each substream is played by one rank, so its count is the largest one saved."""
        if not states:
            raise ValueError("merge_states needs the state of every rank, got none")
        first = states[0]
        for i, state in enumerate(states):
            _check_state(state, f"states[{i}]")
            for key in ("epoch", "seed", "canonical", "settings", "num_replicas", "num_workers"):
                if state[key] != first[key]:
                    raise ValueError(
                        f"states[{i}] has {key}={state[key]!r} but states[0] has {key}={first[key]!r}; "
                        f"merge the states every rank saved at the same step of the same run"
                    )
        turns = [None] * int(first["num_replicas"])
        for i, state in enumerate(states):
            for r, turn in enumerate(state["turns"]):
                if turn is not None and turns[r] is not None:
                    raise ValueError(f"states[{i}] and another state both saved rank {r}; pass each rank's state once")
                turns[r] = turn if turn is not None else turns[r]
        merged = dict(first)
        merged["consumed"] = np.max([s["consumed"] for s in states], axis=0).tolist()
        merged["ended"] = sorted(set().union(*(s["ended"] for s in states)))
        merged["turns"] = turns
        return merged

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next pass yields the rest of the saved epoch, under any topology with at
        most ``canonical`` shards (re-batching each substream up to where it stopped)."""
        _check_state(state, "state_dict")
        why = self._unpositioned()
        if why is not None:
            raise ValueError(f"{why}, so it has no position to resume; load the dataset's own state_dict()")
        if state["seed"] != self.seed:
            raise ValueError(f"state_dict was saved with seed={state['seed']} but this stream has seed={self.seed}; rebuild it with the saved seed")
        if state["settings"] != self._settings_key():
            raise ValueError(
                f"state_dict was saved by another stream class or with other settings ({self._SETTINGS}); rebuild "
                f"the stream with the saved ones"
            )
        canonical = int(state["canonical"])
        if self._canonical_given and canonical != self.canonical:
            raise ValueError(
                f"state_dict was saved with canonical={canonical} but this stream has canonical={self.canonical}; "
                f"pass canonical={canonical} or leave it out (a loaded state brings its own)"
            )
        missing = [r for r, turn in enumerate(state["turns"]) if turn is None]
        if missing:
            raise ValueError(
                f"state_dict covers only some ranks (ranks {missing} of {len(state['turns'])} are missing); gather every "
                f"rank's state_dict() and pass {type(self).__name__}.merge_states(states)"
            )
        consumed = np.asarray(state["consumed"], np.int64)
        if consumed.shape != (canonical,) or (consumed < 0).any():
            raise ValueError(f"state_dict consumed must hold {canonical} counts >= 0, got {state['consumed']!r}")
        self._restart(canonical)
        super().set_epoch(int(state["epoch"]))
        self._consumed = consumed
        self._ended[np.asarray(state["ended"], np.int64)] = True
        self._turns = {"num_replicas": int(state["num_replicas"]), "num_workers": int(state["num_workers"]), "next": list(state["turns"])}


_STATE_KEYS = ("epoch", "seed", "canonical", "settings", "num_replicas", "num_workers", "consumed", "ended", "turns")


def _check_state(state: dict, name: str) -> None:
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:
        raise ValueError(f"{name} is missing {missing}; pass a dict saved by state_dict()")


class _PackedSub(_Substream):
    """A substream of :class:`PackedIterable`: its packer and the examples in its open bins."""

    def __init__(self, stream: "PackedIterable", index: int, skip: int, rng: np.random.Generator):
        super().__init__(index, skip, rng)
        self.packer = WindowPacker(stream.max_tokens, window=stream.window, max_age=stream.max_age)
        self.held: dict[int, Any] = {}
        self.next_id = 0
        self.rows: list[list] = []  # closed bins waiting to fill a batch of rows_per_batch


class PackedIterable(_CanonicalStream):
    """Pack a stream into bins of ``max_tokens`` with windowed best fit; yields lists of examples.

    The source is split by position into ``canonical`` substreams (row ``i`` goes to substream
    ``i % canonical``), each packed on its own with :class:`packwise.packing.WindowPacker` in
    windows of ``window`` of its examples, its closed bins shuffled with ``(seed, epoch,
    substream)``: the batches are a pure function of (source, seed, epoch, ``canonical``,
    settings), whatever the world size and DataLoader workers.  Physical shard ``p`` (rank x
    worker, of ``num_replicas * num_workers <= canonical``) plays substreams ``p, p + shards,
    ...``, taking their batches in turn.  ``canonical`` defaults to ``8 * num_replicas`` and is
    fixed for the run (a loaded state brings its own); memory per shard is about
    ``canonical / shards * (max_age + 2) * window`` examples.  Every shard reads the whole
    source.  Use with ``DataLoader(stream, batch_size=None, collate_fn=...)``.  The stream does
    not promise equal batch counts per rank (each rank packs its own substreams).

    Resume, also under another ``num_replicas`` or ``num_workers``: ``state_dict(loader=it)``
    (``it`` the DataLoader iterator the loop draws from; not needed when the stream is read in
    this process) turns the batches the loop received into per-substream counts.  Under DDP
    gather every rank's state and combine them with :meth:`merge_states`; give the merged state
    to ``load_state_dict`` on every new rank.  A resumed substream re-reads and re-packs its
    examples up to where it stopped (packing is deterministic) without yielding them, then goes
    on, so restoring costs about what reaching that point cost, never more than one pass: over
    the epoch every example (every piece under ``oversize="split"``) comes once, and under the
    same topology the rest is exactly what an uninterrupted run would have yielded.

    An HF ``IterableDataset`` (``load_dataset(..., streaming=True)``) is not sharded by position:
    it shards itself by worker, and by rank through ``split_dataset_by_node`` (applied here unless
    the source already was split, which is then checked against ``rank``/``num_replicas``); each
    shard then packs what it reads with one packer, and the stream has no state.

    ``oversize``: ``"error"`` (default), ``"truncate"`` (keep the first ``max_tokens`` tokens),
    ``"split"`` (cut into ``max_tokens``-token pieces, each packed on its own) or ``"drop"``, as in
    ``packwise pack``; cutting needs ``length`` to be a field name and dict examples (every sequence
    field as long as that field is cut, other fields are copied).  ``truncated_tokens`` and
    ``dropped`` count what the last pass packed (in this process: workers keep their own).

    Under DDP with DataLoader workers (any world size and ``num_workers`` on the resumed run)::

        loader = DataLoader(stream, batch_size=None, collate_fn=collate, num_workers=2)
        it = iter(loader)
        for step, batch in enumerate(it, 1):
            ...
            if step % 1000 == 0:
                states = [None] * dist.get_world_size()
                dist.all_gather_object(states, stream.state_dict(loader=it))
                save_state(path, PackedIterable.merge_states(states))  # every rank may write it
        # later, on every rank of the new run, before iter(loader):
        stream.load_state_dict(load_state(path))

    Example:
        >>> from packwise.samplers import PackedIterable
        >>> docs = [{"ids": [0] * n} for n in (5, 3, 4, 2, 6, 5, 5)]
        >>> def stream():
        ...     return PackedIterable(docs, max_tokens=10, length="ids", window=5, canonical=2, num_replicas=1, rank=0)
        >>> first = stream()
        >>> batches = iter(first)
        >>> taken = [next(batches)]
        >>> state = first.state_dict()  # read in this process: no loader to name
        >>> state["consumed"], len(state["consumed"])
        ([1, 0], 2)
        >>> resumed = stream()
        >>> resumed.load_state_dict(state)
        >>> rest = list(resumed)
        >>> taken + rest == list(stream())
        True
    """

    _SHARD_SEEDS = 100
    _SUBSTREAM_SEEDS = 100_000
    _SETTINGS = "max_tokens, window, max_age, rows_per_batch, oversize, shuffle or length"

    def __init__(
        self,
        source: Iterable,
        max_tokens: int,
        length: str | Callable[[Any], int] = "input_ids",
        *,
        window: int = 256,
        max_age: int = 4,
        rows_per_batch: int = 1,
        oversize: Literal["error", "truncate", "split", "drop"] = "error",
        shuffle: bool = True,
        seed: int = 0,
        canonical: int | None = None,
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
        self._init_canonical(length, canonical)
        self.truncated_tokens = 0
        self.dropped = 0

    def _settings(self) -> tuple:
        return (self.max_tokens, self.window, self.max_age, self.rows_per_batch, self.oversize, self.shuffle, self._length_name)

    def _new_pass(self) -> None:
        self.truncated_tokens = self.dropped = 0

    def _open(self, index: int, skip: int, rng: np.random.Generator) -> _PackedSub:
        return _PackedSub(self, index, skip, rng)

    def _feed(self, sub: _PackedSub, window: tuple | None) -> None:
        """Pack one window of ``sub`` (``None``: the end of the source) into ready batches."""
        if window is None:
            done, final = sub.packer.flush(), True
        else:
            examples, lengths, rows = window
            if int(lengths.max()) > self.max_tokens:
                examples, lengths = self._fit(examples, lengths, rows)
                if not examples:
                    return
            sub.held.update(zip(range(sub.next_id, sub.next_id + len(examples)), examples))
            done, final = sub.packer.add(lengths, start=sub.next_id), False
            sub.next_id += len(examples)
        sub.offer(self._emit(done, sub.held, sub.rows, sub.rng, final))

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


class _BucketSub(_Substream):
    """A substream of :class:`BucketedIterable`: its bucket edges and each bucket's waiting batch."""

    def __init__(self, stream: "BucketedIterable", index: int, skip: int, rng: np.random.Generator):
        super().__init__(index, skip, rng)
        self.edges = None if isinstance(stream.buckets, (int, np.integer)) else stream.buckets
        self.carry: list = []
        self.carry_len = np.zeros(0, np.int64)


class BucketedIterable(_CanonicalStream):
    """Bucket a stream by length into padded batches of cost ``len * max length <= max_tokens``.

    The source is split into ``canonical`` substreams by position and played, saved, merged and
    resumed under any topology as in :class:`PackedIterable` (``state_dict(loader=it)``,
    ``merge_states``, ``load_state_dict``).  Every window of ``window`` examples of a substream
    is shuffled and cut bucket by bucket with the same kernel as :class:`BucketBatchSampler`; each
    bucket's unfinished last batch waits for the substream's next window, so a substream holds
    under ``window`` plus one batch per bucket (and ends with at most one short batch per
    bucket).  ``buckets`` is a sequence of upper edges, or a number of buckets estimated (equal
    token share) from each substream's first window.  Yields lists of examples.

    Example:
        >>> from packwise.samplers import BucketedIterable
        >>> docs = [{"ids": [0] * n} for n in (3, 90, 5, 88, 4, 91)]
        >>> stream = BucketedIterable(docs, max_tokens=200, length="ids", buckets=[10], canonical=1, num_replicas=1, rank=0)
        >>> sorted(len(batch) for batch in stream)
        [1, 2, 3]
    """

    _SHARD_SEEDS = 200
    _SUBSTREAM_SEEDS = 200_000
    _SETTINGS = "max_tokens, batch_size, buckets, window, oversize, shuffle or length"

    def __init__(
        self,
        source: Iterable,
        max_tokens: int | None = None,
        length: str | Callable[[Any], int] = "input_ids",
        *,
        batch_size: int | None = None,
        buckets: int | Sequence[int] = 16,
        window: int = 256,
        oversize: str = "error",
        shuffle: bool = True,
        seed: int = 0,
        canonical: int | None = None,
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
        self._init_canonical(length, canonical)
        self.dropped = 0

    def _settings(self) -> tuple:
        buckets = int(self.buckets) if isinstance(self.buckets, (int, np.integer)) else tuple(self.buckets.tolist())
        return (self.max_tokens, self.batch_size, buckets, self.window, self.oversize, self.shuffle, self._length_name)

    def _open(self, index: int, skip: int, rng: np.random.Generator) -> _BucketSub:
        return _BucketSub(self, index, skip, rng)

    def _feed(self, sub: _BucketSub, window: tuple | None) -> None:
        """Cut one window of ``sub`` into full batches (``None``: the end, every batch goes)."""
        if window is None:
            if sub.carry:
                edges = sub.edges if sub.edges is not None else np.zeros(0, np.int64)
                batches, sub.carry, sub.carry_len = self._cut(sub.carry, sub.carry_len, edges, sub.rng, final=True)
                sub.offer(batches)
            return
        examples, lengths, rows = window
        if self.max_tokens is not None:
            over = lengths > self.max_tokens
            if over.any():
                if self.oversize == "error":
                    _too_long(lengths, rows, self.max_tokens, "raise max_tokens, truncate upstream, or pass oversize='drop'")
                self.dropped += int(over.sum())
                examples = [e for e, o in zip(examples, over.tolist()) if not o]
                lengths = lengths[~over]
        if sub.edges is None and lengths.shape[0]:
            sub.edges = _edges(int(self.buckets), lengths, "buckets")
        sub.carry, sub.carry_len = sub.carry + examples, np.concatenate((sub.carry_len, lengths))
        if sub.edges is not None:
            batches, sub.carry, sub.carry_len = self._cut(sub.carry, sub.carry_len, sub.edges, sub.rng, final=False)
            sub.offer(batches)

    def _cut(self, examples: list, lengths: np.ndarray, edges: np.ndarray, rng, final: bool) -> tuple[list, list, np.ndarray]:
        """``(batches ready to go, examples waiting, their lengths)``."""
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
        batches = [[examples[i] for i in order_list[off[b] : off[b + 1]]] for b in emit.tolist()]
        waiting = np.concatenate([order[offsets[b] : offsets[b + 1]] for b in np.flatnonzero(~ready)] or [np.zeros(0, np.int64)])
        return batches, [examples[i] for i in waiting.tolist()], lengths[waiting]


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
    Its batches depend on the topology (each shard mixes its own share of every source), so it has
    no mid-epoch ``state_dict``: resume at an epoch boundary (``set_epoch``), or mix map-style
    data with :class:`MixtureSampler`, which resumes exactly under any world size.

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

    def _unpositioned(self) -> str | None:
        # each (rank, worker) mixes its own shard of every source (one example of slack per shard)
        return "a MixedPackedIterable mixes each (rank, worker)'s own shard of its sources"

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
