"""``PackedCollator``: a list of examples -> one packed batch that any attention backend reads right.

Packing only pays if the model computes exactly what it would on each sequence alone, so the
collator emits, besides ``input_ids``/``labels``/``position_ids``, whatever the chosen attention
backend needs to keep sequences apart (``layout``), under the key names Hugging Face models take.
torch is imported inside the functions: ``import packwise.packing`` stays torch-free.
"""

from __future__ import annotations

from itertools import chain
from typing import Any, Iterable, Sequence

import numpy as np

from . import _collate_kernels
from .core import first_over, pack

LAYOUTS: tuple[str, ...] = ("position_ids", "flash", "seq_idx", "sdpa", "flex")
SHAPES: tuple[str, ...] = ("padding_free", "rows")
IGNORE_INDEX = -100


class DocumentCausalMask:
    """FlexAttention ``mask_mod``: token ``q`` sees ``kv`` iff same segment and ``kv <= q``.

    A class, not a closure, so a ``BlockMask`` built in a DataLoader worker pickles back.

    Example:
        >>> import torch
        >>> m = DocumentCausalMask(torch.tensor([[0, 0, 1]]))
        >>> bool(m(0, 0, torch.tensor(1), torch.tensor(0))), bool(m(0, 0, torch.tensor(2), torch.tensor(1)))
        (True, False)
    """

    def __init__(self, seq_idx):
        self.seq_idx = seq_idx

    def __call__(self, b, h, q_idx, kv_idx):
        return (self.seq_idx[b, q_idx] == self.seq_idx[b, kv_idx]) & (q_idx >= kv_idx)


def block_causal_mask(seq_idx):
    """4-D boolean ``[rows, 1, width, width]`` mask for SDPA/eager: True where attention is allowed.

    ``seq_idx`` (``[rows, width]``) holds contiguous segments, as the collator emits them.  The mask
    is ``width**2`` bytes per row: meant for rows of a few thousand tokens, not a 100k-token row.

    Example:
        >>> import torch
        >>> block_causal_mask(torch.tensor([[0, 0, 1]]))[0, 0].int().tolist()
        [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    """
    import torch

    seq_np = seq_idx.cpu().numpy() if isinstance(seq_idx, torch.Tensor) else np.asarray(seq_idx)
    if seq_np.ndim != 2:
        raise ValueError(f"seq_idx must be [rows, width], got shape {tuple(seq_np.shape)}")
    rows, width = seq_np.shape
    out = np.zeros((rows, 1, width, width), np.bool_)  # calloc: untouched pages stay free until read
    _collate_kernels.fill_block_causal(np.ascontiguousarray(seq_np), out)
    return torch.from_numpy(out)


def flex_block_mask(seq_idx, block_size: int = 128):
    """FlexAttention ``BlockMask`` for segment ids ``seq_idx`` (``[rows, width]``, non-decreasing per row).

    The block layout is computed directly from the segment boundaries (a numba pass, no dense
    ``width x width`` mask), with a document-ids + causal ``mask_mod`` for the partial blocks.

    Example:
        >>> import torch
        >>> bm = flex_block_mask(torch.tensor([[0, 0, 1, 1]]), block_size=2)
        >>> bm.to_dense()[0, 0].tolist()
        [[1, 0], [0, 1]]
    """
    import torch
    from torch.nn.attention.flex_attention import BlockMask

    # one storage for the mask_mod (never a second tensor aliasing the same memory: such aliases
    # come back corrupted from a DataLoader worker)
    seq_t = seq_idx if isinstance(seq_idx, torch.Tensor) else torch.as_tensor(np.array(seq_idx, np.int32))
    if seq_t.ndim != 2:
        raise ValueError(f"seq_idx must be [rows, width], got shape {tuple(seq_t.shape)}")
    seq_np = seq_t.cpu().numpy()
    width = seq_np.shape[-1]
    pn, pi, fn, fi = _collate_kernels.flex_blocks(np.ascontiguousarray(seq_np, dtype=np.int32), int(block_size))
    return BlockMask.from_kv_blocks(
        torch.from_numpy(pn),
        torch.from_numpy(pi),
        torch.from_numpy(fn),
        torch.from_numpy(fi),
        BLOCK_SIZE=int(block_size),
        mask_mod=DocumentCausalMask(seq_t),
        seq_lengths=(width, width),
    )


def _normalize_layout(layout: str | Iterable[str]) -> frozenset[str]:
    names = (layout,) if isinstance(layout, str) else tuple(layout)
    if not names:
        raise ValueError(f"layout must name at least one of {LAYOUTS}, got an empty {type(layout).__name__}")
    for name in names:
        if name not in LAYOUTS:
            raise ValueError(f"layout {name!r} is unknown; choose one or more of {LAYOUTS}")
    chosen = frozenset(names)
    if {"sdpa", "flex"} <= chosen:
        raise ValueError(
            "layout: 'sdpa' and 'flex' both fill attention_mask; pick the one your attention backend uses"
        )
    return chosen


def _positive_int(value, name: str, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _flatten(examples: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ``example[key]`` of every example: ``(int64 tokens, int64 lengths)``."""
    values = []
    for i, ex in enumerate(examples):
        try:
            values.append(ex[key])
        except (KeyError, TypeError):
            raise ValueError(
                f"examples[{i}] has no {key!r}: each example must be a dict with an 'input_ids' list/array/tensor"
            ) from None
    # fast path for lists of Python ints (what `datasets` yields); anything else, or a list whose
    # first entry is not an int, goes through NumPy for an exact dtype/shape check
    if all(type(v) is list and (not v or isinstance(v[0], (int, np.integer))) for v in values):
        lengths = np.fromiter(map(len, values), np.int64, len(values))
        try:
            return np.fromiter(chain.from_iterable(values), np.int64, int(lengths.sum())), lengths
        except (TypeError, ValueError):
            pass  # a nested or non-numeric entry: the checks below name the example
    arrays = []
    for i, v in enumerate(values):
        try:
            a = v.numpy() if hasattr(v, "numpy") and not isinstance(v, np.ndarray) else np.asarray(v)
        except (TypeError, ValueError) as err:
            raise ValueError(f"examples[{i}][{key!r}] is not a flat sequence of token ids ({err})") from None
        if a.ndim != 1:
            raise ValueError(f"examples[{i}][{key!r}] must be 1-D, got shape {tuple(a.shape)}; pass one sequence per example")
        if a.shape[0] and a.dtype.kind not in "iu":
            raise ValueError(f"examples[{i}][{key!r}] must hold integers, got dtype {a.dtype}; cast token ids to int64")
        arrays.append(a)
    lengths = np.fromiter((a.shape[0] for a in arrays), np.int64, len(arrays))
    return np.concatenate(arrays).astype(np.int64, copy=False), lengths


def _as_array(value) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") and not isinstance(value, np.ndarray) else np.asarray(value)


def _packed_lengths(ex: dict, i: int, position_start: int) -> np.ndarray | None:
    """Lengths of the sequences an already-packed example holds (TRL ``pack_dataset``'s
    ``seq_lengths``, or ``position_ids`` that restart), or None for a plain example. Why: a packed
    row collated as one sequence would let its documents attend to each other."""
    if not isinstance(ex, dict) or "input_ids" not in ex:
        return None  # _flatten names what is wrong with it
    has_lengths, has_pos = "seq_lengths" in ex, "position_ids" in ex
    if not (has_lengths or has_pos):
        return None
    n = len(_as_array(ex["input_ids"]))
    from_pos = None
    if has_pos:
        pos = _as_array(ex["position_ids"]).reshape(-1).astype(np.int64)
        if pos.shape[0] != n:
            raise ValueError(
                f"examples[{i}]: position_ids has {pos.shape[0]} entries but input_ids has {n}; "
                f"they must align token for token (or drop position_ids and give seq_lengths)"
            )
        starts = np.flatnonzero(np.diff(pos) != 1) + 1
        bad = [int(t) for t in np.concatenate([[0], starts]) if pos[t] != position_start] if n else []
        if bad:
            t = bad[0]
            raise ValueError(
                f"examples[{i}]: position_ids[{t}] = {int(pos[t])} starts a sequence at a position other than "
                f"{position_start}; the collator numbers each sequence from position_start, so split a continued "
                f"document into its own example or drop position_ids"
            )
        from_pos = np.diff(np.concatenate([[0], starts, [n]])).astype(np.int64)
    if not has_lengths:
        return from_pos
    lengths = _as_array(ex["seq_lengths"]).reshape(-1)
    if lengths.dtype.kind not in "iu" or (lengths.shape[0] and lengths.min() < 1) or int(lengths.sum()) != n:
        raise ValueError(
            f"examples[{i}]: seq_lengths {lengths.tolist()} must be positive integers summing to the {n} "
            f"input_ids of the row; recompute them or drop the column (a plain row is one sequence)"
        )
    lengths = lengths.astype(np.int64)
    if from_pos is not None and not np.array_equal(from_pos, lengths):
        raise ValueError(
            f"examples[{i}]: seq_lengths {lengths.tolist()} disagree with the sequences its position_ids restart at "
            f"({from_pos.tolist()}); drop one of the two columns"
        )
    return lengths


def _split_packed(examples: list[dict], position_start: int) -> list[dict]:
    """Already-packed examples split into one example per sequence, each keeping the row's
    ``weight`` and ``bin`` (the example's index when no example has a bin), so the collator builds
    the layout it would build for those sequences given separately."""
    split = [_packed_lengths(ex, i, position_start) for i, ex in enumerate(examples)]
    if all(lengths is None for lengths in split):
        return examples
    binned = any("bin" in ex for ex in examples)
    out = []
    for i, (ex, lengths) in enumerate(zip(examples, split)):
        base = {k: v for k, v in ex.items() if k not in ("seq_lengths", "position_ids", "input_ids", "labels")}
        if not binned:
            base["bin"] = i
        if lengths is None:
            lengths = np.array([len(_as_array(ex["input_ids"]))], np.int64)
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        ids = _as_array(ex["input_ids"])
        labels = _as_array(ex["labels"]) if "labels" in ex else None
        for a, b in zip(bounds[:-1], bounds[1:]):
            part = dict(base, input_ids=ids[a:b])
            if labels is not None:
                part["labels"] = labels[a:b]
            out.append(part)
    return out


class PackedCollator:
    """Collate examples into one packed batch; ``DataLoader(..., collate_fn=PackedCollator(...))``.

    Each example is a dict with ``input_ids`` (list, NumPy array or tensor of ints), optional
    ``labels`` (same length; -100 = not trained on; default: ``input_ids``), optional ``weight``
    (float, e.g. InfoBatch's 1/(1-r)) and, for ``shape="rows"``, optional ``bin`` (row id).

    Shapes:
      * ``"padding_free"``: one row ``[1, total]`` holding every example in the given order; with
        ``capacity`` set the row is padded to exactly ``capacity`` tokens (constant shape).
      * ``"rows"``: ``[rows, capacity]``, each row padded at its tail.  Rule: if the examples carry
        ``bin``, one row per distinct ``bin`` (in order of first appearance, examples in the given
        order); otherwise first-fit of the examples, in the given order, into rows of ``capacity``.

    Always returned: ``input_ids`` (padding = ``pad_token_id``), ``labels`` (-100 at each
    sequence's first token, where the input label is -100, and on padding) and ``position_ids``
    (restarting at ``position_start`` per sequence, e.g. ``padding_idx + 1`` for RoBERTa).
    ``layout`` (default ``("flash", "seq_idx")``: right for every HF backend, Mamba-style layers
    included) adds, per attention backend (one name or several):
      * ``"position_ids"``: nothing more (HF FlashAttention/SDPA infer boundaries from positions);
      * ``"flash"``: ``cu_seq_lens_q``/``cu_seq_lens_k`` (int32) and ``max_length_q``/``max_length_k``
        (Python ints computed on the CPU: no device-to-host sync);
      * ``"seq_idx"``: ``seq_idx`` (int32 segment number per token, for Mamba / linear attention)
        and ``example_index`` (int64, the example behind each segment, -1 for padding segments);
      * ``"sdpa"``: ``attention_mask``, a ``[rows, 1, width, width]`` block-diagonal causal bool mask;
      * ``"flex"``: ``attention_mask``, a FlexAttention ``BlockMask`` (document ids + causal).
    ``loss_weight`` (float32 per token, the example's weight, 0 on padding) comes when examples carry
    ``weight`` or ``loss_weights=True`` (missing weights then count as 1.0).

    Safe ``model(**batch)``: every batch carries ``use_cache=False`` (``use_cache=None`` leaves the
    key out, for models whose forward has no such argument).  Hugging Face models look for packed
    sequences in ``position_ids`` only when no KV cache exists, and they create one in eval *and*
    in train mode (unless gradient checkpointing is on) whenever ``config.use_cache`` is true: the
    packed batch then silently attends across sequences.  With ``use_cache=False`` the layouts are
    exact per HF attention backend (``attn_implementation``) as follows:
      * ``"eager"``, ``"sdpa"``, ``"flex_attention"``: ``"position_ids"``, ``"flash"`` or ``"seq_idx"``
        (HF builds the block-causal mask from ``position_ids``); ``"sdpa"`` layout only on ``"sdpa"``
        (its boolean mask is read as-is; ``eager`` would add it to the scores) and ``"flex"`` layout
        only on ``"flex_attention"``;
      * ``"flash_attention_2/3"``: ``"flash"`` (``cu_seq_lens_*`` are used directly) or ``"position_ids"``;
      * Mamba-style / linear-attention layers (Bamba, GraniteMoeHybrid): ``"seq_idx"`` and/or
        ``"flash"``; HF refuses packed input when the ``mamba_ssm``/``causal_conv1d`` kernels are
        missing (a ValueError, never a silent mix).
    :func:`packwise.check_packing` probes a model and a batch for exactly this.

    Segments: every token belongs to one segment (an example plus its padding, or a padding run
    at a row's tail, which is a segment of its own), row-major; ``cu_seq_lens`` and ``seq_idx``
    number them in that order.  ``pad_to_multiple_of=m`` pads each example to a multiple of ``m``
    (context parallelism); ``cu_seq_lens_q/k`` then give the padded bounds and
    ``cu_seq_lens_unpadded`` the real ones.  ``max_sequences=N`` makes ``cu_seq_lens_*`` exactly
    ``N + 1`` long (trailing entries repeat the total, i.e. empty sequences) for CUDA graphs.

    An example with no label left once its first token is masked (all -100, or a single token) is
    an error unless ``allow_unlabeled=True`` (it then adds nothing to any loss).

    An empty list of examples gives a valid one-token batch (one padding token, ``labels`` -100,
    ``loss_weight`` 0 when weights are on): DDP samplers pad short ranks with empty batches, which
    must run the model and contribute zero loss.

    Example:
        >>> c = PackedCollator(layout=("flash", "seq_idx"))
        >>> b = c([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}])
        >>> b["input_ids"].tolist(), b["labels"].tolist(), b["position_ids"].tolist()
        ([[5, 6, 7, 8, 9]], [[-100, 6, 7, -100, 9]], [[0, 1, 2, 0, 1]])
        >>> b["cu_seq_lens_q"].tolist(), b["max_length_q"], b["seq_idx"].tolist(), b["use_cache"]
        ([0, 3, 5], 3, [[0, 0, 0, 1, 1]], False)
    """

    def __init__(
        self,
        layout: str | Iterable[str] = ("flash", "seq_idx"),
        shape: str = "padding_free",
        capacity: int | None = None,
        *,
        pad_to_multiple_of: int = 1,
        max_sequences: int | None = None,
        position_start: int = 0,
        pad_token_id: int = 0,
        loss_weights: bool | None = None,
        flex_block_size: int = 128,
        allow_unlabeled: bool = False,
        use_cache: bool | None = False,
    ):
        self.layout = _normalize_layout(layout)
        if shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
        self.shape = shape
        self.capacity = _positive_int(capacity, "capacity", allow_none=True)
        if shape == "rows" and self.capacity is None:
            raise ValueError("shape='rows' needs capacity (tokens per row); pass capacity=<packing capacity>")
        self.pad_to_multiple_of = _positive_int(pad_to_multiple_of, "pad_to_multiple_of")
        if self.capacity is not None and self.capacity % self.pad_to_multiple_of:
            raise ValueError(
                f"capacity={self.capacity} is not a multiple of pad_to_multiple_of={self.pad_to_multiple_of}; "
                f"round the capacity to a multiple so padded sequences tile the rows"
            )
        self.max_sequences = _positive_int(max_sequences, "max_sequences", allow_none=True)
        if isinstance(position_start, bool) or not isinstance(position_start, (int, np.integer)) or position_start < 0:
            raise ValueError(f"position_start must be an integer >= 0, got {position_start!r}")
        self.position_start = int(position_start)
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, (int, np.integer)) or pad_token_id < 0:
            raise ValueError(f"pad_token_id must be a token id >= 0, got {pad_token_id!r}")
        self.pad_token_id = int(pad_token_id)
        if loss_weights not in (None, True, False):
            raise ValueError(f"loss_weights must be None (auto), True or False, got {loss_weights!r}")
        self.loss_weights = loss_weights
        self.flex_block_size = _positive_int(flex_block_size, "flex_block_size")
        self.allow_unlabeled = bool(allow_unlabeled)
        if use_cache not in (None, True, False):
            raise ValueError(f"use_cache must be False (the safe default), True or None (leave the key out), got {use_cache!r}")
        self.use_cache = use_cache

    def __repr__(self) -> str:
        return (
            f"PackedCollator(layout={tuple(sorted(self.layout))}, shape={self.shape!r}, capacity={self.capacity}, "
            f"pad_to_multiple_of={self.pad_to_multiple_of}, max_sequences={self.max_sequences})"
        )

    # --- inputs --------------------------------------------------------------------------------
    def _labels(self, examples, ids, lengths) -> np.ndarray:
        has = ["labels" in ex for ex in examples]
        if not any(has):
            return ids
        labels = ids.copy()
        for i, ex in enumerate(examples):
            if not has[i]:
                continue
            lab = ex["labels"]
            lab = lab.numpy() if hasattr(lab, "numpy") and not isinstance(lab, np.ndarray) else np.asarray(lab)
            if lab.ndim != 1 or lab.shape[0] != lengths[i]:
                raise ValueError(
                    f"examples[{i}]: labels has {lab.shape[0] if lab.ndim == 1 else tuple(lab.shape)} entries "
                    f"but input_ids has {int(lengths[i])}; labels must align token for token with input_ids "
                    f"(the model shifts them)"
                )
            if lab.dtype.kind not in "iu":
                raise ValueError(f"examples[{i}]: labels must be integers, got dtype {lab.dtype}; use -100 to ignore a token")
            bad = np.flatnonzero((lab < 0) & (lab != IGNORE_INDEX))
            if bad.shape[0]:
                j = int(bad[0])
                raise ValueError(f"examples[{i}]: labels[{j}] = {int(lab[j])}; labels must be token ids >= 0 or -100 (ignored)")
            start = int(lengths[:i].sum())
            labels[start : start + lengths[i]] = lab
        return labels

    def _weights(self, examples) -> tuple[np.ndarray, bool]:
        n = len(examples)
        given = [("weight" in ex) for ex in examples]
        on = self.loss_weights is True or (self.loss_weights is None and any(given))
        weights = np.ones(n, np.float32)
        if not on:
            return weights, False
        for i, ex in enumerate(examples):
            if not given[i]:
                if self.loss_weights is None:
                    j = given.index(True)
                    raise ValueError(
                        f"examples[{i}] has no 'weight' but examples[{j}] has one; give every example a weight "
                        f"or build the collator with loss_weights=True (missing weights count as 1.0)"
                    )
                continue
            w = ex["weight"]
            w = float(w.item() if hasattr(w, "item") else w)
            if not np.isfinite(w) or w < 0:
                raise ValueError(f"examples[{i}]: weight = {w}; weights must be finite and >= 0")
            weights[i] = w
        return weights, True

    def _rows(self, examples, spans) -> tuple[np.ndarray, int]:
        """Row of every example and the number of rows."""
        n = spans.shape[0]
        cap = self.capacity
        if self.shape == "padding_free":
            return np.zeros(n, np.int64), 1
        i = first_over(spans, cap)
        if i is not None:
            raise ValueError(
                f"examples[{i}] takes {int(spans[i])} tokens (padded to a multiple of {self.pad_to_multiple_of}), "
                f"more than capacity={cap}; truncate or split it before collating, or raise the capacity"
            )
        has_bin = ["bin" in ex for ex in examples]
        if not any(has_bin):
            p = pack(spans, cap, algorithm="first_fit")
            row = np.empty(n, np.int64)
            row[p.order] = np.repeat(np.arange(p.num_bins, dtype=np.int64), np.diff(p.offsets))
            return row, p.num_bins
        if not all(has_bin):
            i = has_bin.index(False)
            raise ValueError(f"examples[{i}] has no 'bin' while others do; give every example its bin (row) id or none")
        bins = np.array([int(ex["bin"]) for ex in examples], np.int64)
        _, first, inverse = np.unique(bins, return_index=True, return_inverse=True)
        rank = np.empty(first.shape[0], np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(first.shape[0])
        row = rank[inverse.reshape(-1)]
        used = np.bincount(row, weights=spans, minlength=first.shape[0]).astype(np.int64)
        full = np.flatnonzero(used > cap)
        if full.shape[0]:
            r = int(full[0])
            raise ValueError(
                f"bin {int(bins[np.flatnonzero(row == r)[0]])} holds {int(used[r])} tokens, more than capacity={cap}; "
                f"the sampler's packing capacity must match the collator's (pad_to_multiple_of counts too)"
            )
        return row, int(first.shape[0])

    # --- main ------------------------------------------------------------------------------------
    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if isinstance(examples, dict):
            raise ValueError("examples must be a list of dicts (one per example), got a single dict; wrap it in a list")
        examples = _split_packed(list(examples), self.position_start)
        n = len(examples)
        if n:
            ids, lengths = _flatten(examples, "input_ids")
            empty = np.flatnonzero(lengths == 0)
            if empty.shape[0]:
                i = int(empty[0])
                raise ValueError(f"examples[{i}]: input_ids is empty; drop empty examples before collating")
            if ids.shape[0] and int(ids.min()) < 0:
                t = int(np.argmax(ids < 0))
                i = int(np.searchsorted(np.cumsum(lengths), t, side="right"))
                raise ValueError(f"examples[{i}]: input_ids has a negative token id ({int(ids[t])}); token ids must be >= 0")
            labels = self._labels(examples, ids, lengths)
            weights, weighted = self._weights(examples)
        else:
            ids = labels = np.zeros(0, np.int64)
            lengths = np.zeros(0, np.int64)
            weights, weighted = np.ones(0, np.float32), self.loss_weights is True
        m = self.pad_to_multiple_of
        spans = -(-lengths // m) * m
        row, num_rows = self._rows(examples, spans) if n else (np.zeros(0, np.int64), 1)

        # width of the rows
        if self.shape == "rows" or (self.capacity is not None and n):
            width = self.capacity
            total = int(spans.sum())
            if self.shape == "padding_free" and total > width:
                raise ValueError(
                    f"the {n} examples take {total} tokens, more than capacity={width} of the padding-free row; "
                    f"give the collator fewer tokens per batch or leave capacity=None"
                )
        else:
            width = max(int(spans.sum()), 1)
        if not n:
            width = 1  # the documented one-token batch

        # segments: examples in row-major order (given order within a row), then each row's tail
        order = np.argsort(row, kind="stable")
        row_sorted = row[order]
        ends = np.cumsum(spans[order])
        row_first = np.searchsorted(row_sorted, np.arange(num_rows), side="left")
        row_base = np.concatenate([[0], ends])[row_first]
        col = ends - spans[order] - row_base[row_sorted]
        used = np.bincount(row_sorted, weights=spans[order], minlength=num_rows).astype(np.int64)
        tail_rows = np.flatnonzero(used < width)
        seg_row = np.concatenate([row_sorted, tail_rows])
        seg_col = np.concatenate([col, used[tail_rows]])
        seg_key = np.argsort(seg_row * width + seg_col, kind="stable")
        seg_row, seg_col = seg_row[seg_key], seg_col[seg_key]
        seg_src = np.concatenate([order, np.full(tail_rows.shape[0], -1, np.int64)])[seg_key]
        seg_len = np.concatenate([lengths[order], np.zeros(tail_rows.shape[0], np.int64)])[seg_key]
        seg_span = np.concatenate([spans[order], width - used[tail_rows]])[seg_key]
        src_start = np.zeros(max(n, 1), np.int64)
        if n > 1:
            np.cumsum(lengths[:-1], out=src_start[1:])

        out_ids = np.empty((num_rows, width), np.int64)
        out_labels = np.empty((num_rows, width), np.int64)
        out_pos = np.empty((num_rows, width), np.int64)
        out_seq = np.empty((num_rows, width), np.int32)
        out_weight = np.empty((num_rows, width), np.float32)
        supervised = _collate_kernels.fill_tokens(
            ids, labels, weights if n else np.ones(1, np.float32), src_start,
            seg_row, seg_col, seg_len, seg_span, seg_src,
            self.position_start, self.pad_token_id,
            out_ids, out_labels, out_pos, out_seq, out_weight,
        )  # fmt: skip
        unsupervised = np.flatnonzero((supervised == 0) & (seg_src >= 0))
        if unsupervised.shape[0] and not self.allow_unlabeled:
            i = int(seg_src[unsupervised[0]])
            raise ValueError(
                f"examples[{i}]: every label is -100 once the first token is masked (nothing predicts across a "
                f"sequence boundary), so it would train on nothing; drop it, give it >= 2 tokens with a label, or pass allow_unlabeled=True"
            )
        return self._tensors(out_ids, out_labels, out_pos, out_seq, out_weight, weighted, seg_span, seg_len, seg_src)

    def _tensors(self, out_ids, out_labels, out_pos, out_seq, out_weight, weighted, seg_span, seg_len, seg_src):
        import torch

        batch: dict[str, Any] = {
            "input_ids": torch.from_numpy(out_ids),
            "labels": torch.from_numpy(out_labels),
            "position_ids": torch.from_numpy(out_pos),
        }
        num_segments = seg_span.shape[0]
        if "flash" in self.layout:
            size = num_segments + 1
            if self.max_sequences is not None:
                if num_segments > self.max_sequences:
                    raise ValueError(
                        f"max_sequences={self.max_sequences} but this batch has {num_segments} sequences "
                        f"(padding runs at row tails count as one each); raise max_sequences"
                    )
                size = self.max_sequences + 1
            cu = np.empty(size, np.int32)
            cu[0] = 0
            np.cumsum(seg_span, out=cu[1 : num_segments + 1])
            cu[num_segments + 1 :] = cu[num_segments]
            cu_t = torch.from_numpy(cu)
            batch["cu_seq_lens_q"] = cu_t
            batch["cu_seq_lens_k"] = cu_t.clone()
            batch["max_length_q"] = batch["max_length_k"] = int(seg_span.max())
            if self.pad_to_multiple_of > 1:
                cu_real = np.empty(size, np.int32)
                cu_real[0] = 0
                np.cumsum(seg_len, out=cu_real[1 : num_segments + 1])
                cu_real[num_segments + 1 :] = cu_real[num_segments]
                batch["cu_seq_lens_unpadded"] = torch.from_numpy(cu_real)
        seq = torch.from_numpy(out_seq)
        if "seq_idx" in self.layout:
            batch["seq_idx"] = seq
            batch["example_index"] = torch.from_numpy(seg_src.astype(np.int64, copy=False))
        if "sdpa" in self.layout:
            batch["attention_mask"] = block_causal_mask(seq)
        elif "flex" in self.layout:
            batch["attention_mask"] = flex_block_mask(seq, self.flex_block_size)
        if weighted:
            batch["loss_weight"] = torch.from_numpy(out_weight)
        if self.use_cache is not None:
            batch["use_cache"] = self.use_cache
        return batch
