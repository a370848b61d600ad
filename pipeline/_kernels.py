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


@njit(cache=True, inline="always")
def _string_byte(c, escaped):  # pragma: no cover - compiled
    """One byte inside a JSON string: ``(still inside it, the next byte is escaped)``."""
    if escaped:
        return 1, 0
    if c == 92:  # backslash
        return 1, 1
    return (0, 0) if c == 34 else (1, 0)  # a quote ends the string


@njit(cache=True)
def json_array_to_lines(buf, state, max_depth):  # pragma: no cover - compiled
    """Rewrite one block of a JSON array file, in place, into JSON Lines (same length, byte for byte).

    Outside strings: newlines become spaces, the array's ``[`` / ``]`` spaces, the commas between
    its elements newlines, so each element ends up on a line of its own.  ``state`` carries across
    blocks: ``[depth, in_string, escaped, elements, error_at, bad_byte, too_deep]``; ``error_at`` is
    set to the element index where the array holds something other than an object (``-1`` while all
    is well), or ``-2`` for text after the closing ``]``; ``too_deep`` to 1 (and ``error_at`` to the
    element) where an element nests more than ``max_depth`` levels of ``[`` / ``{``.
    """
    depth, in_string, escaped, elements = state[0], state[1], state[2], state[3]
    for i in range(buf.shape[0]):
        c = buf[i]
        if in_string:
            in_string, escaped = _string_byte(c, escaped)
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
            if depth > max_depth + 1:  # the array itself is depth 1
                state[4], state[6] = elements - 1, 1
                break
        elif c == 125 or c == 93:
            depth -= 1
    state[0], state[1], state[2], state[3] = depth, in_string, escaped, elements


@njit(cache=True, nogil=True)  # runs on Arrow's reader thread: others go on meanwhile
def json_lines_depth(buf, state, max_depth):  # pragma: no cover - compiled
    """Scan one block of a JSON Lines file for a value nested more than ``max_depth`` levels deep.

    Arrow's JSON parser recurses once per level and overflows its stack long before it reports an
    error, so too deep a row must be caught before Arrow sees it.  Counts ``[`` / ``{`` outside
    strings (escapes honoured); a newline ends a row and resets the count.  ``state`` carries across
    blocks: ``[depth, in_string, escaped, line, too_deep_line]``; ``line`` counts the newlines seen,
    ``too_deep_line`` is set to the 0-based line of the first too deep row (``-1`` while all is well).
    """
    depth, in_string, escaped, line = state[0], state[1], state[2], state[3]
    for i in range(buf.shape[0]):
        c = buf[i]
        if c == 10:
            depth, in_string, escaped, line = 0, 0, 0, line + 1
        elif in_string:
            in_string, escaped = _string_byte(c, escaped)
        elif c == 34:
            in_string = 1
        elif c == 123 or c == 91:
            depth += 1
            if depth > max_depth:
                state[4] = line
                break
        elif c == 125 or c == 93:
            depth -= 1
    state[0], state[1], state[2], state[3] = depth, in_string, escaped, line


@njit(cache=True, nogil=True)  # runs on Arrow's reader thread: others go on meanwhile
def utf8_scan(buf, state):  # pragma: no cover - compiled
    """Check one block of a text file is valid UTF-8 (RFC 3629: no overlong forms, no surrogates).

    Arrow's readers can tell that a column is not UTF-8 but not where the file is wrong; this finds
    the place once they have said so.  ``state`` carries across
    blocks: ``[need, lo, hi, offset, line, bad_offset, bad_line, lead]``: continuation bytes still
    needed and the range of the next one, bytes and newlines seen so far, the byte offset and 0-based
    line of the first invalid character (``-1`` while all is well), and where the current one starts.
    """
    need, lo, hi, offset, line, lead = state[0], state[1], state[2], state[3], state[4], state[7]
    for i in range(buf.shape[0]):
        c = buf[i]
        if c < 0x80 and not need:  # ASCII, the common case, first
            if c == 10:
                line += 1
            continue
        if need:
            if c < lo or c > hi:  # the character that this byte should continue is invalid
                state[5], state[6] = lead, line
                break
            need, lo, hi = need - 1, 0x80, 0xBF
            continue
        lead = offset + i
        if 0xC2 <= c <= 0xDF:
            need = 1
        elif 0xE0 <= c <= 0xEF:
            need = 2
            lo = 0xA0 if c == 0xE0 else 0x80
            hi = 0x9F if c == 0xED else 0xBF
        elif 0xF0 <= c <= 0xF4:
            need = 3
            lo = 0x90 if c == 0xF0 else 0x80
            hi = 0x8F if c == 0xF4 else 0xBF
        else:
            state[5], state[6] = offset + i, line
            break
    state[0], state[1], state[2], state[3], state[4], state[7] = need, lo, hi, offset + buf.shape[0], line, lead


@njit(cache=True, nogil=True)  # runs on Arrow's reader thread: others go on meanwhile
def csv_quoted_breaks(buf, state, delimiter, quote, escape):  # pragma: no cover - compiled
    """Count CSV records whose quoted fields hold a line break, as Arrow's CSV parser splits them.

    Legal CSV, but also what an unterminated quote looks like: it swallows the rows up to the next
    quote.  ``escape`` is -1 for none.  ``state`` carries across blocks: ``[where, marked, count]``;
    ``where`` is 0 at a field's start, 1 inside a quoted field, 2 in an unquoted one, 3 just after a
    quote inside a quoted field, 4 / 5 after an escape inside a quoted / unquoted field.
    """
    where, marked, count = state[0], state[1], state[2]
    for i in range(buf.shape[0]):
        c = buf[i]
        if where == 4 or where == 5:  # the escaped byte is taken as it is
            if c == 10 or c == 13:
                marked = 1
            where = 1 if where == 4 else 2
        elif where == 1:
            if c == quote:
                where = 3
            elif c == escape:
                where = 4
            elif c == 10 or c == 13:
                marked = 1
        elif c == 10:  # outside quotes: the record ends
            count += marked
            where, marked = 0, 0
        elif where == 3 and c == quote:  # a doubled quote
            where = 1
        elif c == delimiter:
            where = 0
        elif where == 0 and c == quote:
            where = 1
        elif c == escape:
            where = 5
        else:
            where = 2
    state[0], state[1], state[2] = where, marked, count



@njit(cache=True)
def deficit_order(members, starts, tokens):  # pragma: no cover - compiled
    """Greedy deficit order of rows: ``members[starts[g]:starts[g + 1]]`` are group ``g``'s rows in
    order, ``tokens[r, s]`` row ``r``'s tokens of source ``s``. Each step takes the head row of the
    group that leaves the running per-source totals closest (squared error) to the window's own
    shares, so every prefix of the rows holds about the window's mix."""
    n_rows, n_src = tokens.shape
    share = tokens.sum(axis=0) / max(tokens.sum(), 1.0)
    emitted = np.zeros(n_src)
    pos = starts[:-1].copy()
    out = np.empty(n_rows, np.int64)
    for i in range(n_rows):
        best, best_score = -1, np.inf
        for g in range(pos.shape[0]):
            if pos[g] == starts[g + 1]:
                continue
            r = members[pos[g]]
            total = emitted.sum() + tokens[r].sum()
            score = 0.0
            for s in range(n_src):
                d = emitted[s] + tokens[r, s] - share[s] * total
                score += d * d
            if score < best_score:
                best, best_score = g, score
        r = members[pos[best]]
        pos[best] += 1
        emitted += tokens[r]
        out[i] = r
    return out
