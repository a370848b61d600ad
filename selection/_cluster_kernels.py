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
def exact_dot(a: np.ndarray, b: np.ndarray) -> float:
    """``a . b`` in float64 in one fixed order (four lanes ``t % 4`` in index order, then
    ``(l0 + l1) + (l2 + l3)``): the same bits for any BLAS, block or thread count. float32 products
    are exact in float64; numba keeps the order without fastmath; four lanes hide the add latency."""
    d = a.shape[0]
    s0 = s1 = s2 = s3 = 0.0
    t = 0
    while t + 4 <= d:
        s0 += np.float64(a[t]) * np.float64(b[t])
        s1 += np.float64(a[t + 1]) * np.float64(b[t + 1])
        s2 += np.float64(a[t + 2]) * np.float64(b[t + 2])
        s3 += np.float64(a[t + 3]) * np.float64(b[t + 3])
        t += 4
    if t < d:
        s0 += np.float64(a[t]) * np.float64(b[t])
    if t + 1 < d:
        s1 += np.float64(a[t + 1]) * np.float64(b[t + 1])
    if t + 2 < d:
        s2 += np.float64(a[t + 2]) * np.float64(b[t + 2])
    return (s0 + s1) + (s2 + s3)


@njit(cache=True)
def unit_rows(x: np.ndarray) -> tuple:
    """float32 rows divided by their float64 norm (summed in index order); returns (rows, norms).
    A zero row stays zero; the caller names it."""
    n, d = x.shape
    out = np.zeros((n, d), np.float32)
    norms = np.empty(n, np.float64)
    for r in range(n):
        norm = np.sqrt(exact_dot(x[r], x[r]))
        norms[r] = norm
        if norm > 0:
            for t in range(d):
                out[r, t] = np.float32(np.float64(x[r, t]) / norm)
    return out, norms


def blas_margin(dim: int) -> float:
    """Twice the worst error of a float32 dot product of two (near) unit vectors in any summation
    order (``gamma_d = d u / (1 - d u)``, u = 2**-24), with room: BLAS scores within it of the best
    are candidates that ``exact_dot`` decides between."""
    u = 2.0**-24
    return 4.0 * dim * u / (1.0 - dim * u)


@njit(cache=True)
def squared_norms(x: np.ndarray) -> np.ndarray:
    """``exact_dot(x_r, x_r)`` of every row."""
    out = np.empty(x.shape[0], np.float64)
    for r in range(x.shape[0]):
        out[r] = exact_dot(x[r], x[r])
    return out


@njit(cache=True)
def refine_nearest(x: np.ndarray, targets: np.ndarray, scores: np.ndarray, offset: np.ndarray, margin: float, tnorm: float) -> tuple:
    """Per row of ``x``: the target maximising ``x . t - offset[t]``, decided by ``exact_dot`` among
    the targets whose BLAS score ``scores[r, t] - offset[t]`` is within ``margin * |x_r| * tnorm``
    (``tnorm`` = max|t|) of the best BLAS score (no other target can win). Ties go to the lowest
    target; returns (argmax int64, exact score float64)."""
    n = x.shape[0]
    k = targets.shape[0]
    arg = np.empty(n, np.int64)
    best = np.empty(n, np.float64)
    for r in range(n):
        bm = -np.inf
        for c in range(k):
            bm = max(bm, np.float64(scores[r, c]) - offset[c])
        tol = margin * np.sqrt(exact_dot(x[r], x[r])) * tnorm
        b = -np.inf
        a = -1
        for c in range(k):
            if np.float64(scores[r, c]) - offset[c] >= bm - tol:
                e = exact_dot(x[r], targets[c]) - offset[c]
                if e > b:
                    b = e
                    a = c
        arg[r] = a
        best[r] = b
    return arg, best


@njit(cache=True)
def squared_l2(x: np.ndarray, targets: np.ndarray, arg: np.ndarray) -> np.ndarray:
    """``|x_r - targets[arg[r]]|^2`` summed in float64 in index order, as float32."""
    out = np.empty(x.shape[0], np.float32)
    for r in range(x.shape[0]):
        s = 0.0
        for t in range(x.shape[1]):
            diff = np.float64(x[r, t]) - np.float64(targets[arg[r], t])
            s += diff * diff
        out[r] = np.float32(s)
    return out


@njit(cache=True)
def _best_earlier(sims, jj, j, v, kept, margin, best, arg) -> None:
    """Into ``best[0]``/``arg[0]``: the earlier position ``i < j`` most similar to ``j``; into
    ``best[1 + e]``/``arg[1 + e]``: the one kept at threshold ``e``. BLAS ``sims`` propose (within
    ``margin`` of their best), ``exact_dot`` of the unit rows ``v`` decides; ties go to the earliest."""
    ne = kept.shape[1]
    top = np.full(1 + ne, -np.inf)
    for i in range(j):
        s = np.float64(sims[jj, i])
        top[0] = max(top[0], s)
        for e in range(ne):
            if kept[i, e]:
                top[1 + e] = max(top[1 + e], s)
    best[:] = -np.inf
    arg[:] = -1
    for i in range(j):
        s = np.float64(sims[jj, i])
        exact = np.nan  # computed only for a candidate of some maximum
        if s >= top[0] - margin:
            exact = exact_dot(v[i], v[j])
            if exact > best[0]:
                best[0] = exact
                arg[0] = i
        for e in range(ne):
            if kept[i, e] and s >= top[1 + e] - margin:
                if np.isnan(exact):
                    exact = exact_dot(v[i], v[j])
                if exact > best[1 + e]:
                    best[1 + e] = exact
                    arg[1 + e] = i


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
    v: np.ndarray,
    margin: float,
) -> None:
    """Greedy SemDeDup decisions for cluster positions ``col0 .. col0 + sims.shape[0]``.

    ``sims[jj, i]`` is the BLAS cosine similarity of cluster position ``col0 + jj`` and position ``i``
    (a contiguous row per position, covering every earlier one); it only proposes candidates within ``margin`` of the best,
    and ``exact_dot`` of the unit rows ``v`` decides, so the outcome is the same for any block size,
    BLAS or thread count. Position ``j`` is dropped at threshold ``t`` when its similarity to an
    earlier *kept* position exceeds ``t``; exact duplicates (``exact[j]``) are dropped at every
    threshold and never count as kept. Ties go to the earliest position.
    """
    nb = sims.shape[0]
    ne = thresholds.shape[0]
    best = np.empty(1 + ne)
    arg = np.empty(1 + ne, np.int64)
    for jj in range(nb):
        j = col0 + jj
        _best_earlier(sims, jj, j, v, kept, margin, best, arg)
        near_sim[j] = best[0] if arg[0] >= 0 else np.nan
        near_arg[j] = arg[0]
        for e in range(ne):
            b, a = best[1 + e], arg[1 + e]
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
