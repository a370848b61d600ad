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


@njit(cache=True)
def json_array_to_lines(buf, state):  # pragma: no cover - compiled
    """Rewrite one block of a JSON array file, in place, into JSON Lines (same length, byte for byte).

    Outside strings: newlines become spaces, the array's ``[`` / ``]`` spaces, the commas between
    its elements newlines, so each element ends up on a line of its own.  ``state`` carries across
    blocks: ``[depth, in_string, escaped, elements, error_at, bad_byte]``; ``error_at`` is set to the
    element index where the array holds something other than an object (``-1`` while all is well),
    or ``-2`` for text after the closing ``]``.
    """
    depth, in_string, escaped, elements = state[0], state[1], state[2], state[3]
    for i in range(buf.shape[0]):
        c = buf[i]
        if in_string:
            if escaped:
                escaped = 0
            elif c == 92:  # backslash
                escaped = 1
            elif c == 34:  # quote
                in_string = 0
            continue
        if c == 10 or c == 13 or c == 32 or c == 9:
            if c == 10 or c == 13:
                buf[i] = 32
            continue
        if depth == 1:  # between the array's elements
            if c == 44:  # comma
                buf[i] = 10
                continue
            if c == 93:  # the closing bracket
                buf[i] = 32
                depth = -1
                continue
            if c != 123:  # an element that is not an object
                state[4], state[5] = elements, c
                break
            elements += 1
        elif depth == 0:
            if c != 91:  # readers check the first byte is "[" before calling
                state[4], state[5] = -2, c
                break
            buf[i] = 32
            depth = 1
            continue
        elif depth == -1:
            state[4], state[5] = -2, c
            break
        if c == 34:
            in_string = 1
        elif c == 123 or c == 91:
            depth += 1
        elif c == 125 or c == 93:
            depth -= 1
    state[0], state[1], state[2], state[3] = depth, in_string, escaped, elements
