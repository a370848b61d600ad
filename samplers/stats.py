"""Per-epoch sampler statistics, computed from lengths alone (the dataset is never read)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


class TokenSlots:
    """The ratios every statistics dataclass with ``tokens`` (real) and ``slots`` (computed) shares."""

    tokens: int
    slots: int

    @property
    def efficiency(self) -> float:
        """Real tokens over computed slots."""
        return self.tokens / self.slots if self.slots else 1.0

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.efficiency

    def summary(self) -> dict:
        """Plain JSON-ready dict (tuples as lists), with the derived ratios."""
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        out["efficiency"] = self.efficiency
        out["padding_fraction"] = self.padding_fraction
        return out


@dataclass(frozen=True)
class EpochStats(TokenSlots):
    """What one epoch of a batch sampler does, over all ranks.

    ``tokens`` are real tokens yielded; ``slots`` the tokens a model computes on (a padded batch
    costs ``len * max length``, a packed batch ``rows * max_tokens``), so
    ``padding_fraction = 1 - tokens / slots``.  ``work`` is the cost model the ranks were balanced
    on, summed per rank; ``imbalance`` is ``max(work) / mean(work)`` (1.0 is perfect) and
    ``step_imbalance`` the mean of the same ratio inside each synchronised step.  Nothing is left
    out silently: ``dropped_oversize`` (oversize policy ``"drop"``), ``dropped_last_examples`` /
    ``dropped_last_batches`` (``drop_last``) and ``empty_batches`` (short ranks padded with empty,
    zero-loss batches) count every deviation from "each example exactly once".

    Example:
        >>> import numpy as np
        >>> from packwise.samplers import PackedBatchSampler
        >>> s = PackedBatchSampler(np.array([5, 3, 4, 2, 6]), max_tokens=10, num_replicas=1, rank=0)
        >>> st = s.stats()
        >>> st.batches_per_rank, st.examples, round(st.padding_fraction, 2)
        (2, 5, 0.0)
    """

    epoch: int
    num_replicas: int
    batches_per_rank: int
    num_examples: int
    examples: int
    batches: int
    empty_batches: int
    dropped_oversize: int
    dropped_last_examples: int
    dropped_last_batches: int
    tokens: int
    slots: int
    truncated_tokens: int
    max_batch_examples: int
    work_per_rank: tuple[float, ...]
    imbalance: float
    step_imbalance: float

