"""The torch side of ``update``: DDP gathers (ids int64, losses float32, never mixed) and the
weighted mean.  torch is imported inside the functions so ``packwise.selection`` stays torch-free."""

from __future__ import annotations

import numpy as np


def gather(ids: np.ndarray, losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All ranks' ``(ids, losses)`` concatenated in rank order (identical on every rank).

    ids travel as int64 and losses as float32 in separate collectives, so ids stay exact past
    2**24.  Ranks may hold different counts (padded to the largest, then trimmed)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return ids, losses
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    world = dist.get_world_size()
    count = torch.tensor([ids.shape[0]], dtype=torch.int64, device=device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    width = max(sizes)
    id_buf = torch.zeros(width, dtype=torch.int64, device=device)
    id_buf[: ids.shape[0]] = torch.from_numpy(ids)
    loss_buf = torch.zeros(width, dtype=torch.float32, device=device)
    loss_buf[: losses.shape[0]] = torch.from_numpy(losses)
    id_parts = [torch.empty_like(id_buf) for _ in range(world)]
    loss_parts = [torch.empty_like(loss_buf) for _ in range(world)]
    dist.all_gather(id_parts, id_buf)
    dist.all_gather(loss_parts, loss_buf)
    all_ids = np.concatenate([p[:n].cpu().numpy() for p, n in zip(id_parts, sizes)])
    all_losses = np.concatenate([p[:n].cpu().numpy() for p, n in zip(loss_parts, sizes)])
    return all_ids.astype(np.int64, copy=False), all_losses.astype(np.float32, copy=False)


def float32():
    import torch

    return torch.float32


def ids_array(indices) -> np.ndarray | None:
    """Zero-copy int64 view of a CPU long tensor or int64 array (``None``: take the checked path)."""
    if not isinstance(indices, np.ndarray):
        if not getattr(indices, "is_cpu", False) or indices.requires_grad:
            return None
        indices = indices.numpy()
    return indices if indices.dtype == np.int64 and indices.ndim == 1 else None


def check_loss(per_example_loss):
    import torch

    if not isinstance(per_example_loss, torch.Tensor):
        raise ValueError(
            f"per_example_loss must be a torch.Tensor of shape [batch] (reduction='none'), got "
            f"{type(per_example_loss).__name__}"
        )
    if per_example_loss.ndim != 1:
        raise ValueError(
            f"per_example_loss must be 1-D (one loss per example; use reduction='none', and "
            f"per_example_loss() for token losses), got shape {tuple(per_example_loss.shape)}"
        )
    return per_example_loss


def weighted_mean(per_example_loss, weights: np.ndarray):
    """``mean(weights * loss)`` as a new tensor (the caller's tensor is not modified)."""
    import torch

    if per_example_loss.shape[0] == 0:
        return per_example_loss.sum()
    weights *= np.float32(1.0 / weights.shape[0])  # our own fresh array: sum(w * loss) / B in one dot
    w = torch.from_numpy(weights)
    if not per_example_loss.is_cpu or w.dtype != per_example_loss.dtype:
        w = w.to(device=per_example_loss.device, dtype=per_example_loss.dtype)
    return torch.dot(per_example_loss, w)


def per_example_loss(token_loss, mask):
    """Masked mean of token losses per example (padding excluded): ``[batch, time] -> [batch]``.

    A row with no supervised token gets 0 (it adds nothing to the gradient).

    Example:
        >>> import torch
        >>> from packwise.selection import per_example_loss
        >>> per_example_loss(torch.tensor([[1.0, 3.0, 9.0], [2.0, 0.0, 0.0]]),
        ...                  torch.tensor([[1, 1, 0], [1, 0, 0]])).tolist()
        [2.0, 2.0]
    """
    import torch

    if token_loss.ndim != 2 or tuple(mask.shape) != tuple(token_loss.shape):
        raise ValueError(
            f"token_loss must be [batch, time] and mask the same shape; got {tuple(token_loss.shape)} and "
            f"{tuple(mask.shape)}"
        )
    m = mask.to(dtype=token_loss.dtype)
    total = (token_loss * m).sum(dim=1)
    count = m.sum(dim=1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
