"""``audit``: play a loader for a few epochs on every rank and raise if any example was lost or
repeated.  The one promise users cannot check by eye ("every example once per epoch") becomes a
dry run they can turn on before a long job, whatever wraps the loader (accelerate, Trainer, DDP)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


@dataclass(frozen=True)
class AuditReport:
    """What each epoch delivered: ``examples`` seen (all ranks), ``batches_per_rank`` per epoch."""

    epochs: int
    num_examples: int
    examples: tuple[int, ...]
    batches_per_rank: tuple[tuple[int, ...], ...]


def _ids_of(batch, ids: str | Callable[[Any], Any]) -> np.ndarray:
    value = ids(batch) if callable(ids) else batch[ids]
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    out = np.asarray(value, dtype=np.int64).reshape(-1)
    return out[out >= 0]  # -1 marks padding segments (PackedCollator's example_index)


def _set_epoch(loader, epoch: int) -> None:
    """The epoch reaches whatever holds it: the loader (accelerate), else its batch sampler or dataset."""
    for holder in (loader, getattr(loader, "batch_sampler", None), getattr(loader, "dataset", None)):
        if hasattr(holder, "set_epoch"):
            holder.set_epoch(epoch)
            return


def _gather(local: list[np.ndarray]) -> list[list[np.ndarray]]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [local]
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, local)
    return everyone


def _first(values: np.ndarray, k: int = 5) -> str:
    shown = ", ".join(str(int(v)) for v in values[:k])
    return shown + (", ..." if values.shape[0] > k else "")


def audit(loader, epochs: int = 2, *, ids: str | Callable[[Any], Any] = "index", num_examples: int | None = None) -> AuditReport:
    """Iterate ``loader`` for ``epochs`` epochs (calling ``set_epoch``) on every rank, gather the
    example ids each batch carries, and raise ``ValueError`` if an epoch lost or repeated one.

    ``ids``: the batch key holding example ids (a tensor, array or list; negative ids are padding)
    or a function ``batch -> ids``.  ``num_examples``: the size of the id space (default
    ``len(loader.dataset)``; give it for streams).  Call it on every rank at the same point (it
    uses ``torch.distributed`` when initialised); it consumes those epochs, so call ``set_epoch``
    again before training.  For loaders that are meant to cover everything (no ``drop_last``, no
    selection policy).

    Example:
        >>> import numpy as np
        >>> from torch.utils.data import DataLoader
        >>> from packwise.samplers import PackedBatchSampler, audit
        >>> s = PackedBatchSampler(np.array([700, 300, 900, 100, 24]), max_tokens=1024, num_replicas=1, rank=0)
        >>> loader = DataLoader(list(range(5)), batch_sampler=s, collate_fn=lambda b: {"index": b})
        >>> audit(loader, epochs=2).examples
        (5, 5)
    """
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if num_examples is None:
        dataset = getattr(loader, "dataset", None)
        if dataset is None or not hasattr(dataset, "__len__"):
            raise ValueError("audit: the loader's dataset has no len(); pass num_examples=<number of example ids>")
        num_examples = len(dataset)
    local = []
    for epoch in range(epochs):
        _set_epoch(loader, epoch)
        local.append([_ids_of(batch, ids) for batch in loader])
    ranks = _gather(local)
    seen, per_rank = [], []
    for epoch in range(epochs):
        got = np.concatenate([b for rank in ranks for b in rank[epoch]] or [np.zeros(0, np.int64)])
        bad = got[(got >= num_examples)]
        if bad.shape[0]:
            raise ValueError(
                f"audit epoch {epoch}: ids {_first(np.unique(bad))} are outside [0, {num_examples}); "
                f"pass num_examples=<size of the id space> or the right ids= key"
            )
        counts = np.bincount(got, minlength=num_examples)
        missing, repeated = np.flatnonzero(counts == 0), np.flatnonzero(counts > 1)
        if missing.shape[0] or repeated.shape[0]:
            raise ValueError(
                f"audit epoch {epoch} over {len(ranks)} rank(s): {missing.shape[0]} of {num_examples} examples never "
                f"arrived ({_first(missing)}) and {repeated.shape[0]} arrived more than once ({_first(repeated)}); "
                f"a wrapper re-shards the sampler (accelerate, DistributedSampler) or the stream is sharded twice: "
                f"see the README's HF/accelerate section for the supported combinations"
            )
        seen.append(int(got.shape[0]))
        per_rank.append(tuple(len(rank[epoch]) for rank in ranks))
    return AuditReport(int(epochs), int(num_examples), tuple(seen), tuple(per_rank))
