"""InfoBatch: unbiased dynamic pruning of well-learned examples, with a full-data tail.

Each pruning epoch, a random ``prune_ratio`` share of the *seen* examples whose score is below
the threshold is skipped and the kept ones are upweighted by the inverse of their keep
probability, so the epoch's summed gradient is unbiased; the last ``1 - delta`` of the epochs use
all data with weight 1.  Unseen examples are never pruned (no score is not a low score).
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from typing import Sequence

import numpy as np

from . import _kernels
from ._checks import as_int, exact, rng, round_half_up
from ._policy import EpochPlan, _EpochPolicy
from .scores import ScoreStore


MAX_PRUNE_RATIO = 0.9


def _clip_ratio(ratio: float, group: int) -> float:
    """``prune_ratio`` clipped to 0.9 with a warning: the kept share stays >= 0.1, as in the InfoBatch
    reference, so no kept loss is weighted by more than 1/(1-r) = 10 (0.95 would give 20x)."""
    if ratio <= MAX_PRUNE_RATIO:
        return ratio
    warnings.warn(
        f"prune_ratio[{group}]={ratio} leaves fewer than 10% of the candidates and weights each kept loss by "
        f"{1 / (1 - ratio):.3g}x; clipped to {MAX_PRUNE_RATIO} (weights up to 10x) as the InfoBatch reference does",
        UserWarning,
        stacklevel=4,
    )
    return MAX_PRUNE_RATIO


class InfoBatch(_EpochPolicy):
    """InfoBatch pruning policy over ``num_examples`` examples for a ``num_epochs`` run.

    * ``threshold="mean"`` (default): candidates are seen examples scoring below the mean seen
      score; a random ``round(prune_ratio * candidates)`` of them is skipped; the kept candidates
      get weight ``candidates / kept_candidates`` (= ``1 / (1 - prune_ratio)`` whenever that
      count is whole), everything else weight 1.
    * ``threshold=(q1, q2, ...)``: quantile edges of the seen scores; bucket ``g`` (below ``q_g``,
      above the previous edge) is pruned by ``prune_ratio[g]``; scores above the last edge are kept.
    * ``target_keep=f``: every pruning epoch keeps exactly ``round(f * N)`` examples (once enough
      examples have been seen): the pruned ones are drawn from the below-mean examples, widened
      to the lowest scores when fewer than ``pruned / max_prune_ratio`` are below the mean.
    * epochs ``>= floor(num_epochs * delta)`` (exact decimal arithmetic) use all data, weight 1.
    * a ``prune_ratio`` above 0.9 is clipped to 0.9 with a ``UserWarning`` (the reference keeps at
      least 10%): kept losses are weighted at most 10x, where 0.95 would give 20x.

    ``update(indices, per_example_loss)`` records the scores (gathered across DDP ranks) and
    returns the weighted mean loss; ``momentum`` smooths scores by EMA.

    Example:
        >>> import numpy as np, torch
        >>> from packwise.selection import InfoBatch
        >>> ib = InfoBatch(8, num_epochs=4, prune_ratio=0.5, delta=0.75, seed=0)
        >>> ib.indices_for_epoch(0).tolist()  # nothing seen yet: nothing pruned
        [0, 1, 2, 3, 4, 5, 6, 7]
        >>> loss = ib.update(np.arange(8), torch.tensor([0.1, 0.2, 0.3, 0.4, 5.0, 6.0, 7.0, 8.0]))
        >>> kept = ib.indices_for_epoch(1)
        >>> len(kept), kept[-4:].tolist(), ib.plan().kept_fraction
        (6, [4, 5, 6, 7], 0.75)
        >>> ib.weights_for(kept).tolist()
        [2.0, 2.0, 1.0, 1.0, 1.0, 1.0]
        >>> ib.indices_for_epoch(3).shape[0], ib.plan().full_data  # the annealing tail
        (8, True)
    """

    _kind = "infobatch"

    def __init__(
        self,
        num_examples: int,
        num_epochs: int,
        prune_ratio: float | Sequence[float] = 0.5,
        delta: float = 0.875,
        seed: int = 0,
        *,
        threshold: str | Sequence[float] = "mean",
        target_keep: float | None = None,
        max_prune_ratio: float = 0.9,
        momentum: float | None = None,
    ):
        super().__init__(num_examples, seed)
        self.num_epochs = as_int(num_epochs, "num_epochs", 1)
        d = exact(delta, "delta")
        if not 0 <= d <= 1:
            raise ValueError(f"delta must be in [0, 1] (the share of epochs that prune), got {delta!r}")
        self.delta = float(delta)
        self.prune_epochs = math.floor(self.num_epochs * d)
        if isinstance(threshold, str):
            if threshold != "mean":
                raise ValueError(f"threshold must be 'mean' or a sequence of quantiles in (0, 1), got {threshold!r}")
            self.quantiles: tuple[float, ...] | None = None
        else:
            qs = tuple(float(q) for q in threshold)
            if not qs or any(not 0 < q < 1 for q in qs) or any(b <= a for a, b in zip(qs, qs[1:])):
                raise ValueError(
                    f"threshold quantiles must be increasing values in (0, 1), got {threshold!r}; "
                    f"e.g. threshold=(0.2, 0.85) with prune_ratio=(0.75, 0.5)"
                )
            self.quantiles = qs
        groups = 1 if self.quantiles is None else len(self.quantiles)
        ratios = (prune_ratio,) * groups if np.ndim(prune_ratio) == 0 else tuple(prune_ratio)
        if len(ratios) != groups:
            raise ValueError(
                f"prune_ratio has {len(ratios)} values but threshold defines {groups} bucket(s); give one ratio "
                f"per quantile edge"
            )
        for g, r in enumerate(ratios):
            if not 0 <= exact(r, f"prune_ratio[{g}]") < 1:
                raise ValueError(f"prune_ratio[{g}] must be in [0, 1), got {r!r}")
        self.prune_ratio = tuple(_clip_ratio(float(r), g) for g, r in enumerate(ratios))
        if target_keep is not None:
            if self.quantiles is not None:
                raise ValueError("target_keep works with threshold='mean'; drop the quantile threshold or target_keep")
            if not 0 < exact(target_keep, "target_keep") <= 1:
                raise ValueError(f"target_keep must be in (0, 1] (the fraction kept per epoch), got {target_keep!r}")
        if not 0 < exact(max_prune_ratio, "max_prune_ratio") < 1:
            raise ValueError(f"max_prune_ratio must be in (0, 1), got {max_prune_ratio!r}")
        self.target_keep = None if target_keep is None else float(target_keep)
        self.max_prune_ratio = float(max_prune_ratio)
        self.store = ScoreStore(self.num_examples, momentum)

    def _settings(self) -> dict:
        return {
            "num_examples": self.num_examples,
            "num_epochs": self.num_epochs,
            "prune_ratio": self.prune_ratio,
            "delta": self.delta,
            "seed": self.seed,
            "quantiles": self.quantiles,
            "target_keep": self.target_keep,
            "max_prune_ratio": self.max_prune_ratio,
            "momentum": self.store.momentum,
        }

    def _record(self, ids: np.ndarray, losses: np.ndarray) -> None:
        self.store._scatter(ids, losses, self.epoch)

    def _extra_state(self) -> dict:
        return {"store": self.store.state_dict()}

    def _load_extra_state(self, state: dict) -> None:
        if "store" not in state:
            raise ValueError("state_dict is missing ['store']; pass a dict saved by InfoBatch.state_dict()")
        self.store.load_state_dict(state["store"])

    @property
    def pruned_to_keep(self) -> int:
        """Examples pruned per epoch in ``target_keep`` mode."""
        if self.target_keep is None:
            raise ValueError("pruned_to_keep is defined only with target_keep")
        n = self.num_examples
        return n - round_half_up(exact(self.target_keep, "target_keep") * n)

    # --- the epoch plan ---------------------------------------------------------------------
    def _select(self, epoch: int):
        n = self.num_examples
        if epoch >= self.num_epochs:
            raise ValueError(
                f"epoch {epoch} is past num_epochs={self.num_epochs}; build InfoBatch with the run's epoch count"
            )
        everything = np.arange(n, dtype=np.int64)
        if epoch >= self.prune_epochs:
            return everything, np.ones(n, np.float32), EpochPlan(epoch, n, n, True)
        scores, seen = self.store.scores, self.store.seen
        mean, num_seen = self.store.seen_mean()
        if num_seen == 0:
            return everything, np.ones(n, np.float32), EpochPlan(epoch, n, n, False)
        if self.quantiles is not None:
            edges = np.quantile(scores[seen].astype(np.float64), self.quantiles)
        else:
            edges = np.array([mean], np.float64)
        groups = _kernels.assign_groups(scores, seen, edges.astype(np.float32))
        if self.target_keep is not None:
            members, counts = self._target_candidates(groups, num_seen)
        else:
            members = [np.flatnonzero(groups == g) for g in range(edges.shape[0])]
            counts = [
                min(round_half_up(exact(r, "prune_ratio") * c.shape[0]), max(c.shape[0] - 1, 0))
                for r, c in zip(self.prune_ratio, members)
            ]
        gen = rng(self.seed, epoch, 0)
        weights = np.ones(n, np.float32)
        report = []
        for cand, pruned in zip(members, counts):
            c = int(cand.shape[0])
            if pruned == 0:
                report.append((c, 0, 1.0))
                continue
            drop = cand[gen.choice(c, pruned, replace=False)]
            w = np.float32(c / (c - pruned))
            weights[cand] = w
            weights[drop] = 0
            report.append((c, int(pruned), float(w)))
        kept = np.flatnonzero(weights > 0).astype(np.int64)
        plan = EpochPlan(epoch, n, int(kept.shape[0]), False, tuple(float(e) for e in edges), tuple(report))
        return kept, weights[kept], plan

    def _target_candidates(self, groups: np.ndarray, num_seen: int):
        pruned = self.pruned_to_keep
        cap = exact(self.max_prune_ratio, "max_prune_ratio")
        below = np.flatnonzero(groups == 0)
        need = math.ceil(Fraction(pruned) / cap)
        if below.shape[0] >= need:
            cand = below
        else:
            seen_ids = np.flatnonzero(self.store.seen)
            lowest = np.argsort(self.store.scores[seen_ids], kind="stable")[: min(need, num_seen)]
            cand = np.sort(seen_ids[lowest])
        c = int(cand.shape[0])
        return [cand], [min(pruned, math.floor(cap * c), max(c - 1, 0))]

    def _planned_size(self, epoch: int) -> int:
        n = self.num_examples
        if epoch >= min(self.prune_epochs, self.num_epochs) or epoch >= self.num_epochs:
            return n
        if self.target_keep is not None:
            if epoch == 0 and not self.store.seen.any():
                return n
            return n - min(self.pruned_to_keep, math.floor(exact(self.max_prune_ratio, "r") * n))
        pruning = [k for e, k in self._history.items() if e < self.prune_epochs and k < n]
        if pruning:
            return pruning[-1]
        if epoch == 0:
            return n
        return n - round_half_up(exact(self.prune_ratio[0], "prune_ratio") * n / 2)

    def planned_sizes(self, total_epochs: int) -> np.ndarray:
        """Examples per epoch: exact for planned epochs, the full-data tail and ``target_keep``;
        otherwise an estimate from the last pruned epoch (half of the data below the mean before)."""
        return super().planned_sizes(total_epochs)
