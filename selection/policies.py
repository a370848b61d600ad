"""Score-to-selection policies shared by every score (loss, learnability, any column).

Deterministic: ``topk`` (the ``k`` highest), ``threshold`` (every score ``>= threshold``).
Stochastic (Stochastic Batch Acquisition): ``softmax`` (``p ~ exp(beta * s)``), ``power``
(``p ~ s ** beta``, scores ``>= 0``), ``softrank`` (``p ~ rank ** -beta``, rank 1 = highest).
Stochastic policies draw ``k`` of ``N`` without replacement in O(N) with exponential keys
(Gumbel-top-k, a numba kernel) and can return importance weights ``1 / (N p_i)`` with
``p_i = pi_i / k`` and ``pi_i`` the exact conditional inclusion probability given the
``(k+1)``-th key, so ``mean(weight * loss)`` over the sample is an unbiased estimate of the full mean.
"""

from __future__ import annotations

import numpy as np

from . import _kernels
from ._checks import as_int, exact, rng, round_half_up
from ._policy import EpochPlan, _EpochPolicy
from .scores import ScoreStore

POLICIES: tuple[str, ...] = ("topk", "threshold", "softmax", "power", "softrank")


def _log_weights(scores: np.ndarray, policy: str, beta: float) -> np.ndarray:
    s = scores.astype(np.float64)
    if policy == "softmax":
        return beta * (s - s.max()) if s.shape[0] else s
    if policy == "power":
        bad = np.flatnonzero(s < 0)
        if bad.shape[0]:
            j = int(bad[0])
            raise ValueError(f"scores[{j}] = {s[j]} is negative; policy='power' needs scores >= 0 (use softmax)")
        with np.errstate(divide="ignore"):
            return beta * np.log(s)
    ranks = np.empty(s.shape[0], np.float64)
    ranks[np.argsort(-s, kind="stable")] = np.arange(1, s.shape[0] + 1)
    return -beta * np.log(ranks)


def _draw(scores, k, policy, beta, threshold, seed, epoch) -> tuple[np.ndarray, np.ndarray]:
    """Sorted chosen ids and each one's inclusion probability (1 for deterministic policies)."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    s = np.asarray(scores)
    if s.ndim != 1 or s.dtype.kind not in "fiu":
        raise ValueError(f"scores must be a 1-D numeric array, got shape {s.shape} dtype {s.dtype}")
    bad = np.flatnonzero(~np.isfinite(s))
    if bad.shape[0]:
        j = int(bad[0])
        raise ValueError(f"scores[{j}] = {s[j]} is not finite; fill or drop it before selecting")
    n = s.shape[0]
    if policy == "threshold":
        if threshold is None:
            raise ValueError("policy='threshold' needs threshold=<score>; examples scoring >= it are kept")
        ids = np.flatnonzero(s >= threshold).astype(np.int64)
        return ids, np.ones(ids.shape[0])
    if k is None:
        raise ValueError(f"policy={policy!r} needs k (how many examples to keep)")
    k = as_int(k, "k")
    if k > n:
        raise ValueError(f"k={k} is larger than the {n} scores; pass k <= len(scores)")
    if policy == "topk":
        order = np.argsort(-s.astype(np.float64), kind="stable")[:k]
        return np.sort(order).astype(np.int64), np.ones(k)
    if not np.isfinite(beta):
        raise ValueError(f"beta must be finite, got {beta!r}")
    log_w = _log_weights(s, policy, float(beta))
    positive = int(np.count_nonzero(np.isfinite(log_w)))
    if k > positive:
        raise ValueError(
            f"k={k} but only {positive} scores have a nonzero probability under policy={policy!r}; lower k or use "
            f"softmax"
        )
    exponentials = rng(as_int(seed, "seed"), as_int(epoch, "epoch"), 2).standard_exponential(n)
    keys = _kernels.exponential_keys(log_w, exponentials)
    ids, log_tau = _kernels.bottom_k(keys, k)
    return ids, _kernels.inclusion_probabilities(log_w, ids, log_tau)


def select_by_score(
    scores,
    k: int | None = None,
    policy: str = "topk",
    beta: float = 1.0,
    *,
    threshold: float | None = None,
    seed: int = 0,
    epoch: int = 0,
    importance_weights: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, weights)``: sorted int64 ids chosen from ``scores`` and their float32 loss weights.

    Deterministic policies return weight 1 (they cannot be unbiased); stochastic ones return
    ``1 / (N p_i)`` when ``importance_weights`` (else 1).  Same ``(seed, epoch)``, same draw.

    Example:
        >>> import numpy as np
        >>> from packwise.selection import select_by_score
        >>> s = np.array([0.1, 3.0, 0.5, 2.0, 9.0], np.float32)
        >>> select_by_score(s, 2, "topk")[0].tolist(), select_by_score(s, policy="threshold", threshold=1.0)[0].tolist()
        ([1, 4], [1, 3, 4])
        >>> ids, w = select_by_score(s, 5, "softmax")  # k = N: everything, weight 1
        >>> ids.tolist(), w.tolist()
        ([0, 1, 2, 3, 4], [1.0, 1.0, 1.0, 1.0, 1.0])
    """
    ids, pi = _draw(scores, k, policy, beta, threshold, seed, epoch)
    if not importance_weights or policy in ("topk", "threshold"):
        return ids, np.ones(ids.shape[0], np.float32)
    return ids, (ids.shape[0] / (len(scores) * pi)).astype(np.float32)


class ScoreSelector(_EpochPolicy):
    """Each epoch keep ``round(fraction * N)`` examples by a policy over the current scores.

    Unseen examples are always kept (weight ``k / N``, their inclusion probability being 1);
    the rest of the budget is drawn from the seen ones by ``policy``.  ``update`` records the
    per-example losses as scores (or pass any column to :meth:`set_scores`).

    Example:
        >>> import numpy as np, torch
        >>> from packwise.selection import ScoreSelector
        >>> sel = ScoreSelector(6, fraction=0.5, policy="topk", seed=0)
        >>> sel.indices_for_epoch(0).tolist()  # nothing scored yet: all kept
        [0, 1, 2, 3, 4, 5]
        >>> _ = sel.update(np.arange(6), torch.tensor([0.1, 5.0, 0.2, 4.0, 0.3, 3.0]))
        >>> sel.indices_for_epoch(1).tolist()
        [1, 3, 5]
    """

    _kind = "score_selector"

    def __init__(
        self,
        num_examples: int,
        fraction: float,
        policy: str = "softmax",
        beta: float = 1.0,
        seed: int = 0,
        *,
        threshold: float | None = None,
        importance_weights: bool = True,
        momentum: float | None = None,
    ):
        super().__init__(num_examples, seed)
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if not 0 < exact(fraction, "fraction") <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        self.fraction = float(fraction)
        self.policy = policy
        self.beta = float(beta)
        self.threshold = threshold
        self.importance_weights = bool(importance_weights)
        self.k = max(1, round_half_up(exact(fraction, "fraction") * self.num_examples))
        self.store = ScoreStore(self.num_examples, momentum)

    def _settings(self) -> dict:
        return {
            "num_examples": self.num_examples,
            "fraction": self.fraction,
            "policy": self.policy,
            "beta": self.beta,
            "seed": self.seed,
            "threshold": self.threshold,
            "importance_weights": self.importance_weights,
            "momentum": self.store.momentum,
        }

    def _record(self, ids: np.ndarray, losses: np.ndarray) -> None:
        self.store._scatter(ids, losses, self.epoch)

    def set_scores(self, scores, epoch: int = 0) -> None:
        """Use any precomputed column (learnability, reducible loss, ...) as every example's score."""
        self.store.update(np.arange(self.num_examples), scores, epoch)
        self._plan = None

    def _extra_state(self) -> dict:
        return {"store": self.store.state_dict()}

    def _load_extra_state(self, state: dict) -> None:
        if "store" not in state:
            raise ValueError("state_dict is missing ['store']; pass a dict saved by ScoreSelector.state_dict()")
        self.store.load_state_dict(state["store"])

    def _select(self, epoch: int):
        n = self.num_examples
        seen = self.store.seen
        unseen = np.flatnonzero(~seen).astype(np.int64)
        seen_ids = np.flatnonzero(seen).astype(np.int64)
        budget = max(self.k - unseen.shape[0], 0)
        if self.policy == "threshold" or budget > 0:
            ids, pi = _draw(
                self.store.scores[seen_ids],
                min(budget, seen_ids.shape[0]),
                self.policy,
                self.beta,
                self.threshold,
                self.seed,
                epoch,
            )
            chosen = seen_ids[ids]
        else:
            chosen, pi = np.zeros(0, np.int64), np.zeros(0)
        kept = np.concatenate([unseen, chosen])
        total = kept.shape[0]
        weights = np.ones(total, np.float32)
        if self.importance_weights and self.policy in ("softmax", "power", "softrank"):
            # Horvitz-Thompson over the whole sample: unseen ones are kept with probability 1
            weights[: unseen.shape[0]] = total / n
            weights[unseen.shape[0] :] = (total / (n * pi)).astype(np.float32)
        order = np.argsort(kept, kind="stable")
        kept, weights = kept[order], weights[order]
        return kept, weights, EpochPlan(epoch, n, int(total), False)

    def _planned_size(self, epoch: int) -> int:
        return self.k if self.policy != "threshold" else self.num_examples
