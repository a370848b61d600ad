"""The shared machinery of the batch samplers: an epoch plan that is a pure function of
(lengths, seed, epoch, world size, settings), dealt to ranks with equal batch counts, resumable
from two counters."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

from . import _kernels, _wrapped
from .stats import EpochStats

_EMPTY = np.zeros(0, np.int64)


@dataclass(frozen=True)
class _Batches:
    """One epoch's global batches, CSR-shaped, with what each costs."""

    order: np.ndarray  # example indices, batch by batch
    offsets: np.ndarray  # num_batches + 1
    tokens: np.ndarray  # real tokens per batch
    slots: np.ndarray  # tokens computed per batch (with padding)
    work: np.ndarray  # the token term of the cost model per batch
    squares: np.ndarray  # sum of length**2 per batch (float64)
    dropped_oversize: int = 0
    truncated_tokens: int = 0

    @property
    def num_batches(self) -> int:
        return int(self.offsets.shape[0] - 1)


@dataclass(frozen=True)
class _EpochPlan:
    epoch: int
    batches: _Batches
    table: np.ndarray  # (num_replicas, steps) batch ids, -1 = empty batch
    stats: EpochStats


def resolve_replicas(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """``(num_replicas, rank)``, defaulting from ``torch.distributed`` when it is initialised."""
    import torch.distributed as dist

    live = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if live else 1
    if rank is None:
        rank = dist.get_rank() if live else 0
    for field, value in (("num_replicas", num_replicas), ("rank", rank)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{field} must be an integer, got {value!r}")
    if num_replicas < 1:
        raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
    return int(num_replicas), int(rank)


def epoch_rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    """Independent, platform-stable random streams per (seed, epoch, purpose)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, stream])))


class _PlannedBatchSampler(Sampler, _wrapped.LoaderEpoch):
    """Base class: subclasses build ``_batches(epoch)``; this class deals, iterates and resumes.

    Under accelerate (``Accelerator.prepare`` on a ``DataLoader(batch_sampler=...)``, HF Trainer)
    the sampler cooperates with the wrapper it finds around it: ``BatchSamplerShard`` or
    ``DataLoaderDispatcher`` over ``n`` processes get the whole global plan, step by step (rank 0's
    batch, rank 1's, ...), so accelerate's dealing hands each rank exactly its token-balanced
    batches; a sampler built for another world size is refused with the fix.
    """

    def __init__(
        self,
        num_examples: int,
        *,
        seed: int,
        shuffle: bool,
        drop_last: bool,
        num_replicas: int | None,
        rank: int | None,
        attention_weight: float,
    ):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if not np.isfinite(attention_weight) or attention_weight < 0:
            raise ValueError(
                f"attention_weight must be a finite number >= 0 (cost = tokens + w * sum(length^2)), "
                f"got {attention_weight!r}"
            )
        self.num_examples = int(num_examples)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.attention_weight = float(attention_weight)
        self.num_replicas, self.rank = resolve_replicas(num_replicas, rank)
        self.epoch = 0
        self._resume_at = 0
        self._yielded = 0
        self._plan: _EpochPlan | None = None
        self._fingerprint: str | None = None
        self._caller: _wrapped.Caller | None = None
        self._start = 0

    # --- to implement -----------------------------------------------------------------------
    def _batches(self, epoch: int) -> _Batches:  # pragma: no cover - abstract
        raise NotImplementedError

    def _settings(self) -> tuple:  # pragma: no cover - abstract
        raise NotImplementedError

    def _lengths_bytes(self) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    # --- the epoch plan ---------------------------------------------------------------------
    def plan(self, epoch: int | None = None) -> _EpochPlan:
        """The epoch's global batches and their dealing to ranks (cached for the last epoch and world size)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._plan is not None and (self._plan.epoch, self._plan.stats.num_replicas) == (epoch, self.num_replicas):
            return self._plan
        batches = self._batches(epoch)
        costs = batches.work.astype(np.float64) + self.attention_weight * batches.squares
        num_batches = batches.num_batches
        replicas = self.num_replicas
        if replicas == 1:
            ranked = np.arange(num_batches, dtype=np.int64)
        else:
            ranked = np.argsort(-costs, kind="stable").astype(np.int64)
        full_steps = num_batches // replicas
        steps = full_steps if self.drop_last else -(-num_batches // replicas)
        table, load = _kernels.assign_steps(ranked, costs, replicas, steps)
        if self.shuffle:
            step_order = epoch_rng(self.seed, epoch, 1).permutation(full_steps)
            if steps > full_steps:  # the one short step (padded with empty batches) goes last
                step_order = np.append(step_order, full_steps)
            table = table[:, step_order]
        left_out = ranked[steps * replicas :]
        sizes = np.diff(batches.offsets)
        mean = float(load.mean())
        stats = EpochStats(
            epoch=epoch,
            num_replicas=replicas,
            batches_per_rank=int(steps),
            num_examples=self.num_examples,
            examples=int(batches.order.shape[0] - sizes[left_out].sum()),
            batches=int(num_batches - left_out.shape[0]),
            empty_batches=int((table < 0).sum()),
            dropped_oversize=int(batches.dropped_oversize),
            dropped_last_examples=int(sizes[left_out].sum()),
            dropped_last_batches=int(left_out.shape[0]),
            tokens=int(batches.tokens.sum() - batches.tokens[left_out].sum()),
            slots=int(batches.slots.sum() - batches.slots[left_out].sum()),
            truncated_tokens=int(batches.truncated_tokens),
            max_batch_examples=int(sizes.max()) if num_batches else 0,
            work_per_rank=tuple(float(x) for x in load),
            imbalance=float(load.max() / mean) if mean > 0 else 1.0,
            step_imbalance=float(_kernels.step_imbalance(table, costs)),
        )
        self._plan = _EpochPlan(epoch, batches, table, stats)
        return self._plan

    def stats(self, epoch: int | None = None) -> EpochStats:
        """Padding, efficiency, drops and per-rank imbalance of an epoch, from lengths alone."""
        return self.plan(epoch).stats

    def rank_batches(self, rank: int | None = None, epoch: int | None = None) -> list[list[int]]:
        """Every batch ``rank`` yields in ``epoch`` (empty lists are zero-loss padding batches)."""
        plan = self.plan(epoch)
        rank = self.rank if rank is None else rank
        order, offsets = plan.batches.order, plan.batches.offsets
        return [order[offsets[b] : offsets[b + 1]].tolist() if b >= 0 else [] for b in plan.table[rank].tolist()]

    # --- the torch protocol -----------------------------------------------------------------
    @property
    def sampler(self) -> "_PlannedBatchSampler":
        """Itself: accelerate forwards ``set_epoch`` to ``batch_sampler.sampler`` (through its
        ``BatchSamplerShard``), so the epoch reaches this sampler however it is wrapped."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch the next pass plays (the plan is seeded by ``(seed, epoch)``).

        The plan is fixed at the pass's first batch, so a ``set_epoch`` between ``iter(loader)``
        and the first ``next`` still counts.  Under accelerate an explicit call wins over the
        prepared loader's pass counter; later passes count on from it.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        epoch = self.follow(int(epoch), from_loader=_wrapped.loader_counting())
        if epoch != self.epoch:  # a new epoch starts from its first batch
            self._resume_at = 0
            self._yielded = 0
            self._caller = None
        self.epoch = epoch

    def _dealt_by(self, dealer: _wrapped.Dealer | None) -> int:
        """How many ranks' batches this process hands to accelerate per step (1: only its own)."""
        if dealer is None or dealer.processes == 1:
            return 1
        if self.num_replicas != dealer.processes or self.rank != dealer.index:
            raise ValueError(
                f"{type(self).__name__} plans for num_replicas={self.num_replicas}, rank={self.rank} but accelerate "
                f"deals its batches to {dealer.processes} processes (this is process {dealer.index}); build it with "
                f"num_replicas={dealer.processes}, rank={dealer.index} (the default once torch.distributed is "
                f"initialised) so every rank gets its token-balanced share exactly once"
            )
        return dealer.processes

    def __len__(self) -> int:
        """Batches this rank yields this epoch (the same on every rank); under accelerate's
        dealing, the global count it deals (``num_replicas`` times as many)."""
        steps = self.plan().stats.batches_per_rank
        return steps * self._dealt_by(_wrapped.find_caller().dealer)

    def __iter__(self) -> Iterator[list[int]]:
        caller = _wrapped.find_caller()
        dealt = self._dealt_by(caller.dealer)  # refuse now, before the loader starts
        return self._play(caller, dealt)

    def _play(self, caller: _wrapped.Caller, dealt: int) -> Iterator[list[int]]:
        plan = self.plan()  # at the first next(): an early iter() (StatefulDataLoader) plays the right epoch
        start = self._resume_at
        self._resume_at = 0
        self._caller, self._start, self._yielded = caller, start, start
        rows = plan.table[self.rank : self.rank + 1] if dealt == 1 else plan.table
        flat = rows[:, start:].T.reshape(-1)  # step by step: rank 0's batch, rank 1's, ...
        order, offsets = plan.batches.order, plan.batches.offsets
        real = flat >= 0
        lo = np.zeros(flat.shape[0], np.int64)
        hi = np.zeros(flat.shape[0], np.int64)
        lo[real] = offsets[flat[real]]
        hi[real] = offsets[flat[real] + 1]
        for k, (a, b) in enumerate(zip(lo.tolist(), hi.tolist())):
            self._yielded = start + k // dealt + 1
            yield order[a:b].tolist()

    # --- resume -----------------------------------------------------------------------------
    def _fingerprint_of(self) -> str:
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(self._lengths_bytes())
            h.update(repr(self._settings()).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def state_dict(self) -> dict:
        """Two counters and what they are valid for: ``epoch`` and ``batches_yielded`` this epoch.

        ``batches_yielded`` counts batches the training loop received, not those a DataLoader's
        workers or accelerate prefetched (read from the torch DataLoader iterator that pulls this
        sampler); a ``StatefulDataLoader`` asking for its own snapshots gets the handed-out count.
        """
        done = self._yielded
        if not _wrapped.called_from("torchdata"):
            done = _wrapped.consumed_steps(self._caller, self._yielded, self._start)
        return {
            "epoch": self.epoch,
            "batches_yielded": int(done),
            "seed": self.seed,
            "num_replicas": self.num_replicas,
            "rank": self.rank,
            "fingerprint": self._fingerprint_of(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next ``__iter__`` yields the rest of the saved epoch, exactly."""
        missing = {"epoch", "batches_yielded", "seed", "num_replicas", "rank", "fingerprint"} - set(state)
        if missing:
            raise ValueError(f"state_dict is missing {sorted(missing)}; pass a dict saved by state_dict()")
        for field in ("seed", "num_replicas", "rank"):
            if state[field] != getattr(self, field):
                raise ValueError(
                    f"state_dict was saved with {field}={state[field]} but this sampler has "
                    f"{field}={getattr(self, field)}; rebuild the sampler with the saved {field}"
                )
        if state["fingerprint"] != self._fingerprint_of():
            raise ValueError(
                "state_dict was saved for different lengths or sampler settings (fingerprint mismatch); "
                "rebuild the sampler from the same lengths and arguments"
            )
        self.set_epoch(int(state["epoch"]))
        done = int(state["batches_yielded"])
        total = len(self)
        if not 0 <= done <= total:
            raise ValueError(f"state_dict batches_yielded={done} is outside [0, {total}] for epoch {self.epoch}")
        self._resume_at = done
        self._yielded = done
        self._caller = None
