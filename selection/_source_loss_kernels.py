"""Numba kernel for :class:`packwise.selection.SourceLossTracker` on CPU: a packed batch's
per-source loss sums in one pass, with :func:`packwise.packing.example_losses`'s arithmetic."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def add_source_sums(tok, labels, seq, example_index, sources, sums):
    """Add each example's (float32 mean loss * supervised tokens, supervised tokens) into
    ``sums[:, source]`` (float64, in place), examples in order: the torch path's sums, bit for bit.

    ``tok`` (float32), ``labels`` and ``seq`` are the flattened token losses, labels (``-100``: not
    supervised) and segment ids; ``example_index[g]`` is segment ``g``'s example (-1: padding);
    examples ``>= len(sources)`` are left out.  Segment sums accumulate in float32 in token order,
    as ``index_add_`` does.
    """
    num_segments = example_index.shape[0]
    seg_sum = np.zeros(num_segments, np.float32)
    seg_cnt = np.zeros(num_segments, np.int64)
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for t in range(tok.shape[0]):
        g = seq[t]
        if g < 0 or g >= num_segments:
            raise ValueError("batch['seq_idx'] holds a segment id outside batch['example_index']; pass the collator's batch unchanged")
        if labels[t] != -100:
            seg_sum[g] += tok[t] * one
            seg_cnt[g] += 1
        else:
            seg_sum[g] += tok[t] * zero
    n = sources.shape[0]
    segment_of = np.full(n, -1, np.int64)
    for g in range(num_segments):
        e = example_index[g]
        if e >= 0 and e < n:
            segment_of[e] = g
    for e in range(n):
        g = segment_of[e]
        if g < 0:  # no segment: the torch path adds 0.0 and 0, which leaves the sums as they are
            continue
        count = seg_cnt[g]
        loss = seg_sum[g] / np.float32(max(count, 1))
        s = sources[e]
        sums[0, s] += np.float64(loss) * np.float64(count)
        sums[1, s] += np.float64(count)
