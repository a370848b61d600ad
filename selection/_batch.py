"""The shared face of the in-step (super-batch) selectors: the selection record, input checks, DDP
gathers, sub-batch sizing and the step counter that is their whole random state (private).

Every random draw of a selector comes from ``rng(seed, step, ...)``, so two counters (``seed``,
``step``) are the complete RNG state: ``state_dict`` saves them and resume is exact.  torch is
imported inside the functions so ``packwise.selection`` stays torch-free at import time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from . import _torch
from ._checks import as_int, as_values, check_same_settings, check_state, exact
from .policies import POLICIES


@dataclass(frozen=True)
class BatchSelection:
    """What one in-step selection chose from a super-batch (identical on every DDP rank).

    ``ids`` are the chosen global example ids (in super-batch order), ``positions`` their rows in
    the (gathered) super-batch, ``weights`` their float32 loss weights (1 unless importance
    weights were asked for), ``scores`` the score of every super-batch example (learnability;
    for pairwise JEST its diagonal), ``super_ids`` the gathered super-batch ids and, for pairwise
    JEST, ``blocks`` the positions drawn in each block."""

    ids: np.ndarray
    positions: np.ndarray
    weights: np.ndarray
    scores: np.ndarray
    super_ids: np.ndarray
    step: int
    blocks: tuple = ()  # pairwise JEST: the positions drawn in each block, in draw order

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def shard(self, rank: int | None = None, num_replicas: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """This rank's equal share ``(ids, weights)``: every ``num_replicas``-th chosen example from ``rank``."""
        world, rank = _world(num_replicas, rank)
        if len(self) % world:
            raise ValueError(
                f"the selection holds {len(self)} examples, not a multiple of num_replicas={world}; select k divisible "
                f"by the world size (the default k is rounded down to one)"
            )
        return self.ids[rank::world], self.weights[rank::world]


def _world(num_replicas: int | None = None, rank: int | None = None) -> tuple[int, int]:
    """``(world size, rank)`` from the arguments or ``torch.distributed`` (1, 0 when not initialised)."""
    if num_replicas is None or rank is None:
        import torch.distributed as dist

        live = dist.is_available() and dist.is_initialized()
        num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if live else 1)
        rank = rank if rank is not None else (dist.get_rank() if live else 0)
    num_replicas = as_int(num_replicas, "num_replicas", 1)
    rank = as_int(rank, "rank")
    if rank >= num_replicas:
        raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
    return num_replicas, rank


def check_ids(ids, field: str = "ids") -> np.ndarray:
    """int64, 1-D, non-negative example ids (a torch long tensor or an integer array)."""
    if hasattr(ids, "detach"):
        if ids.is_floating_point():
            raise ValueError(f"{field} must be integer example ids, got a {ids.dtype} tensor; pass a long tensor")
        ids = ids.detach().cpu().numpy()
    array = np.asarray(ids)
    if array.ndim != 1:
        raise ValueError(f"{field} must be 1-D (one id per super-batch example), got shape {array.shape}")
    if array.shape[0] and array.dtype.kind not in "iu":
        raise ValueError(f"{field} must be integer example ids, got dtype {array.dtype}; pass int64 ids")
    array = np.ascontiguousarray(array.astype(np.int64, copy=False))
    bad = np.flatnonzero(array < 0)
    if bad.shape[0]:
        j = int(bad[0])
        raise ValueError(f"{field}[{j}] = {int(array[j])} is negative; pass global example ids (e.g. from WithIndex)")
    return array


def check_losses(losses, count: int, field: str) -> np.ndarray:
    """Finite float32 per-example losses, one per id (a torch tensor or an array)."""
    if hasattr(losses, "detach"):
        losses = losses.detach().float().cpu().numpy()
    return as_values(losses, count, field)


def check_policy(policy: str, beta: float, threshold: float | None) -> None:
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if not math.isfinite(float(beta)):
        raise ValueError(f"beta must be finite, got {beta!r}")
    if policy == "threshold" and threshold is None:
        raise ValueError("policy='threshold' needs threshold=<score>; super-batch examples scoring >= it are kept")


def gather_pointwise(ids: np.ndarray, *columns: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every rank's ``(ids, column, ...)`` concatenated in rank order (identical on every rank)."""
    all_ids, first = _torch.gather(ids, columns[0])
    rest = tuple(_torch.gather(ids, c)[1] for c in columns[1:])
    return (all_ids, first, *rest)


def gather_rows(x):
    """All ranks' rows of ``x`` (``[n_r, ...]``, counts may differ) concatenated in rank order.

    For the no-grad scoring pass of pairwise JEST: each rank embeds its share of the super-batch,
    every rank then holds the whole super-batch's embeddings and builds the same ``B x B`` logits.

    Example:
        >>> import torch
        >>> from packwise.selection import gather_rows
        >>> gather_rows(torch.ones(2, 3)).shape  # one process: unchanged
        torch.Size([2, 3])
    """
    import torch
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    world = dist.get_world_size()
    count = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    buf = x.new_zeros((max(sizes), *x.shape[1:]))
    buf[: x.shape[0]] = x.detach()
    parts = [torch.empty_like(buf) for _ in range(world)]
    dist.all_gather(parts, buf)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _BatchSelector:
    """Base of the super-batch selectors: ``filter_ratio`` sizing, the step counter, resume."""

    _kind = "batch_selector"

    def __init__(self, filter_ratio: float, seed: int):
        f = exact(filter_ratio, "filter_ratio")
        if not 0 <= f < 1:
            raise ValueError(
                f"filter_ratio must be in [0, 1) (the share of each super-batch left out; 0.8 keeps 1 in 5), "
                f"got {filter_ratio!r}"
            )
        self.filter_ratio = float(filter_ratio)
        self._keep = 1 - f
        self.seed = as_int(seed, "seed")
        self.step = 0

    def sub_batch_size(self, super_batch_size: int, num_replicas: int | None = None) -> int:
        """``round((1 - filter_ratio) * B)`` rounded down to a multiple of the world size (so every
        rank gets an equal share), at least one per rank when the super-batch has that many."""
        n = as_int(super_batch_size, "super_batch_size")
        world, _ = _world(num_replicas, 0 if num_replicas is not None else None)
        k = math.floor(self._keep * n + Fraction(1, 2))
        k = max(k, min(world, n)) // world * world
        return int(k)

    def _k(self, k, n: int) -> int:
        if k is None:
            return self.sub_batch_size(n)
        k = as_int(k, "k")
        if k > n:
            raise ValueError(f"k={k} is larger than the super-batch ({n} examples); pass k <= the super-batch size")
        return k

    def _settings(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Settings and the step counter: every draw is seeded by ``(seed, step)``, so this is the
        whole random state (plain Python values; store it with :func:`packwise.samplers.save_state`)."""
        return {"kind": self._kind, "settings": self._settings(), "step": int(self.step)}

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict`: the next selection is the one the saved run made next."""
        check_state(state, {"kind", "settings", "step"}, "state_dict()", kind=self._kind, owner="selector")
        check_same_settings(state["settings"], self._settings(), self._kind)
        self.step = as_int(state["step"], "state_dict['step']")


class _PointwiseSelector(_BatchSelector):
    """Per-example learnability ``learner_loss - reference_loss`` ranked by a policy of
    :mod:`packwise.selection.policies` (RHO-LOSS, and JEST on per-example losses)."""

    def __init__(
        self,
        reference,
        filter_ratio: float,
        policy: str,
        beta: float,
        seed: int,
        threshold: float | None,
        importance_weights: bool,
    ):
        super().__init__(filter_ratio, seed)
        check_policy(policy, beta, threshold)
        if reference is not None and not hasattr(reference, "__getitem__"):
            raise ValueError(
                f"reference must be None (pass reference_loss online) or a lookup by id such as ReferenceScores, "
                f"got {type(reference).__name__}"
            )
        self.reference = reference
        self.policy = policy
        self.beta = float(beta)
        self.threshold = threshold
        self.importance_weights = bool(importance_weights)

    def _settings(self) -> dict:
        return {
            "filter_ratio": self.filter_ratio,
            "policy": self.policy,
            "beta": self.beta,
            "seed": self.seed,
            "threshold": self.threshold,
            "importance_weights": self.importance_weights,
        }

    def scores(self, ids, learner_loss, reference_loss=None) -> tuple[np.ndarray, np.ndarray]:
        """``(super-batch ids, learnability)`` gathered across ranks; no step is taken."""
        ids = check_ids(ids)
        learner = check_losses(learner_loss, ids.shape[0], "learner_loss")
        if reference_loss is not None:
            ref = check_losses(reference_loss, ids.shape[0], "reference_loss")
            all_ids, learner, ref = gather_pointwise(ids, learner, ref)
        elif self.reference is None:
            raise ValueError(
                "no reference loss: pass reference_loss= (an online reference model's per-example loss) or build "
                "the selector with reference=ReferenceScores.from_parquet(...)"
            )
        else:
            all_ids, learner = gather_pointwise(ids, learner)
            ref = np.asarray(self.reference[all_ids], np.float32)
        return all_ids, (learner - ref).astype(np.float32)

    def select(self, ids, learner_loss, reference_loss=None, *, k: int | None = None) -> BatchSelection:
        """Choose ``k`` (default ``sub_batch_size``) of the super-batch by learnability and policy.

        ``ids`` and ``learner_loss`` (and an online ``reference_loss``) are this rank's share of
        the super-batch under DDP (all of it in one process); they are gathered in rank order, so
        every rank makes the same choice; take your part with ``selection.shard()``."""
        from .policies import select_by_score

        all_ids, scores = self.scores(ids, learner_loss, reference_loss)
        k = None if self.policy == "threshold" else self._k(k, all_ids.shape[0])
        positions, weights = select_by_score(
            scores,
            k,
            self.policy,
            self.beta,
            threshold=self.threshold,
            seed=self.seed,
            epoch=self.step,
            importance_weights=self.importance_weights,
        )
        selection = BatchSelection(all_ids[positions], positions, weights, scores, all_ids, self.step)
        self.step += 1
        return selection
