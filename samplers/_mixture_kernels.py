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
