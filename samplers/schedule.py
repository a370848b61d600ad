"""``ProgressSchedule``: an LR multiplier driven by epoch progress, so a pruned (shorter) epoch
cannot put a step-count schedule out of place."""

from __future__ import annotations

import math

import numpy as np


class ProgressSchedule:
    """``LambdaLR(optimizer, ProgressSchedule(sampler, total_epochs))``: warm-up then cosine decay over
    *epoch progress*, ``(epoch + steps done in it / its own step count) / total_epochs``.

    Why: a step-count schedule is sized before training (``planned_steps``), but a pruning policy
    decides each epoch's length from scores it has not seen yet (InfoBatch planned 684 steps for a
    run that took 568), so the LR ends early or never reaches its floor. Here each epoch's length is
    read from ``len(sampler)`` when the epoch starts (after ``set_epoch``), so the last step of the
    last epoch ends exactly at ``final`` whatever the pruning did. ``batch_size``: examples per step
    for a sampler that yields examples (``PruningSampler`` without ``max_tokens``), 1 for a batch
    sampler; ``accumulation``: micro-batches per optimizer step. Call ``scheduler.step()`` once per
    optimizer step (the HF Trainer does).

    Example:
        >>> import numpy as np
        >>> from packwise.samplers import PackedBatchSampler, ProgressSchedule
        >>> s = PackedBatchSampler(np.array([5, 9, 3, 7]), max_tokens=12, num_replicas=1, rank=0)
        >>> f = ProgressSchedule(s, total_epochs=1, final=0.0)
        >>> s.set_epoch(0)
        >>> len(s), [round(f(step), 3) for step in range(4)]
        (2, [1.0, 0.5, 0.0, 0.0])
    """

    def __init__(self, sampler, total_epochs: int, *, warmup: float = 0.0, final: float = 0.0, batch_size: int = 1, accumulation: int = 1):
        for field, value in (("total_epochs", total_epochs), ("batch_size", batch_size), ("accumulation", accumulation)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if not 0 <= warmup < 1:
            raise ValueError(f"warmup must be a share of training in [0, 1), got {warmup!r}")
        if not 0 <= final <= 1:
            raise ValueError(f"final must be the last LR multiplier in [0, 1], got {final!r}")
        self.sampler = sampler
        self.total_epochs = int(total_epochs)
        self.warmup, self.final = float(warmup), float(final)
        self.batch_size, self.accumulation = int(batch_size), int(accumulation)
        self._epoch: int | None = None
        self._epoch_start = 0
        self._epoch_steps = 1

    def _steps_in_epoch(self) -> int:
        batches = math.ceil(len(self.sampler) / self.batch_size)
        return max(math.ceil(batches / self.accumulation), 1)

    def progress(self, step: int) -> float:
        """Share of training done after ``step`` optimizer steps, in [0, 1]."""
        epoch = int(self.sampler.epoch)
        if epoch != self._epoch:  # a new epoch: its length is known now; it began where the last one ended
            start = step if self._epoch is None else self._epoch_start + self._epoch_steps
            self._epoch, self._epoch_start, self._epoch_steps = epoch, start, self._steps_in_epoch()
        within = min((step - self._epoch_start) / self._epoch_steps, 1.0)
        return min((epoch + within) / self.total_epochs, 1.0)

    def __call__(self, step: int) -> float:
        p = self.progress(step)
        if p < self.warmup:
            return p / self.warmup
        span = (p - self.warmup) / (1 - self.warmup)
        return self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * span))
