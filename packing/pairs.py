"""Preference pairs (DPO, IPO, reward models) packed like any sequences, scored per sequence.

A pair is ``{"prompt_ids", "chosen_ids", "rejected_ids"}``.  ``PairCollator`` packs the chosen and
rejected sequences of every pair into one batch (rows or padding-free) with the masks that keep
them apart; with ``share_prompt=True`` the prompt is stored once per pair, as
``[prompt | chosen | rejected]`` with the rejected tokens seeing the prompt but not the chosen ones
and their positions restarting after the prompt (an SDPA 4-D mask or a FlexAttention BlockMask).
:func:`sequence_logps` and :func:`pair_logps` turn the model's logits into the per-sequence sums of
label log-probabilities that DPO-style losses need.  The sampler side needs nothing new: pairs are
the dataset items, so ``PackedBatchSampler(pair_lengths(pairs), max_tokens)`` never splits a pair
across batches.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from .collate import IGNORE_INDEX, PackedCollator, block_causal_mask

_KEYS = ("prompt_ids", "chosen_ids", "rejected_ids")
_PART_CHOSEN, _PART_REJECTED = 1, 2


def _parts(pair, i: int) -> tuple[list, list, list]:
    out = []
    for key in _KEYS:
        try:
            v = pair[key]
        except (KeyError, TypeError):
            raise ValueError(f"pairs[{i}] has no {key!r}; each pair is a dict with {', '.join(_KEYS)} (token id lists)") from None
        v = v.tolist() if hasattr(v, "tolist") else list(v)
        if key != "prompt_ids" and not v:
            raise ValueError(f"pairs[{i}][{key!r}] is empty; a pair needs a non-empty chosen and rejected response")
        out.append(v)
    if not out[0]:
        raise ValueError(f"pairs[{i}]['prompt_ids'] is empty; give every pair at least one prompt token (e.g. BOS)")
    return out[0], out[1], out[2]


def pair_lengths(pairs: Sequence[dict], share_prompt: bool = False) -> np.ndarray:
    """Tokens each pair takes in a packed batch (int64): ``2P + C + R``, or ``P + C + R`` shared.

    Example:
        >>> pair_lengths([{"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4, 5]}]).tolist()
        [7]
    """
    out = np.empty(len(pairs), np.int64)
    for i, pair in enumerate(pairs):
        p, c, r = _parts(pair, i)
        out[i] = (1 if share_prompt else 2) * len(p) + len(c) + len(r)
    return out


class SharedPromptMask:
    """FlexAttention ``mask_mod`` for shared-prompt pairs: same segment, causal, rejected never sees chosen."""

    def __init__(self, seq_idx, part):
        self.seq_idx, self.part = seq_idx, part

    def __call__(self, b, h, q_idx, kv_idx):
        same = (self.seq_idx[b, q_idx] == self.seq_idx[b, kv_idx]) & (q_idx >= kv_idx)
        return same & ~((self.part[b, q_idx] == _PART_REJECTED) & (self.part[b, kv_idx] == _PART_CHOSEN))


class PairCollator:
    """Collate preference pairs into one packed batch; ``DataLoader(pairs, collate_fn=PairCollator())``.

    Returns the keys of :class:`PackedCollator` (``labels`` are -100 on prompts) plus, one entry
    per scored token, ``logp_positions`` (flat index of the logit that predicts it),
    ``logp_tokens`` (the token) and ``logp_sequence`` (``2 * pair`` for chosen, ``2 * pair + 1`` for
    rejected), read by :func:`sequence_logps`.

    * ``share_prompt=False`` (default): two ordinary sequences per pair, any ``layout``/``shape``.
    * ``share_prompt=True``: one ``[prompt | chosen | rejected]`` segment per pair; ``layout`` must
      be ``"sdpa"`` (4-D bool mask) or ``"flex"`` (BlockMask).  The HF shifted loss cannot see the
      rejected answer's first token (it is predicted from the prompt's last position, not the
      token before it), so that label is -100; :func:`sequence_logps` scores it exactly.

    Example:
        >>> import torch
        >>> c = PairCollator(share_prompt=True, layout="sdpa")
        >>> b = c([{"prompt_ids": [1, 2], "chosen_ids": [3, 4], "rejected_ids": [5]}])
        >>> b["input_ids"].tolist(), b["position_ids"].tolist()
        ([[1, 2, 3, 4, 5]], [[0, 1, 2, 3, 2]])
        >>> b["attention_mask"][0, 0, 4].int().tolist()  # the rejected token sees the prompt and itself
        [1, 1, 0, 0, 1]
        >>> b["logp_positions"].tolist(), b["logp_tokens"].tolist(), b["logp_sequence"].tolist()
        ([1, 2, 1], [3, 4, 5], [0, 0, 1])
    """

    def __init__(
        self,
        share_prompt: bool = False,
        layout: str | Iterable[str] = ("flash", "seq_idx"),
        shape: str = "padding_free",
        capacity: int | None = None,
        *,
        pad_token_id: int = 0,
        flex_block_size: int = 128,
        use_cache: bool | None = False,
    ):
        self.share_prompt = bool(share_prompt)
        names = (layout,) if isinstance(layout, str) else tuple(layout)
        if self.share_prompt:
            mask = [n for n in names if n in ("sdpa", "flex")]
            if len(mask) != 1 or any(n not in ("sdpa", "flex", "seq_idx", "position_ids") for n in names):
                raise ValueError(
                    f"share_prompt=True needs layout 'sdpa' or 'flex' (a mask that hides chosen from rejected), got {names}; "
                    f"varlen kernels (flash, position_ids alone) cannot express it"
                )
            self.mask = mask[0]
            names = tuple(n for n in names if n not in ("sdpa", "flex"))
        self.flex_block_size = int(flex_block_size)
        self._inner = PackedCollator(
            layout=tuple(set(names) | {"seq_idx"}), shape=shape, capacity=capacity, pad_token_id=pad_token_id,
            flex_block_size=flex_block_size, use_cache=use_cache,
        )  # fmt: skip
        self.layout = frozenset(names) | ({self.mask} if self.share_prompt else frozenset())

    def __call__(self, pairs: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        parts = [_parts(pair, i) for i, pair in enumerate(pairs)]
        if self.share_prompt:
            seqs = [{"input_ids": p + c + r, "labels": [IGNORE_INDEX] * (len(p) + len(c) + 1) + r[1:]} for p, c, r in parts]
            for s, (p, c, _) in zip(seqs, parts):
                s["labels"][len(p) : len(p) + len(c)] = c
        else:
            seqs = []
            for p, c, r in parts:
                seqs += [{"input_ids": p + c, "labels": [IGNORE_INDEX] * len(p) + c}, {"input_ids": p + r, "labels": [IGNORE_INDEX] * len(p) + r}]
        batch = self._inner(seqs)
        seq_flat = batch["seq_idx"].reshape(-1).numpy()
        example_index = batch["example_index"].numpy()
        _, seg_start = np.unique(seq_flat, return_index=True)
        ex_start = np.empty(len(seqs), np.int64)
        ex_start[example_index[example_index >= 0]] = seg_start[example_index >= 0]
        positions, tokens, sequence = [], [], []
        if self.share_prompt:
            pos = batch["position_ids"].reshape(-1).numpy().copy()
            part = np.zeros(seq_flat.shape[0], np.int8)
            for i, (p, c, r) in enumerate(parts):
                a = int(ex_start[i])
                pos[a + len(p) + len(c) : a + len(p) + len(c) + len(r)] = np.arange(len(p), len(p) + len(r))
                part[a + len(p) : a + len(p) + len(c)] = _PART_CHOSEN
                part[a + len(p) + len(c) : a + len(p) + len(c) + len(r)] = _PART_REJECTED
                first_c, first_r = a + len(p), a + len(p) + len(c)
                positions += [np.arange(first_c - 1, first_c + len(c) - 1), [first_c - 1], np.arange(first_r, first_r + len(r) - 1)]
                tokens += [c, r]
                sequence += [np.full(len(c), 2 * i), np.full(len(r), 2 * i + 1)]
            batch["position_ids"] = torch.from_numpy(pos.reshape(batch["position_ids"].shape))
            part_t = torch.from_numpy(part.reshape(batch["seq_idx"].shape))
            if self.mask == "sdpa":
                attend = block_causal_mask(batch["seq_idx"])
                rejected = part_t == _PART_REJECTED
                chosen = part_t == _PART_CHOSEN
                attend &= ~(rejected[:, None, :, None] & chosen[:, None, None, :])
                batch["attention_mask"] = attend
            else:
                from torch.nn.attention.flex_attention import create_block_mask

                rows, width = batch["seq_idx"].shape
                batch["attention_mask"] = create_block_mask(
                    SharedPromptMask(batch["seq_idx"], part_t), rows, None, width, width, device="cpu", BLOCK_SIZE=self.flex_block_size
                )
        else:
            for k, (p, c, r) in enumerate(parts):
                for j, resp in ((2 * k, c), (2 * k + 1, r)):
                    a = int(ex_start[j]) + len(p)
                    positions.append(np.arange(a - 1, a + len(resp) - 1))
                    tokens.append(resp)
                    sequence.append(np.full(len(resp), j))
        if "seq_idx" not in self.layout:
            batch.pop("seq_idx")
            batch.pop("example_index")
        cat = lambda xs: torch.from_numpy(np.concatenate([np.asarray(x, np.int64) for x in xs]) if xs else np.zeros(0, np.int64))  # noqa: E731
        batch["logp_positions"], batch["logp_tokens"], batch["logp_sequence"] = cat(positions), cat(tokens), cat(sequence)
        return batch


def sequence_logps(logits, batch):
    """Sum of log p(token) over each sequence's scored tokens: float32 ``[2 * pairs]`` (chosen, rejected, ...).

    Example:
        >>> import torch
        >>> b = PairCollator()([{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3]}])
        >>> [round(x, 4) for x in sequence_logps(torch.zeros(1, 4, 5), b).tolist()]  # uniform over 5 tokens
        [-1.6094, -1.6094]
    """
    import torch

    flat = logits.reshape(-1, logits.shape[-1])
    pos = batch["logp_positions"].to(flat.device)
    tok = batch["logp_tokens"].to(flat.device)
    seq = batch["logp_sequence"].to(flat.device)
    picked = torch.log_softmax(flat[pos].float(), dim=-1).gather(1, tok[:, None])[:, 0]
    num = int(seq.max()) + 1 if seq.shape[0] else 0
    return torch.zeros(num, dtype=torch.float32, device=flat.device).index_add_(0, seq, picked)


def pair_logps(logits, batch):
    """``(chosen, rejected)`` log-prob sums per pair, each float32 ``[pairs]``."""
    s = sequence_logps(logits, batch)
    return s[0::2], s[1::2]
