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


# Dedup slots: 0 is "any earlier position" (nearest), 1 + e is "kept at threshold e" (there is
# always at least one threshold). ``mask[s, i]`` says whether position ``i`` counts in slot ``s``.
KEPT = np.int32(2**31 - 1)  # mask where a position counts in a slot: min(key, KEPT) is the key itself
GONE = np.int32(-(2**31))  # mask elsewhere: below the key of every float (it is a NaN's key)


@njit(cache=True, inline="always")
def _order_key(bits):
    """float32 bits (as int32) -> an int32 in the same order as the floats (and back: it is its own
    inverse). Integer maxima vectorise where float ones do not (LLVM wants function-wide no-NaN)."""
    return np.int32(bits ^ np.int32(np.int32(bits >> 31) & np.int32(0x7FFFFFFF)))


@njit(cache=True, inline="always")
def _set_bound(s, b, margin, lim, limk, kbuf, fbuf) -> None:
    """From ``b``, the largest order key that slot ``s`` counts (GONE: none): ``lim[s]``, that score
    minus ``margin`` (the lowest score that can still win; -inf when no position counts), and
    ``limk[s]``, an order key at or below that of every float32 >= ``lim[s]``. ``kbuf``/``fbuf``:
    one int32 buffer and its float32 view, to read keys back as floats."""
    if b == GONE:
        lim[s] = -np.inf
        limk[s] = KEPT  # no finite score's key reaches it
        return
    kbuf[s] = _order_key(b)
    lim[s] = np.float64(fbuf[s]) - margin
    fbuf[s] = np.float32(lim[s])  # within half an ulp of lim: one key lower covers every float >= lim
    limk[s] = _order_key(kbuf[s]) - np.int32(1)


@njit(cache=True, inline="always")
def _slot_bounds(bits, j, mask, margin, lim, limk, kbuf, fbuf) -> None:
    """``_set_bound`` of every slot over the BLAS scores ``bits[:j]`` of the positions ``mask[s]``
    counts (KEPT). Slot 0 (every position) and slot 1 share one read of the row; integer maxima
    vectorise."""
    m1 = mask[1]
    b0 = GONE
    b1 = GONE
    for i in range(j):
        k = _order_key(bits[i])
        b0 = max(b0, k)
        b1 = max(b1, min(k, m1[i]))
    _set_bound(0, b0, margin, lim, limk, kbuf, fbuf)
    _set_bound(1, b1, margin, lim, limk, kbuf, fbuf)
    for s in range(2, mask.shape[0]):
        ms = mask[s]
        b = GONE
        for i in range(j):
            b = max(b, min(_order_key(bits[i]), ms[i]))
        _set_bound(s, b, margin, lim, limk, kbuf, fbuf)


@njit(cache=True, inline="always")
def _candidates(row, bits, j, mask, lim, limk, flags, cand) -> int:
    """Fills ``cand`` with the positions ``i < j`` (ascending) whose BLAS score meets some slot's
    bound ``lim`` where ``mask`` counts them; returns how many. A vectorised pass flags the
    positions whose order key passes a bound (one byte each, ``flags`` padded to whole words); only
    the non-zero 8-byte words are looked into, where the float64 test decides."""
    m1 = mask[1]
    l0 = limk[0]
    l1 = limk[1]
    for i in range(j):
        k = _order_key(bits[i])
        flags[i] = np.uint8((k >= l0) | (min(k, m1[i]) >= l1))
    for s in range(2, mask.shape[0]):
        ms = mask[s]
        ls = limk[s]
        for i in range(j):
            flags[i] |= np.uint8(min(_order_key(bits[i]), ms[i]) >= ls)
    for i in range(j, (j + 7) // 8 * 8):
        flags[i] = 0
    words = flags.view(np.uint64)
    nc = 0
    for w in range((j + 7) // 8):
        if words[w] == 0:
            continue
        for i in range(8 * w, 8 * w + 8):
            if flags[i] == 0:
                continue
            need = False
            for s in range(lim.shape[0]):
                need = need or (mask[s, i] == KEPT and np.float64(row[i]) >= lim[s])
            if need:
                cand[nc] = i
                nc += 1
    return nc


@njit(cache=True, inline="always")
def exact_dot2(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple:
    """``(exact_dot(a, b), exact_dot(a, c))`` in one loop: the same bits, but the two add chains
    overlap instead of waiting on each other."""
    s = 0.0
    t = 0.0
    for i in range(a.shape[0]):
        x = np.float64(a[i])
        s += x * np.float64(b[i])
        t += x * np.float64(c[i])
    return s, t


@njit(cache=True, inline="always")
def _nearest_slots(row, bits, j, v, mask, margin, lim, limk, kbuf, fbuf, flags, cand, xs, best_x, best_a) -> None:
    """``best_a[s]``/``best_x[s]``: the earlier position most similar to ``j`` by ``exact_dot`` among
    those ``mask[s]`` counts (slot 0: all; slot ``1 + e``: kept at threshold ``e``), -1/-inf when
    there is none. BLAS only bounds the candidates (``_slot_bounds``, ``_candidates``); strictly
    better wins, so ties go to the earliest position."""
    _slot_bounds(bits, j, mask, margin, lim, limk, kbuf, fbuf)
    nc = _candidates(row, bits, j, mask, lim, limk, flags, cand)
    for q in range(0, nc - 1, 2):
        xs[q], xs[q + 1] = exact_dot2(v[j], v[cand[q]], v[cand[q + 1]])
    if nc % 2:
        xs[nc - 1] = exact_dot(v[j], v[cand[nc - 1]])
    for s in range(lim.shape[0]):
        best_x[s] = -np.inf
        best_a[s] = -1
        for q in range(nc):
            i = cand[q]
            if mask[s, i] == KEPT and np.float64(row[i]) >= lim[s] and xs[q] > best_x[s]:
                best_x[s] = xs[q]
                best_a[s] = i


@njit(cache=True)
def greedy_dedup_block(
    sims: np.ndarray,
    row0: int,
    rows: np.ndarray,
    v: np.ndarray,
    exact: np.ndarray,
    thresholds: np.ndarray,
    margin: float,
    mask: np.ndarray,
    rank: np.ndarray,
    nearest: np.ndarray,
    similarity: np.ndarray,
    kept: np.ndarray,
    duplicate_of: np.ndarray,
    duplicate_similarity: np.ndarray,
) -> None:
    """Greedy SemDeDup decisions for cluster positions ``row0 .. row0 + sims.shape[0]``.

    ``sims[jj, i]`` is the BLAS cosine similarity of cluster position ``row0 + jj`` and position
    ``i`` (columns cover every earlier position, so each position reads one contiguous row); it
    only proposes candidates, ``exact_dot`` of the unit rows ``v`` decides (``_nearest_slots``), so
    the outcome is the same for any block size, BLAS or thread count. Position ``j`` (dataset row
    ``rows[j]``) is dropped at threshold ``t`` when its similarity to an earlier *kept* position
    exceeds ``t``; exact duplicates (``exact[rows[j]]``) are dropped at every threshold and never
    count as kept. ``mask`` (int32, ``1 + len(thresholds)`` rows; row 0 all KEPT) carries the
    cluster's kept state between blocks: row ``1 + e`` is KEPT where kept at threshold ``e``, else
    GONE. Results go straight to the dataset-row arrays.
    """
    ns = mask.shape[0]
    bits = sims.view(np.int32)
    flags = np.zeros((row0 + sims.shape[0] + 7) // 8 * 8, np.uint8)
    lim = np.empty(ns, np.float64)
    limk = np.empty(ns, np.int32)
    kbuf = np.empty(ns, np.int32)
    fbuf = kbuf.view(np.float32)
    cand = np.empty(row0 + sims.shape[0], np.int64)
    xs = np.empty(row0 + sims.shape[0], np.float64)
    best_x = np.empty(ns, np.float64)
    best_a = np.empty(ns, np.int64)
    for jj in range(sims.shape[0]):
        j = row0 + jj
        _nearest_slots(sims[jj], bits[jj], j, v, mask, margin, lim, limk, kbuf, fbuf, flags, cand, xs, best_x, best_a)
        g = rows[j]
        rank[g] = j
        nearest[g] = rows[best_a[0]] if best_a[0] >= 0 else -1
        similarity[g] = np.float32(best_x[0]) if best_a[0] >= 0 else np.float32(np.nan)
        for e in range(thresholds.shape[0]):
            a = best_a[1 + e]
            keep = (not exact[g]) and not (a >= 0 and best_x[1 + e] > thresholds[e])
            kept[g, e] = keep
            mask[1 + e, j] = KEPT if keep else GONE
            duplicate_of[g, e] = rows[a] if a >= 0 else -1
            duplicate_similarity[g, e] = np.float32(best_x[1 + e]) if a >= 0 else np.float32(np.nan)


@njit(cache=True)
def unit_rows_at(x: np.ndarray, rows: np.ndarray) -> tuple:
    """``unit_rows`` of ``x[rows]`` (each value cast to float32 first) without copying the rows out
    beforehand, so a memmap is read in place. A non-finite row gets a non-finite norm. Eight rows
    go through together, each summed in index order like ``exact_dot``, so the CPU overlaps their
    add chains and the bits stay those of one row alone."""
    d = x.shape[1]
    n = rows.shape[0]
    out = np.zeros((n, d), np.float32)
    norms = np.empty(n, np.float64)
    tile = np.zeros((8, d), np.float32)
    acc = np.empty(8, np.float64)
    for r0 in range(0, n, 8):
        g = min(8, n - r0)
        for q in range(g):
            src = x[rows[r0 + q]]
            for t in range(d):
                tile[q, t] = np.float32(src[t])
        acc[:] = 0.0
        for t in range(d):
            for q in range(8):
                acc[q] += np.float64(tile[q, t]) * np.float64(tile[q, t])
        for q in range(g):
            norm = np.sqrt(acc[q])
            norms[r0 + q] = norm
            if norm > 0:
                dst = out[r0 + q]
                for t in range(d):
                    dst[t] = np.float32(np.float64(tile[q, t]) / norm)
    return out, norms


@njit(cache=True)
def cluster_csr(labels: np.ndarray, k: int, key: np.ndarray) -> tuple:
    """Rows grouped by cluster (CSR: ``order``, ``offsets``), each cluster sorted by (key, row index):
    rows enter their cluster in index order and the sort is stable."""
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
            order[lo:hi] = seg[np.argsort(key[seg], kind="mergesort")]
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
