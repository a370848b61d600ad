"""The windowed pack stage: token batches in, packed rows out, with memory bounded by the window.

Sequences are gathered into windows of ``window`` sequences and packed with ``packwise.packing``:
``bfd`` / ``ffd`` / ``first_fit`` / ``next_fit`` pack each window on its own, ``window_bfd`` feeds
a ``WindowPacker`` whose open bins carry over between windows, and ``concat`` cuts the running
concatenation into full rows (``concat_chunk``), carrying the last partial row.  Only sequences
that are still waiting for a row are held, so peak memory follows the window, not the dataset.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import numpy as np

from ..packing import ALGORITHMS as _PACKERS
from ..packing import WindowPacker, concat_chunk, pack
from ..packing.core import OVERSIZE_POLICIES, _apply_oversize, first_over, validate_capacity
from . import _kernels
from ._arrow import pool_empty
from .tokens import TokenBatch

_PER_WINDOW = tuple(a for a in _PACKERS if a != "window_bfd")  # each window packed on its own
ALGORITHMS: tuple[str, ...] = _PER_WINDOW + ("window_bfd", "concat")
_I64 = np.zeros(0, np.int64)


@dataclass(frozen=True)
class PackedRows:
    """Packed rows, CSR twice: row ``r`` holds tokens ``tokens[token_offsets[r]:token_offsets[r + 1]]``
    made of the sequences ``seq_offsets[r]:seq_offsets[r + 1]`` of ``seq_lens`` / ``source_index`` /
    ``source_start`` (input row and first token of each piece)."""

    token_offsets: np.ndarray
    tokens: np.ndarray
    labels: np.ndarray | None
    seq_offsets: np.ndarray
    seq_lens: np.ndarray
    source_index: np.ndarray
    source_start: np.ndarray
    sequence_label: np.ndarray | None = None  # KTO: the boolean label of each sequence
    source: np.ndarray | None = None  # a mixed pack (``--mix``): the source id (int32) of each sequence

    @property
    def num_rows(self) -> int:
        return int(self.token_offsets.shape[0] - 1)


@dataclass
class PackStats:
    """Counts of one pack run; ``padding_before`` is pad-to-max, ``padding_after`` the packed rows."""

    capacity: int
    algorithm: str
    rows_in: int = 0
    empty_rows: int = 0
    sequences: int = 0
    tokens_in: int = 0
    clipped_tokens_in: int = 0
    max_length: int = 0
    oversize_sequences: int = 0  # sequences longer than ``capacity`` (what became of them: ``oversize``)
    truncated_tokens: int = 0
    dropped_sequences: int = 0
    dropped_tokens: int = 0
    rows_out: int = 0
    tokens_out: int = 0
    pieces_out: int = 0
    windows: int = 0
    max_pending_sequences: int = 0
    length_histogram: list = field(default_factory=list)  # [k]: sequences of 2**k to 2**(k+1) - 1 tokens

    @property
    def padding_before(self) -> float:
        slots = self.sequences * self.capacity
        return 1.0 - self.clipped_tokens_in / slots if slots else 0.0

    @property
    def padding_after(self) -> float:
        slots = self.rows_out * self.capacity
        return 1.0 - self.tokens_out / slots if slots else 0.0

    @property
    def lower_bound(self) -> int:
        return -(-self.tokens_out // self.capacity)

    @property
    def rows_over_bound(self) -> float:
        return self.rows_out / self.lower_bound - 1.0 if self.lower_bound else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(
            padding_before=self.padding_before,
            padding_after=self.padding_after,
            lower_bound_l1=self.lower_bound,
            rows_over_bound=self.rows_over_bound,
        )
        return out


class _Chunk:
    """Sequences of one input batch (or a view of part of it): CSR tokens keyed by increasing input row."""

    def __init__(self, rows, offsets, values, labels=None, sequence_label=None):
        self.rows, self.offsets, self.values, self.labels = rows, offsets, values, labels
        self.sequence_label = sequence_label

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def split(self, n: int) -> tuple["_Chunk", "_Chunk"]:
        """The first ``n`` sequences and the rest, as views (no token is copied)."""
        cut = int(self.offsets[n])
        lab = self.labels
        sl = self.sequence_label
        head = _Chunk(self.rows[:n], self.offsets[: n + 1], self.values[:cut], None if lab is None else lab[:cut],
                      None if sl is None else sl[:n])  # fmt: skip
        tail = _Chunk(self.rows[n:], self.offsets[n:] - cut, self.values[cut:], None if lab is None else lab[cut:],
                      None if sl is None else sl[n:])  # fmt: skip
        return head, tail


def _refuse_oversize(batch: TokenBatch, capacity: int) -> None:
    """``--oversize error``: a ``ValueError`` naming the file and row of the batch's first sequence over ``capacity``."""
    lengths = batch.lengths
    i = first_over(lengths, capacity)
    if i is not None:
        raise ValueError(
            f"{batch.source} row {int(batch.rows[i]) - batch.source_row0} has {int(lengths[i])} tokens, more than --max-tokens "
            f"{capacity}; pass --oversize truncate, split or drop, or raise --max-tokens"
        )


def check_pack_settings(capacity, algorithm: str, oversize: str, window, seed) -> tuple[int, int]:
    """``(capacity, window)`` validated, or a ``ValueError`` naming the bad setting (no kernel runs)."""
    capacity = validate_capacity(capacity, "max_tokens")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if oversize not in OVERSIZE_POLICIES:
        raise ValueError(f"oversize must be one of {OVERSIZE_POLICIES}, got {oversize!r}")
    window = validate_capacity(window, "window")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"--seed {seed}: must be an integer >= 0 (or left out for the packer's order)")
    return capacity, window


def warm_up(algorithm: str, oversize: str, labels: bool = False) -> threading.Thread:
    """Load the packing kernels from numba's cache on a background thread, started before a run
    reads its input: the load costs ~0.3 s of (mostly GIL-holding) Python per process, which then
    overlaps reading and tokenizing instead of preceding them. Once per process and settings; a
    daemon thread (numba replaces cache files atomically), so an early error does not wait for it.

    Example:
        >>> warm_up("window_bfd", "split").join()
    """
    key = (algorithm, oversize, labels)
    if key in _WARMED:
        return _WARMED[key]

    def run() -> None:
        values = np.arange(1, 7, dtype=np.int32)
        batch = TokenBatch(np.array([0, 2, 6], np.int64), values, np.array([0, 1], np.int64), values.copy() if labels else None, 2)
        try:
            for seed in (None, 0):  # the seeded path also shuffles rows (csr_take)
                packer = StreamPacker(4, algorithm, oversize, window=2, seed=seed)  # lengths 2 and 4: none oversize
                for _ in packer.add(batch):
                    pass
                for _ in packer.finish():
                    pass
        except Exception:  # the run itself meets the same error, and reports it where it happens
            pass

    thread = _WARMED[key] = threading.Thread(target=run, name="packwise-warm-kernels", daemon=True)
    thread.start()
    return thread


_WARMED: dict[tuple, threading.Thread] = {}


class StreamPacker:
    """Pack a stream of ``TokenBatch`` objects into rows of at most ``capacity`` tokens.

    ``row_order`` (a mixture's) decides the order of each window's rows from their sequences, after
    the ``seed`` shuffle. ``part_rows`` caps the rows of each ``PackedRows`` yielded (``None``: one per window): the
    local writer takes its row-group size, so it compresses one group while the next is gathered
    and a window's output is never whole in memory. The rows and their order do not change.

    Example:
        >>> import numpy as np
        >>> from packwise.pipeline.pack_stage import StreamPacker
        >>> from packwise.pipeline.tokens import TokenBatch
        >>> tb = TokenBatch(np.array([0, 3, 5, 9]), np.arange(9, dtype=np.int32), np.arange(3))
        >>> packer = StreamPacker(capacity=6, algorithm="bfd")
        >>> rows = list(packer.add(tb)) + list(packer.finish())
        >>> [r.tokens[r.token_offsets[0]:r.token_offsets[1]].tolist() for r in rows]
        [[5, 6, 7, 8, 3, 4]]
        >>> packer.stats.rows_out, packer.stats.tokens_out
        (2, 9)
    """

    def __init__(
        self,
        capacity: int,
        algorithm: str = "window_bfd",
        oversize: str = "error",
        *,
        window: int = 10_000,
        max_age: int = 4,
        seed: int | None = None,
        part_rows: int | None = None,
        row_order: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
    ):
        self.capacity, self.window = check_pack_settings(capacity, algorithm, oversize, window, seed)
        self.row_order = row_order  # (item rows, lengths, offsets, seeded order) -> the order to write a window's rows
        self.algorithm, self.oversize, self.seed = algorithm, oversize, seed
        self.part_rows = None if part_rows is None else validate_capacity(part_rows, "part_rows")
        self.stats = PackStats(self.capacity, algorithm)
        self._hist = np.zeros(64, np.int64)
        self._chunks: list[_Chunk] = []  # sequences of the current window and of pending entries
        self._new: list[_Chunk] = []
        self._new_count = 0
        self._max_age = validate_capacity(max_age, "max_age")
        self._packer: WindowPacker | None = None  # made at the first window: its kernels load meanwhile (warm_up)
        # pending entries: serial (window_bfd id), input row, first token, length
        self._pending = (_I64, _I64, _I64, _I64)
        self._next_serial = 0

    # --- public -------------------------------------------------------------------------------
    def add(self, batch: TokenBatch) -> Iterator[PackedRows]:
        """Take one batch; yield the rows that became final."""
        if self.oversize == "error" and self.algorithm != "concat":
            _refuse_oversize(batch, self.capacity)
        self.stats.rows_in += batch.rows_read
        self.stats.empty_rows += batch.empty
        chunk = _Chunk(batch.rows, batch.offsets, batch.values, batch.labels, batch.sequence_label)
        while len(chunk):
            take = min(len(chunk), self.window - self._new_count)
            head, chunk = chunk.split(take) if take < len(chunk) else (chunk, _Chunk(_I64, np.zeros(1, np.int64), chunk.values[:0]))
            self._new.append(head)
            self._new_count += len(head)
            if self._new_count == self.window:
                yield from self._window(final=False)

    def finish(self) -> Iterator[PackedRows]:
        """Pack what is left and close every open row (the end of the stream)."""
        yield from self._window(final=True)
        self.stats.length_histogram = self._hist[: int(np.flatnonzero(self._hist).max(initial=-1)) + 1].tolist()

    # --- one window ---------------------------------------------------------------------------
    def _window(self, final: bool) -> Iterator[PackedRows]:
        new, self._new, self._new_count = self._new, [], 0
        rows = np.concatenate([c.rows for c in new]) if new else _I64
        lengths = np.concatenate([np.diff(c.offsets) for c in new]) if new else _I64
        if rows.shape[0]:
            self._count(rows, lengths)
        window_no = self.stats.windows
        self.stats.windows += 1
        self._chunks.extend(new)
        self.stats.max_pending_sequences = max(self.stats.max_pending_sequences, sum(len(c) for c in self._chunks))
        if self.algorithm in _PER_WINDOW:
            plan = self._per_window(rows, lengths) if rows.shape[0] else None
        elif self.algorithm == "window_bfd":
            plan = self._window_bfd(rows, lengths, final)
        else:
            plan = self._concat(rows, lengths, final)
        if plan is not None and plan[3].shape[0] > 1:
            yield from self._rows(*plan, window_no)
        pending = self._pending[1]
        if pending.shape[0] == 0:
            self._chunks = []
        else:
            firsts = np.array([c.rows[0] for c in self._chunks])
            used = np.unique(np.searchsorted(firsts, pending, side="right") - 1)
            self._chunks = [self._chunks[int(i)] for i in used]

    def _count(self, rows: np.ndarray, lengths: np.ndarray) -> None:
        s = self.stats
        s.sequences += int(rows.shape[0])
        s.tokens_in += int(lengths.sum())
        s.clipped_tokens_in += int(np.minimum(lengths, self.capacity).sum())
        s.max_length = max(s.max_length, int(lengths.max()))
        s.oversize_sequences += int((lengths > self.capacity).sum())
        buckets = np.bincount(np.log2(lengths).astype(np.int64), minlength=self._hist.shape[0])
        self._hist[: buckets.shape[0]] += buckets[: self._hist.shape[0]]

    def _per_window(self, rows: np.ndarray, lengths: np.ndarray):
        p = pack(lengths, self.capacity, algorithm=self.algorithm, oversize=self.oversize)
        self._lost(p.truncated_tokens, p.dropped.shape[0], p.dropped_tokens)
        starts = np.zeros(p.order.shape[0], np.int64) if p.starts is None else p.starts
        return rows[p.order], starts, p.lengths, p.offsets

    def _window_bfd(self, rows: np.ndarray, lengths: np.ndarray, final: bool):
        serial, item_rows, starts, lens = self._pending
        if rows.shape[0]:
            items, piece_starts, entry_lengths, truncated, dropped = _apply_oversize(lengths, self.capacity, self.oversize)
            self._lost(truncated, dropped.shape[0], int(lengths[dropped].sum()))
            local = np.arange(lengths.shape[0], dtype=np.int64) if items is None else items
            m = entry_lengths.shape[0]
            ids = np.arange(self._next_serial, self._next_serial + m, dtype=np.int64)
            self._next_serial += m
            serial = np.concatenate([serial, ids])
            item_rows = np.concatenate([item_rows, rows[local]])
            starts = np.concatenate([starts, np.zeros(m, np.int64) if piece_starts is None else piece_starts])
            lens = np.concatenate([lens, entry_lengths])
            closed = [self._window_packer().add(entry_lengths, ids=ids)]
        else:
            closed = []
        if final:
            closed.append(self._window_packer().flush())
        ids = np.concatenate([c.ids for c in closed]) if closed else _I64
        sizes = np.concatenate([np.diff(c.offsets) for c in closed]) if closed else _I64
        offsets = np.zeros(sizes.shape[0] + 1, np.int64)
        np.cumsum(sizes, out=offsets[1:])
        pos = np.searchsorted(serial, ids)
        out = item_rows[pos], starts[pos], lens[pos], offsets
        left = np.ones(serial.shape[0], np.bool_)
        left[pos] = False
        self._pending = (serial[left], item_rows[left], starts[left], lens[left])
        return out

    def _concat(self, new_rows: np.ndarray, lengths: np.ndarray, final: bool):
        _, c_rows, c_starts, c_lens = self._pending
        rows = np.concatenate([c_rows, new_rows])
        base = np.concatenate([c_starts, np.zeros(new_rows.shape[0], np.int64)])
        ent = np.concatenate([c_lens, lengths])
        if ent.shape[0] == 0:
            return None
        p = concat_chunk(ent, self.capacity)
        item_rows, starts, lens, offsets = rows[p.order], base[p.order] + p.starts, p.lengths, p.offsets
        last = int(offsets[-2])
        if not final and int(lens[last:].sum()) < self.capacity:
            self._pending = (_I64, item_rows[last:], starts[last:], lens[last:])
            return item_rows[:last], starts[:last], lens[:last], offsets[:-1]
        self._pending = (_I64, _I64, _I64, _I64)
        return item_rows, starts, lens, offsets

    def _window_packer(self) -> WindowPacker:
        if self._packer is None:
            self._packer = WindowPacker(self.capacity, window=self.window, max_age=self._max_age)
        return self._packer

    def _lost(self, truncated: int, dropped: int, dropped_tokens: int) -> None:
        self.stats.truncated_tokens += int(truncated)
        self.stats.dropped_sequences += int(dropped)
        self.stats.dropped_tokens += int(dropped_tokens)

    # --- gather ---------------------------------------------------------------------------------
    def _rows(self, item_rows, starts, lens, offsets, window_no: int) -> Iterator[PackedRows]:
        """The window's rows (shuffled with ``seed``), gathered ``part_rows`` at a time."""
        n_rows = offsets.shape[0] - 1
        perm = None if self.seed is None else np.random.default_rng([self.seed, window_no]).permutation(n_rows)
        if self.row_order is not None:
            perm = self.row_order(item_rows, lens, offsets, np.arange(n_rows) if perm is None else perm)
        if perm is not None:
            idx, offsets = _kernels.csr_take(offsets, perm)
            item_rows, starts, lens = item_rows[idx], starts[idx], lens[idx]
        step = self.part_rows or n_rows
        for a in range(0, n_rows, step):
            b = min(a + step, n_rows)
            s0, s1 = int(offsets[a]), int(offsets[b])
            yield self._gather(item_rows[s0:s1], starts[s0:s1], lens[s0:s1], offsets[a : b + 1] - s0)

    def _gather(self, item_rows, starts, lens, offsets) -> PackedRows:
        n_rows = offsets.shape[0] - 1
        cum = np.zeros(lens.shape[0] + 1, np.int64)
        np.cumsum(lens, out=cum[1:])
        tokens = pool_empty(int(cum[-1]), np.int32)
        labels = None if self._chunks[0].labels is None else pool_empty(int(cum[-1]), np.int32)
        seq_label = None if self._chunks[0].sequence_label is None else np.empty(lens.shape[0], np.bool_)
        firsts = np.array([c.rows[0] for c in self._chunks])
        which = np.searchsorted(firsts, item_rows, side="right") - 1
        for c in np.unique(which):
            chunk, m = self._chunks[int(c)], np.flatnonzero(which == c)
            at = np.searchsorted(chunk.rows, item_rows[m])
            src = chunk.offsets[at] + starts[m]
            if seq_label is not None:
                seq_label[m] = chunk.sequence_label[at]
            _kernels.copy_segments(tokens, chunk.values, src, cum[m], lens[m])
            if labels is not None:
                _kernels.copy_segments(labels, chunk.labels, src, cum[m], lens[m])
        rows = PackedRows(
            token_offsets=cum[offsets],
            tokens=tokens,
            labels=labels,
            seq_offsets=offsets,
            seq_lens=lens.astype(np.int32),
            source_index=item_rows,
            source_start=starts,
            sequence_label=seq_label,
        )
        self.stats.rows_out += n_rows
        self.stats.tokens_out += int(cum[-1])
        self.stats.pieces_out += int(lens.shape[0])
        return rows
