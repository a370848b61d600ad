"""Cluster- or group-balanced subsets by water-filling: cap each group at a level ``x``.

Why: a uniform random subset keeps the corpus's skew (a few huge topics, many tiny ones).
Water-filling finds the cap ``x`` with ``sum(min(x * w_i, size_i)) == target``: small groups are
kept whole, large ones are cut to the same level, and the units left over at the last level go to
randomly chosen groups (seeded). Weights ``w_i`` up-sample rare groups (mHuBERT-style
``size ** alpha`` sampling, per language or source).

Example:
    >>> import numpy as np
    >>> from packwise.selection import balanced_caps
    >>> balanced_caps(np.array([10, 2, 7, 1]), target=12).tolist()  # cap 4, one unit left: group 2 drew it
    [4, 2, 5, 1]
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from . import _cluster_kernels as _k

Within = Literal["random", "closest", "farthest"]
WITHIN: tuple[str, ...] = ("random", "closest", "farthest")


def _check_sizes(sizes: np.ndarray) -> np.ndarray:
    sizes = np.asarray(sizes)
    if sizes.ndim != 1 or sizes.size == 0:
        raise ValueError(f"sizes: expected a non-empty 1-D array of group sizes, got shape {sizes.shape}")
    if not np.issubdtype(sizes.dtype, np.integer):
        raise ValueError(f"sizes: group sizes must be integers, got dtype {sizes.dtype}")
    if (sizes < 0).any():
        i = int(np.flatnonzero(sizes < 0)[0])
        raise ValueError(f"sizes: group {i} has size {sizes[i]}; sizes must be >= 0")
    return sizes.astype(np.int64)


def _check_weights(weights: np.ndarray | None, k: int) -> np.ndarray:
    if weights is None:
        return np.ones(k, np.float64)
    w = np.asarray(weights, np.float64)
    if w.shape != (k,):
        raise ValueError(f"weights: expected one weight per group ({k},), got shape {w.shape}")
    bad = ~np.isfinite(w) | (w <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"weights: group {i} has weight {w[i]}; weights must be finite and > 0")
    return w


def balanced_caps(sizes: np.ndarray, target: int, weights: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """How many rows to keep per group: water-filling to exactly ``min(target, sum(sizes))``.

    Group ``i`` gets ``min(size_i, floor(x * w_i))`` for the largest level ``x`` that stays within
    ``target``; the remaining units go one each to groups whose next unit comes first (ties
    broken by a seeded shuffle). Without weights this is the cap ``x`` of
    ``sum(min(x, size_i)) == target`` with the remainder spread at random over groups above it.
    """
    sizes = _check_sizes(sizes)
    w = _check_weights(weights, sizes.shape[0])
    if not isinstance(target, (int, np.integer)) or target < 0:
        raise ValueError(f"target={target!r}: need a non-negative integer number of rows")
    total = int(sizes.sum())
    if target >= total:
        return sizes.copy()
    quotas, _ = _k.waterfill_base(sizes, w, int(target))
    rest = int(target) - int(quotas.sum())
    if rest > 0:
        open_ = np.flatnonzero(quotas < sizes)
        next_unit = (quotas[open_] + 1) / w[open_]
        tiebreak = np.random.default_rng(seed).random(open_.shape[0])
        pick = open_[np.lexsort((tiebreak, next_unit))[:rest]]
        quotas[pick] += 1
    return quotas


def group_weights(sizes: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Sampling weights ``p_i ~ size_i ** alpha`` (summing to 1) for ``balanced_caps``.

    With these weights the kept rows of group ``i`` follow ``p_i`` until a group runs out of rows:
    ``alpha=1`` keeps the corpus proportions, ``alpha=0`` is a uniform cap, values between
    up-sample rare groups (mHuBERT-147 / XLM-R style language sampling). Empty groups get weight 1
    (they have nothing to give).
    """
    sizes = _check_sizes(sizes)
    if not (0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha={alpha}: must be in [0, 1] (1 = proportional, 0 = uniform)")
    s = sizes.astype(np.float64)
    present = s > 0
    if not present.any():
        raise ValueError("sizes: every group is empty; nothing to weight")
    p = np.ones_like(s)
    p[present] = s[present] ** alpha
    p[present] /= p[present].sum()
    return p


def balanced_subset(
    labels: np.ndarray,
    target: int,
    *,
    weights: np.ndarray | None = None,
    within: Within = "random",
    distances: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Row ids (ascending int64) of a ``target``-row subset balanced over ``labels``.

    ``within`` picks the rows of a capped group: 'random' (seeded), 'closest' or 'farthest'
    to the centroid (needs ``distances``).
    """
    from .prototypes import select_per_cluster

    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected 1-D integer group ids, got shape {labels.shape} dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        r = int(np.flatnonzero(labels < 0)[0])
        raise ValueError(f"labels: row {r} has group {labels[r]}; group ids must be >= 0")
    if within not in WITHIN:
        raise ValueError(f"within={within!r}: use one of {', '.join(WITHIN)}")
    k = int(labels.max()) + 1 if labels.size else 0
    sizes = np.bincount(labels, minlength=k).astype(np.int64)
    if weights is not None and np.asarray(weights).shape[0] > k:
        sizes = np.bincount(labels, minlength=np.asarray(weights).shape[0]).astype(np.int64)
    quotas = balanced_caps(sizes, target, weights, seed=seed)
    return select_per_cluster(labels, quotas, within=within, distances=distances, seed=seed)
