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
    """``a . b`` summed in float64 in index order: the same bits for any BLAS, block or thread count
    (float32 products are exact in float64; numba keeps the order without fastmath)."""
    s = 0.0
    for t in range(a.shape[0]):
        s += np.float64(a[t]) * np.float64(b[t])
    return s


@njit(cache=True)
def unit_rows(x: np.ndarray) -> tuple:
    """float32 rows divided by their float64 norm (summed in index order); returns (rows, norms).
    A zero row stays zero; the caller names it."""
    return unit_rows_at(x, np.arange(x.shape[0]))


def blas_margin(dim: int) -> float:
    """Twice the worst error of a float32 dot product of two (near) unit vectors in any summation
    order (``gamma_d = d u / (1 - d u)``, u = 2**-24), with room: BLAS scores within it of the best
    are candidates that ``exact_dot`` decides between."""
    u = 2.0**-24
    return 4.0 * dim * u / (1.0 - dim * u)


@njit(cache=True)
def refine_nearest(x: np.ndarray, targets: np.ndarray, scores: np.ndarray, offset: np.ndarray, margin: float) -> tuple:
    """Per row of ``x``: the target maximising ``x . t - offset[t]``, decided by ``exact_dot`` among
    the targets whose BLAS score ``scores[r, t] - offset[t]`` is within ``margin * |x_r| * max|t|``
    of the best BLAS score (no other target can win). Ties go to the lowest target; returns
    (argmax int64, exact score float64)."""
    n = x.shape[0]
    k = targets.shape[0]
    tnorm = 0.0
    for c in range(k):
        tnorm = max(tnorm, np.sqrt(exact_dot(targets[c], targets[c])))
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


@njit(cache=True, fastmath={"nnan", "nsz"})
def _row_bests(row, j, penalty, best) -> None:
    """``best[0]``: the largest of ``row[:j]``; ``best[1 + e]``: the largest of ``row[:j] +
    penalty[e]`` (0 where kept at threshold ``e``, -inf elsewhere). A maximum is the same in any
    order, so the scan may be vectorised (the scores are finite: there is no NaN to order)."""
    ninf = np.float32(-np.inf)
    if penalty.shape[0] == 1:  # the common single-eps case: both maxima in one read of the row
        p0 = penalty[0]
        b = ninf
        b1 = ninf
        for i in range(j):
            r = row[i]
            b = r if r > b else b
            rk = r + p0[i]
            b1 = rk if rk > b1 else b1
        best[0] = b
        best[1] = b1
        return
    b = ninf
    for i in range(j):
        b = row[i] if row[i] > b else b
    best[0] = b
    for e in range(penalty.shape[0]):
        pe = penalty[e]
        b = ninf
        for i in range(j):
            rk = row[i] + pe[i]
            b = rk if rk > b else b
        best[1 + e] = b


@njit(cache=True)
def _visit(row, i, j, v, kept, best, margin, kept_sim, kept_arg, near_sim, near_arg) -> None:
    """Let earlier position ``i`` compete, by ``exact_dot``, for ``j``'s nearest and nearest kept."""
    s = np.float64(row[i])
    x = exact_dot(v[i], v[j])
    if s >= best[0] - margin and x > near_sim[j]:
        near_sim[j] = x
        near_arg[j] = i
    for e in range(kept.shape[0]):
        if kept[e, i] and s >= best[1 + e] - margin and x > kept_sim[j, e]:
            kept_sim[j, e] = x
            kept_arg[j, e] = i


@njit(cache=True)
def _decide(row, j, v, exact, thresholds, kept, penalty, kept_sim, kept_arg, near_sim, near_arg, margin, best) -> None:
    """Decisions for cluster position ``j`` from ``row[i]``, the BLAS similarity of ``i < j`` and ``j``.

    The best BLAS score over all earlier positions (``best[0]``) and over the kept ones at each
    threshold (``best[1 + e]``; ``kept`` is threshold-major) bound the candidates: only those within
    ``margin`` of one of them compete, and ``exact_dot`` of the unit rows ``v`` decides between
    them, so the outcome is the same for any block size, BLAS or thread count. Ties go to the
    earliest position.
    """
    ne = thresholds.shape[0]
    _row_bests(row, j, penalty, best)
    low = best.min() - margin
    near_sim[j] = -np.inf
    near_arg[j] = -1
    for e in range(ne):
        kept_sim[j, e] = -np.inf
        kept_arg[j, e] = -1
    for i in range(j):
        if row[i] >= low:
            _visit(row, i, j, v, kept, best, margin, kept_sim, kept_arg, near_sim, near_arg)
    if near_arg[j] < 0:
        near_sim[j] = np.nan
    for e in range(ne):
        a = kept_arg[j, e]
        if a < 0:
            kept_sim[j, e] = np.nan
        kept[e, j] = (not exact[j]) and not (a >= 0 and kept_sim[j, e] > thresholds[e])
        penalty[e, j] = 0.0 if kept[e, j] else -np.inf


@njit(cache=True)
def greedy_dedup_block(
    sims: np.ndarray,
    row0: int,
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
    """Greedy SemDeDup decisions for cluster positions ``row0 .. row0 + sims.shape[0]``.

    ``sims[jj, i]`` is the BLAS cosine similarity of cluster position ``row0 + jj`` and position
    ``i`` (columns cover every earlier position, so each position reads one contiguous row); it
    only proposes candidates, ``exact_dot`` decides (``_decide``). Position ``j`` is dropped at
    threshold ``t`` when its similarity to an earlier *kept* position exceeds ``t`` (``kept[e, j]``,
    threshold-major); exact duplicates (``exact[j]``) are dropped at every threshold and never
    count as kept.
    """
    best = np.empty(1 + thresholds.shape[0], np.float64)
    penalty = np.where(kept, np.float32(0), np.float32(-np.inf)).astype(np.float32)
    for jj in range(sims.shape[0]):
        _decide(sims[jj], row0 + jj, v, exact, thresholds, kept, penalty, kept_sim, kept_arg, near_sim, near_arg, margin, best)


@njit(cache=True)
def unit_rows_at(x: np.ndarray, rows: np.ndarray) -> tuple:
    """``unit_rows`` of ``x[rows]`` (each value cast to float32 first) without copying the rows out
    beforehand, so a memmap is read in place. A non-finite row gets a non-finite norm."""
    d = x.shape[1]
    out = np.zeros((rows.shape[0], d), np.float32)
    norms = np.empty(rows.shape[0], np.float64)
    src = np.empty(d, np.float32)
    for r in range(rows.shape[0]):
        for t in range(d):
            src[t] = np.float32(x[rows[r], t])
        norm = np.sqrt(exact_dot(src, src))
        norms[r] = norm
        if norm > 0:
            for t in range(d):
                out[r, t] = np.float32(np.float64(src[t]) / norm)
    return out, norms


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
