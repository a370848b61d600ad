"""numba kernels of the pipeline: copy packed pieces into rows, reorder CSR rows."""

from __future__ import annotations

import numpy as np
from numba import njit


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


@njit(cache=True)
def copy_segments(out, values, src, dst, lengths):  # pragma: no cover - compiled
    """``out[dst[k]:dst[k] + lengths[k]] = values[src[k]:src[k] + lengths[k]]`` for every segment k."""
    for k in range(lengths.shape[0]):
        s = src[k]
        d = dst[k]
        for j in range(lengths[k]):
            out[d + j] = values[s + j]
