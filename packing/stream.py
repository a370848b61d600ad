"""Streaming best-fit packing with bounded memory: feed windows of lengths, get closed bins back."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _kernels
from .core import validate_capacity, validate_lengths


@dataclass(frozen=True)
class ClosedBins:
    """Bins a ``WindowPacker`` has finished, CSR-shaped.

    ``ids[offsets[b]:offsets[b + 1]]`` are the ids of the items in bin ``b`` and ``lengths`` their
    token counts, parallel to ``ids``.
    """

    ids: np.ndarray
    lengths: np.ndarray
    offsets: np.ndarray

    @property
    def num_bins(self) -> int:
        return int(self.offsets.shape[0] - 1)


_FIRST_ROOM = 1024  # bins and slots made up front; a huge ``window`` on a short stream costs nothing


class WindowPacker:
    """Best-fit decreasing over a stream, one window of items at a time.

    Each call to :meth:`add` best-fits the new items (longest first) into the bins still open,
    then closes every bin that can no longer take the shortest item seen so far or that has been
    open for ``max_age`` windows (``max_age=1`` packs every window on its own).  Open bins therefore stay bounded by about ``max_age * window``, so
    memory grows with the window, never with the stream.  :meth:`flush` closes the rest.

    Example:
        >>> import numpy as np
        >>> from packwise.packing import WindowPacker
        >>> packer = WindowPacker(capacity=8, window=4)
        >>> done = packer.add(np.array([5, 3, 6, 2]))
        >>> [done.ids[done.offsets[b]:done.offsets[b + 1]].tolist() for b in range(done.num_bins)]
        [[2, 3], [0, 1]]
        >>> packer.flush().num_bins
        0
    """

    def __init__(self, capacity: int, window: int = 10_000, max_age: int = 4):
        self.capacity = validate_capacity(capacity)
        self.window = validate_capacity(window, "window")
        self.max_age = validate_capacity(max_age, "max_age")
        # the free-space index spans [0, top], top >= the longest item so far (doubled as needed):
        # memory follows the items, not the capacity
        self._top = min(self.capacity, 255)
        self._words, self._starts = _kernels.new_bitset(self._top)
        self._head = np.full(self._top + 1, -1, np.int64)
        self._big = -1  # the one open bin with more than top tokens free, if any
        self._clock = 0
        self._shortest = self.capacity + 1
        self._windows = 0
        self._next_id = 0
        self._bins = 0
        self._slots = 0
        # room for what arrives, not for what the window allows: _step grows these as items come
        self._grow_bins(min(self.window, _FIRST_ROOM))
        self._grow_slots(min(self.window, _FIRST_ROOM))

    def _grow_bins(self, extra: int) -> None:
        old = self._bins
        new = old + extra
        for name, fill, dtype in (
            ("_below", -1, np.int64),
            ("_above", -1, np.int64),
            ("_free", 0, np.int64),
            ("_opened", 0, np.int64),
            ("_is_open", False, np.bool_),
            ("_first_slot", -1, np.int64),
            ("_last_slot", -1, np.int64),
            ("_stamp", 0, np.int64),
        ):
            grown = np.full(new, fill, dtype)
            if old:
                grown[:old] = getattr(self, name)
            setattr(self, name, grown)
        free_bins = np.empty(new, np.int64)
        if old:
            free_bins[: self._n_free_bins] = self._free_bins[: self._n_free_bins]
            n = self._n_free_bins
        else:
            n = 0
        free_bins[n : n + extra] = np.arange(new - 1, old - 1, -1)
        self._free_bins = free_bins
        self._n_free_bins = n + extra
        self._bins = new

    def _grow_slots(self, extra: int) -> None:
        old = self._slots
        new = old + extra
        for name in ("_slot_id", "_slot_len", "_slot_next"):
            grown = np.full(new, -1, np.int64)
            if old:
                grown[:old] = getattr(self, name)
            setattr(self, name, grown)
        free_slots = np.empty(new, np.int64)
        n = self._n_free_slots if old else 0
        if old:
            free_slots[:n] = self._free_slots[:n]
        free_slots[n : n + extra] = np.arange(new - 1, old - 1, -1)
        self._free_slots = free_slots
        self._n_free_slots = n + extra
        self._slots = new

    @property
    def open_bins(self) -> int:
        return int(self._bins - self._n_free_bins)

    @property
    def open_items(self) -> int:
        return int(self._slots - self._n_free_slots)

    def add(self, lengths, ids=None, *, start: int | None = None) -> ClosedBins:
        """Pack one window of items and return the bins this closed.

        ``ids`` name the items in the output (int64); by default items are numbered in arrival
        order across calls, or from ``start`` when given.
        """
        lengths = validate_lengths(lengths, allow_empty=True)
        if lengths.shape[0] and int(lengths.max()) > self.capacity:
            i = int(np.argmax(lengths > self.capacity))
            raise ValueError(
                f"lengths[{i}] = {int(lengths[i])} is longer than capacity={self.capacity}; "
                f"truncate or split oversize items before streaming them"
            )
        n = lengths.shape[0]
        if ids is None:
            first = self._next_id if start is None else int(start)
            ids = np.arange(first, first + n, dtype=np.int64)
            self._next_id = first + n
        else:
            ids = np.asarray(ids, dtype=np.int64)
            if ids.shape != lengths.shape:
                raise ValueError(f"ids has shape {ids.shape} but lengths has shape {lengths.shape}")
        if n:
            self._shortest = min(self._shortest, int(lengths.min()))
            self._widen(int(lengths.max()))
        return self._step(lengths, ids, flush=False)

    def _widen(self, longest: int) -> None:
        if longest <= self._top:
            return
        self._top = min(self.capacity, max(2 * self._top, longest))
        self._words, self._starts, self._head, self._big = _kernels.widen_free_index(
            self._words, self._starts, self._head, self._below, self._above, self._stamp, self._free, self._big, self._top
        )

    def flush(self) -> ClosedBins:
        """Close every open bin (the end of the stream)."""
        return self._step(np.zeros(0, np.int64), np.zeros(0, np.int64), flush=True)

    def _step(self, lengths: np.ndarray, ids: np.ndarray, flush: bool) -> ClosedBins:
        n = lengths.shape[0]
        if self._n_free_bins < n:
            self._grow_bins(max(n, self._bins // 2))
        if self._n_free_slots < n:
            self._grow_slots(max(n, self._slots // 2))
        now = self._windows
        self._windows += 1
        out_ids, out_len, offsets, self._n_free_bins, self._n_free_slots, self._big, self._clock = _kernels.window_step(
            lengths,
            ids,
            self.capacity,
            self._top,
            self._big,
            self._stamp,
            self._clock,
            self._shortest,
            now - self.max_age + 2,
            now,
            flush,
            self._words,
            self._starts,
            self._head,
            self._below,
            self._above,
            self._free,
            self._opened,
            self._is_open,
            self._first_slot,
            self._last_slot,
            self._free_bins,
            self._n_free_bins,
            self._slot_id,
            self._slot_len,
            self._slot_next,
            self._free_slots,
            self._n_free_slots,
        )
        return ClosedBins(out_ids, out_len, offsets)
