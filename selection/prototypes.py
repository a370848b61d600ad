"""Prototype pruning (SSL prototypes / D4): score a row by its distance to its cluster centroid.

Why: rows close to a centroid are prototypical (easy, redundant); far rows are hard. With
plenty of data keep the hard ones, with little data the easy ones. The budget is split across
clusters in proportion to their sizes (largest remainder, so the total is exact), never by one
global threshold that would empty tight clusters.

Example:
    >>> import numpy as np
    >>> from packwise.selection import prototype_prune
    >>> labels = np.array([0, 0, 0, 0, 1, 1])
    >>> dist = np.array([0.1, 0.4, 0.3, 0.2, 0.5, 0.6])
    >>> prototype_prune(labels, dist, keep=0.5, mode="hard").tolist()
    [1, 2, 5]
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from . import _cluster_kernels as _k

Mode = Literal["hard", "easy"]


def proportional_quotas(sizes: np.ndarray, keep: float) -> np.ndarray:
    """``round(keep * sum(sizes))`` rows split in proportion to ``sizes`` (largest remainder, ties to the lower id)."""
    sizes = np.asarray(sizes, np.int64)
    if not (0.0 <= keep <= 1.0):
        raise ValueError(f"keep={keep}: must be a fraction in [0, 1]")
    target = int(round(keep * int(sizes.sum())))
    exact = sizes * keep
    base = np.minimum(np.floor(exact).astype(np.int64), sizes)
    rest = target - int(base.sum())
    if rest > 0:
        frac = exact - base
        frac[base >= sizes] = -1.0
        pick = np.lexsort((np.arange(sizes.shape[0]), -frac))[:rest]
        base[pick] += 1
    return base


def select_per_cluster(
    labels: np.ndarray,
    quotas: np.ndarray,
    *,
    within: str = "random",
    distances: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """The first ``quotas[c]`` rows of each cluster ``c`` in the ``within`` order; ascending int64 row ids.

    ``within``: 'random' (seeded), 'closest' (smallest distance first), 'farthest'. Ties go to the lower row id.
    """
    labels = np.asarray(labels).astype(np.int64, copy=False)
    n = labels.shape[0]
    quotas = np.asarray(quotas, np.int64)
    k = quotas.shape[0]
    if n and int(labels.max()) >= k:
        raise ValueError(f"quotas: {k} entries but labels go up to {int(labels.max())}; pass one quota per cluster")
    if within in ("closest", "farthest"):
        if distances is None:
            raise ValueError(f"within={within!r} needs distances= to the centroid (from KMeans.assign)")
        distances = np.asarray(distances, np.float64)
        if distances.shape != (n,):
            raise ValueError(f"distances: expected one distance per row ({n},), got shape {distances.shape}")
        bad = ~np.isfinite(distances)
        if bad.any():
            raise ValueError(f"distances: row {int(np.flatnonzero(bad)[0])} is NaN or infinite; recompute the assignment")
        key = distances if within == "closest" else -distances
    elif within == "random":
        key = np.random.default_rng(seed).random(n)
    else:
        raise ValueError(f"within={within!r}: use random, closest or farthest")
    order, offsets = _k.cluster_csr(labels, k, np.ascontiguousarray(key))
    pos = np.arange(n, dtype=np.int64) - offsets[labels[order]]
    keep = pos < quotas[labels[order]]
    return np.sort(order[keep])


def prototype_prune(labels: np.ndarray, distances: np.ndarray, keep: float, mode: Mode = "hard") -> np.ndarray:
    """Row ids to keep: per cluster, the ``keep`` fraction farthest ('hard') or closest ('easy') to the centroid."""
    if mode not in ("hard", "easy"):
        raise ValueError(f"mode={mode!r}: use 'hard' (keep far-from-centroid rows) or 'easy' (keep prototypical rows)")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ValueError("labels: expected a non-empty 1-D array of cluster ids >= 0 (from KMeans.assign)")
    sizes = np.bincount(labels)
    quotas = proportional_quotas(sizes, keep)
    return select_per_cluster(labels, quotas, within="farthest" if mode == "hard" else "closest", distances=distances)
