"""numba kernels behind clustering, dedup and balancing: the per-item loops, kept out of the Python face."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def hash_csr(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """64-bit hash of each CSR row ``values[offsets[r]:offsets[r + 1]]`` (splitmix64 mixing, length-salted)."""
    n = offsets.shape[0] - 1
    out = np.empty(n, np.uint64)
    for r in range(n):
        h = np.uint64(0x9E3779B97F4A7C15) ^ np.uint64(offsets[r + 1] - offsets[r])
        for k in range(offsets[r], offsets[r + 1]):
            z = h + np.uint64(values[k]) + np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h = z ^ (z >> np.uint64(31))
        out[r] = h
    return out


@njit(cache=True)
def greedy_dedup_block(
    sims: np.ndarray,
    col0: int,
    exact: np.ndarray,
    thresholds: np.ndarray,
    kept: np.ndarray,
    kept_sim: np.ndarray,
    kept_arg: np.ndarray,
    near_sim: np.ndarray,
    near_arg: np.ndarray,
) -> None:
    """Greedy SemDeDup decisions for cluster positions ``col0 .. col0 + sims.shape[1]``.

    ``sims[i, jj]`` is the cosine similarity of cluster position ``i`` and position ``col0 + jj``
    (rows cover every earlier position). Position ``j`` is dropped at threshold ``t`` when its
    similarity to an earlier *kept* position exceeds ``t``; exact duplicates (``exact[j]``) are
    dropped at every threshold and never count as kept. Ties go to the earliest position.
    """
    nb = sims.shape[1]
    ne = thresholds.shape[0]
    for jj in range(nb):
        j = col0 + jj
        best = -np.inf
        arg = -1
        for i in range(j):
            s = sims[i, jj]
            if s > best:
                best = s
                arg = i
        near_sim[j] = best if arg >= 0 else np.nan
        near_arg[j] = arg
        for e in range(ne):
            b = -np.inf
            a = -1
            for i in range(j):
                if kept[i, e]:
                    s = sims[i, jj]
                    if s > b:
                        b = s
                        a = i
            kept_sim[j, e] = b if a >= 0 else np.nan
            kept_arg[j, e] = a
            kept[j, e] = (not exact[j]) and not (a >= 0 and b > thresholds[e])


@njit(cache=True)
def cluster_csr(labels: np.ndarray, k: int, key: np.ndarray, tiebreak: np.ndarray) -> tuple:
    """Rows grouped by cluster (CSR: ``order``, ``offsets``), each cluster sorted by (key, tiebreak)."""
    n = labels.shape[0]
    counts = np.zeros(k + 1, np.int64)
    for r in range(n):
        counts[labels[r] + 1] += 1
    offsets = np.cumsum(counts)
    fill = offsets[:-1].copy()
    order = np.empty(n, np.int64)
    for r in range(n):
        c = labels[r]
        order[fill[c]] = r
        fill[c] += 1
    for c in range(k):
        lo = offsets[c]
        hi = offsets[c + 1]
        if hi - lo > 1:
            seg = order[lo:hi].copy()
            perm = np.argsort(tiebreak[seg], kind="mergesort")
            seg = seg[perm]
            perm = np.argsort(key[seg], kind="mergesort")
            order[lo:hi] = seg[perm]
    return order, offsets


@njit(cache=True)
def waterfill_base(sizes: np.ndarray, weights: np.ndarray, target: int) -> tuple:
    """Largest level ``x`` with ``sum(min(size_i, floor(x * w_i))) <= target``; returns (quotas, x).

    Bisection on ``x`` over doubles; the caller hands out the remainder unit by unit.
    """
    k = sizes.shape[0]
    lo = 0.0
    hi = 1.0
    for i in range(k):
        if weights[i] > 0:
            v = (sizes[i] + 1.0) / weights[i]
            if v > hi:
                hi = v
    q = np.zeros(k, np.int64)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        tot = 0
        for i in range(k):
            tot += min(sizes[i], np.int64(np.floor(mid * weights[i])))
        if tot <= target:
            lo = mid
        else:
            hi = mid
    for i in range(k):
        q[i] = min(sizes[i], np.int64(np.floor(lo * weights[i])))
    return q, lo
