"""``PruningSampler``: the torch face of a selection policy (InfoBatch, RS2, ScoreSelector).

Each epoch it asks the policy for the kept ids, shuffles them with ``(seed, epoch)`` and deals
them to DDP ranks in equal counts; the policy owns the math and the scores."""

from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

from . import _wrapped
from ._planned import _Batches, resolve_replicas
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
    seed), so ranks only need their rank: the shuffled ids are padded by wrapping around
    (``drop_last=False``) or truncated (``drop_last=True``) to a multiple of ``num_replicas`` and
    dealt round-robin, giving equal counts.  ``len()`` is known before the epoch starts.

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

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch the next ``__iter__`` plays (plans it from the policy's current scores)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        epoch = self.follow(int(epoch), from_loader=_wrapped.loader_counting())
        if epoch != self.epoch:
            self._resume_at = 0
            self._yielded = 0
        self.epoch = epoch

    def global_order(self, epoch: int | None = None) -> np.ndarray:
        """The epoch's kept ids in play order before dealing (int64), padded or truncated."""
        epoch = self.epoch if epoch is None else epoch
        ids = self.policy.indices_for_epoch(epoch)
        if self.shuffle:
            ids = ids[_epoch_rng(self.seed, epoch).permutation(ids.shape[0])]
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
        """Where the epoch is: ``epoch`` and ``yielded`` indices (save ``policy.state_dict()`` too)."""
        return {
            "epoch": self.epoch,
            "yielded": int(self._yielded),
            "seed": self.seed,
            "num_replicas": self.num_replicas,
            "rank": self.rank,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next ``__iter__`` yields the rest of the saved epoch (load the policy first)."""
        missing = {"epoch", "yielded", "seed", "num_replicas", "rank"} - set(state)
        if missing:
            raise ValueError(f"state_dict is missing {sorted(missing)}; pass a dict saved by state_dict()")
        for field in ("seed", "num_replicas", "rank"):
            if state[field] != getattr(self, field):
                raise ValueError(
                    f"state_dict was saved with {field}={state[field]} but this sampler has "
                    f"{field}={getattr(self, field)}; rebuild the sampler with the saved {field}"
                )
        self.set_epoch(int(state["epoch"]))
        done = int(state["yielded"])
        if not 0 <= done <= len(self):
            raise ValueError(f"state_dict yielded={done} is outside [0, {len(self)}] for epoch {self.epoch}")
        self._resume_at = done
        self._yielded = done


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

    def _batches(self, epoch: int) -> _Batches:
        return self._pack_ids(np.asarray(self.policy.indices_for_epoch(epoch), np.int64), epoch)
