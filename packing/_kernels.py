"""Numba kernels for bin packing.

Every packer takes an int64 array of item lengths (all in ``[1, capacity]``, validated by the
caller) and returns a CSR packing ``(perm, offsets)``: ``perm`` lists item positions bin by bin and
``offsets[b]:offsets[b + 1]`` is bin ``b``'s slice of ``perm``.

Memory is O(items + longest item), never O(capacity): structures indexed by a token count span
``[0, top]`` with ``top`` the longest item (a bin with more room than that fits every item, and
there is at most one such bin at a time, kept aside), so ``max_tokens=1e9`` costs what 1e4 does.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import leading_zeros, trailing_zeros


@njit(cache=True)
def _next_pow2(x):
    p = 1
    while p < x:
        p *= 2
    return p


@njit(cache=True)
def longest(lengths):
    top = 0
    for i in range(lengths.shape[0]):
        top = max(top, lengths[i])
    return top


@njit(cache=True)
def counting_sort_desc(lengths, top):
    """Stable sort by decreasing length (``top`` >= every length): ``(positions, sorted lengths)``."""
    out = np.empty(lengths.shape[0], np.int64)
    return out, sort_desc_into(lengths, top, out)


@njit(cache=True)
def sort_desc_into(lengths, top, out):
    """``counting_sort_desc`` writing the positions into ``out`` (any integer dtype wide enough for
    ``n``: int32 halves the biggest temporaries); returns the sorted lengths.

    A counting sort, O(n + top), when ``top`` is small next to n; a stable merge sort otherwise
    (same order, O(n) memory whatever the lengths)."""
    n = lengths.shape[0]
    if top > 4 * n + 1024:
        out[:] = np.argsort(-lengths, kind="mergesort")
        return lengths[out].astype(np.int64)
    starts = np.zeros(top + 2, np.int64)
    for i in range(n):
        starts[top - lengths[i] + 1] += 1
    for v in range(1, top + 2):
        starts[v] += starts[v - 1]
    values = np.empty(n, np.int64)
    for key in range(top + 1):
        values[starts[key] : starts[key + 1]] = top - key
    for i in range(n):
        key = top - lengths[i]
        out[starts[key]] = i
        starts[key] += 1
    return values


def index_dtype(n: int):
    """The narrowest of int32 / int64 that indexes ``n`` items or bins (the kernels' temporaries)."""
    return np.int32 if n < 2**31 else np.int64


@njit(cache=True)
def _csr_from_assignment(sequence, values, bin_of, num_bins):
    """Group ``sequence`` (item positions in placement order, lengths ``values``) by bin, keeping
    that order: ``(perm, offsets, perm_lengths)``."""
    n = sequence.shape[0]
    offsets = np.zeros(num_bins + 1, np.int64)
    for k in range(n):
        offsets[bin_of[k] + 1] += 1
    for b in range(num_bins):
        offsets[b + 1] += offsets[b]
    cursor = offsets[:-1].copy()
    perm = np.empty(n, np.int64)
    perm_lengths = np.empty(n, np.int64)
    for k in range(n):
        b = bin_of[k]
        perm[cursor[b]] = sequence[k]
        perm_lengths[cursor[b]] = values[k]
        cursor[b] += 1
    return perm, offsets, perm_lengths


# --- best fit: a bitset hierarchy over remaining capacity ----------------------------------------
# Bit r of level 0 says whether some open bin has exactly r tokens free; bit w of level k + 1 says
# whether word w of level k is non-zero.  Bins with the same free space sit on a stack (head[r],
# below[bin]).  Best fit for an item of length s is the lowest set bit >= s: a few word operations
# per level (a 64-ary segment tree), so O(log_64 capacity) per item.

_FULL = np.uint64(0xFFFFFFFFFFFFFFFF)


@njit(cache=True)
def new_bitset(capacity):
    """Flat words of all levels and each level's start: ``(words, level_starts)``."""
    sizes = []
    n = capacity + 1
    while True:
        words = (n + 63) // 64
        sizes.append(words)
        if words == 1:
            break
        n = words
    starts = np.zeros(len(sizes) + 1, np.int64)
    for i in range(len(sizes)):
        starts[i + 1] = starts[i] + sizes[i]
    return np.zeros(starts[-1], np.uint64), starts


@njit(cache=True)
def _bit_set(words, starts, r):
    for level in range(starts.shape[0] - 1):
        w = starts[level] + (r >> 6)
        before = words[w]
        words[w] = before | (np.uint64(1) << np.uint64(r & 63))
        if before != 0:
            return
        r >>= 6


@njit(cache=True)
def _bit_clear(words, starts, r):
    for level in range(starts.shape[0] - 1):
        w = starts[level] + (r >> 6)
        after = words[w] & ~(np.uint64(1) << np.uint64(r & 63))
        words[w] = after
        if after != 0:
            return
        r >>= 6


@njit(cache=True)
def _bit_first_at_least(words, starts, s):
    """Lowest set bit >= s at level 0, or -1."""
    levels = starts.shape[0] - 1
    level = 0
    pos = s
    while level < levels:
        w = pos >> 6
        if starts[level] + w >= starts[level + 1]:
            return -1
        m = words[starts[level] + w] & (_FULL << np.uint64(pos & 63))
        if m != 0:
            pos = (w << 6) + np.int64(trailing_zeros(m))
            while level > 0:
                level -= 1
                pos = (pos << 6) + np.int64(trailing_zeros(words[starts[level] + pos]))
            return pos
        pos = w + 1
        level += 1
    return -1


@njit(cache=True)
def _bit_last_at_most(words, starts, s):
    """Highest set bit <= s at level 0, or -1."""
    levels = starts.shape[0] - 1
    level = 0
    pos = s
    while level < levels:
        if pos < 0:
            return -1
        w = pos >> 6
        m = words[starts[level] + w] & (_FULL >> np.uint64(63 - (pos & 63)))
        if m != 0:
            pos = (w << 6) + 63 - np.int64(leading_zeros(m))
            while level > 0:
                level -= 1
                pos = (pos << 6) + 63 - np.int64(leading_zeros(words[starts[level] + pos]))
            return pos
        pos = w - 1
        level += 1
    return -1


@njit(cache=True)
def _push(words, starts, head, below, above, r, b):
    """Put bin ``b`` on the stack of bins with ``r`` tokens free."""
    top = head[r]
    below[b] = top
    above[b] = -1
    if top >= 0:
        above[top] = b
    else:
        _bit_set(words, starts, r)
    head[r] = b


@njit(cache=True)
def _unlink(words, starts, head, below, above, r, b):
    """Take bin ``b`` off the stack of bins with ``r`` tokens free."""
    up = above[b]
    down = below[b]
    if up >= 0:
        below[up] = down
    else:
        head[r] = down
        if down < 0:
            _bit_clear(words, starts, r)
    if down >= 0:
        above[down] = up


@njit(cache=True)
def _insert_by_stamp(words, starts, head, below, above, stamp, r, b):
    """Put bin ``b`` into the stack of bins with ``r`` tokens free where its push time ``stamp[b]``
    puts it (stacks are newest first): the place it would hold had it always been indexed."""
    node = head[r]
    prev = -1
    while node >= 0 and stamp[node] > stamp[b]:
        prev = node
        node = below[node]
    below[b] = node
    above[b] = prev
    if node >= 0:
        above[node] = b
    if prev >= 0:
        below[prev] = b
    else:
        head[r] = b
        _bit_set(words, starts, r)


@njit(cache=True)
def best_fit_decreasing(lengths, capacity, index):
    """Best-fit decreasing: sort, then best fit through the free-space bitset over ``[0, top]``.

    A bin with more than ``top`` tokens free (``big``) fits any item and is the worst fit of all;
    only the newest bin can be one (a bin opens only when nothing fits), so it waits aside.
    Item and bin indices are kept in ``index``'s dtype (``index_dtype(n)``)."""
    n = lengths.shape[0]
    top = longest(lengths)
    sequence = np.empty(n, index.dtype)
    values = sort_desc_into(lengths, top, sequence)
    words, starts = new_bitset(top)
    head = np.full(top + 1, -1, index.dtype)
    below = np.empty(n, index.dtype)
    above = np.empty(n, index.dtype)
    bin_of = np.empty(n, index.dtype)
    num_bins = 0
    big = -1
    big_free = 0
    for k in range(n):
        s = values[k]
        r = _bit_first_at_least(words, starts, s)
        if r >= 0:
            b = head[r]
            _unlink(words, starts, head, below, above, r, b)
            left = r - s
        elif big >= 0:
            b = big
            big = -1
            left = big_free - s
        else:
            b = num_bins
            num_bins += 1
            left = capacity - s
        bin_of[k] = b
        if left > top:
            big = b
            big_free = left
        elif left > 0:
            _push(words, starts, head, below, above, left, b)
    return _csr_from_assignment(sequence, values, bin_of, num_bins)


# --- bin filling with exact completion ---------------------------------------------------------
# Fill one bin at a time: the longest item left, then the longest item that still fits, and so
# on (this alone is exactly FFD).  When the next greedy item would leave a gap no item left can
# use, look for two items that close the gap exactly instead; the waste FFD/BFD leave behind is
# mostly such gaps.  Sizes are kept in a bitset over lengths with per-size counts, so "longest item
# <= g" is a predecessor query and each item costs O(log_64 capacity) plus the pair search.


@njit(cache=True)
def exact_fill(lengths, capacity):
    """Largest-first bin filling with exact two-item completion: ``(perm, offsets, perm_lengths)``."""
    n = lengths.shape[0]
    top = longest(lengths)
    sequence, values = counting_sort_desc(lengths, top)
    count = np.zeros(top + 1, np.int64)
    cursor = np.zeros(top + 1, np.int64)
    words, starts = new_bitset(top)
    for k in range(n - 1, -1, -1):  # cursor[v] ends at the first position of size v
        v = values[k]
        if count[v] == 0:
            _bit_set(words, starts, v)
        count[v] += 1
        cursor[v] = k
    perm = np.empty(n, np.int64)
    perm_lengths = np.empty(n, np.int64)
    offsets = np.empty(n + 1, np.int64)
    offsets[0] = 0
    out = 0
    num_bins = 0
    while out < n:
        v = _bit_last_at_most(words, starts, top)
        gap = capacity
        while v > 0:
            left = gap - v
            if left > 0 and left < _bit_first_at_least(words, starts, 1):
                # greedy would strand ``left`` tokens: try x + y == gap, x <= y, largest x first
                x = _bit_last_at_most(words, starts, min(gap // 2, top))
                while x > 0:
                    y = gap - x
                    if y > top:  # the partner would be longer than any item: no larger x either
                        x = -1
                        break
                    if (y != x and count[y] > 0) or (y == x and count[x] > 1):
                        break
                    x = _bit_last_at_most(words, starts, x - 1)
                if x > 0:
                    for take in (gap - x, x):
                        perm[out] = sequence[cursor[take]]
                        perm_lengths[out] = take
                        out += 1
                        cursor[take] += 1
                        count[take] -= 1
                        if count[take] == 0:
                            _bit_clear(words, starts, take)
                    gap = 0
                    break
            perm[out] = sequence[cursor[v]]
            perm_lengths[out] = v
            out += 1
            cursor[v] += 1
            count[v] -= 1
            if count[v] == 0:
                _bit_clear(words, starts, v)
            gap = left
            v = _bit_last_at_most(words, starts, min(gap, top)) if gap > 0 else -1
        num_bins += 1
        offsets[num_bins] = out
    return perm, offsets[: num_bins + 1].copy(), perm_lengths


# --- first fit: a max tree over bins ----------------------------------------------------------
# Leaf b holds bin b's free tokens; bins not opened yet hold the full capacity, so the leftmost
# leaf with room is either an open bin (first fit) or the next new bin.


@njit(cache=True)
def first_fit(sequence, values, capacity, max_bins):
    """First fit over ``sequence`` (item positions in order, lengths ``values``); O(log bins) each."""
    n = sequence.shape[0]
    size = _next_pow2(max(max_bins, 1))
    tree = np.full(2 * size, capacity, np.int64)
    bin_of = np.empty(n, sequence.dtype)  # bins <= items: the positions' width fits
    num_bins = 0
    for k in range(n):
        s = values[k]
        i = 1
        while i < size:
            if tree[2 * i] >= s:
                i = 2 * i
            else:
                i = 2 * i + 1
        b = i - size
        bin_of[k] = b
        if b >= num_bins:
            num_bins = b + 1
        tree[i] -= s
        i >>= 1
        while i >= 1:
            v = max(tree[2 * i], tree[2 * i + 1])
            if tree[i] == v:
                break
            tree[i] = v
            i >>= 1
    return _csr_from_assignment(sequence, values, bin_of, num_bins)


@njit(cache=True)
def next_fit(lengths, capacity):
    """Next fit: items in input order, a new bin whenever the current one is too full."""
    n = lengths.shape[0]
    offsets = np.empty(n + 1, np.int64)
    offsets[0] = 0
    num_bins = 0
    used = capacity
    for i in range(n):
        s = lengths[i]
        if used + s > capacity:
            offsets[num_bins] = i
            num_bins += 1
            used = 0
        used += s
    offsets[num_bins] = n
    return np.arange(n, dtype=np.int64), offsets[: num_bins + 1].copy(), lengths.copy()


@njit(cache=True)
def concat_chunk(lengths, capacity):
    """Cut the concatenation of all items into rows of exactly ``capacity`` tokens.

    Returns ``(items, starts, piece_lengths, offsets)``: every piece is a slice
    ``[start, start + piece_length)`` of one item, rows are CSR over the pieces.
    """
    n = lengths.shape[0]
    total = 0
    for i in range(n):
        total += lengths[i]
    num_rows = (total + capacity - 1) // capacity
    max_pieces = n + num_rows
    items = np.empty(max_pieces, np.int64)
    starts = np.empty(max_pieces, np.int64)
    pieces = np.empty(max_pieces, np.int64)
    offsets = np.empty(num_rows + 1, np.int64)
    offsets[0] = 0
    p = 0
    row = 0
    used = 0
    for i in range(n):
        start = 0
        left = lengths[i]
        while left > 0:
            take = min(left, capacity - used)
            items[p] = i
            starts[p] = start
            pieces[p] = take
            p += 1
            start += take
            left -= take
            used += take
            if used == capacity:
                row += 1
                offsets[row] = p
                used = 0
    if used > 0:
        row += 1
        offsets[row] = p
    return items[:p].copy(), starts[:p].copy(), pieces[:p].copy(), offsets[: row + 1].copy()


# --- streaming best fit over windows ----------------------------------------------------------


@njit(cache=True)
def window_step(
    window_lengths,
    window_ids,
    capacity,
    top,
    big,
    stamp,
    clock,
    close_below,
    oldest_kept,
    now,
    flush,
    words,
    starts,
    head,
    below,
    above,
    free,
    opened,
    is_open,
    first_slot,
    last_slot,
    free_bins,
    n_free_bins,
    slot_id,
    slot_len,
    slot_next,
    free_slots,
    n_free_slots,
):
    """Best-fit one window (sorted decreasing) into the open bins, then close the bins that are done.

    The free-space index covers ``[0, top]`` (``top`` >= every length so far); the one bin with
    more room than that is ``big`` (-1: none), and ``stamp`` / ``clock`` order pushes in time.
    A bin is closed when its free space is below ``close_below`` (it cannot take the shortest item
    seen so far), when it was opened before window ``oldest_kept``, or when ``flush`` is set.  The
    caller guarantees at least ``len(window)`` free bins and free slots.  Closed bins are returned
    CSR-shaped (ids, lengths, offsets) in bin-pool order, then the counters, ``big`` and ``clock``.
    """
    sequence, values = counting_sort_desc(window_lengths, longest(window_lengths))
    for k in range(sequence.shape[0]):
        j = sequence[k]
        s = values[k]
        r = _bit_first_at_least(words, starts, s)
        if r < 0 and big >= 0:
            b = big
            big = -1
            left = free[b] - s
        elif r < 0:
            n_free_bins -= 1
            b = free_bins[n_free_bins]
            is_open[b] = True
            opened[b] = now
            first_slot[b] = -1
            last_slot[b] = -1
            left = capacity - s
        else:
            b = head[r]
            _unlink(words, starts, head, below, above, r, b)
            left = r - s
        free[b] = left
        n_free_slots -= 1
        slot = free_slots[n_free_slots]
        slot_id[slot] = window_ids[j]
        slot_len[slot] = s
        slot_next[slot] = -1
        if last_slot[b] >= 0:
            slot_next[last_slot[b]] = slot
        else:
            first_slot[b] = slot
        last_slot[b] = slot
        clock += 1
        stamp[b] = clock
        if left > top:
            big = b
        else:
            _push(words, starts, head, below, above, left, b)

    n_closing = 0
    n_items = 0
    for b in range(is_open.shape[0]):
        if is_open[b] and (flush or free[b] < close_below or opened[b] < oldest_kept):
            n_closing += 1
            slot = first_slot[b]
            while slot >= 0:
                n_items += 1
                slot = slot_next[slot]
    out_ids = np.empty(n_items, np.int64)
    out_len = np.empty(n_items, np.int64)
    out_offsets = np.empty(n_closing + 1, np.int64)
    out_offsets[0] = 0
    p = 0
    c = 0
    for b in range(is_open.shape[0]):
        if is_open[b] and (flush or free[b] < close_below or opened[b] < oldest_kept):
            if b == big:
                big = -1
            else:
                _unlink(words, starts, head, below, above, free[b], b)
            is_open[b] = False
            free_bins[n_free_bins] = b
            n_free_bins += 1
            slot = first_slot[b]
            while slot >= 0:
                out_ids[p] = slot_id[slot]
                out_len[p] = slot_len[slot]
                p += 1
                free_slots[n_free_slots] = slot
                n_free_slots += 1
                slot = slot_next[slot]
            c += 1
            out_offsets[c] = p
    return out_ids, out_len, out_offsets, n_free_bins, n_free_slots, big, clock


@njit(cache=True)
def widen_free_index(words, starts, head, below, above, stamp, free, big, top):
    """The free-space index rebuilt over ``[0, top]`` (a longer item arrived): the stacks keep
    their order, and the big bin joins its stack by push time if it no longer has more than
    ``top`` free.  Returns ``(words, starts, head, big)``."""
    new_words, new_starts = new_bitset(top)
    new_head = np.full(top + 1, -1, np.int64)
    for r in range(head.shape[0]):
        if head[r] >= 0:
            new_head[r] = head[r]
            _bit_set(new_words, new_starts, r)
    if big >= 0 and free[big] <= top:
        _insert_by_stamp(new_words, new_starts, new_head, below, above, stamp, free[big], big)
        big = -1
    return new_words, new_starts, new_head, big


@njit(cache=True)
def _at_least(v, suffix, x):
    """Count and sum of the sorted lengths ``v`` that are >= x."""
    i = np.searchsorted(v, x)
    return v.shape[0] - i, suffix[i]


@njit(cache=True)
def lower_bound_l2(lengths, capacity):
    """Martello-Toth L2 lower bound on the number of bins (every length in [1, capacity]).

    L2 = max over alpha in [0, capacity / 2] of a bound that, between two item sizes, only grows
    with alpha: the maximum is at alpha = 0 or at an item size, so only those are tried (sorted
    lengths and suffix sums: O(n log n) time, O(n) memory, whatever the capacity)."""
    n = lengths.shape[0]
    if n == 0:
        return 0
    v = np.sort(lengths)
    suffix = np.zeros(n + 1, np.int64)
    for i in range(n - 1, -1, -1):
        suffix[i] = suffix[i + 1] + v[i]
    half = capacity // 2  # lengths <= half fit two to a bin; lengths > half do not
    big_count, big_sum = _at_least(v, suffix, half + 1)
    best = 0
    i = 0
    alpha = 0
    while True:
        lo = max(alpha, 1)
        j1, j1_sum = _at_least(v, suffix, capacity - alpha + 1)  # J1: w > capacity - alpha
        j2_count = big_count - j1  # J2: half < w <= capacity - alpha
        j2_sum = big_sum - j1_sum
        ge_lo_count, ge_lo_sum = _at_least(v, suffix, lo)
        j3_sum = ge_lo_sum - big_sum  # J3: alpha <= w <= half
        spill = j3_sum - (j2_count * capacity - j2_sum)
        extra = 0
        if spill > 0:
            extra = (spill + capacity - 1) // capacity
        value = j1 + j2_count + extra
        if value > best:
            best = value
        while i < n and v[i] <= alpha:  # the next item size is the next alpha worth trying
            i += 1
        if i == n or v[i] > half:
            return best
        alpha = v[i]
