"""Numba kernels behind ``PackedCollator``: one pass over the tokens of a packed batch.

A batch is laid out as *segments*: contiguous runs ``[col, col + span)`` of one row, in row-major
order, that together cover every slot of the ``[rows, width]`` buffer.  A segment holds one
example's ``length`` real tokens followed by ``span - length`` padding tokens (context-parallel
padding), or is a pure padding segment (``length == 0``) that fills a row's tail.
"""

from __future__ import annotations

import numpy as np
from numba import njit

IGNORE = -100


@njit(cache=True)
def fill_tokens(
    ids,
    labels,
    weights,
    src_start,
    seg_row,
    seg_col,
    seg_len,
    seg_span,
    seg_src,
    position_start,
    pad_id,
    out_ids,
    out_labels,
    out_pos,
    out_seq,
    out_weight,
):
    """Write every segment into the output rows; return the supervised-token count per segment.

    ``ids``/``labels`` are the examples' tokens concatenated (``labels`` may be ``ids`` itself),
    example ``e`` starting at ``src_start[e]``; ``seg_src[s]`` is segment ``s``'s example or -1.
    Labels get -100 at each segment's first token (nothing predicts across a boundary) and on
    padding; positions restart at ``position_start`` per segment and run on through its padding.
    """
    num_segments = seg_row.shape[0]
    supervised = np.zeros(num_segments, np.int64)
    for s in range(num_segments):
        r = seg_row[s]
        c = seg_col[s]
        n = seg_len[s]
        e = seg_src[s]
        o = src_start[e] if e >= 0 else 0
        w = weights[e] if e >= 0 else 0.0
        count = 0
        for t in range(seg_span[s]):
            j = c + t
            out_pos[r, j] = position_start + t
            out_seq[r, j] = s
            if t < n:
                out_ids[r, j] = ids[o + t]
                lab = labels[o + t] if t > 0 else IGNORE
                out_labels[r, j] = lab
                out_weight[r, j] = w
                if lab != IGNORE:
                    count += 1
            else:
                out_ids[r, j] = pad_id
                out_labels[r, j] = IGNORE
                out_weight[r, j] = 0.0
        supervised[s] = count
    return supervised


@njit(cache=True)
def flex_blocks(seq, block):
    """Block-sparse layout of the document-causal mask over segment ids ``seq`` (``[rows, width]``,
    non-decreasing along each row) for FlexAttention's ``BlockMask.from_kv_blocks``.

    Query block ``qb`` sees kv blocks from the one where its first token's segment starts up to
    itself.  A block below the diagonal whose kv and query tokens all share one segment is *full*
    (no mask_mod call needed); the others are *partial*.  Returns ``(partial_num, partial_idx,
    full_num, full_idx)`` shaped ``[rows, 1, nq]`` and ``[rows, 1, nq, nq]`` (int32).
    """
    rows, width = seq.shape
    nq = (width + block - 1) // block
    partial_num = np.zeros((rows, 1, nq), np.int32)
    partial_idx = np.zeros((rows, 1, nq, nq), np.int32)
    full_num = np.zeros((rows, 1, nq), np.int32)
    full_idx = np.zeros((rows, 1, nq, nq), np.int32)
    for r in range(rows):
        # first block holding each token's segment start: seg_first_block[t] for t = segment start
        for qb in range(nq):
            q0 = qb * block
            q1 = min(q0 + block, width) - 1
            seg0 = seq[r, q0]
            # walk back to the block where segment seg0 starts
            kb0 = qb
            while kb0 > 0 and seq[r, kb0 * block - 1] == seg0:
                kb0 -= 1
            np_ = 0
            nf = 0
            for kb in range(kb0, qb + 1):
                k0 = kb * block
                if kb < qb and seq[r, k0] == seq[r, q1]:
                    full_idx[r, 0, qb, nf] = kb
                    nf += 1
                else:
                    partial_idx[r, 0, qb, np_] = kb
                    np_ += 1
            partial_num[r, 0, qb] = np_
            full_num[r, 0, qb] = nf
    return partial_num, partial_idx, full_num, full_idx


@njit(cache=True)
def fill_block_causal(seq, out):
    """Set ``out[r, 0, q, k]`` (a zeroed bool ``[rows, 1, width, width]`` array) where ``k <= q`` in
    the same segment; segments are contiguous runs of ``seq`` (``[rows, width]``).  Touches only
    the allowed entries (sum of squared segment lengths / 2), not all ``width**2``."""
    rows, width = seq.shape
    for r in range(rows):
        start = 0
        for q in range(width):
            if q > 0 and seq[r, q] != seq[r, q - 1]:
                start = q
            for k in range(start, q + 1):
                out[r, 0, q, k] = True
