"""Loss reduction for packed batches: per token, per example, per batch, with a stated normalisation.

Packing changes what "the mean loss" means (a long sequence holds more tokens of a packed row than
a short one), so the reduction is explicit: ``"token"`` (every supervised token counts once, what
HF computes on a padded batch) or ``"sequence"`` (every example counts once).  Per-example weights
(``loss_weight``, e.g. InfoBatch's 1/(1-r)) rescale the terms without renormalising, which is what
keeps such rescaling unbiased.  torch is imported inside the functions.
"""

from __future__ import annotations

from typing import Any, Mapping

IGNORE_INDEX = -100
NORMALIZATIONS: tuple[str, ...] = ("token", "sequence")


def token_losses(logits, labels):
    """Cross-entropy per token, aligned with ``labels`` (``[rows, width]``, float32, 0 where ignored).

    ``logits[:, t - 1]`` predicts ``labels[:, t]`` (labels are unshifted, as for HF causal LMs), so
    column 0 is always 0; rows never predict across each other.

    Example:
        >>> import torch
        >>> token_losses(torch.zeros(1, 3, 4), torch.tensor([[-100, 1, -100]])).tolist()
        [[0.0, 1.3862943649291992, 0.0]]
    """
    import torch

    if logits.ndim != 3 or labels.ndim != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"logits must be [rows, width, vocab] and labels [rows, width]; got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    out = torch.zeros(labels.shape, dtype=torch.float32, device=logits.device)
    target = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        target.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    out[:, 1:] = loss.view(target.shape)
    return out


def _weighted(losses, batch: Mapping[str, Any]):
    labels = batch["labels"]
    if tuple(losses.shape) != tuple(labels.shape):
        raise ValueError(f"token losses have shape {tuple(losses.shape)} but batch['labels'] has {tuple(labels.shape)}")
    mask = labels != IGNORE_INDEX
    values = losses.float() * mask
    weight = batch.get("loss_weight")
    return values, mask, weight


def example_losses(losses, batch: Mapping[str, Any]):
    """Masked mean loss of every example, in the order the collator was given them.

    Needs ``batch["seq_idx"]`` and ``batch["example_index"]`` (collator ``layout`` with ``"seq_idx"``).
    Returns ``(loss, tokens)``: float32 mean over each example's supervised tokens (unweighted;
    multiply by the example weight yourself) and their int64 count.

    Example:
        >>> import torch
        >>> from packwise.packing import PackedCollator
        >>> b = PackedCollator(layout="seq_idx")([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}])
        >>> loss, n = example_losses(torch.tensor([[0.0, 1.0, 3.0, 0.0, 4.0]]), b)
        >>> loss.tolist(), n.tolist()
        ([2.0, 4.0], [2, 1])
    """
    import torch

    if "seq_idx" not in batch or "example_index" not in batch:
        raise ValueError("example_losses needs batch['seq_idx'] and batch['example_index']; add 'seq_idx' to the collator layout")
    values, mask, _ = _weighted(losses, batch)
    seq = batch["seq_idx"].reshape(-1).long().to(values.device)
    example_index = batch["example_index"].to(values.device)
    num_segments = example_index.shape[0]
    seg_sum = torch.zeros(num_segments, dtype=torch.float32, device=values.device).index_add_(0, seq, values.reshape(-1))
    seg_cnt = torch.zeros(num_segments, dtype=torch.int64, device=values.device).index_add_(0, seq, mask.reshape(-1).long())
    real = example_index >= 0
    num_examples = int(real.sum())
    loss = torch.zeros(num_examples, dtype=torch.float32, device=values.device)
    count = torch.zeros(num_examples, dtype=torch.int64, device=values.device)
    loss[example_index[real]] = seg_sum[real] / seg_cnt[real].clamp(min=1)
    count[example_index[real]] = seg_cnt[real]
    return loss, count


def packed_loss(losses, batch: Mapping[str, Any], normalize: str = "token", denominator: float | None = None):
    """Reduce per-token ``losses`` (from ``token_losses``) of a packed ``batch`` to one scalar.

    * ``"token"`` (default): ``sum_t w_t * l_t / T``, ``T`` = supervised tokens in the batch;
    * ``"sequence"``: ``sum_i w_i * L_i / N``, ``L_i`` = example i's masked mean, ``N`` = examples
      (needs ``seq_idx`` in the layout).
    ``w`` is ``batch["loss_weight"]`` when present, else 1.  ``denominator`` replaces ``T``/``N``
    (e.g. the token count of all gradient-accumulation steps or DDP ranks).  A batch with nothing
    supervised (the collator's empty batch) gives 0, not NaN, so padded DDP ranks add zero loss.

    Example:
        >>> import torch
        >>> from packwise.packing import PackedCollator
        >>> b = PackedCollator(layout="seq_idx")([{"input_ids": [1, 2, 3], "weight": 2.0}, {"input_ids": [4, 5], "weight": 1.0}])
        >>> tok = torch.tensor([[0.0, 1.0, 3.0, 0.0, 4.0]])
        >>> float(packed_loss(tok, b)), float(packed_loss(tok, b, "sequence"))
        (4.0, 4.0)
    """
    import torch

    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    values, mask, weight = _weighted(losses, batch)
    if normalize == "token":
        total = (values * weight.to(values.device)).sum() if weight is not None else values.sum()
        count = mask.sum()
    else:
        per_example, tokens = example_losses(losses, batch)
        if weight is not None:
            seq = batch["seq_idx"].reshape(-1).long().to(values.device)
            example_index = batch["example_index"].to(values.device)
            seg_weight = torch.zeros(example_index.shape[0], dtype=torch.float32, device=values.device)
            # an example's weight sits on its real tokens, 0 on its padding: the max recovers it
            seg_weight.scatter_reduce_(0, seq, weight.reshape(-1).float().to(values.device), reduce="amax")
            w = torch.zeros_like(per_example)
            real = example_index >= 0
            w[example_index[real]] = seg_weight[real]
            per_example = per_example * w
        total = per_example.sum()
        count = (tokens > 0).sum()
    if denominator is not None:
        if not denominator > 0:
            raise ValueError(f"denominator must be > 0, got {denominator!r}")
        return total / denominator
    return total / count.clamp(min=1).to(total.dtype)
