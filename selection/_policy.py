"""The epoch-plan protocol every selection policy implements (private base class).

A policy computes, once per epoch, the sorted kept ids and their loss weights from
``(seed, epoch, scores)``, caches that plan for the whole epoch (scores keep changing while the
epoch runs), and turns per-example losses into the loss to backpropagate."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from . import _kernels, _torch
from ._checks import as_ids, as_int, check_same_settings, check_state, steps_for


@dataclass(frozen=True)
class EpochPlan:
    """What a policy decided for one epoch (a plain record: nothing is printed or logged).

    ``groups`` lists, per prunable group, ``(candidates, pruned, weight)``; ``thresholds`` the score
    edges used (empty when nothing was scored yet or in full-data epochs)."""

    epoch: int
    num_examples: int
    kept: int
    full_data: bool
    thresholds: tuple[float, ...] = ()
    groups: tuple[tuple[int, int, float], ...] = field(default=())

    @property
    def kept_fraction(self) -> float:
        return self.kept / self.num_examples


class _EpochPolicy:
    """Base class: subclasses implement ``_select(epoch) -> (kept ids, kept weights, EpochPlan)``."""

    _kind = "policy"

    def __init__(self, num_examples: int, seed: int):
        self.num_examples = as_int(num_examples, "num_examples", 1)
        self.seed = as_int(seed, "seed")
        self.epoch = 0
        self._plan: EpochPlan | None = None
        self._kept = np.zeros(0, np.int64)
        self._table: np.ndarray | None = None  # float32 weight per example, 0 = not kept this epoch
        self._history: dict[int, int] = {}

    # --- to implement -----------------------------------------------------------------------
    def _select(self, epoch: int) -> tuple[np.ndarray, np.ndarray, EpochPlan]:  # pragma: no cover
        raise NotImplementedError

    def _settings(self) -> dict:  # pragma: no cover
        raise NotImplementedError

    def _record(self, ids: np.ndarray, losses: np.ndarray) -> None:
        """Store scores (policies without scores ignore them)."""

    # --- the protocol -----------------------------------------------------------------------
    def indices_for_epoch(self, epoch: int) -> np.ndarray:
        """Sorted int64 ids kept in ``epoch``; makes ``epoch`` current (planned once, then cached)."""
        epoch = as_int(epoch, "epoch")
        if self._plan is None or self._plan.epoch != epoch:
            kept, weights, plan = self._select(epoch)
            table = np.zeros(self.num_examples, np.float32)
            table[kept] = weights
            self._kept, self._table, self._plan = kept, table, plan
            self._history[epoch] = plan.kept
        self.epoch = epoch
        return self._kept

    def weights_for(self, indices) -> np.ndarray:
        """float32 loss weight of each id under the current epoch's plan."""
        return self._weights(as_ids(indices, self.num_examples))

    def _weights(self, ids: np.ndarray) -> np.ndarray:
        if self._plan is None or self._plan.epoch != self.epoch:
            self.indices_for_epoch(self.epoch)
        weights = self._table[ids]
        if weights.all():
            return weights
        bad = np.flatnonzero(weights == 0)
        if bad.shape[0]:
            j = int(bad[0])
            raise ValueError(
                f"indices[{j}] = {int(ids[j])} is not kept in epoch {self.epoch}; feed the loader from this "
                f"policy's indices_for_epoch (e.g. PruningSampler) and call set_epoch each epoch"
            )
        return weights

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """The plan of ``epoch`` (default: the current one): kept count, fraction, thresholds."""
        self.indices_for_epoch(self.epoch if epoch is None else epoch)
        return self._plan

    def __len__(self) -> int:
        """Examples kept in the current epoch."""
        return int(self.indices_for_epoch(self.epoch).shape[0])

    def update(self, indices, per_example_loss):
        """Record the batch's losses as scores and return ``mean(weight * loss)`` to backpropagate.

        Under ``torch.distributed`` the ids (int64) and losses (float32) of every rank are gathered
        first, so every rank holds the same scores.  ``per_example_loss`` is not modified."""
        loss = _torch.check_loss(per_example_loss)
        ids = _torch.ids_array(indices)
        if ids is None:
            ids = as_ids(indices, self.num_examples)
        if ids.shape[0] != loss.shape[0]:
            raise ValueError(
                f"indices has {ids.shape[0]} ids but per_example_loss has {loss.shape[0]} values; pass one "
                f"index per example of the batch"
            )
        if self._plan is None or self._plan.epoch != self.epoch:
            self.indices_for_epoch(self.epoch)
        values = loss.detach().numpy() if loss.is_cpu and loss.dtype == _torch.float32() else loss.detach().float().cpu().numpy()
        weights, problem, j = _kernels.check_batch(ids, values, self._table)
        if problem == 1:
            as_ids(ids, self.num_examples)  # raises the out-of-range error
        elif problem == 2:
            self._weights(ids)  # raises the not-kept error
        elif problem == 3:
            raise ValueError(f"per_example_loss[{j}] = {float(values[j])} is not finite (index {int(ids[j])})")
        all_ids, all_values = _torch.gather(ids, values)
        self._record(all_ids, all_values)
        return _torch.weighted_mean(loss, weights)

    # --- schedules --------------------------------------------------------------------------
    def _planned_size(self, epoch: int) -> int:  # pragma: no cover
        raise NotImplementedError

    def planned_sizes(self, total_epochs: int) -> np.ndarray:
        """Examples per epoch for epochs ``0 .. total_epochs-1`` (planned epochs are exact)."""
        total_epochs = as_int(total_epochs, "total_epochs")
        return np.array(
            [self._history[e] if e in self._history else self._planned_size(e) for e in range(total_epochs)], np.int64
        )

    def planned_steps(
        self, total_epochs: int, batch_size: int = 1, num_replicas: int = 1, drop_last: bool = False
    ) -> int:
        """Optimizer steps over ``total_epochs`` for a step-based LR schedule built ahead of time."""
        batch_size = as_int(batch_size, "batch_size", 1)
        num_replicas = as_int(num_replicas, "num_replicas", 1)
        sizes = self.planned_sizes(total_epochs)
        return int(sum(steps_for(int(s), batch_size, num_replicas, drop_last) for s in sizes))

    # --- resume -----------------------------------------------------------------------------
    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, state: dict) -> None:
        pass

    def state_dict(self) -> dict:
        """Settings, the current epoch's plan (ids and weights) and the scores: resume is exact
        even mid-epoch, when scores have moved on since the plan was made.  Plain Python values
        and NumPy arrays: save with :func:`packwise.samplers.save_state`, which never unpickles on load."""
        if self._plan is None:
            self.indices_for_epoch(self.epoch)
        return {
            "kind": self._kind,
            "settings": self._settings(),
            "epoch": self.epoch,
            "plan": asdict(self._plan),
            "kept": self._kept.copy(),
            "weights": self._table[self._kept].copy(),
            "history": dict(self._history),
            **self._extra_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a policy saved by :meth:`state_dict` (built with the same arguments)."""
        required = {"kind", "settings", "epoch", "plan", "kept", "weights", "history"}
        check_state(state, required, "state_dict()", kind=self._kind, owner="policy")
        check_same_settings(state["settings"], self._settings(), self._kind)
        kept = as_ids(state["kept"], self.num_examples, "state_dict['kept']")
        table = np.zeros(self.num_examples, np.float32)
        table[kept] = np.asarray(state["weights"], np.float32)
        self._load_extra_state(state)
        self.epoch = int(state["epoch"])
        plan = dict(state["plan"])
        plan["thresholds"] = tuple(plan["thresholds"])
        plan["groups"] = tuple(tuple(g) for g in plan["groups"])
        self._plan, self._kept, self._table = EpochPlan(**plan), kept, table
        self._history = {int(k): int(v) for k, v in state["history"].items()}
