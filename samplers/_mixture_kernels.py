"""Numba kernels for :class:`packwise.samplers.MixtureSampler`: deficit draws and group dealing.

Both take and return NumPy arrays and update their state arrays in place, so the Python layer
can stop and resume them at any window or group boundary.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def deficit_draws(weights, deficit, pos, seq_lengths, seq_offsets, cap_left, budget, by_tokens, out_source, out_pos):
    """Draw examples source by source until ``budget`` tokens are drawn, always from the source
    furthest below its target.

    Each draw of ``a`` units (its tokens, or 1 with ``by_tokens`` false) credits every active
    source ``weight * a`` (weights renormalised over the active ones) and debits the drawn source
    ``a``, so ``deficit`` (carried across calls) is target minus realised.  A source is active when
    its weight is positive and ``cap_left`` is not 0 (``-1``: no cap).  Source ``s`` draws its
    next example from ``seq_lengths[seq_offsets[s] + pos[s]]`` (its cycle in permuted order).
    Returns ``(draws, tokens, status)``: status ``-1`` budget reached, ``-2`` no source is active,
    ``s >= 0`` source ``s`` finished its cycle (give it the next one and call again).
    """
    num_sources = weights.shape[0]
    n = 0
    tokens = 0
    while tokens < budget and n < out_source.shape[0]:
        best = -1
        total = 0.0
        for s in range(num_sources):
            if weights[s] > 0 and cap_left[s] != 0:
                total += weights[s]
                if best < 0 or deficit[s] > deficit[best]:
                    best = s
        if best < 0:
            return n, tokens, -2
        if pos[best] == seq_offsets[best + 1] - seq_offsets[best]:
            return n, tokens, best
        length = seq_lengths[seq_offsets[best] + pos[best]]
        amount = float(length) if by_tokens else 1.0
        for s in range(num_sources):
            if weights[s] > 0 and cap_left[s] != 0:
                deficit[s] += weights[s] / total * amount
        deficit[best] -= amount
        out_source[n] = best
        out_pos[n] = pos[best]
        pos[best] += 1
        if cap_left[best] > 0:
            cap_left[best] -= 1
        tokens += length
        n += 1
    return n, tokens, -1


@njit(cache=True)
def deal_groups(costs, num_replicas, load):
    """Deal consecutive groups of ``num_replicas`` batches to ranks, one group per step.

    Inside a group the costliest batch goes to the rank with the least cumulative ``load`` (updated
    in place), the next to the next least loaded, and so on.  ``costs`` holds whole groups (pad a
    short one with ``-1`` entries: empty batches that cost nothing).  Returns ``table[step, rank]``
    = position in ``costs`` (``-1`` for an empty batch).
    """
    steps = costs.shape[0] // num_replicas
    table = np.full((steps, num_replicas), -1, np.int64)
    taken = np.zeros(num_replicas, np.bool_)
    for t in range(steps):
        base = t * num_replicas
        ranked = np.argsort(-costs[base : base + num_replicas], kind="mergesort")
        taken[:] = False
        for k in range(num_replicas):
            b = base + ranked[k]
            best = -1
            for r in range(num_replicas):
                if not taken[r] and (best < 0 or load[r] < load[best]):
                    best = r
            taken[best] = True
            if costs[b] >= 0:
                table[t, best] = b
                load[best] += costs[b]
    return table


@njit(cache=True)
def interleave(vectors, start):
    """Order a window's bins so every prefix holds close to its share of each source.

    ``vectors[b, s]`` = tokens of source ``s`` in bin ``b``; ``start`` is a seeded permutation of
    the bins that breaks ties.  Greedy: position ``k`` takes the bin that brings the running
    per-source totals nearest (squared error) to ``(k + 1) / bins`` of the window's totals, so a
    span of batches that cuts a window in two still sees the window's mixture.  Returns the order.
    """
    bins, sources = vectors.shape
    total = np.zeros(sources, np.float64)
    for b in range(bins):
        for s in range(sources):
            total[s] += vectors[b, s]
    done = np.zeros(bins, np.bool_)
    running = np.zeros(sources, np.float64)
    out = np.empty(bins, np.int64)
    for k in range(bins):
        share = (k + 1) / bins
        best = -1
        best_cost = np.inf
        for i in range(bins):
            b = start[i]
            if done[b]:
                continue
            cost = 0.0
            for s in range(sources):
                d = running[s] + vectors[b, s] - share * total[s]
                cost += d * d
            if cost < best_cost:
                best = b
                best_cost = cost
        out[k] = best
        done[best] = True
        for s in range(sources):
            running[s] += vectors[best, s]
    return out


@njit(cache=True)
def distinct(pool, seen):
    """``(pool without repeated ids, the repeats)``, both in pool order (the first occurrence
    stays).  ``seen`` is a scratch bool array over all example ids, all False on entry and on exit."""
    n = pool.shape[0]
    keep = np.empty(n, np.int64)
    rest = np.empty(n, np.int64)
    a = 0
    b = 0
    for i in range(n):
        e = pool[i]
        if seen[e]:
            rest[b] = e
            b += 1
        else:
            seen[e] = True
            keep[a] = e
            a += 1
    for i in range(a):
        seen[keep[i]] = False
    return keep[:a].copy(), rest[:b].copy()


@njit(cache=True)
def choose_bins(pool, order, bin_offsets, slots, lengths, bins, by_fill):
    """The ``bins`` fullest bins of a cut pool (by real tokens, or by ``slots``; ties to the first),
    in bin order, and the example ids of the others in pool order (the carry)."""
    nb = bin_offsets.shape[0] - 1
    key = np.empty(nb, np.int64)
    for b in range(nb):
        if by_fill:
            fill = 0
            for k in range(bin_offsets[b], bin_offsets[b + 1]):
                fill += lengths[pool[order[k]]]
            key[b] = -fill
        else:
            key[b] = -slots[b]
    keep = np.sort(np.argsort(key, kind="mergesort")[:bins])
    kept = np.zeros(nb, np.bool_)
    kept[keep] = True
    left = np.zeros(pool.shape[0], np.bool_)
    for b in range(nb):
        if not kept[b]:
            for k in range(bin_offsets[b], bin_offsets[b + 1]):
                left[order[k]] = True
    return keep, pool[np.flatnonzero(left)]


@njit(cache=True)
def arrange_bins(pool, order, bin_offsets, slots, keep, lengths, groups, num_sources, bins):
    """Lay the kept bins out in ``keep``'s order, each source spread evenly over them
    (:func:`interleave`, ties in ``keep``'s order) when there are several sources and bins.
    Returns ``(example ids, bin offsets padded to bins + 1, slots per bin padded to bins)``."""
    nk = keep.shape[0]
    if num_sources > 1 and nk > 1:
        vectors = np.zeros((nk, num_sources), np.float64)
        for i in range(nk):
            b = keep[i]
            for k in range(bin_offsets[b], bin_offsets[b + 1]):
                e = pool[order[k]]
                vectors[i, groups[e]] += lengths[e]
        keep = keep[interleave(vectors, np.arange(nk))]
    offsets = np.empty(bins + 1, np.int64)
    padded = np.zeros(bins, np.int64)
    offsets[0] = 0
    total = 0
    for i in range(nk):
        b = keep[i]
        total += bin_offsets[b + 1] - bin_offsets[b]
        offsets[i + 1] = total
        padded[i] = slots[b]
    offsets[nk + 1 :] = total
    out = np.empty(total, np.int64)
    n = 0
    for i in range(nk):
        b = keep[i]
        for k in range(bin_offsets[b], bin_offsets[b + 1]):
            out[n] = pool[order[k]]
            n += 1
    return out, offsets, padded


@njit(cache=True)
def window_sums(order, batch_offsets, lengths, groups, num_sources):
    """Per batch: real tokens and the sum of squared lengths; per source: tokens and examples."""
    nb = batch_offsets.shape[0] - 1
    tokens = np.zeros(nb, np.int64)
    squares = np.zeros(nb, np.float64)
    src_tokens = np.zeros(num_sources, np.int64)
    src_examples = np.zeros(num_sources, np.int64)
    for b in range(nb):
        for k in range(batch_offsets[b], batch_offsets[b + 1]):
            e = order[k]
            v = lengths[e]
            tokens[b] += v
            squares[b] += float(v) * float(v)
            src_tokens[groups[e]] += v
            src_examples[groups[e]] += 1
    return tokens, squares, src_tokens, src_examples
