"""RS2: a fresh random subset every epoch (Repeated Sampling of Random Subsets).

No scores, no selection cost: the budget (``fraction`` of the data per epoch) and an LR schedule
sized to the steps actually run are what make it a strong baseline.  Without replacement it walks
one permutation per round, so every example is seen once every ``ceil(N / k)`` epochs
(``<= ceil(1 / fraction)``) before any repeats.
"""

from __future__ import annotations

import math

import numpy as np

from ._checks import as_int, exact, rng, steps_for
from ._policy import EpochPlan, _EpochPolicy


class RS2(_EpochPolicy):
    """``ceil(fraction * N)`` random examples per epoch (per class ``ceil(fraction * n_c)`` with
    ``stratify=labels``), weight 1.

    ``replacement=False`` (default): round ``r = epoch // R`` uses permutation ``r`` of each class,
    sliced into ``R = ceil(n_c / k_c)`` consecutive epochs; the last slice is topped up from the
    start of the same permutation, so every epoch has exactly ``k_c`` distinct examples.
    ``replacement=True``: every epoch is an independent draw.

    Example:
        >>> from packwise.selection import RS2
        >>> rs2 = RS2(10, fraction=0.3, seed=0)
        >>> [len(rs2.indices_for_epoch(e)) for e in range(4)], rs2.epochs_per_round
        ([3, 3, 3, 3], 4)
        >>> sorted(set().union(*(rs2.indices_for_epoch(e).tolist() for e in range(4)))) == list(range(10))
        True
        >>> rs2.steps_per_epoch(batch_size=2), rs2.planned_steps(4, batch_size=2)
        (2, 8)
    """

    _kind = "rs2"

    def __init__(
        self,
        num_examples: int,
        fraction: float,
        replacement: bool = False,
        seed: int = 0,
        stratify=None,
    ):
        super().__init__(num_examples, seed)
        f = exact(fraction, "fraction")
        if not 0 < f <= 1:
            raise ValueError(f"fraction must be in (0, 1] (the share of examples per epoch), got {fraction!r}")
        self.fraction = float(fraction)
        self.replacement = bool(replacement)
        n = self.num_examples
        if stratify is None:
            labels = np.zeros(n, np.int64)
        else:
            labels = np.asarray(stratify)
            if labels.shape != (n,):
                raise ValueError(f"stratify must hold one label per example, shape ({n},), got {labels.shape}")
            if labels.dtype.kind not in "iub":
                raise ValueError(f"stratify must be integer class labels, got dtype {labels.dtype}; map labels to ints")
        order = np.argsort(labels, kind="stable").astype(np.int64)
        _, starts, sizes = np.unique(labels[order], return_index=True, return_counts=True)
        self._members = [order[s : s + c] for s, c in zip(starts, sizes)]
        self._quota = [math.ceil(f * int(c)) for c in sizes]
        self.stratified = stratify is not None
        self.per_epoch = int(sum(self._quota))

    @property
    def epochs_per_round(self) -> int:
        """Epochs until every example has been seen once (without replacement; the largest over classes)."""
        return max(-(-m.shape[0] // k) for m, k in zip(self._members, self._quota))

    def _settings(self) -> dict:
        return {
            "num_examples": self.num_examples,
            "fraction": self.fraction,
            "replacement": self.replacement,
            "seed": self.seed,
            "stratified": self.stratified,
            "per_epoch": self.per_epoch,
        }

    def _select(self, epoch: int):
        parts = []
        for c, (members, k) in enumerate(zip(self._members, self._quota)):
            size = members.shape[0]
            if self.replacement:
                parts.append(members[rng(self.seed, epoch, 0, c).choice(size, k, replace=False)])
                continue
            per_round = -(-size // k)
            round_, slot = divmod(epoch, per_round)
            perm = rng(self.seed, round_, 1, c).permutation(size)
            take = perm[slot * k : slot * k + k]
            if take.shape[0] < k:  # the round's last slice: top up from the start of the permutation
                take = np.concatenate([take, perm[: k - take.shape[0]]])
            parts.append(members[take])
        kept = np.sort(np.concatenate(parts)).astype(np.int64)
        plan = EpochPlan(epoch, self.num_examples, int(kept.shape[0]), False)
        return kept, np.ones(kept.shape[0], np.float32), plan

    def _planned_size(self, epoch: int) -> int:
        return self.per_epoch

    def steps_per_epoch(self, batch_size: int = 1, num_replicas: int = 1, drop_last: bool = False) -> int:
        """Optimizer steps per epoch (the same every epoch)."""
        return steps_for(
            self.per_epoch, as_int(batch_size, "batch_size", 1), as_int(num_replicas, "num_replicas", 1), drop_last
        )
