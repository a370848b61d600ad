"""``SuperBatch``: the loader side of in-step selection (RHO-LOSS, JEST).

Each step draws a super-batch ``1 / (1 - filter_ratio)`` times the training batch from a bucketed
or packed epoch plan, the same on every DDP rank; each rank scores its slice, a selector picks the
sub-batch (identical everywhere), and each rank trains on its equal share, re-packed into the
training token budget in packed mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import numpy as np

from ..packing import pack
from ..selection._checks import as_int, check_same_settings, check_state, exact
from ._lengths import resolve_lengths
from . import _wrapped
from ._planned import resolve_replicas
from .bucket import BucketBatchSampler
from .packed import PackedBatchSampler


@dataclass(frozen=True)
class TrainBatch:
    """This rank's share of a selected sub-batch: ``ids`` (and their ``weights``), and in packed
    mode ``row_offsets`` (CSR over ``ids``: one row of ``max_tokens`` per entry, empty rows pad)
    plus ``left_out``, selected examples that did not fit the token budget (lowest scores first)."""

    ids: np.ndarray
    weights: np.ndarray
    row_offsets: np.ndarray | None = None
    left_out: int = 0


class SuperBatch:
    """Super-batches of ``B = b / (1 - filter_ratio)`` examples for a training batch of ``b``.

    Bucketed (default): ``batch_size`` is the global training batch ``b`` (all ranks together,
    divisible by the world size); super-batches are ``BucketBatchSampler`` batches of up to ``B``
    similar-length examples (``max_tokens``, if given, scaled the same way).  Packed
    (``packed=True``): a training step is ``rows_per_batch`` rows of ``max_tokens`` per rank; a
    super-batch is ``ceil(rows * world / (1 - filter_ratio))`` packed bins, and
    :meth:`train_batch` re-packs the selected examples into ``rows_per_batch`` rows per rank (if
    they do not fit, the lowest-scoring selected examples are left out, counted in ``left_out``).

    Every rank iterates the same global plan (``num_replicas`` only splits scoring and
    training).  ``set_epoch``, ``state_dict`` and ``load_state_dict`` follow the samplers.

    Example:
        >>> import numpy as np, torch
        >>> from packwise.samplers import SuperBatch
        >>> from packwise.selection import RhoLoss, ReferenceScores
        >>> lengths = np.full(20, 8)
        >>> sb = SuperBatch(lengths, batch_size=2, filter_ratio=0.8, seed=0, num_replicas=1, rank=0)
        >>> rho = RhoLoss(ReferenceScores.from_array(np.zeros(20, np.float32)))
        >>> super_ids = next(iter(sb))
        >>> len(super_ids), sb.sub_batch_size(super_ids)
        (10, 2)
        >>> mine = sb.score_share(super_ids)
        >>> sel = rho.select(mine, torch.as_tensor(mine, dtype=torch.float32), k=sb.sub_batch_size(super_ids))
        >>> sorted(sb.train_batch(sel).ids.tolist()) == sorted(super_ids)[-2:]  # the two highest losses
        True
    """

    def __init__(
        self,
        lengths,
        batch_size: int | None = None,
        *,
        filter_ratio: float = 0.8,
        max_tokens: int | None = None,
        packed: bool = False,
        rows_per_batch: int = 1,
        buckets=64,
        algorithm: str = "bfd",
        dataset=None,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        f = exact(filter_ratio, "filter_ratio")
        if not 0 <= f < 1:
            raise ValueError(f"filter_ratio must be in [0, 1) (0.8 trains on 1 in 5 of each super-batch), got {filter_ratio!r}")
        self.filter_ratio = float(filter_ratio)
        self._keep = 1 - f
        self.num_replicas, self.rank = resolve_replicas(num_replicas, rank)
        self.lengths = resolve_lengths(lengths, dataset)
        self.packed = bool(packed)
        world = self.num_replicas
        if self.packed:
            if max_tokens is None or batch_size is not None:
                raise ValueError("packed=True takes max_tokens (tokens per row) and rows_per_batch (rows per rank), not batch_size")
            self.rows_per_batch = as_int(rows_per_batch, "rows_per_batch", 1)
            super_rows = math.ceil(Fraction(self.rows_per_batch * world) / self._keep)
            self.sampler = PackedBatchSampler(
                self.lengths, max_tokens, super_rows, algorithm, shuffle=shuffle, seed=seed, drop_last=drop_last,
                num_replicas=1, rank=0,
            )
            self.max_tokens = int(max_tokens)
            self.batch_size = None
        else:
            if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
                raise ValueError(f"batch_size must be the positive global training batch size, got {batch_size!r}")
            if batch_size % world:
                raise ValueError(
                    f"batch_size={batch_size} is not divisible by num_replicas={world}; every rank trains on an equal "
                    f"share, so pass a multiple of the world size"
                )
            self.batch_size = int(batch_size)
            self.max_tokens = None if max_tokens is None else int(max_tokens)
            super_size = math.ceil(Fraction(self.batch_size) / self._keep)
            super_tokens = None if max_tokens is None else math.ceil(Fraction(int(max_tokens) * world) / self._keep)
            self.sampler = BucketBatchSampler(
                self.lengths, super_tokens, super_size, buckets, shuffle=shuffle, seed=seed, drop_last=drop_last,
                num_replicas=1, rank=0,
            )
        self.super_batch_size = None if self.packed else super_size

    # --- the torch protocol -----------------------------------------------------------------
    def __iter__(self) -> Iterator[list[int]]:
        """Global super-batches (the same list on every rank)."""
        dealer = _wrapped.find_caller().dealer
        if dealer is not None and dealer.processes > 1:
            raise ValueError(
                f"SuperBatch gives every rank the same super-batch, but accelerate deals its batches over "
                f"{dealer.processes} processes (each would score different ones); iterate the SuperBatch yourself "
                f"(for super_ids in sb: ...) and load sb.train_batch(...).ids from the dataset, without prepare"
            )
        return iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict:
        return {"filter_ratio": self.filter_ratio, "packed": self.packed, "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        check_state(state, {"filter_ratio", "packed", "sampler"}, "SuperBatch.state_dict()")
        mine = {"filter_ratio": self.filter_ratio, "packed": self.packed}
        check_same_settings({k: state[k] for k in mine}, mine, "SuperBatch")
        self.sampler.load_state_dict(state["sampler"])

    # --- one step ---------------------------------------------------------------------------
    def score_share(self, super_ids) -> np.ndarray:
        """The contiguous slice of the super-batch this rank scores (rank order = super-batch order)."""
        ids = np.asarray(super_ids, np.int64)
        return np.array_split(ids, self.num_replicas)[self.rank]

    def sub_batch_size(self, super_ids) -> int:
        """How many to select: ``round((1 - filter_ratio) * len)`` (at most ``batch_size``), a multiple of
        the world size; bucketed with ``max_tokens``: no more than fit each rank's padded budget."""
        n = len(super_ids)
        world = self.num_replicas
        k = math.floor(self._keep * n + Fraction(1, 2))
        if not self.packed:
            k = min(k, self.batch_size)
            if self.max_tokens is not None and n:
                longest = int(self.lengths[np.asarray(super_ids, np.int64)].max())
                k = min(k, world * (self.max_tokens // longest))
        return int(max(k, min(world, n)) // world * world)

    def train_batch(self, selection) -> TrainBatch:
        """This rank's part of ``selection`` (a :class:`~packwise.selection.BatchSelection`)."""
        if not self.packed:
            ids, weights = selection.shard(self.rank, self.num_replicas)
            return TrainBatch(ids, weights)
        world, rows = self.num_replicas, self.rows_per_batch * self.num_replicas
        score = selection.scores[selection.positions].astype(np.float64)
        by_score = np.argsort(-score, kind="stable")  # the highest scores stay when something must go
        lengths = self.lengths[selection.ids[by_score]]

        def fits(m: int) -> bool:
            return m == 0 or pack(lengths[:m], self.max_tokens, "bfd", "truncate").num_bins <= rows

        lo, hi = 0, by_score.shape[0]  # the largest prefix (by score) that packs into ``rows`` bins
        if not fits(hi):
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        keep = by_score[:hi]
        p = pack(lengths[: keep.shape[0]], self.max_tokens, "bfd", "truncate")
        bins = [keep[p.bin(b)] for b in range(p.num_bins)] + [keep[:0]] * (rows - p.num_bins)
        mine = bins[self.rank :: world]
        sizes = np.array([b.shape[0] for b in mine], np.int64)
        take = np.concatenate(mine) if mine else keep[:0]
        return TrainBatch(
            selection.ids[take],
            selection.weights[take],
            np.concatenate(([0], np.cumsum(sizes))).astype(np.int64),
            int(by_score.shape[0] - keep.shape[0]),
        )
