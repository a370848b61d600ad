"""Per-source training loss for online mixing: accumulate locally, reduce once per interval.

A mixture policy needs each source's loss over an update interval, summed over every rank.  The
tracker keeps two small float64 vectors on the loss's device (loss sum and supervised tokens per
source), adds each step's per-example losses into them without leaving the device, and at the end
of every interval runs exactly one collective, an ``all_reduce`` of one ``[2, num_sources]``
tensor, then hands the reduced sums to ``policy.observe``.  No other step communicates.  torch is
imported inside the methods.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np

from . import _source_loss_kernels
from ._checks import as_int


class SourceLossTracker:
    """Feed it per-example losses and source ids every step; it feeds the mixture policy.

    ``update_every`` is the policy's interval in steps (the sampler's ``update_every``); a step is
    one call of :meth:`step`, i.e. one batch of the sampler.  After the last step of interval ``k``
    the sums are reduced across ranks (``group``; nothing is reduced outside ``torch.distributed``
    or with one process) and ``policy.observe(k, loss_sum, tokens)`` is called on every rank with
    the same numbers (the sums live on the losses' device, so NCCL reduces them on the GPU; give
    ``device`` for a rank that may reach an interval's end before any loss).  ``last_loss`` then holds each source's token-mean loss over interval ``k``
    (NaN where a source had no tokens), for logging.

    In a plain loop (``example_losses`` from :mod:`packwise.packing` gives per-example losses of a
    packed batch)::

        tracker = SourceLossTracker(policy, num_sources=5, update_every=sampler.update_every)
        for batch in loader:
            ...
            loss, tokens = example_losses(token_losses(logits, batch["labels"]), batch)
            tracker.add(loss.detach(), sampler.sources_of(batch["example_ids"]), tokens)
            tracker.step()

    Example (one process):
        >>> import numpy as np, torch
        >>> from packwise.selection import SoftmaxLoss, SourceLossTracker
        >>> policy = SoftmaxLoss(2)
        >>> tracker = SourceLossTracker(policy, num_sources=2, update_every=2)
        >>> tracker.add(torch.tensor([2.0, 1.0]), np.array([0, 1]), torch.tensor([3, 1]))
        >>> tracker.step()
        >>> tracker.add(torch.tensor([4.0]), np.array([1]), torch.tensor([1]))
        >>> tracker.step()                                    # interval 0 ends: one observe
        >>> tracker.last_loss.tolist(), tracker.intervals_observed
        ([2.0, 2.5], 1)
    """

    def __init__(
        self,
        policy: Any,
        num_sources: int,
        update_every: int,
        *,
        group: Any = None,
        names: Sequence[str] | None = None,
        device: Any = "cpu",
    ):
        if policy is not None and not callable(getattr(policy, "observe", None)):
            raise ValueError(f"policy must have observe(interval, loss_sum, tokens); got a {type(policy).__name__}")
        self.policy = policy
        self.num_sources = as_int(num_sources, "num_sources", low=1)
        self.update_every = as_int(update_every, "update_every", low=1)
        if names is not None and len(names) != self.num_sources:
            raise ValueError(f"names has {len(names)} entries but num_sources={self.num_sources}; give one name per source")
        self.names = None if names is None else [str(n) for n in names]
        self.group = group
        self.steps = 0
        self.intervals_observed = 0
        self.last_loss = np.full(self.num_sources, np.nan)
        self._sums = None  # torch float64 [2, num_sources]: loss sum, tokens (this rank, this interval)
        self.device = device  # where the sums live (the losses' device, or ``device`` before any add)

    def _buffer(self, device):
        import torch

        if self._sums is None:
            self._sums = torch.zeros((2, self.num_sources), dtype=torch.float64, device=device)
        elif self._sums.device != torch.device(device):
            self._sums = self._sums.to(device)
        self.device = self._sums.device
        return self._sums

    def _source_ids(self, sources, n: int | None = None):
        """``sources`` as a checked int64 array (validated on the host: no device sync); ``n``: the
        number of losses it must match."""
        if hasattr(sources, "detach"):
            sources = sources.detach().cpu().numpy()
        src = np.asarray(sources).reshape(-1)
        if n is not None and src.shape[0] != n:
            raise ValueError(f"sources has {src.shape[0]} entries but losses has {n}; give one source id per loss")
        if src.shape[0] and src.dtype.kind not in "iu":
            raise ValueError(f"sources must be integer source ids, got dtype {src.dtype}")
        if src.shape[0] and (src.min() < 0 or src.max() >= self.num_sources):  # cheap check first
            i = int(np.flatnonzero((src < 0) | (src >= self.num_sources))[0])
            raise ValueError(f"sources[{i}] = {int(src[i])} is outside [0, {self.num_sources}); pass the sampler's source ids")
        return src.astype(np.int64, copy=False)

    def add(self, losses, sources, tokens=None) -> None:
        """Add one micro-batch: ``losses[i]`` is example i's mean loss over ``tokens[i]`` supervised
        tokens (per-token losses: leave ``tokens`` out, each counts 1), from source ``sources[i]``."""
        import torch

        losses = torch.as_tensor(losses).detach().reshape(-1)
        src = torch.from_numpy(self._source_ids(sources, losses.shape[0])).to(losses.device, non_blocking=True)
        count = torch.ones_like(losses, dtype=torch.float64) if tokens is None else torch.as_tensor(tokens).reshape(-1)
        if count.shape[0] != losses.shape[0]:
            raise ValueError(f"tokens has {count.shape[0]} entries but losses has {losses.shape[0]}; give one count per loss")
        count = count.to(device=losses.device, dtype=torch.float64)
        sums = self._buffer(losses.device)
        sums.index_add_(1, src, torch.stack((losses.double() * count, count)))  # one kernel for both rows

    def add_packed(self, token_losses, batch, sources) -> None:
        """Add one packed micro-batch straight from its per-token losses (``[rows, width]``, e.g.
        :func:`packwise.packing.token_losses`): the same sums as ``add(*example_losses(...))``, bit
        for bit: on CPU in one numba pass, on an accelerator in a few device kernels without a host
        sync (``sources``: the source of each
        example in collator order, e.g. ``sampler.sources_of(batch_indices)``; examples past its end
        are left out, as ``add(loss[:n], sources, tokens[:n])`` would).  Needs the
        collator's ``seq_idx`` layout (``batch["seq_idx"]``, ``batch["example_index"]``)."""
        import torch

        if "seq_idx" not in batch or "example_index" not in batch:
            raise ValueError("add_packed needs batch['seq_idx'] and batch['example_index']; add 'seq_idx' to the collator layout")
        tok = torch.as_tensor(token_losses).detach()
        labels = batch["labels"]
        if tuple(tok.shape) != tuple(labels.shape):
            raise ValueError(f"token losses have shape {tuple(tok.shape)} but batch['labels'] has {tuple(labels.shape)}")
        device = tok.device
        src = self._source_ids(sources)
        segments = batch["example_index"]
        if batch["seq_idx"].numel() != tok.numel():
            raise ValueError(f"batch['seq_idx'] has {batch['seq_idx'].numel()} entries but the token losses {tok.numel()}; pass the collator's batch unchanged")
        if _all_on_cpu(tok, labels, batch["seq_idx"], segments):  # one kernel, no torch dispatch per op
            sums = self._buffer(device)
            values = tok if tok.dtype == torch.float32 else tok.float()
            _source_loss_kernels.add_source_sums(
                values.reshape(-1).numpy(), labels.reshape(-1).numpy(), batch["seq_idx"].reshape(-1).numpy(),
                segments.numpy(), src, sums.numpy(),
            )
            return
        loss, count = _example_sums(tok, labels, batch["seq_idx"], segments, src.shape[0])
        src_t = torch.from_numpy(src).to(device, non_blocking=True)
        self._buffer(device).index_add_(1, src_t, torch.stack((loss.double() * count, count)))

    def step(self) -> None:
        """End one step; after the interval's last step, reduce once and call ``policy.observe``."""
        self.steps += 1
        if self.steps % self.update_every == 0:
            self._end_interval(self.steps // self.update_every - 1)

    def _end_interval(self, interval: int) -> None:
        import torch

        sums = self._buffer(self.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            if torch.distributed.get_world_size(self.group) > 1:
                torch.distributed.all_reduce(sums, group=self.group)
        loss_sum, tokens = sums.cpu().numpy()
        self._sums = None
        self.last_loss = np.divide(loss_sum, tokens, out=np.full(self.num_sources, np.nan), where=tokens > 0)
        self.intervals_observed += 1
        if self.policy is not None:
            self.policy.observe(interval, loss_sum.copy(), tokens.copy())

    def logs(self, prefix: str = "loss/") -> dict[str, float]:
        """``{prefix + name: mean loss}`` of the last reduced interval (sources with tokens only)."""
        names = self.names or [str(i) for i in range(self.num_sources)]
        return {f"{prefix}{n}": round(float(v), 4) for n, v in zip(names, self.last_loss) if np.isfinite(v)}

    def state_dict(self) -> dict[str, Any]:
        """This rank's step count and unreduced partial sums (each rank saves its own)."""
        sums = np.zeros((2, self.num_sources)) if self._sums is None else self._sums.cpu().numpy()
        return {
            "num_sources": self.num_sources,
            "update_every": self.update_every,
            "steps": self.steps,
            "intervals_observed": self.intervals_observed,
            "loss_sum": sums[0].tolist(),
            "tokens": sums[1].tolist(),
            "last_loss": [None if not np.isfinite(v) else float(v) for v in self.last_loss],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state saved by a tracker with the same ``num_sources`` and ``update_every``."""
        import torch

        for name in ("num_sources", "update_every"):
            if state.get(name) != getattr(self, name):
                raise ValueError(
                    f"tracker state was saved with {name}={state.get(name)!r} but this tracker has "
                    f"{name}={getattr(self, name)!r}; rebuild it with the saved arguments"
                )
        self.steps = as_int(state["steps"], "steps")
        self.intervals_observed = as_int(state["intervals_observed"], "intervals_observed")
        self.last_loss = np.array([np.nan if v is None else v for v in state["last_loss"]], dtype=np.float64)
        sums = np.array([state["loss_sum"], state["tokens"]], dtype=np.float64)
        self._sums = torch.from_numpy(sums) if sums.any() else None


def _example_sums(tok, labels, seq_idx, example_index, num_examples: int):
    """``(mean loss, supervised tokens)`` of each of ``num_examples`` examples, float32 and float64:
    :func:`packwise.packing.example_losses`'s arithmetic, with padding segments (-1) scattered into
    a spare first slot and examples numbered ``num_examples`` or more into a spare last one,
    instead of a boolean index (which would sync the device)."""
    import torch

    device = tok.device
    mask = labels != -100
    seq = seq_idx.reshape(-1).long().to(device)
    segments = example_index.to(device)
    seg_sum = torch.zeros(segments.shape[0], dtype=torch.float32, device=device).index_add_(0, seq, (tok.float() * mask).reshape(-1))
    seg_cnt = torch.zeros(segments.shape[0], dtype=torch.int64, device=device).index_add_(0, seq, mask.reshape(-1).long())
    slot = (segments + 1).clamp_(max=num_examples + 1)
    loss = torch.zeros(num_examples + 2, dtype=torch.float32, device=device).index_copy_(0, slot, seg_sum / seg_cnt.clamp(min=1))
    count = torch.zeros(num_examples + 2, dtype=torch.float64, device=device).index_copy_(0, slot, seg_cnt.double())
    return loss[1 : num_examples + 1], count[1 : num_examples + 1]


def _all_on_cpu(*tensors) -> bool:
    return all(t.device.type == "cpu" for t in tensors)


@contextmanager
def count_all_reduce() -> Iterator[list]:
    """Count the ``torch.distributed.all_reduce`` calls made inside the block (``len`` of the list
    yielded): the check that online mixing costs one collective per interval and none per step.

    Example:
        >>> from packwise.selection import count_all_reduce
        >>> with count_all_reduce() as calls:
        ...     pass
        >>> len(calls)
        0
    """
    import torch.distributed as dist

    calls: list = []
    real = dist.all_reduce

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    dist.all_reduce = counting
    try:
        yield calls
    finally:
        dist.all_reduce = real


__all__ = ["SourceLossTracker", "count_all_reduce"]
