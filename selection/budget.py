"""Token-budget schedules: how many tokens one optimizer step takes, growing over training.

A schedule turns a *global* budget (tokens per optimizer step, all ranks and micro-steps
together, the unit ``B_noise`` is measured in for a token-mean loss) into what a sampler needs:
``max_tokens`` per batch and ``accumulation`` micro-batches per step, so that
``budget = max_tokens * world_size * accumulation``.  ``max_tokens`` is a multiple of ``multiple``.
Without ``max_row_tokens`` the batch grows; with it the batch stays at most ``max_row_tokens`` and
the schedule raises ``accumulation`` instead (for a device that cannot hold a bigger batch).

The training loop calls ``schedule.step(tokens, noise)`` once per optimizer step with the step's
global token count (and, for :class:`AdaptiveBudget`, the smoothed noise scale), both all-reduced,
so every rank decides the same.  A decision taken at the end of a step takes effect
``lag_batches`` batches later (rounded up to a step boundary): a DataLoader runs its batch sampler
up to ``num_workers * prefetch_factor`` batches ahead of the loop, and a change must never land on
a batch that was already handed out.  Keep ``lag_batches`` >= that prefetch depth.

Positions count *global* batches since the schedule started (a step of ``accumulation``
micro-batches on ``world_size`` ranks moves ``accumulation * world_size``), the same unit as a
planned sampler's canonical cursor, so a change sits at the same place in the epoch's global
batch order whatever the world size.  :attr:`changes` lists where each budget begins; a sampler
given the schedule (``PackedBatchSampler(..., budget=schedule)``) re-plans the rest of its epoch
at each change.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


class BudgetChange(NamedTuple):
    """From global batch ``position`` on, batches hold ``max_tokens`` and a step takes ``accumulation``."""

    position: int
    max_tokens: int
    accumulation: int


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class BudgetSchedule:
    """The shared part: splitting a budget, the lag, the change list, counters and state."""

    def __init__(
        self,
        start: int,
        *,
        multiple: int = 1,
        world_size: int = 1,
        max_row_tokens: int | None = None,
        lag_batches: int = 16,
    ):
        self.multiple = _positive_int("multiple", multiple)
        self.world_size = _positive_int("world_size", world_size)
        self.max_row_tokens = None if max_row_tokens is None else _positive_int("max_row_tokens", max_row_tokens)
        if self.max_row_tokens is not None and self.max_row_tokens % self.multiple:
            raise ValueError(f"max_row_tokens={self.max_row_tokens} must be a multiple of multiple={self.multiple}")
        if isinstance(lag_batches, bool) or not isinstance(lag_batches, (int, np.integer)) or lag_batches < 0:
            raise ValueError(f"lag_batches must be an integer >= 0 (>= the DataLoader's prefetch depth), got {lag_batches!r}")
        self.lag_batches = int(lag_batches)
        self.steps = 0
        self.position = 0
        self.tokens_seen = 0
        self._changes = [BudgetChange(0, *self.split(_positive_int("start", start)))]

    # --- splitting ----------------------------------------------------------------------------
    def split(self, budget: float) -> tuple[int, int]:
        """``(max_tokens, accumulation)`` nearest ``budget`` (global tokens per step)."""
        per_rank = budget / self.world_size
        accumulation = 1 if self.max_row_tokens is None else max(1, math.ceil(per_rank / self.max_row_tokens))
        row = max(1, round(per_rank / accumulation / self.multiple)) * self.multiple
        if self.max_row_tokens is not None:
            row = min(row, self.max_row_tokens)
        return int(row), int(accumulation)

    # --- what is in effect ----------------------------------------------------------------------
    @property
    def changes(self) -> tuple[BudgetChange, ...]:
        """Every budget with the position it starts at (the first at position 0)."""
        return tuple(self._changes)

    def at(self, position: int) -> BudgetChange:
        """The budget in effect for global batch ``position``."""
        starts = [c.position for c in self._changes]
        return self._changes[int(np.searchsorted(starts, position, side="right")) - 1]

    @property
    def max_tokens(self) -> int:
        return self.at(self.position).max_tokens

    @property
    def accumulation(self) -> int:
        return self.at(self.position).accumulation

    @property
    def budget(self) -> int:
        """Global tokens per optimizer step in effect now (``max_tokens * world_size * accumulation``)."""
        now = self.at(self.position)
        return now.max_tokens * self.world_size * now.accumulation

    def _boundary(self, position: int) -> int:
        """The first step boundary at or after ``position`` (steps take ``accumulation`` batches)."""
        at = self.position
        while at < position:
            at += self.at(at).accumulation * self.world_size
        return int(at)

    def _latest_budget(self) -> int:
        last = self._changes[-1]
        return last.max_tokens * self.world_size * last.accumulation

    # --- stepping -------------------------------------------------------------------------------
    def _target(self, noise: float | None) -> float | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, tokens: int, noise: float | None = None, batches: int | None = None) -> BudgetChange | None:
        """End of an optimizer step that took ``tokens`` (global) over ``batches`` per-rank batches
        (default: the accumulation in effect).  Returns the change it scheduled, if any."""
        if isinstance(tokens, bool) or not isinstance(tokens, (int, np.integer)) or tokens < 0:
            raise ValueError(f"tokens must be the step's global token count (an integer >= 0), got {tokens!r}")
        now = self.at(self.position)
        batches = now.accumulation if batches is None else _positive_int("batches", batches)
        self.steps += 1
        self.position += batches * self.world_size
        self.tokens_seen += int(tokens)
        target = self._target(noise)
        if target is None:
            return None
        row, accumulation = self.split(target)
        if row * self.world_size * accumulation <= self._latest_budget():
            return None  # budgets only grow
        start = self._boundary(self.position + self.lag_batches * self.world_size)
        while self._changes[-1].position >= start:  # pending and past the sampler's reach: replaced
            self._changes.pop()
        change = BudgetChange(start, row, accumulation)
        self._changes.append(change)
        return change

    # --- resume ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "steps": self.steps,
            "position": self.position,
            "tokens_seen": self.tokens_seen,
            "changes": [list(c) for c in self._changes],
        }

    def load_state_dict(self, state: dict) -> None:
        missing = {"steps", "position", "tokens_seen", "changes"} - set(state)
        if missing:
            raise ValueError(f"budget schedule state is missing {sorted(missing)}; pass a dict saved by state_dict()")
        self.steps, self.position, self.tokens_seen = int(state["steps"]), int(state["position"]), int(state["tokens_seen"])
        self._changes = [BudgetChange(*(int(x) for x in c)) for c in state["changes"]]


class RampBudget(BudgetSchedule):
    """A fixed ramp: the budget grows linearly in tokens seen, from ``start`` to ``end`` over
    ``over_tokens`` (then stays at ``end``), in steps of ``multiple`` tokens per batch.

    Data seen drives it, not steps (*Time Transfer*: ``B_crit`` grows with tokens seen), so a run
    that resumes or changes world size stays on the same ramp.

    Example:
        >>> ramp = RampBudget(1024, 4096, over_tokens=20_000, multiple=512, lag_batches=0)
        >>> for _ in range(4):
        ...     _ = ramp.step(ramp.budget)
        >>> ramp.tokens_seen, ramp.budget, [c.max_tokens for c in ramp.changes]
        (5120, 2048, [1024, 1536, 2048])
    """

    def __init__(self, start: int, end: int, over_tokens: int, **kwargs):
        super().__init__(start, **kwargs)
        self.start, self.end = int(start), _positive_int("end", end)
        self.over_tokens = _positive_int("over_tokens", over_tokens)
        if self.end < self.start:
            raise ValueError(f"end={end} must be >= start={start}: a ramp only grows")

    def _target(self, noise: float | None) -> float:
        share = min(self.tokens_seen / self.over_tokens, 1.0)
        return self.start + (self.end - self.start) * share


class AdaptiveBudget(BudgetSchedule):
    """``budget = k * B_noise`` (global tokens per step), only growing, within
    ``[start, maximum]``, after ``warmup_steps`` steps (the first noise estimates are poor).

    Feed ``step(tokens, noise=gns.value)`` with a :class:`~packwise.selection.GradientNoiseScale`
    measured in tokens and computed from all-reduced quantities: every rank then decides the same
    change at the same step.  ``B_noise`` (= ``B_simple``) estimates the critical batch size; ``k``
    below 1 favours fewer examples, above 1 fewer steps.

    Example:
        >>> ada = AdaptiveBudget(1024, maximum=8192, k=0.5, multiple=256, lag_batches=2)
        >>> ada.step(1024, noise=6000.0)
        BudgetChange(position=3, max_tokens=3072, accumulation=1)
        >>> ada.step(1024, noise=5000.0), ada.max_tokens  # lower: no change; not yet in effect
        (None, 1024)
    """

    def __init__(self, start: int, maximum: int, *, k: float = 1.0, warmup_steps: int = 0, **kwargs):
        super().__init__(start, **kwargs)
        if not (isinstance(k, (int, float)) and math.isfinite(k) and k > 0):
            raise ValueError(f"k must be a finite number > 0 (budget = k * B_noise), got {k!r}")
        self.start, self.maximum, self.k = int(start), _positive_int("maximum", maximum), float(k)
        if self.maximum < self.start:
            raise ValueError(f"maximum={maximum} must be >= start={start}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, (int, np.integer)) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        self.warmup_steps = int(warmup_steps)

    def _target(self, noise: float | None) -> float | None:
        if noise is None or not math.isfinite(noise) or noise <= 0 or self.steps <= self.warmup_steps:
            return None
        return min(self.k * noise, self.maximum)
