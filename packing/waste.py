"""Padding-waste report: what each batching strategy costs on a given length distribution."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from .core import ALGORITHMS, Packing, lower_bounds, pack, validate_capacity, validate_lengths

PADDED_STRATEGIES: tuple[str, ...] = ("pad_to_max", "random_batches", "bucketed_batches")


@dataclass(frozen=True)
class StrategyWaste:
    """The cost of one way of batching the same examples into rows of at most ``capacity`` tokens.

    ``slots`` counts every token position a model computes on (real + padding);
    ``vs_lower_bound`` is ``slots / (L1 * capacity)``: 1.0 is the densest any layout can be.
    ``attention_dense`` is the sum of squared row widths (one dense mask per row) and
    ``attention_masked`` the sum of squared sequence lengths (per-sequence masks / varlen).
    """

    name: str
    rows: int
    steps: int
    real_tokens: int
    slots: int
    padding_fraction: float
    truncation_fraction: float
    sequences_per_row: float
    vs_lower_bound: float
    attention_dense: float
    attention_masked: float


@dataclass(frozen=True)
class WasteReport:
    """Padding waste of pad-to-max, padded random batches, bucketed batches and each packer.

    Every strategy sees the same examples and the same ``capacity``; a step feeds ``batch_size``
    rows.  Plain data: the CLI renders it, tests compare it, ``to_dict()`` gives JSON.
    """

    num_sequences: int
    capacity: int
    batch_size: int
    total_tokens: int
    mean_length: float
    median_length: float
    p99_length: float
    max_length: int
    lower_bound_l1: int
    lower_bound_l2: int
    strategies: tuple[StrategyWaste, ...]

    def __getitem__(self, name: str) -> StrategyWaste:
        for s in self.strategies:
            if s.name == name:
                return s
        raise KeyError(f"no strategy {name!r}; have {[s.name for s in self.strategies]}")

    def best(self) -> StrategyWaste:
        return min(self.strategies, key=lambda s: (s.slots, s.name))

    def to_dict(self) -> dict:
        out = asdict(self)
        out["strategies"] = [asdict(s) for s in self.strategies]
        return out


def _padded_batches(clipped: np.ndarray, order: np.ndarray, batch_size: int) -> tuple[int, float]:
    """(slots, dense attention) when ``clipped[order]`` is cut into batches padded to their longest."""
    ordered = clipped[order]
    n = ordered.shape[0]
    starts = np.arange(0, n, batch_size)
    widths = np.maximum.reduceat(ordered, starts)
    sizes = np.diff(np.append(starts, n))
    return int((widths * sizes).sum()), float((sizes * widths.astype(np.float64) ** 2).sum())


def _strategy(name, rows, batch_size, real, slots, truncated, total, sequences, l1, capacity, dense, masked):
    return StrategyWaste(
        name=name,
        rows=int(rows),
        steps=-(-int(rows) // batch_size),
        real_tokens=int(real),
        slots=int(slots),
        padding_fraction=1.0 - real / slots if slots else 0.0,
        truncation_fraction=truncated / total if total else 0.0,
        sequences_per_row=sequences / rows if rows else 0.0,
        vs_lower_bound=slots / (l1 * capacity) if l1 else 1.0,
        attention_dense=float(dense),
        attention_masked=float(masked),
    )


def waste_report(
    lengths,
    capacity: int,
    batch_size: int = 8,
    *,
    algorithms: Sequence[str] = ALGORITHMS,
    oversize: str = "truncate",
    seed: int = 0,
    window: int = 10_000,
) -> WasteReport:
    """Compare padding waste of every batching strategy on these sequence ``lengths``.

    Padded strategies cut sequences at ``capacity`` (counted as truncation); packers use the
    ``oversize`` policy (``"truncate"`` by default, so every strategy sees the same tokens).
    Random batches are shuffled with ``seed``; bucketed batches are the ideal length-sorted case.

    Example:
        >>> import numpy as np
        >>> from packwise.packing import waste_report
        >>> r = waste_report(np.array([100, 20, 512, 300, 64, 64, 10, 400]), capacity=512, batch_size=2)
        >>> r["pad_to_max"].padding_fraction > r["bfd"].padding_fraction
        True
        >>> r["bfd"].rows, r.lower_bound_l1
        (3, 3)
    """
    capacity = validate_capacity(capacity)
    batch_size = validate_capacity(batch_size, "batch_size")
    lengths = validate_lengths(lengths)
    clipped = np.minimum(lengths, capacity)
    n = lengths.shape[0]
    total = int(lengths.sum())
    real = int(clipped.sum())
    truncated = total - real
    masked = float((clipped.astype(np.float64) ** 2).sum())
    # the bounds of the items the packers see under ``oversize`` (split pieces, not cut lengths),
    # so the report's L1 is the one ``packwise pack`` prints for the same settings
    l1, l2 = lower_bounds(pack(lengths, capacity, algorithm="next_fit", oversize=oversize).lengths, capacity)
    padded = []
    slots = n * capacity
    padded.append(("pad_to_max", slots, float(n) * capacity * capacity))
    rng = np.random.default_rng(seed)
    padded.append(("random_batches", *_padded_batches(clipped, rng.permutation(n), batch_size)))
    padded.append(("bucketed_batches", *_padded_batches(clipped, np.argsort(-clipped, kind="stable"), batch_size)))
    strategies = [
        _strategy(name, n, batch_size, real, s, truncated, total, n, l1, capacity, dense, masked)
        for name, s, dense in padded
    ]
    for algorithm in algorithms:
        p: Packing = pack(lengths, capacity, algorithm=algorithm, oversize=oversize, window=window)
        lost = p.truncated_tokens + p.dropped_tokens
        strategies.append(
            _strategy(
                algorithm,
                p.num_bins,
                batch_size,
                p.total_tokens,
                p.num_bins * capacity,
                lost,
                total,
                p.lengths.shape[0],
                l1,
                capacity,
                float(p.num_bins) * capacity * capacity,
                float((p.lengths.astype(np.float64) ** 2).sum()),
            )
        )
    return WasteReport(
        num_sequences=n,
        capacity=capacity,
        batch_size=batch_size,
        total_tokens=total,
        mean_length=float(lengths.mean()),
        median_length=float(np.median(lengths)),
        p99_length=float(np.percentile(lengths, 99)),
        max_length=int(lengths.max()),
        lower_bound_l1=l1,
        lower_bound_l2=l2,
        strategies=tuple(strategies),
    )
