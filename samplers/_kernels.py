"""Numba kernels for the samplers: grouping by bucket, cutting padded batches, the canonical order
and its dealing to ranks.

All take and return NumPy arrays (int64 indices, int64 lengths); the Python classes validate input.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def group_by_key(items, keys, num_keys):
    """Stable counting sort of ``items`` by ``keys[item]``: ``(grouped items, group offsets)``."""
    n = items.shape[0]
    offsets = np.zeros(num_keys + 1, np.int64)
    for i in range(n):
        offsets[keys[items[i]] + 1] += 1
    for k in range(num_keys):
        offsets[k + 1] += offsets[k]
    cursor = offsets[:-1].copy()
    out = np.empty(n, np.int64)
    for i in range(n):
        k = keys[items[i]]
        out[cursor[k]] = items[i]
        cursor[k] += 1
    return out, offsets


@njit(cache=True)
def cut_padded(order, lengths, group_offsets, caps, max_tokens):
    """Cut each group of ``order`` (in its given order) into batches of padded cost <= budget.

    ``lengths`` is ``(num_items, dims)``; a batch of ``n`` items costs ``n * max(lengths[:, d])`` in
    every dimension ``d`` and must keep each under ``max_tokens`` (``<= 0``: no budget) and ``n``
    under the group's cap ``caps[g]`` (``<= 0``: no cap).  A single item always forms a batch.
    Returns ``(batch_offsets, batch_group, tokens, slots, squares)`` per batch.
    """
    n = order.shape[0]
    dims = lengths.shape[1]
    num_groups = group_offsets.shape[0] - 1
    offsets = np.empty(n + 1, np.int64)
    group = np.empty(n, np.int64)
    tokens = np.zeros(n, np.int64)
    slots = np.zeros(n, np.int64)
    squares = np.zeros(n, np.float64)
    cur_max = np.zeros(dims, np.int64)
    offsets[0] = 0
    nb = 0
    for g in range(num_groups):
        cap = caps[g]
        count = 0
        for k in range(group_offsets[g], group_offsets[g + 1]):
            item = order[k]
            fits = count > 0 and (cap <= 0 or count + 1 <= cap)
            if fits and max_tokens > 0:
                for d in range(dims):
                    m = max(cur_max[d], lengths[item, d])
                    if (count + 1) * m > max_tokens:
                        fits = False
                        break
            if not fits and count > 0:
                for d in range(dims):
                    slots[nb] += count * cur_max[d]
                group[nb] = g
                nb += 1
                offsets[nb] = k
                count = 0
            if count == 0:
                for d in range(dims):
                    cur_max[d] = 0
            for d in range(dims):
                v = lengths[item, d]
                if v > cur_max[d]:
                    cur_max[d] = v
                tokens[nb] += v
                squares[nb] += float(v) * float(v)
            count += 1
        if count > 0:
            for d in range(dims):
                slots[nb] += count * cur_max[d]
            group[nb] = g
            nb += 1
            offsets[nb] = group_offsets[g + 1]
    return offsets[: nb + 1].copy(), group[:nb].copy(), tokens[:nb].copy(), slots[:nb].copy(), squares[:nb].copy()


@njit(cache=True)
def csr_sums(offsets, values):
    """Per-segment sum of int64 ``values`` and of their squares (float64) over CSR ``offsets``."""
    nb = offsets.shape[0] - 1
    sums = np.zeros(nb, np.int64)
    squares = np.zeros(nb, np.float64)
    for b in range(nb):
        for k in range(offsets[b], offsets[b + 1]):
            v = values[k]
            sums[b] += v
            squares[b] += float(v) * float(v)
    return sums, squares


@njit(cache=True)
def sort_blocks(sequence, costs, block):
    """Sort each run of ``block`` consecutive batch ids of ``sequence`` by decreasing cost (stable).

    The blocks do not depend on the world size, so neighbours in the canonical order cost about
    the same and any group of consecutive batches (one step under any world size) is balanced."""
    out = sequence.copy()
    n = out.shape[0]
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        part = out[lo:hi].copy()
        keys = np.empty(hi - lo, np.float64)
        for k in range(hi - lo):
            keys[k] = -costs[part[k]]
        out[lo:hi] = part[np.argsort(keys, kind="mergesort")]
    return out


@njit(cache=True)
def deal_groups(sequence, costs, origin, num_replicas, num_steps, starts):
    """Deal the canonical ``sequence`` from ``origin`` on: step ``s`` takes the next ``num_replicas``
    batch ids and gives the dearest to the rank with the least work so far (LPT).

    The work counted for LPT restarts at the first step whose group starts in a new plan window
    (``starts``: the windows' first canonical positions, ascending, ``starts[0] == 0``), so a window's
    dealing never depends on the windows before it and a resume plans only the cursor's window.
    A step with fewer batches than ranks leaves ``-1`` (an empty batch) on the ranks with the most
    work; batches past ``origin + num_steps * num_replicas`` are left out (``drop_last``).
    Returns ``(table[rank, step], load[rank])`` (``load``: the whole dealing's work per rank).
    """
    table = np.full((num_replicas, num_steps), -1, np.int64)
    load = np.zeros(num_replicas, np.float64)
    work = np.zeros(num_replicas, np.float64)
    taken = np.zeros(num_replicas, np.bool_)
    total = sequence.shape[0]
    group = np.empty(num_replicas, np.int64)
    window = 0
    while window + 1 < starts.shape[0] and starts[window + 1] <= origin:
        window += 1
    for s in range(num_steps):
        taken[:] = False
        lo = origin + s * num_replicas
        hi = min(lo + num_replicas, total)
        m = hi - lo
        if window + 1 < starts.shape[0] and starts[window + 1] <= lo:
            while window + 1 < starts.shape[0] and starts[window + 1] <= lo:
                window += 1
            work[:] = 0.0
        for k in range(m):  # insertion sort of the group by decreasing cost (stable)
            b = sequence[lo + k]
            j = k
            while j > 0 and costs[group[j - 1]] < costs[b]:
                group[j] = group[j - 1]
                j -= 1
            group[j] = b
        for k in range(m):
            b = group[k]
            best = -1
            for r in range(num_replicas):
                if not taken[r] and (best < 0 or work[r] < work[best]):
                    best = r
            taken[best] = True
            table[best, s] = b
            work[best] += costs[b]
            load[best] += costs[b]
    return table, load


@njit(cache=True)
def _mix64(x):
    """splitmix64's finalizer: a fixed bijection of uint64 that spreads every input bit."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


@njit(cache=True)
def feistel_take(n, first, count, keys, half):
    """``pi(first), ..., pi(first + count - 1)`` of a keyed bijection ``pi`` of ``[0, n)``.

    A balanced Feistel network on ``2 * half`` bits (``4**half >= n``), one round per key, walked
    until it lands in ``[0, n)`` (cycle walking keeps it a bijection of ``[0, n)``).  Integer
    arithmetic only, so every machine computes the same members for a window in O(count)."""
    out = np.empty(count, np.int64)
    mask = (np.uint64(1) << np.uint64(half)) - np.uint64(1)
    shift = np.uint64(half)
    limit = np.uint64(n)
    for i in range(count):
        x = np.uint64(first + i)
        while True:
            left = x >> shift
            right = x & mask
            for r in range(keys.shape[0]):
                left, right = right, left ^ (_mix64(right ^ keys[r]) & mask)
            x = (left << shift) | right
            if x < limit:
                break
        out[i] = np.int64(x)
    return out


@njit(cache=True)
def step_imbalance(table, costs):
    """Mean over steps of (max rank cost / mean rank cost) within the step; 1.0 is perfect."""
    num_replicas, num_steps = table.shape
    total = 0.0
    counted = 0
    for s in range(num_steps):
        hi = 0.0
        sm = 0.0
        for r in range(num_replicas):
            b = table[r, s]
            c = costs[b] if b >= 0 else 0.0
            sm += c
            if c > hi:
                hi = c
        if sm > 0:
            total += hi / (sm / num_replicas)
            counted += 1
    return total / counted if counted else 1.0
