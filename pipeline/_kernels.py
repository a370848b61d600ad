"""numba kernels of the pipeline: turn packed entries into flat token indices, reorder CSR rows."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def gather_index(item_offsets, starts, lengths):  # pragma: no cover - compiled
    """Flat positions of tokens ``[item_offsets[k] + starts[k], ... + lengths[k])`` for every entry k."""
    n = lengths.shape[0]
    total = 0
    for k in range(n):
        total += lengths[k]
    out = np.empty(total, np.int64)
    pos = 0
    for k in range(n):
        base = item_offsets[k] + starts[k]
        for j in range(lengths[k]):
            out[pos] = base + j
            pos += 1
    return out


@njit(cache=True)
def csr_take(offsets, rows):  # pragma: no cover - compiled
    """Entries of CSR rows ``rows`` in that order: ``(entry_index, new_offsets)``."""
    n = rows.shape[0]
    new_offsets = np.zeros(n + 1, np.int64)
    for i in range(n):
        r = rows[i]
        new_offsets[i + 1] = new_offsets[i] + offsets[r + 1] - offsets[r]
    out = np.empty(new_offsets[n], np.int64)
    for i in range(n):
        r = rows[i]
        base = new_offsets[i]
        for j in range(offsets[r + 1] - offsets[r]):
            out[base + j] = offsets[r] + j
    return out, new_offsets
