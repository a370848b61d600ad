"""numba kernels of the selection math: score scatter, grouping by thresholds, weighted sampling
without replacement.  Plain NumPy arrays in, plain NumPy arrays out; validation lives in the callers."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def scatter_scores(scores, seen, last_epoch, ids, values, epoch, momentum):
    """Record ``values`` for ``ids`` in order (a repeated id: the later row wins, after EMA).

    ``momentum`` 0 stores the last value; otherwise ``s <- m * v + (1 - m) * s`` once seen."""
    for j in range(ids.shape[0]):
        i = ids[j]
        v = values[j]
        if momentum > 0.0 and seen[i]:
            scores[i] = np.float32(momentum * v + (1.0 - momentum) * scores[i])
        else:
            scores[i] = np.float32(v)
        seen[i] = True
        last_epoch[i] = epoch


@njit(cache=True)
def seen_mean(scores, seen):
    """Mean score over seen examples (float64 accumulation) and how many were seen."""
    total = 0.0
    count = 0
    for i in range(scores.shape[0]):
        if seen[i]:
            total += scores[i]
            count += 1
    if count == 0:
        return 0.0, 0
    return total / count, count


@njit(cache=True)
def assign_groups(scores, seen, edges):
    """Group of every example: ``g`` if seen and ``score < edges[g]`` (first such edge), else -1.

    ``edges`` increase; -1 marks examples that are never pruned (unseen, or at/above the last edge)."""
    out = np.full(scores.shape[0], -1, np.int8)
    for i in range(scores.shape[0]):
        if not seen[i]:
            continue
        s = scores[i]
        for g in range(edges.shape[0]):
            if s < edges[g]:
                out[i] = g
                break
    return out


@njit(cache=True)
def bottom_k(keys, k):
    """Ids (ascending) of the ``k`` smallest ``keys`` (ties: lower id first) and the ``k+1``-th
    smallest key (``inf`` when ``k == len(keys)``).  O(N): one partition and one scan."""
    n = keys.shape[0]
    chosen = np.empty(k, np.int64)
    if k == 0:
        return chosen, np.inf if n == 0 else np.min(keys)
    if k >= n:
        for i in range(n):
            chosen[i] = i
        return chosen, np.inf
    part = np.partition(keys, k)
    kth = part[0]
    for j in range(1, k):
        if part[j] > kth:
            kth = part[j]
    tau = part[k]
    below = 0
    for i in range(n):
        if keys[i] < kth:
            below += 1
    ties = k - below
    c = 0
    for i in range(n):
        x = keys[i]
        if x < kth or (x == kth and ties > 0):
            if x == kth:
                ties -= 1
            chosen[c] = i
            c += 1
    return chosen, tau


@njit(cache=True)
def exponential_keys(log_weights, exponentials):
    """Log keys ``log(E_i) - log(w_i)``: the ``k`` smallest are a weighted sample without
    replacement (Efraimidis-Spirakis / Gumbel-top-k); ``w_i = 0`` gives ``+inf`` (never chosen)."""
    out = np.empty(log_weights.shape[0], np.float64)
    for i in range(log_weights.shape[0]):
        lw = log_weights[i]
        if lw == -np.inf:
            out[i] = np.inf
        else:
            out[i] = np.log(exponentials[i]) - lw
    return out


@njit(cache=True)
def inclusion_probabilities(log_weights, chosen, log_tau):
    """Conditional inclusion probability ``1 - exp(-w_i * tau)`` of each chosen id given the
    ``k+1``-th key: the Horvitz-Thompson denominator that makes the sample exactly unbiased."""
    out = np.empty(chosen.shape[0], np.float64)
    for j in range(chosen.shape[0]):
        if log_tau == np.inf:
            out[j] = 1.0
        else:
            out[j] = -np.expm1(-np.exp(log_weights[chosen[j]] + log_tau))
    return out


@njit(cache=True)
def check_batch(ids, values, table):
    """One pass over a training batch: each id's weight under the epoch plan, plus the first
    problem found as ``(code, row)``: 1 id out of range, 2 id not kept (weight 0), 3 loss not finite."""
    n = table.shape[0]
    out = np.empty(ids.shape[0], np.float32)
    for j in range(ids.shape[0]):
        i = ids[j]
        if i < 0 or i >= n:
            return out, 1, j
        w = table[i]
        if w == 0:
            return out, 2, j
        if not np.isfinite(values[j]):
            return out, 3, j
        out[j] = w
    return out, 0, -1
