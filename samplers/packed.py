"""Packed batches: each epoch packs a fresh shuffled order into ``max_tokens`` bins."""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..packing import pack
from . import _kernels
from ._lengths import resolve_lengths
from ._planned import PLAN_WINDOW, _Batches, _PlannedBatchSampler, budget_max_tokens, epoch_rng, window_members


class PackedBatchSampler(_PlannedBatchSampler):
    """One batch of example indices per packed bin (or per ``rows_per_batch`` bins).

    Every epoch shuffles the examples with ``(seed, epoch)``, packs them into bins of
    ``max_tokens`` with :func:`packwise.packing.pack` (``algorithm="bfd"`` by default, nearly
    optimal; ``"first_fit"`` keeps the shuffled order inside each pack for users who see loss
    changes from length-sorted packs), then shuffles the bins (sorted by cost inside blocks of 1024
so a step's bins cost about the same: the canonical order, the same for any world size).  With ``rows_per_batch > 1`` a batch
    lists its bins one after another; next-fit over the batch in order rebuilds at most
    ``rows_per_batch`` rows of ``max_tokens``.

    ``oversize``: ``"error"`` (default), ``"truncate"`` (the example takes ``max_tokens`` slots; the
    collator must cut it) or ``"drop"`` (left out, counted in :meth:`stats`).  Ranks are dealt
    batches with equal counts and balanced ``tokens + attention_weight * sum(length^2)``; a
    remainder pads short ranks with empty (zero-loss) batches unless ``drop_last``.

    ``budget``: a token-budget schedule (``packwise.selection.RampBudget`` / ``AdaptiveBudget``)
    that sets ``max_tokens`` and changes it during training; the rest of the epoch is re-planned
    from each change (the batches before it stay as they were) and ``len(self)`` follows.  Save the
    schedule's ``state_dict()`` with the sampler's and load it first.

    ``plan_window``: above this many examples (default 2**20) the shuffled epoch is planned in
    windows of that many, each packed on its own and played one after another, so restoring a
    state plans only the cursor's window (100M examples restore in well under a second).  Up to
    ``plan_window`` examples the plan is the whole epoch's.  It must not change between save and
    resume; under a budget schedule the tail is re-planned whole (a restore then plans the epoch).

    Example:
        >>> import numpy as np
        >>> from packwise.samplers import PackedBatchSampler
        >>> s = PackedBatchSampler(np.array([700, 300, 900, 100, 24]), max_tokens=1024, num_replicas=1, rank=0)
        >>> sorted(sorted(b) for b in s)
        [[0, 1], [2, 3, 4]]
        >>> len(s), round(s.stats().efficiency, 3)
        (2, 0.988)
    """

    _FIXED = ("seed", "max_tokens", "rows_per_batch", "algorithm", "oversize", "shuffle", "drop_last", "attention_weight",
              "plan_window")

    def __init__(
        self,
        lengths,
        max_tokens: int | None = None,
        rows_per_batch: int = 1,
        algorithm: Literal["bfd", "fill", "ffd", "first_fit", "next_fit", "window_bfd"] = "bfd",
        *,
        dataset=None,
        oversize: Literal["error", "truncate", "drop"] = "error",
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        attention_weight: float = 0.0,
        budget=None,
        plan_window: int = PLAN_WINDOW,
    ):
        self.lengths = resolve_lengths(lengths, dataset)
        max_tokens = budget_max_tokens(budget, max_tokens)
        for field, value in (("max_tokens", max_tokens), ("rows_per_batch", rows_per_batch), ("plan_window", plan_window)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if oversize not in ("error", "truncate", "drop"):
            raise ValueError(
                f"oversize must be 'error', 'truncate' or 'drop' for a sampler (which yields whole "
                f"examples), got {oversize!r}"
            )
        self.max_tokens = int(max_tokens)
        self.rows_per_batch = int(rows_per_batch)
        self.algorithm = algorithm
        self.oversize = oversize
        over = np.flatnonzero(self.lengths > self.max_tokens)
        if over.shape[0] and oversize == "error":
            i = int(over[0])
            raise ValueError(
                f"lengths[{i}] = {int(self.lengths[i])} is longer than max_tokens={self.max_tokens} "
                f"({over.shape[0]} examples are); raise max_tokens or pass oversize='truncate' or 'drop'"
            )
        super().__init__(
            self.lengths.shape[0],
            seed=seed,
            shuffle=shuffle,
            drop_last=drop_last,
            num_replicas=num_replicas,
            rank=rank,
            attention_weight=attention_weight,
        )
        pack(self.lengths[:1], self.max_tokens, algorithm, "truncate")  # validates ``algorithm`` early
        self.budget = budget
        self.plan_window = int(plan_window)

    def _settings(self) -> tuple:
        return (
            "packed",
            self.max_tokens,
            self.rows_per_batch,
            self.algorithm,
            self.oversize,
            self.shuffle,
            self.drop_last,
            self.attention_weight,
        )

    def _lengths_bytes(self) -> memoryview:
        return memoryview(np.ascontiguousarray(self.lengths)).cast("B")  # no copy of the lengths

    def _universe(self, epoch: int) -> np.ndarray | None:
        """The ids the epoch packs (``None``: every example; a pruning policy's kept ids)."""
        return None

    def _universe_size(self, epoch: int) -> int:
        ids = self._universe(epoch)
        return self.lengths.shape[0] if ids is None else int(ids.shape[0])

    def _batches(self, epoch: int) -> _Batches:
        ids = self._universe(epoch)
        return self._pack_ids(np.arange(self.lengths.shape[0], dtype=np.int64) if ids is None else ids, epoch)

    def _window_batches(self, epoch: int, window: int) -> _Batches:
        ids = self._universe(epoch)
        size = self.lengths.shape[0] if ids is None else ids.shape[0]
        members = window_members(size, self.seed, epoch, window, self.plan_window, self.shuffle)
        return self._pack_order(members if ids is None else ids[members], epoch, self.max_tokens, 0, window)

    def _rebatch(self, ids: np.ndarray | None, epoch: int, max_tokens: int, at: int) -> _Batches:
        ids = np.arange(self.lengths.shape[0], dtype=np.int64) if ids is None else ids
        return self._pack_ids(ids, epoch, max_tokens, at)

    def _pack_ids(self, ids: np.ndarray, epoch: int, max_tokens: int | None = None, at: int = 0) -> _Batches:
        """The epoch's batches over the examples ``ids`` (all of them, or a policy's kept ones);
        ``max_tokens`` and ``at``: a budget schedule's re-plan of the tail from canonical position ``at``."""
        max_tokens = self.max_tokens if max_tokens is None else max_tokens
        perm = ids[epoch_rng(self.seed, epoch, 0, at).permutation(ids.shape[0])] if self.shuffle else ids
        return self._pack_order(perm, epoch, max_tokens, at)

    def _pack_order(self, perm: np.ndarray, epoch: int, max_tokens: int, at: int, window: int | None = None) -> _Batches:
        """Pack the examples ``perm`` (already in the epoch's shuffled order) into batches;
        ``window``: the plan window they make up (its own random streams), ``None`` for one."""
        p = pack(self.lengths[perm], max_tokens, self.algorithm, self.oversize)
        order = perm[p.order]
        bin_offsets = p.offsets
        entry_lengths = p.lengths
        if self.rows_per_batch > 1:
            bins = p.num_bins
            sizes = np.diff(bin_offsets)
            if self.shuffle:  # random bins share a batch
                mix = epoch_rng(self.seed, epoch, 2, at, window).permutation(bins)
                starts = bin_offsets[:-1][mix]
                take = np.repeat(starts - np.concatenate(([0], np.cumsum(sizes[mix])[:-1])), sizes[mix])
                take += np.arange(order.shape[0], dtype=np.int64)
                order, entry_lengths, sizes = order[take], entry_lengths[take], sizes[mix]
            rows = np.minimum(np.arange(0, bins, self.rows_per_batch) + self.rows_per_batch, bins)
            bin_offsets = np.concatenate(([0], np.cumsum(sizes)))[np.concatenate(([0], rows))]
            rows_in = np.diff(np.concatenate(([0], rows)))
        else:
            rows_in = np.ones(p.num_bins, np.int64)
        tokens, squares = _kernels.csr_sums(bin_offsets, entry_lengths)
        return _Batches(
            order,
            bin_offsets.astype(np.int64),
            tokens,
            rows_in * max_tokens,
            tokens,
            squares,
            dropped_oversize=int(p.dropped.shape[0]),
            truncated_tokens=int(p.truncated_tokens),
        )
