"""Length-bucketed batches: similar lengths together so a padded batch wastes little."""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from . import _kernels
from ._lengths import resolve_lengths
from ._planned import _Batches, _PlannedBatchSampler, budget_max_tokens, epoch_rng


def estimate_boundaries(lengths, num_buckets: int) -> np.ndarray:
    """Bucket upper edges so that each bucket holds an equal share of *tokens* (not of examples).

    Returns at most ``num_buckets - 1`` increasing edges (fewer where lengths repeat); bucket ``k`` takes lengths in
    ``(edge[k-1], edge[k]]`` and the last bucket everything longer.  Equal token mass keeps long
    examples from crowding into one bucket (lhotse's equal-duration estimate, computed exactly).

    Example:
        >>> import numpy as np
        >>> estimate_boundaries(np.array([1] * 100 + [10] * 10 + [100]), 3).tolist()
        [1, 10]
    """
    if isinstance(num_buckets, bool) or not isinstance(num_buckets, (int, np.integer)) or num_buckets < 1:
        raise ValueError(f"buckets must be a positive number of buckets or a sequence of edges, got {num_buckets!r}")
    lengths = np.asarray(lengths, np.int64)
    ordered = np.sort(lengths)
    mass = np.cumsum(ordered)
    targets = mass[-1] * np.arange(1, num_buckets, dtype=np.float64) / num_buckets
    edges = ordered[np.searchsorted(mass, targets, side="left")]
    return np.unique(edges[edges < ordered[-1]]).astype(np.int64)


def _edges(spec, column: np.ndarray, name: str) -> np.ndarray:
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        return estimate_boundaries(column, int(spec))
    edges = np.asarray(spec)
    if edges.ndim != 1 or (edges.shape[0] and edges.dtype.kind not in "iu"):
        raise ValueError(f"{name} must be a number of buckets or a 1-D sequence of integer upper edges, got {spec!r}")
    edges = edges.astype(np.int64)
    bad = np.flatnonzero(np.diff(edges) <= 0)
    if bad.shape[0]:
        i = int(bad[0]) + 1
        raise ValueError(f"{name}[{i}] = {int(edges[i])} is not above {name}[{i - 1}]; edges must increase")
    return edges


class BucketBatchSampler(_PlannedBatchSampler):
    """Batches of similar-length examples whose padded cost ``len(batch) * max length`` stays
    within ``max_tokens`` (and/or at most ``batch_size`` examples).

    Each epoch shuffles the examples inside their length bucket, cuts every bucket greedily into
    batches, and shuffles the batch order (sorted by cost inside blocks of 1024: the canonical
    order, the same for any world size), seeded by ``(seed, epoch)``.  ``buckets`` is a number
    of buckets (edges estimated so each holds an equal share of tokens) or the upper edges.

    Two-dimensional ``lengths`` (shape ``(n, 2)``: input and output, as in speech or translation)
    bucket on a grid of input x output buckets (``buckets`` may then be a pair); ``max_tokens``
    bounds the padded input *and* the padded output, and ``bucket_batch_size`` (an array shaped
    like the bucket grid, e.g. from an OOM search) caps examples per batch bucket by bucket.

    Under DDP (``num_replicas`` / ``rank``, defaulting from ``torch.distributed``) every rank
    yields ``len(self)`` batches; ranks are balanced on padded tokens plus
    ``attention_weight * sum(length^2)``; a remainder pads short ranks with empty batches
    (``[]``: a zero-loss batch for the collator) unless ``drop_last``.  ``oversize="drop"`` leaves
    out examples that cannot fit ``max_tokens`` on their own (counted in :meth:`stats`).

    ``budget``: a token-budget schedule (``packwise.selection.RampBudget`` / ``AdaptiveBudget``)
    that sets ``max_tokens`` and changes it during training; the rest of the epoch is re-planned
    from each change (the batches before it stay as they were) and ``len(self)`` follows.  Save the
    schedule's ``state_dict()`` with the sampler's and load it first.

    Example:
        >>> import numpy as np
        >>> from packwise.samplers import BucketBatchSampler
        >>> lengths = np.array([3, 90, 5, 88, 4, 91, 6, 87])
        >>> s = BucketBatchSampler(lengths, max_tokens=200, buckets=[10], seed=0, num_replicas=1, rank=0)
        >>> sorted(sorted(b) for b in s)
        [[0, 2, 4, 6], [1, 7], [3, 5]]
        >>> len(s), s.stats().padding_fraction < 0.05
        (3, True)
    """

    _FIXED = ("seed", "max_tokens", "batch_size", "buckets", "bucket_batch_size", "oversize", "shuffle", "drop_last", "attention_weight")

    def __init__(
        self,
        lengths,
        max_tokens: int | None = None,
        batch_size: int | None = None,
        buckets: int | Sequence[int] | tuple = 64,
        *,
        bucket_batch_size=None,
        dataset=None,
        oversize: Literal["error", "drop"] = "error",
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        attention_weight: float = 0.0,
        budget=None,
    ):
        lengths = resolve_lengths(lengths, dataset, two_dims=True)
        max_tokens = budget_max_tokens(budget, max_tokens)
        self.lengths = lengths if lengths.ndim == 2 else lengths[:, None]
        self.two_dims = lengths.ndim == 2
        if max_tokens is None and batch_size is None and bucket_batch_size is None:
            raise ValueError("give max_tokens (a padded-token budget), batch_size, or bucket_batch_size")
        for field, value in (("max_tokens", max_tokens), ("batch_size", batch_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
                raise ValueError(f"{field} must be a positive integer or None, got {value!r}")
        if oversize not in ("error", "drop"):
            raise ValueError(f"oversize must be 'error' or 'drop' for bucketed batches, got {oversize!r}")
        self.max_tokens = None if max_tokens is None else int(max_tokens)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.oversize = oversize

        if self.two_dims:
            spec_in, spec_out = buckets if isinstance(buckets, tuple) else (buckets, buckets)
            self.boundaries = (
                _edges(spec_in, self.lengths[:, 0], "buckets[0]"),
                _edges(spec_out, self.lengths[:, 1], "buckets[1]"),
            )
        else:
            self.boundaries = (_edges(buckets, self.lengths[:, 0], "buckets"),)
        grid = tuple(e.shape[0] + 1 for e in self.boundaries)
        self.num_buckets = int(np.prod(grid))
        key = np.zeros(self.lengths.shape[0], np.int64)
        for d, edges in enumerate(self.boundaries):
            key = key * grid[d] + np.searchsorted(edges, self.lengths[:, d], side="left")
        self._bucket = key

        caps = np.full(self.num_buckets, self.batch_size or 0, np.int64)
        if bucket_batch_size is not None:
            per = np.asarray(bucket_batch_size)
            if per.shape != grid or per.dtype.kind not in "iu" or (per < 1).any():
                raise ValueError(
                    f"bucket_batch_size must be positive integers shaped like the bucket grid {grid}, "
                    f"got shape {per.shape}"
                )
            per = per.reshape(-1).astype(np.int64)
            caps = np.where(caps > 0, np.minimum(caps, per), per)
        self._caps = caps

        keep = np.ones(self.lengths.shape[0], np.bool_)
        if self.max_tokens is not None:
            over = np.flatnonzero((self.lengths > self.max_tokens).any(axis=1))
            if over.shape[0] and oversize == "error":
                i = int(over[0])
                shown = self.lengths[i].tolist() if self.two_dims else int(self.lengths[i, 0])
                raise ValueError(
                    f"lengths[{i}] = {shown} is longer than max_tokens={self.max_tokens} "
                    f"({over.shape[0]} examples are); raise max_tokens, truncate them, or pass oversize='drop'"
                )
            keep[over] = False
        self._kept = np.flatnonzero(keep).astype(np.int64)
        self._dropped = int(self.lengths.shape[0] - self._kept.shape[0])
        super().__init__(
            self.lengths.shape[0],
            seed=seed,
            shuffle=shuffle,
            drop_last=drop_last,
            num_replicas=num_replicas,
            rank=rank,
            attention_weight=attention_weight,
        )
        if budget is not None and self.max_tokens is None:
            raise ValueError("a budget schedule sets max_tokens; BucketBatchSampler then needs max_tokens, not only batch sizes")
        self.budget = budget

    def _settings(self) -> tuple:
        return (
            "bucket",
            self.max_tokens,
            self.batch_size,
            tuple(tuple(e.tolist()) for e in self.boundaries),
            tuple(self._caps.tolist()),
            self.oversize,
            self.shuffle,
            self.drop_last,
            self.attention_weight,
        )

    def _lengths_bytes(self) -> bytes:
        return np.ascontiguousarray(self.lengths).tobytes()

    def _batches(self, epoch: int) -> _Batches:
        return self._rebatch(None, epoch, self.max_tokens or 0, 0)

    def _rebatch(self, ids: np.ndarray | None, epoch: int, max_tokens: int, at: int) -> _Batches:
        """Bucketed batches of ``ids`` (``None``: every kept example) under ``max_tokens`` padded
        tokens, seeded by ``(seed, epoch, at)`` (``at`` > 0: a budget schedule's re-planned tail)."""
        items = self._kept if ids is None else ids
        if self.shuffle:
            items = items[epoch_rng(self.seed, epoch, 0, at).permutation(items.shape[0])]
        order, groups = _kernels.group_by_key(items, self._bucket, self.num_buckets)
        offsets, _, tokens, slots, squares = _kernels.cut_padded(order, self.lengths, groups, self._caps, max_tokens)
        return _Batches(order, offsets, tokens, slots, slots, squares, dropped_oversize=self._dropped)
