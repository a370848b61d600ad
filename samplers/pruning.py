"""``PruningSampler``: the torch face of a selection policy (InfoBatch, RS2, ScoreSelector).

Each epoch it asks the policy for the kept ids, shuffles them with ``(seed, epoch)`` and deals
them to DDP ranks in equal counts; the policy owns the math and the scores."""

from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

from . import _wrapped
from ._planned import STATE_VERSION, check_fields, resolve_replicas, resume_point
from .packed import PackedBatchSampler


def _epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, 7])))


def _check_policy(policy) -> None:
    if not hasattr(policy, "indices_for_epoch"):
        raise ValueError(
            f"policy must implement indices_for_epoch(epoch) (InfoBatch, RS2, ScoreSelector), got "
            f"{type(policy).__name__}"
        )


class PruningSampler(Sampler, _wrapped.LoaderEpoch):
    """Yield this rank's share of ``policy.indices_for_epoch(epoch)``, shuffled.

    Every rank computes the same kept set (same scores, gathered by ``policy.update``, and same
    seed), so ranks only need their rank: the shuffled ids (the canonical order, the same for any
    world size) are padded by wrapping around (``drop_last=False``) or truncated
    (``drop_last=True``) to a multiple of ``num_replicas`` and dealt round-robin, giving equal
    counts.  ``len()`` is known before the epoch starts.  Round-robin makes the consumed ids a
    prefix of the canonical order, so :meth:`state_dict` is one global cursor and resumes under any
    world size (load the policy's own state first: it holds the epoch's kept set).

    With ``max_tokens`` (and ``lengths``) it is a batch sampler instead: each epoch's kept ids are
    packed into batches of at most ``max_tokens`` tokens by :class:`PackedBatchSampler`'s machinery
    (a :class:`PackedPruningSampler`; pass it as ``batch_sampler=`` or to ``PackwiseTrainer``), so a
    pruned epoch trains on full packed rows rather than on a fixed count of examples.

    Example:
        >>> import numpy as np, torch
        >>> from packwise.selection import InfoBatch
        >>> from packwise.samplers import PruningSampler
        >>> ib = InfoBatch(6, num_epochs=3, seed=0)
        >>> sampler = PruningSampler(ib, seed=0, num_replicas=1, rank=0)
        >>> sampler.set_epoch(0)
        >>> len(sampler), sorted(sampler)
        (6, [0, 1, 2, 3, 4, 5])
    """

    def __new__(cls, policy=None, *args, max_tokens: int | None = None, lengths=None, **kwargs):
        if max_tokens is None:
            return super().__new__(cls)
        return PackedPruningSampler(policy, lengths, max_tokens, **kwargs)

    def __init__(
        self,
        policy,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
        *,
        max_tokens: None = None,
        lengths=None,
    ):
        if lengths is not None:
            raise ValueError("lengths is used with max_tokens; pass max_tokens=<tokens per batch> too, or drop lengths")
        _check_policy(policy)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.policy = policy
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.num_replicas, self.rank = resolve_replicas(num_replicas, rank)
        self.epoch = 0
        self._resume_at = 0
        self._yielded = 0
        self._origin = 0  # canonical position the current epoch's dealing starts at

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch the next ``__iter__`` plays (plans it from the policy's current scores)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        epoch = self.follow(int(epoch), from_loader=_wrapped.loader_counting())
        if epoch != self.epoch:
            self._resume_at = 0
            self._yielded = 0
            self._origin = 0
        self.epoch = epoch

    def canonical(self, epoch: int | None = None) -> np.ndarray:
        """The epoch's kept ids in play order, for any world size (int64)."""
        epoch = self.epoch if epoch is None else epoch
        ids = self.policy.indices_for_epoch(epoch)
        if self.shuffle:
            ids = ids[_epoch_rng(self.seed, epoch).permutation(ids.shape[0])]
        return ids

    def global_order(self, epoch: int | None = None) -> np.ndarray:
        """The epoch's kept ids from this dealing's start (a resume's cursor, else the first) in play
        order before dealing (int64), padded or truncated to a multiple of ``num_replicas``."""
        epoch = self.epoch if epoch is None else epoch
        ids = self.canonical(epoch)[(self._origin if epoch == self.epoch else 0) :]
        r = self.num_replicas
        if self.drop_last:
            return ids[: ids.shape[0] - ids.shape[0] % r]
        short = -ids.shape[0] % r
        if short and ids.shape[0]:
            ids = np.concatenate([ids, np.resize(ids, short)])
        return ids

    def rank_indices(self, rank: int | None = None, epoch: int | None = None) -> np.ndarray:
        """The ids ``rank`` yields in ``epoch``, in order."""
        rank = self.rank if rank is None else rank
        return self.global_order(epoch)[rank :: self.num_replicas]

    def __len__(self) -> int:
        return int(self.rank_indices().shape[0])

    def __iter__(self) -> Iterator[int]:
        dealer = _wrapped.find_caller().dealer
        if dealer is not None and dealer.processes > 1 and self.num_replicas > 1:
            raise ValueError(
                f"PruningSampler deals ranks itself (num_replicas={self.num_replicas}) and accelerate deals its "
                f"batches again over {dealer.processes} processes, so each rank would see half of its share; "
                f"build it with num_replicas=1, rank=0 under accelerate (every rank holds the same policy)"
            )
        ids = self.rank_indices()
        start = self._resume_at
        self._resume_at = 0
        self._yielded = start
        return self._play(ids[start:].tolist(), start)

    def _play(self, ids: list, start: int) -> Iterator[int]:
        for k, i in enumerate(ids, start + 1):
            self._yielded = k
            yield i

    def state_dict(self) -> dict:
        """Where the epoch is, the same on every rank: ``epoch`` and ``cursor`` (kept ids of the
        canonical order consumed), plus this dealing's ``origin``, ``num_replicas`` and ``yielded``
        (ids per rank).  Save ``policy.state_dict()`` too: it holds the epoch's kept set."""
        return self.state_at(self._yielded)

    def state_at(self, yielded: int) -> dict:
        """The state after ``yielded`` ids per rank of the current dealing (a Trainer passes its count)."""
        yielded = int(yielded)
        cursor = self._origin
        if yielded > 0:
            total = int(self.canonical().shape[0])
            done_all = yielded >= len(self)
            cursor = total if done_all else min(self._origin + yielded * self.num_replicas, total)
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "cursor": int(cursor),
            "origin": int(self._origin),
            "num_replicas": self.num_replicas,
            "yielded": yielded,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next ``__iter__`` yields the rest of the saved epoch under any world size (load
        the policy first: its state fixes the epoch's kept set; ``seed`` and ``shuffle`` must not change)."""
        check_fields(state, ("epoch", "yielded", "seed", "num_replicas"))
        if state["seed"] != self.seed:
            raise ValueError(
                f"state_dict was saved with seed={state['seed']} but this sampler has seed={self.seed}; "
                f"rebuild the sampler with the saved seed"
            )
        self.set_epoch(int(state["epoch"]))
        origin, start = resume_point(state, "yielded", self.num_replicas)
        total = int(self.canonical().shape[0])
        if not 0 <= origin <= total:
            raise ValueError(f"state_dict cursor={origin} is outside [0, {total}] for epoch {self.epoch}")
        self._origin = origin
        if not 0 <= start <= len(self):
            raise ValueError(f"state_dict yielded={start} is outside [0, {len(self)}] for epoch {self.epoch}")
        self._resume_at = start
        self._yielded = start

    def _rewind(self) -> None:
        """Back to the first id of the current dealing (a Trainer that skips batches itself)."""
        self._resume_at = 0
        self._yielded = 0


class PackedPruningSampler(PackedBatchSampler):
    """Packed batches of a selection policy's kept examples: ``PruningSampler(policy, lengths=...,
    max_tokens=...)`` builds one.

    Each epoch asks ``policy.indices_for_epoch(epoch)`` and packs only those ids, exactly as
    :class:`PackedBatchSampler` packs a whole dataset (same ``algorithm``, ``oversize``, seeding,
    DDP dealing with token-balanced equal counts, ``state_dict``); ``len()`` is the epoch's batch
    count, so it shrinks in pruned epochs.

    Example:
        >>> import numpy as np
        >>> from packwise.selection import InfoBatch
        >>> from packwise.samplers import PruningSampler
        >>> s = PruningSampler(InfoBatch(4, num_epochs=2), lengths=np.array([6, 10, 4, 8]), max_tokens=16,
        ...                    num_replicas=1, rank=0)
        >>> sorted(sorted(b) for b in s)
        [[0, 1], [2, 3]]
    """

    def __init__(self, policy, lengths, max_tokens: int, **kwargs):
        _check_policy(policy)
        if lengths is None:
            raise ValueError("max_tokens needs lengths=<tokens per example> (an array, or a column name with dataset=)")
        super().__init__(lengths, max_tokens, **kwargs)
        if self.lengths.shape[0] != getattr(policy, "num_examples", self.lengths.shape[0]):
            raise ValueError(
                f"lengths has {self.lengths.shape[0]} entries but the policy covers {policy.num_examples} examples; "
                f"give one length per example of the policy's dataset"
            )
        self.policy = policy

    def _settings(self) -> tuple:
        return ("pruned",) + super()._settings()

    def _universe(self, epoch: int) -> np.ndarray:
        return np.asarray(self.policy.indices_for_epoch(epoch), np.int64)
