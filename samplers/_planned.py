"""The shared machinery of the batch samplers: a canonical epoch plan that is a pure function of
(lengths, seed, epoch, settings) and does not depend on the world size, dealt to ranks in
consecutive groups with equal batch counts, resumable from one global cursor under any world size.

The canonical order: the epoch's global batches (``_batches(epoch)``), shuffled with
``(seed, epoch)`` and sorted by decreasing cost inside fixed blocks of ``BLOCK`` batches, so
neighbours cost about the same.  Dealing: from a global position ``origin`` (0, or where a resume
under another world size picked the epoch up), step ``s`` gives the ``num_replicas`` batches at
``origin + s * num_replicas ...`` to the ranks, the dearest to the least-loaded rank.  The batches
consumed are therefore always a prefix of the canonical order: the state is that prefix's length.

Windows: a sampler with ``plan_window`` cuts the epoch's shuffled examples into windows of that many
(a keyed bijection of ``[0, n)`` gives window ``k``'s members in O(window)), plans each on its own
and plays window 0's batches, then window 1's, ...; the dealing's LPT restarts at each window.  A
restore therefore plans only the cursor's window (the state carries the epoch's batch count and the
window's first canonical position); up to ``plan_window`` examples the plan is one window.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import xxhash
from torch.utils.data import Sampler

from . import _kernels, _wrapped
from .stats import EpochStats

_EMPTY = np.zeros(0, np.int64)
BLOCK = 1024  # batches per cost-sorted block of the canonical order (fixed: never the world size)
STATE_VERSION = 2  # 1: per-rank counters (num_replicas, rank); 2: the global cursor
PLAN_WINDOW = 2**20  # examples per plan window (fixed: never the world size)
FEISTEL_ROUNDS = 4
_FINGERPRINT = "xxh3:"  # the fingerprint's format; a state without it carries the older blake2b one
_NO_WINDOWS = np.zeros(1, np.int64)


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
class _Canonical:
    """One epoch's global batches and their world-size-independent play order."""

    epoch: int
    batches: _Batches
    sequence: np.ndarray  # batch ids in canonical order
    costs: np.ndarray  # cost-model value per batch id (float64)
    starts: np.ndarray  # canonical position where each plan window begins (starts[0] == 0)


@dataclass(frozen=True)
class _EpochPlan:
    epoch: int
    batches: _Batches
    sequence: np.ndarray  # batch ids in canonical order (the same for every world size)
    origin: int  # canonical position where this dealing starts (0, or a resume's cursor)
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


def epoch_rng(seed: int, epoch: int, stream: int, at: int = 0, window: int | None = None) -> np.random.Generator:
    """Independent, platform-stable random streams per (seed, epoch, purpose), per re-plan point
    ``at`` (the canonical position a budget change re-plans the epoch's tail from) and per plan
    window of an epoch planned in several (``None``: one window, the streams as before windows)."""
    key = [seed, epoch, stream] if at == 0 else [seed, epoch, stream, at]
    if window is not None:
        key = [seed, epoch, stream, at, window + 1]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))


def window_members(n: int, seed: int, epoch: int, window: int, size: int, shuffle: bool) -> np.ndarray:
    """Positions (into ``[0, n)``) of the examples of plan window ``window``: ``pi(window * size)``
    up to ``pi(min(n, (window + 1) * size) - 1)`` of a bijection ``pi`` keyed by (seed, epoch), the
    identity without ``shuffle``; O(window), never a permutation of all ``n``."""
    first = window * size
    count = max(min(n, first + size) - first, 0)
    if not shuffle:
        return np.arange(first, first + count, dtype=np.int64)
    half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
    keys = np.random.SeedSequence([seed, epoch, 3]).generate_state(FEISTEL_ROUNDS, np.uint64)
    return _kernels.feistel_take(n, first, count, keys, half)


def slice_batches(b: _Batches, lo: int, hi: int) -> _Batches:
    """The consecutive batches ``lo .. hi - 1`` of ``b`` (a CSR slice; drop counts not carried)."""
    a, z = int(b.offsets[lo]), int(b.offsets[hi])
    return _Batches(b.order[a:z], b.offsets[lo : hi + 1] - a, b.tokens[lo:hi], b.slots[lo:hi], b.work[lo:hi], b.squares[lo:hi])


def join_windows(epoch: int, parts: list[_Canonical]) -> _Canonical:
    """Plan windows one after another: batch ids and canonical positions shift by the batches before."""
    if len(parts) == 1:
        return parts[0]
    counts = np.array([p.batches.num_batches for p in parts], np.int64)
    shift = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    items = np.concatenate(([0], np.cumsum([p.batches.order.shape[0] for p in parts])[:-1])).astype(np.int64)
    b = [p.batches for p in parts]
    batches = _Batches(
        np.concatenate([x.order for x in b]),
        np.concatenate([[0]] + [x.offsets[1:] + i for x, i in zip(b, items)]).astype(np.int64),
        *(np.concatenate([getattr(x, f) for x in b]) for f in ("tokens", "slots", "work", "squares")),
        sum(x.dropped_oversize for x in b),
        sum(x.truncated_tokens for x in b),
    )
    sequence = np.concatenate([p.sequence + s for p, s in zip(parts, shift)])
    return _Canonical(epoch, batches, sequence, np.concatenate([p.costs for p in parts]), shift)


def budget_max_tokens(budget, max_tokens: int | None) -> int | None:
    """A sampler's ``max_tokens`` under a budget schedule: the schedule's first one (given or not)."""
    if budget is None:
        return max_tokens
    if not hasattr(budget, "changes") or not hasattr(budget, "position"):
        raise ValueError(f"budget must be a packwise.selection budget schedule (RampBudget, AdaptiveBudget), got {type(budget).__name__}")
    first = int(budget.changes[0].max_tokens)
    if max_tokens is not None and max_tokens != first:
        raise ValueError(
            f"max_tokens={max_tokens} differs from the budget schedule's first max_tokens={first}; "
            f"leave max_tokens out (the schedule sets it) or build the schedule to start at it"
        )
    return first


def take_batches(b: _Batches, ids: np.ndarray) -> _Batches:
    """The batches ``ids`` of ``b``, in that order (CSR gather)."""
    sizes = np.diff(b.offsets)[ids]
    offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    starts = np.repeat(b.offsets[:-1][ids] - offsets[:-1], sizes) + np.arange(offsets[-1], dtype=np.int64)
    return _Batches(b.order[starts], offsets, b.tokens[ids], b.slots[ids], b.work[ids], b.squares[ids],
                    b.dropped_oversize, b.truncated_tokens)


def join_batches(head: _Batches, tail: _Batches) -> _Batches:
    """``head``'s batches then ``tail``'s (the drop counts are the head's: they were decided first)."""
    return _Batches(
        np.concatenate((head.order, tail.order)),
        np.concatenate((head.offsets, tail.offsets[1:] + head.offsets[-1])),
        *(np.concatenate((getattr(head, f), getattr(tail, f))) for f in ("tokens", "slots", "work", "squares")),
        head.dropped_oversize,
        head.truncated_tokens,
    )


class _PlannedBatchSampler(Sampler, _wrapped.LoaderEpoch):
    """Base class: subclasses build ``_batches(epoch)``; this class deals, iterates and resumes.

    Under accelerate (``Accelerator.prepare`` on a ``DataLoader(batch_sampler=...)``, HF Trainer)
    the sampler cooperates with the wrapper it finds around it: ``BatchSamplerShard`` or
    ``DataLoaderDispatcher`` over ``n`` processes get the whole global plan, step by step (rank 0's
    batch, rank 1's, ...), so accelerate's dealing hands each rank exactly its token-balanced
    batches; a sampler built for another world size is refused with the fix.
    """

    _FIXED: tuple[str, ...] = ("seed", "shuffle", "drop_last")  # what a resume needs unchanged

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
        self._origin = 0  # canonical position the current epoch's dealing starts at
        self._canon: _Canonical | None = None
        self._plan: _EpochPlan | None = None
        self._fingerprint: str | None = None
        self._caller: _wrapped.Caller | None = None
        self._start = 0
        self.budget = None  # a packwise.selection BudgetSchedule: max_tokens changes mid-epoch
        self._base: int | None = None  # the schedule's position when the current epoch began
        self._canon_key: tuple = ()
        self.plan_window: int | None = None  # examples per plan window (None: one window, always)
        self._windows: OrderedDict = OrderedDict()  # (epoch, k) -> the last plan windows made
        self._starts: dict[int, int] = {}  # window -> its first canonical position, in _starts_epoch
        self._starts_epoch = -1
        self._total_known: tuple[int, int] | None = None  # (epoch, batches) a restore read from its state

    # --- to implement -----------------------------------------------------------------------
    def _batches(self, epoch: int) -> _Batches:  # pragma: no cover - abstract
        raise NotImplementedError

    def _settings(self) -> tuple:  # pragma: no cover - abstract
        raise NotImplementedError

    def _rebatch(self, ids: np.ndarray, epoch: int, max_tokens: int, at: int) -> _Batches:  # pragma: no cover
        """The batches of examples ``ids`` (``None``: all) under ``max_tokens``, seeded by (seed, epoch, at)."""
        raise NotImplementedError

    def _lengths_bytes(self) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def _window_batches(self, epoch: int, window: int) -> _Batches:  # pragma: no cover - abstract
        """The batches of plan window ``window`` of an epoch planned in several (``plan_window`` set)."""
        raise NotImplementedError

    def _universe_size(self, epoch: int) -> int:
        """How many examples the epoch draws from (a pruning policy's kept count, else all)."""
        return self.num_examples

    # --- the epoch plan ---------------------------------------------------------------------
    def num_windows(self, epoch: int | None = None) -> int:
        """Plan windows of the epoch: 1 up to ``plan_window`` examples (the whole-epoch plan)."""
        if self.plan_window is None:
            return 1
        epoch = self.epoch if epoch is None else int(epoch)
        return max(1, -(-self._universe_size(epoch) // self.plan_window))

    def canonical(self, epoch: int | None = None) -> _Canonical:
        """The epoch's global batches in play order, for any world size (cached for the last epoch):
        every plan window's, one after another.

        Hook for plans that change mid-epoch (a token budget schedule): override to splice a
        re-planned tail in at a change point; everything before the point must stay as it was."""
        epoch = self.epoch if epoch is None else int(epoch)
        key = self._budget_changes(epoch)
        if self._canon is not None and self._canon.epoch == epoch and self._canon_key == key:
            return self._canon
        if not key or key[0][1] == getattr(self, "max_tokens", None):
            canon = join_windows(epoch, [self._plan_window(epoch, k) for k in range(self.num_windows(epoch))])
            if not key:
                self._learn_starts(epoch, canon.starts)
        else:
            batches = self._rebatch(None, epoch, key[0][1], 0)
            canon = self._as_canonical(epoch, batches, self._play_order(batches, epoch, 0))
        batches, sequence, starts = canon.batches, canon.sequence, canon.starts
        for at, max_tokens in key[1:]:  # re-plan the tail at each budget change, the prefix as it was
            if at >= sequence.shape[0]:
                break
            head = take_batches(batches, sequence[:at])
            rest = take_batches(batches, sequence[at:]).order
            tail = self._rebatch(np.sort(rest), epoch, max_tokens, at)
            batches = join_batches(head, tail)
            sequence = np.concatenate((np.arange(at, dtype=np.int64), at + self._play_order(tail, epoch, at)))
            starts = starts[starts < at]
        canon = self._as_canonical(epoch, batches, sequence, starts)
        self._canon, self._canon_key = canon, key
        return self._canon

    def _as_canonical(self, epoch: int, batches: _Batches, sequence: np.ndarray, starts: np.ndarray = _NO_WINDOWS) -> _Canonical:
        costs = batches.work.astype(np.float64) + self.attention_weight * batches.squares
        return _Canonical(epoch, batches, sequence, costs, starts)

    def _plan_window(self, epoch: int, k: int) -> _Canonical:
        """Plan window ``k`` of the epoch afresh (the only window, below ``plan_window`` examples)."""
        if self.num_windows(epoch) == 1:
            batches = self._batches(epoch)
            return self._as_canonical(epoch, batches, self._play_order(batches, epoch, 0))
        batches = self._window_batches(epoch, k)
        return self._as_canonical(epoch, batches, self._play_order(batches, epoch, 0, k))

    def _window(self, epoch: int, k: int) -> _Canonical:
        """Plan window ``k`` (positions from its start): a slice of the epoch's plan when it is made
        (without a budget schedule), else planned on its own; the last few are kept."""
        if self.budget is None and self.num_windows(epoch) == 1:
            return self.canonical(epoch)  # the only window is the epoch's plan: made once, cached
        canon = self._canon
        if canon is not None and canon.epoch == epoch and not self._canon_key:
            lo = int(canon.starts[k])
            hi = int(canon.starts[k + 1]) if k + 1 < canon.starts.shape[0] else canon.batches.num_batches
            return _Canonical(epoch, slice_batches(canon.batches, lo, hi), canon.sequence[lo:hi] - lo, canon.costs[lo:hi], _NO_WINDOWS)
        hit = self._windows.get((epoch, k))
        if hit is None:
            hit = self._windows[(epoch, k)] = self._plan_window(epoch, k)
            while len(self._windows) > 3:
                self._windows.popitem(last=False)
        self._windows.move_to_end((epoch, k))
        return hit

    def _learn_starts(self, epoch: int, starts: np.ndarray) -> None:
        if self._starts_epoch != epoch:
            self._starts, self._starts_epoch = {}, epoch
        self._starts.update({k: int(x) for k, x in enumerate(starts.tolist())})

    def _locate(self, position: int) -> tuple[int, int]:
        """``(window, its first canonical position)`` of the current epoch's canonical ``position``,
        walking forward from the windows known (a restore knows its cursor's), planning as it goes."""
        epoch = self.epoch
        known = self._starts if self._starts_epoch == epoch else {}
        below = [k for k, first in known.items() if first <= position]
        if not below:
            self._learn_starts(epoch, self.canonical(epoch).starts)
            known = self._starts
            below = [k for k, first in known.items() if first <= position]
        k = max(below)
        first = known[k]
        last = self.num_windows(epoch) - 1
        while k < last:
            after = known.get(k + 1)
            if after is None:
                after = known[k + 1] = first + self._window(epoch, k).batches.num_batches
            if position < after:
                break
            k, first = k + 1, after
        return k, first

    def _total(self) -> int:
        """Global batches of the current epoch (read from a restored state, else planned)."""
        if self._total_known is not None and self._total_known[0] == self.epoch and self.budget is None:
            return self._total_known[1]
        return self.canonical().batches.num_batches

    def _steps(self) -> int:
        """Batches per rank of the current dealing (the same on every rank)."""
        remaining = max(self._total() - self._origin, 0)
        return remaining // self.num_replicas if self.drop_last else -(-remaining // self.num_replicas)

    def _play_order(self, batches: _Batches, epoch: int, at: int, window: int | None = None) -> np.ndarray:
        """Batch ids shuffled with ``(seed, epoch, at, window)`` and cost-sorted inside blocks of ``BLOCK``."""
        if not self.shuffle:
            return np.arange(batches.num_batches, dtype=np.int64)
        costs = batches.work.astype(np.float64) + self.attention_weight * batches.squares
        sequence = epoch_rng(self.seed, epoch, 1, at, window).permutation(batches.num_batches).astype(np.int64)
        return _kernels.sort_blocks(sequence, costs, BLOCK)

    def _budget_changes(self, epoch: int) -> tuple[tuple[int, int], ...]:
        """``((0, max_tokens), (at, max_tokens), ...)``: the budget schedule's ``max_tokens`` changes
        inside ``epoch``, as canonical positions; ``()`` without a schedule.

        The current epoch starts at the schedule's position when it was first planned (kept in the
        state); another epoch is planned as if it started now, with the changes decided so far."""
        if self.budget is None:
            return ()
        base = self._budget_base(epoch)
        key = [(0, int(self.budget.at(base).max_tokens))]
        for change in self.budget.changes:
            if change.position > base and change.max_tokens != key[-1][1]:
                key.append((int(change.position - base), int(change.max_tokens)))
        return tuple(key)

    def _budget_base(self, epoch: int) -> int:
        """The schedule's position where ``epoch`` starts: fixed when the current epoch is first
        planned (and kept in the state); another epoch is planned as if it started now."""
        if epoch != self.epoch:
            return int(self.budget.position)
        if self._base is None:
            self._base = int(self.budget.position)
        return self._base

    def _origin_of(self, epoch: int) -> int:
        """Where the dealing of ``epoch`` starts: a resume's cursor in the resumed epoch, else 0."""
        return self._origin if epoch == self.epoch else 0

    def plan(self, epoch: int | None = None) -> _EpochPlan:
        """The epoch's canonical batches and their dealing to ranks (cached for the last epoch and world size)."""
        epoch = self.epoch if epoch is None else int(epoch)
        origin = self._origin_of(epoch)
        key = (epoch, self.num_replicas, origin)
        canon = self.canonical(epoch)
        plan = self._plan
        if plan is not None and (plan.epoch, plan.stats.num_replicas, plan.origin) == key and plan.sequence is canon.sequence:
            return plan
        batches, sequence, costs = canon.batches, canon.sequence, canon.costs
        replicas = self.num_replicas
        remaining = max(batches.num_batches - origin, 0)
        steps = remaining // replicas if self.drop_last else -(-remaining // replicas)
        table, load = _kernels.deal_groups(sequence, costs, origin, replicas, steps, canon.starts)
        dealt = sequence[origin : origin + steps * replicas]
        left_out = sequence[origin + steps * replicas :]
        sizes = np.diff(batches.offsets)
        mean = float(load.mean())
        stats = EpochStats(
            epoch=epoch,
            num_replicas=replicas,
            batches_per_rank=int(steps),
            num_examples=self.num_examples,
            examples=int(sizes[dealt].sum()),
            batches=int(dealt.shape[0]),
            empty_batches=int((table < 0).sum()),
            dropped_oversize=int(batches.dropped_oversize),
            dropped_last_examples=int(sizes[left_out].sum()),
            dropped_last_batches=int(left_out.shape[0]),
            tokens=int(batches.tokens[dealt].sum()),
            slots=int(batches.slots[dealt].sum()),
            truncated_tokens=int(batches.truncated_tokens),
            max_batch_examples=int(sizes.max()) if batches.num_batches else 0,
            work_per_rank=tuple(float(x) for x in load),
            imbalance=float(load.max() / mean) if mean > 0 else 1.0,
            step_imbalance=float(_kernels.step_imbalance(table, costs)),
        )
        self._plan = _EpochPlan(epoch, batches, sequence, origin, table, stats)
        return self._plan

    def stats(self, epoch: int | None = None) -> EpochStats:
        """Padding, efficiency, drops and per-rank imbalance of an epoch, from lengths alone (of
        its rest from the cursor, in an epoch resumed under another world size)."""
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
            self._origin = 0
            self._caller = None
            self._base = None
            self._total_known = None
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
        return self._steps() * self._dealt_by(_wrapped.find_caller().dealer)

    def __iter__(self) -> Iterator[list[int]]:
        caller = _wrapped.find_caller()
        dealt = self._dealt_by(caller.dealer)  # refuse now, before the loader starts
        return self._play(caller, dealt)

    def _play(self, caller: _wrapped.Caller, dealt: int) -> Iterator[list[int]]:
        steps = self._steps()  # at the first next(): an early iter() (StatefulDataLoader) plays the right epoch
        start = self._resume_at
        self._resume_at = 0
        self._caller, self._start, self._yielded = caller, start, start
        if self.budget is not None:
            yield from self._play_budgeted(start, dealt)
            return
        step = start
        while step < steps:  # window by window: a restored epoch plans only what it plays
            first_step, table, view = self._segment(step, steps)
            rows = table[self.rank : self.rank + 1] if dealt == 1 else table
            flat = rows[:, step - first_step :].T.reshape(-1)  # step by step: rank 0's batch, rank 1's, ...
            order, offsets = view.order, view.offsets
            real = flat >= 0
            lo = np.zeros(flat.shape[0], np.int64)
            hi = np.zeros(flat.shape[0], np.int64)
            lo[real] = offsets[flat[real]]
            hi[real] = offsets[flat[real] + 1]
            for k, (a, b) in enumerate(zip(lo.tolist(), hi.tolist())):
                self._yielded = step + k // dealt + 1
                yield order[a:b].tolist()
            step = first_step + table.shape[1]

    def _segment(self, step: int, steps: int) -> tuple[int, np.ndarray, _Batches]:
        """The dealing of the steps whose groups start in the window of step ``step``'s group:
        ``(its first step, table[rank, step], the batches its ids point into)``, from that window
        (and the next ones a straddling last group reaches into) alone."""
        epoch, origin, replicas = self.epoch, self._origin, self.num_replicas
        k, first = self._locate(origin + step * replicas)
        window = self._window(epoch, k)
        end = first + window.batches.num_batches
        lo = max(0, -(-(first - origin) // replicas))
        hi = steps if k + 1 >= self.num_windows(epoch) else min(steps, -(-(end - origin) // replicas))
        parts, reach, j = [window], end, k
        need = min(origin + hi * replicas, self._total())
        while reach < need:  # the last group straddles into the next windows
            j += 1
            parts.append(self._window(epoch, j))
            reach += parts[-1].batches.num_batches
        view = join_windows(epoch, parts)
        table, _ = _kernels.deal_groups(view.sequence, view.costs, origin + lo * replicas - first, replicas, hi - lo, _NO_WINDOWS)
        return lo, table, view.batches

    def _play_budgeted(self, start: int, dealt: int) -> Iterator[list[int]]:
        """Step by step, re-reading the plan before each step: a budget change decided by the
        training loop re-plans the epoch's tail.  The schedule's lag keeps every change past the
        batches already handed out, so the steps played so far are a prefix of the new plan."""
        step = start
        key = self._canon_key
        while True:
            plan = self.plan()
            if self._canon_key != key:
                self._check_change_ahead(key, plan.origin + step * self.num_replicas)
                key = self._canon_key
            if step >= plan.stats.batches_per_rank:
                return
            column = plan.table[:, step] if dealt > 1 else plan.table[self.rank : self.rank + 1, step]
            order, offsets = plan.batches.order, plan.batches.offsets
            for b in column.tolist():
                self._yielded = step + 1
                yield order[offsets[b] : offsets[b + 1]].tolist() if b >= 0 else []
            step += 1

    def _check_change_ahead(self, old: tuple, handed_out: int) -> None:
        """Refuse a budget change that lands on a batch already handed out (a prefetching
        DataLoader ran further ahead than the schedule's lag): the epoch would repeat or lose examples."""
        new = self._canon_key
        same = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
        at = new[same][0] if same < len(new) else old[same][0]
        if at < handed_out:
            raise ValueError(
                f"the budget schedule changed max_tokens at global batch {at} of epoch {self.epoch}, but this sampler "
                f"had already handed out {handed_out} of the epoch's batches; raise the schedule's lag_batches to at "
                f"least the DataLoader's prefetch depth (num_workers * prefetch_factor, at least 1)"
            )

    # --- resume -----------------------------------------------------------------------------
    def _fingerprint_of(self) -> str:
        """``xxh3:`` + the xxh3-128 of the lengths and settings (and ``plan_window``, when windowed)."""
        if self._fingerprint is None:
            h = xxhash.xxh3_128()
            h.update(self._lengths_bytes())
            h.update(repr(self._settings()).encode())
            if self.plan_window is not None:
                h.update(repr(("plan_window", self.plan_window)).encode())
            self._fingerprint = _FINGERPRINT + h.hexdigest()
        return self._fingerprint

    def _legacy_fingerprint(self) -> str:
        """The blake2b fingerprint of states saved before windowed plans (no ``plan_window`` in it)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(self._lengths_bytes())
        h.update(repr(self._settings()).encode())
        return h.hexdigest()

    def _check_fingerprint(self, state: dict) -> None:
        """Refuse a state saved for other lengths or settings; one with the older blake2b fingerprint
        loads when its epoch is one plan window (the plan it was saved under)."""
        saved = state["fingerprint"]
        if saved == self._fingerprint_of():
            return
        if isinstance(saved, str) and not saved.startswith(_FINGERPRINT) and saved == self._legacy_fingerprint():
            windows = self.num_windows(int(state["epoch"]))
            if windows > 1:
                raise ValueError(
                    f"state_dict was saved by a packwise that planned the epoch as one window, but this sampler plans "
                    f"epoch {state['epoch']} in {windows} windows of plan_window={self.plan_window} examples; rebuild it "
                    f"with plan_window >= {self._universe_size(int(state['epoch']))} to resume that plan"
                )
            return
        raise ValueError(
            f"state_dict was saved for different lengths or sampler settings (fingerprint mismatch); "
            f"{type(self).__name__} resumes only from the same lengths and {', '.join(self._FIXED)} "
            f"(num_replicas, rank and DataLoader workers may change): rebuild it with the saved ones"
        )

    def state_dict(self) -> dict:
        """Where the epoch is, the same on every rank: ``epoch`` and ``cursor`` (global batches of
        the canonical order consumed), plus this dealing's ``origin``, ``num_replicas`` and
        ``batches_yielded`` (steps), so a resume under the same world size continues bit for bit;
        without a budget schedule also ``total`` (the epoch's global batches), ``window`` and
        ``window_start`` (the cursor's plan window and its first canonical position), so a restore
        plans that window only.

        ``batches_yielded`` counts batches the training loop received, not those a DataLoader's
        workers or accelerate prefetched (read from the torch DataLoader iterator that pulls this
        sampler); a ``StatefulDataLoader`` asking for its own snapshots gets the handed-out count.
        """
        done = self._yielded
        if not _wrapped.called_from("torchdata"):
            done = _wrapped.consumed_steps(self._caller, self._yielded, self._start)
        return self.state_at(done)

    def state_at(self, steps: int) -> dict:
        """The state after ``steps`` batches per rank of the current epoch's dealing (a Trainer
        that counts the batches it trained on passes its own count)."""
        steps = int(steps)
        origin = self._origin
        cursor = origin
        total = self._total()
        if steps > 0:
            done_all = steps >= self._steps()
            cursor = total if done_all else min(origin + steps * self.num_replicas, total)
        windows = {}
        if self.budget is None:  # where a restore starts planning: the cursor's window
            window, first = self._locate(cursor)
            windows = {"total": int(total), "window": int(window), "window_start": int(first)}
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "cursor": int(cursor),
            "origin": int(origin),
            "num_replicas": self.num_replicas,
            "batches_yielded": steps,
            "seed": self.seed,
            "fingerprint": self._fingerprint_of(),
            **windows,
            **self._budget_state(),
        }

    def _budget_state(self) -> dict:
        """``{"budget_base": ...}`` under a budget schedule (the schedule's position when the epoch began), else ``{}``."""
        if self.budget is None:
            return {}
        return {"budget_base": int(self._base if self._base is not None else self.budget.position)}

    def _load_budget_base(self, state: dict) -> None:
        """Restore where the epoch began on the schedule; the schedule's own state must be loaded first."""
        if self.budget is None:
            return
        check_fields(state, ("budget_base",))  # saved with the schedule: load its state first
        if int(state["budget_base"]) > self.budget.position:
            raise ValueError(
                f"state_dict has budget_base={state['budget_base']} but the budget schedule is at position "
                f"{self.budget.position}; load the schedule's state_dict (saved with this one) before the sampler's"
            )
        self._base = int(state["budget_base"])

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next ``__iter__`` yields the rest of the saved epoch, exactly, under any world size.

        Under the saved ``num_replicas`` the rest is dealt as before (bit for bit); under another
        one the canonical batches after ``cursor`` are dealt afresh to the new ranks (each once,
        equal counts).  The lengths, ``seed`` and settings (``fixed`` in the refusal) must not
        change: they define the canonical order the cursor points into.  A state with ``window``
        plans only the cursor's window (and the next ones as they play); one without (older, or
        under a budget schedule) plans the epoch.
        """
        check_fields(state, ("epoch", "batches_yielded", "seed", "num_replicas", "fingerprint"))
        if state["seed"] != self.seed:
            raise ValueError(
                f"state_dict was saved with seed={state['seed']} but this sampler has seed={self.seed}; "
                f"rebuild the sampler with the saved seed"
            )
        self._check_fingerprint(state)
        self.set_epoch(int(state["epoch"]))
        self._load_budget_base(state)
        origin, start = resume_point(state, "batches_yielded", self.num_replicas)
        if self.budget is None and "cursor" in state and {"total", "window", "window_start"} <= set(state):
            total = self._restore_windows(state)
        else:
            total = self.canonical().batches.num_batches
        if not 0 <= origin <= total:
            raise ValueError(f"state_dict cursor={origin} is outside [0, {total}] for epoch {self.epoch}")
        self._origin = origin
        steps = self._steps()
        if not 0 <= start <= steps:
            raise ValueError(f"state_dict batches_yielded={start} is outside [0, {steps}] for epoch {self.epoch}")
        self._resume_at = start
        self._yielded = start
        self._caller = None

    def _restore_windows(self, state: dict) -> int:
        """Take the epoch's batch count and the cursor's window from the state, planning only that
        window (to check the cursor lies in it); returns the epoch's batch count."""
        total, window, first, cursor = (int(state[f]) for f in ("total", "window", "window_start", "cursor"))
        windows = self.num_windows()
        if not (0 <= window < windows and 0 <= first <= cursor <= total):
            raise ValueError(
                f"state_dict has window={window}, window_start={first}, cursor={cursor}, total={total}, which do not "
                f"fit epoch {self.epoch} ({windows} plan windows); pass a dict saved by state_dict() for these lengths"
            )
        size = self._window(self.epoch, window).batches.num_batches
        if cursor > first + size or (window == windows - 1 and first + size != total):
            raise ValueError(
                f"state_dict cursor={cursor} is not in plan window {window} (canonical positions {first} to "
                f"{first + size}, of {total}); pass a dict saved by state_dict() for these lengths and settings"
            )
        self._total_known = (self.epoch, total)
        self._learn_starts(self.epoch, np.zeros(0, np.int64))
        self._starts[window] = first
        return total

    def _rewind(self) -> None:
        """Back to the first batch of the current dealing (a Trainer that skips batches itself)."""
        self._resume_at = 0
        self._yielded = 0


def check_fields(state: dict, required: tuple[str, ...]) -> None:
    """Refuse a state that lacks a field, naming it."""
    missing = set(required) - set(state)
    if missing:
        raise ValueError(f"state_dict is missing {sorted(missing)}; pass a dict saved by state_dict()")


def resume_point(state: dict, count: str, num_replicas: int) -> tuple[int, int]:
    """``(origin, steps to skip)`` of a saved state under ``num_replicas`` ranks.

    The saved world size continues its own dealing (same origin, same step); another world size
    starts a fresh dealing at the global cursor.  A state from before the global cursor (version 1,
    with per-rank counters) resumes only under its own world size."""
    if "cursor" not in state:
        if state["num_replicas"] != num_replicas:
            raise ValueError(
                f"state_dict was saved with num_replicas={state['num_replicas']} by a packwise without a global "
                f"cursor, so it resumes only under num_replicas={state['num_replicas']}; resume with that world "
                f"size, or start the epoch afresh"
            )
        return 0, int(state[count])
    check_fields(state, ("cursor", "origin"))
    if state["num_replicas"] == num_replicas:
        return int(state["origin"]), int(state[count])
    return int(state["cursor"]), 0
