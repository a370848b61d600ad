"""``MixtureSampler``: packed batches drawn from several sources at target token proportions.

The epoch is one canonical sequence of global batches, a pure function of (seed, epoch, lengths,
groups, weights, policy state): it is planned lazily window by window (``window`` global batches
each, independent of the world size), then dealt to ranks in groups of ``num_replicas``.  A saved
state names a position in that sequence, so a resume is exact under the same or another world size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Literal, Protocol, runtime_checkable

import numpy as np
from torch.utils.data import ConcatDataset

from ..packing import pack
from ..packing.core import _pack_entries
from . import _kernels, _mixture_kernels, _wrapped
from . import _mixture_weights as mw
from ._lengths import resolve_lengths
from ._planned import _PlannedBatchSampler, budget_max_tokens
from .stats import TokenSlots
from .bucket import _edges

_DRAWS = 4096  # draws per kernel call (the kernel is re-entered until the window's budget is drawn)
_NONE = np.zeros(0, np.int64)
_PACK_WINDOW, _PACK_AGE = 10_000, 4  # pack()'s defaults (window_bfd)
_KEEP = 256  # window starts and per-step loads kept behind the newest (prefetch never runs further)


@runtime_checkable
class MixturePolicy(Protocol):
    """An online mixing policy (ODM / EXP3, softmax(loss / T), your own), driven by the sampler.

    Global steps are split into update intervals of ``update_every`` steps.  The sampler calls
    ``weights(k, base)`` once, when it plans the first window of interval ``k``, with the static or
    scheduled ``base`` weights (one per source, summing to 1); the answer (non-negative, any
    scale) is the target for every window of interval ``k``.  It may depend only on observations of
    intervals ``<= k - 2``: the DataLoader prefetches interval ``k``'s first batches while
    interval ``k - 1`` is still training (so ``update_every`` steps must outlast the DataLoader's
    prefetch).  When one of those observations is missing the policy raises ``RuntimeError``
    saying which interval to ``observe``.  The training loop calls ``observe(k, loss_sum, tokens)``
    once its step ``t`` leaves interval ``k = sampler.interval_of(sampler.global_step(t))``, with
    per-source summed loss and token
    counts, already reduced across ranks (one collective per interval; ``sampler.sources_of``
    maps a batch's indices to sources), so every rank holds the same policy state and plans the
    same batches.  ``state_dict`` / ``load_state_dict`` round-trip that state; the sampler's own
    ``state_dict`` embeds it.

    Example:
        >>> import numpy as np
        >>> from packwise.samplers import MixturePolicy, MixtureSampler
        >>> class Flat:  # uniform over the sources, whatever the losses
        ...     def weights(self, interval, base): return np.ones_like(base)
        ...     def observe(self, interval, loss_sum, tokens): pass
        ...     def state_dict(self): return {}
        ...     def load_state_dict(self, state): pass
        >>> isinstance(Flat(), MixturePolicy)
        True
        >>> s = MixtureSampler(np.array([90, 10, 50, 50]), np.array([0, 0, 1, 1]), None, 100, policy=Flat(),
        ...                    update_every=1, window=1, num_replicas=1, rank=0)
        >>> [b for b in s], s.stats().target
        ([[0, 1], [2, 3]], (0.5, 0.5))
    """

    def weights(self, interval: int, base: np.ndarray) -> np.ndarray: ...

    def observe(self, interval: int, loss_sum: np.ndarray, tokens: np.ndarray) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass(frozen=True)
class MixtureStats(TokenSlots):
    """What the planned windows of an epoch hold, per source and in all.

    ``target`` is the mean target proportion (static, scheduled or the policy's) weighted by what
    each window emitted, ``realised`` the emitted share, both in tokens (``by="tokens"``) or in
    examples.  ``passes`` = emitted examples / source size; ``capped_windows`` counts windows where
    a source hit ``max_repetition``, or drew all its examples (a source smaller than one window's
    share never puts an example twice in a window), and the others were renormalised; ``left_over`` examples were
    drawn for the epoch's last window but did not fit its batches.

    Example:
        >>> import numpy as np
        >>> from packwise.samplers import MixtureSampler
        >>> s = MixtureSampler(np.array([60, 40, 30, 70]), np.array([0, 0, 1, 1]), [0.5, 0.5], 100,
        ...                    names=["a", "b"], window=1, num_replicas=1, rank=0)
        >>> st = s.stats()
        >>> st.names, st.realised, st.passes, st.batches, st.efficiency
        (('a', 'b'), (0.5, 0.5), (1.0, 1.0), 2, 1.0)
    """

    epoch: int
    num_replicas: int
    batches_per_rank: int
    windows: int
    batches: int
    empty_batches: int
    examples: int
    tokens: int
    slots: int
    names: tuple[str, ...]
    target: tuple[float, ...]
    realised: tuple[float, ...]
    source_tokens: tuple[int, ...]
    source_examples: tuple[int, ...]
    passes: tuple[float, ...]
    capped_windows: tuple[int, ...]
    left_over: int
    dropped_oversize: int
    truncated_tokens: int



@dataclass
class _Cursor:
    """The plan's state at a window start: all a resume needs besides the policy."""

    window: int
    drawn: np.ndarray  # examples drawn per source this epoch (cycle = drawn // size)
    deficit: np.ndarray  # target minus realised units per source, carried across windows
    tokens: int  # tokens drawn this epoch
    carry: np.ndarray  # drawn example ids that did not fit the previous window

    def to_dict(self) -> dict:
        return {
            "window": self.window,
            "drawn": self.drawn.tolist(),
            "deficit": self.deficit.tolist(),
            "tokens": self.tokens,
            "carry": self.carry.tolist(),
        }

    @staticmethod
    def from_dict(d: dict) -> "_Cursor":
        return _Cursor(
            int(d["window"]),
            np.asarray(d["drawn"], np.int64),
            np.asarray(d["deficit"], np.float64),
            int(d["tokens"]),
            np.asarray(d["carry"], np.int64),
        )


@dataclass(frozen=True)
class _Sources:
    """One epoch's draw pools: example ids grouped by source (CSR) and draws allowed per source."""

    members: np.ndarray
    counts: np.ndarray
    offsets: np.ndarray
    cap: np.ndarray | None


@dataclass(frozen=True)
class _Window:
    """One planned window: ``window`` batches, CSR-shaped, and what they hold per source."""

    index: int
    order: np.ndarray
    offsets: np.ndarray
    costs: np.ndarray
    weights: np.ndarray
    source_tokens: np.ndarray
    source_examples: np.ndarray
    capped: np.ndarray
    slots: int
    empty: int
    left_over: int


class _Planner:
    """Plans one epoch's windows in order from a cursor; each source walks its own seeded
    permutation, cycle after cycle (``(seed, epoch, source, cycle)``)."""

    def __init__(self, m: "MixtureSampler", epoch: int, cursor: _Cursor, marks: dict | None = None):
        self.m, self.epoch, self.cursor, self.marks = m, epoch, cursor, marks
        self.max_tokens = m.max_tokens  # the window's: a budget schedule sets it per window
        self.src = src = m._sources_for(epoch)
        self.ids = np.empty(src.members.shape[0], np.int64)
        self.seq = np.empty(src.members.shape[0], np.int64)
        self.cycle = np.zeros(m.num_sources, np.int64)
        self.out_source = np.empty(_DRAWS, np.int64)
        self.out_pos = np.empty(_DRAWS, np.int64)
        self.seen = np.zeros(m._len.shape[0], np.bool_)  # scratch for _distinct, all False between calls
        for s in np.flatnonzero(src.counts).tolist():
            self._load_cycle(s, int(cursor.drawn[s] // src.counts[s]))
        if marks is not None:
            marks[cursor.window] = cursor

    def _load_cycle(self, source: int, cycle: int) -> None:
        m, src = self.m, self.src
        lo, hi = int(src.offsets[source]), int(src.offsets[source + 1])
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([m.seed, self.epoch, 29, source, cycle])))
        self.ids[lo:hi] = src.members[lo:hi][rng.permutation(hi - lo)]
        self.seq[lo:hi] = m._len[self.ids[lo:hi]]
        self.cycle[source] = cycle

    def _draw(self, weights: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
        """New example ids for this window, and which sources hit a cap: ``max_repetition``, or
        their size within one window (with the carry), so no example is twice in a window's pool."""
        m, cur, src = self.m, self.cursor, self.src
        pos = cur.drawn - self.cycle * src.counts
        left = src.counts - np.bincount(m.groups[cur.carry], minlength=m.num_sources)
        if src.cap is not None:
            left = np.minimum(left, src.cap - cur.drawn)
        got = []
        while budget > 0:
            k, tokens, status = _mixture_kernels.deficit_draws(
                weights, cur.deficit, pos, self.seq, src.offsets, left, budget, m.by == "tokens",
                self.out_source, self.out_pos,
            )
            got.append(self.ids[src.offsets[self.out_source[:k]] + self.out_pos[:k]])
            budget -= tokens
            if status >= 0:
                self._load_cycle(status, int(self.cycle[status]) + 1)
                pos[status] = 0
            elif status == -2:
                break
        cur.drawn = self.cycle * src.counts + pos
        return (np.concatenate(got) if got else np.zeros(0, np.int64)), (weights > 0) & (left == 0)

    def _distinct(self, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(pool without repeated ids, the repeats)``: a source that wrapped into its next cycle
        while an example of the last one waits in the carry must not put it twice in one batch."""
        return _mixture_kernels.distinct(pool, self.seen)

    def next_window(self) -> _Window:
        """Plan the cursor's window and move the cursor to the next one."""
        m, epoch = self.m, self.epoch
        start = self.cursor
        cur = self.cursor = _Cursor(start.window, start.drawn.copy(), start.deficit.copy(), start.tokens, start.carry)
        j = cur.window
        bins = m.window * m.rows_per_batch
        weights = m._weights_at(m._step_of(epoch, j))
        self.max_tokens = m._window_max_tokens(epoch, j)
        budget = min(int(bins * self.max_tokens * m._fill) - int(m._len[cur.carry].sum()), m.tokens_per_epoch - cur.tokens)
        new, capped = self._draw(np.where(self.src.counts > 0, weights, 0.0), budget)
        cur.tokens += int(m._len[new].sum())
        pool, repeats = np.concatenate([cur.carry, new]), _NONE
        if self.cycle.any():  # a source wrapped: its new cycle may meet a carried example of the last
            pool, repeats = self._distinct(pool)
        order, offsets, slots, carry = self._batches(pool, bins, j)
        carry = np.concatenate([carry, repeats])
        last = j == m.num_windows - 1
        cur.window, cur.carry = j + 1, (np.zeros(0, np.int64) if last else carry)
        if self.marks is not None:
            self.marks[cur.window] = cur
        rows = m.rows_per_batch
        batch_offsets = offsets[::rows].copy()
        tokens, squares, source_tokens, source_examples = _mixture_kernels.window_sums(order, batch_offsets, m._len, m.groups, m.num_sources)
        work = tokens if m.batching == "pack" else slots.reshape(-1, rows).sum(axis=1)
        return _Window(
            index=j,
            order=order,
            offsets=batch_offsets,
            costs=work + m.attention_weight * squares,
            weights=weights,
            source_tokens=source_tokens,
            source_examples=source_examples,
            capped=capped,
            slots=int(slots.sum()),
            empty=int((np.diff(batch_offsets) == 0).sum()),
            left_over=int(carry.shape[0]) if last else 0,
        )

    def _bins(self, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(order, offsets, slots)`` of the pool's bins: packed rows of ``max_tokens``, or
        padded batches of one length bucket each (``len * max length <= max_tokens``)."""
        m = self.m
        if m.batching == "pack":
            if self.max_tokens < m.max_tokens:  # a budget below the checked one: pack() names an oversize example
                p = pack(lengths, self.max_tokens, m.algorithm, "error")
                return p.order, p.offsets, np.full(p.num_bins, self.max_tokens, np.int64)
            # lengths were checked at construction (1 .. max_tokens): skip pack()'s checks
            order, offsets, _ = _pack_entries(lengths, self.max_tokens, m.algorithm, _PACK_WINDOW, _PACK_AGE)
            return order, offsets, np.full(offsets.shape[0] - 1, self.max_tokens, np.int64)
        keys = np.searchsorted(m.boundaries, lengths, side="left")
        order, groups = _kernels.group_by_key(np.arange(lengths.shape[0], dtype=np.int64), keys, m.boundaries.shape[0] + 1)
        caps = np.zeros(m.boundaries.shape[0] + 1, np.int64)
        offsets, _, _, slots, _ = _kernels.cut_padded(order, lengths[:, None], groups, caps, self.max_tokens)
        return order, offsets, slots

    def _batches(self, pool: np.ndarray, bins: int, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Cut the pool into bins; keep the ``bins`` fullest in a seeded order (empty bins last).
        Returns ``(order, bin offsets, slots per bin, carried example ids in pool order)``."""
        m = self.m
        if pool.shape[0] == 0:
            return pool, np.zeros(bins + 1, np.int64), np.zeros(bins, np.int64), pool
        order, bin_offsets, slots = self._bins(m._len[pool])
        keep, carry = _mixture_kernels.choose_bins(pool, order, bin_offsets, slots, m._len, bins, m.batching == "pack")
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([m.seed, self.epoch, 31, j])))
        keep = keep[rng.permutation(keep.shape[0])]
        ids, offsets, padded = _mixture_kernels.arrange_bins(pool, order, bin_offsets, slots, keep, m._len, m.groups, m.num_sources, bins)
        return ids, offsets, padded, carry


class MixtureSampler(_PlannedBatchSampler):
    """Packed batches drawn from several sources at target proportions: static, temperature,
    two-level, scheduled in steps, or set online by a :class:`MixturePolicy`.

    ``groups`` gives each example's source (int ids, or names; a pyarrow / ``datasets`` column
    works); ``names`` names the ids.  ``weights`` are target proportions (a dict keyed by name or
    id, or an array), measured in tokens (``by="tokens"``) or examples (``by="examples"``);
    ``temperature=alpha`` sets them to ``size ** alpha`` (size in the ``by`` unit); neither gives
    natural proportions.  Two levels (mHuBERT-147: language, then dataset): ``parents`` maps each
    source to a parent (array of ids, or dict source -> parent name), ``parent_weights`` /
    ``parent_temperature`` weigh the parents, and ``weights`` / ``temperature`` then split each
    parent's share among its sources.  A schedule is ``weights=[(step, weights), ...]``, piecewise
    linear in global steps (two points at one step make a jump).

    The epoch is ``tokens_per_epoch`` tokens (default: all sources' tokens) in windows of
    ``window`` global batches of ``rows_per_batch`` bins of ``max_tokens``.  A window draws
    examples one by one from the source furthest below its target (deficits carry across
    windows), each source in its own seeded permutation (no example repeats within its source
    before the source is exhausted), packs them with :func:`packwise.packing.pack` and keeps the
    fullest bins; what does not fit waits for the next window.  ``batching="bucket"`` cuts the
    window into padded batches of similar lengths instead (``buckets``: a number of equal-token
    buckets or their upper edges; ``len * max length <= max_tokens``), keeping the fullest; the
    epoch's batch count then allows for padding estimated from the buckets (what still does not
    fit is counted in ``stats().left_over``).  Weights are evaluated once per
    window, at its first global step ``(epoch * canonical batches per epoch + first batch) //
    batches_per_step`` (``batches_per_step`` defaults to ``num_replicas``: one global batch per
    rank per step; pass it explicitly to resume a schedule or policy under another world size).
    ``max_repetition`` caps the passes over a source per epoch: a static mixture that needs more
    is refused; under a schedule or policy a capped source is left out and the others renormalised.
    ``pruning`` (a selection policy such as :class:`packwise.selection.InfoBatch` over all the
    mixture's examples) prunes inside the sources: each epoch a source draws only from the
    examples ``pruning.indices_for_epoch(epoch)`` keeps, at the same target proportions (save
    ``pruning.state_dict()`` beside the sampler's and load it first on resume).
    ``budget`` (a :class:`packwise.selection.RampBudget` or ``AdaptiveBudget``, stepped by the
    training loop) replaces ``max_tokens``: each window is planned whole with the schedule's
    ``max_tokens`` at its first global batch, so a change takes effect at the first window start at
    or after it; the epoch keeps its ``tokens_per_epoch`` in fewer batches, and ``len()`` counts
    them with the changes decided so far, as in :class:`PackedBatchSampler`.  Save the schedule's
    ``state_dict`` beside the sampler's and load it first on resume.

    Ranks get groups of ``num_replicas`` consecutive batches, the costliest (tokens +
    ``attention_weight * sum(length^2)``) to the least-loaded rank; a short last group is padded
    with empty batches (or dropped with ``drop_last``).  ``state_dict`` is small (cursors and
    deficits per source, the carry, the policy's state) and resumes exactly, also under another
    ``num_replicas``.  Cooperates with accelerate like :class:`PackedBatchSampler`.

    Example:
        >>> import numpy as np
        >>> from packwise.samplers import MixtureSampler
        >>> lengths = np.array([300, 200, 500, 100, 400, 250, 150, 300])
        >>> groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
        >>> s = MixtureSampler(lengths, groups, {"web": 0.5, "chat": 0.5}, max_tokens=512,
        ...                    names=["web", "chat"], window=2, num_replicas=1, rank=0)
        >>> len(s), sorted(i for batch in s for i in batch)
        (6, [0, 1, 2, 3, 4, 5, 6, 7])
        >>> s.stats().realised
        (0.5, 0.5)
    """

    def __init__(
        self,
        lengths,
        groups,
        weights,
        max_tokens: int | None = None,
        *,
        names: list[str] | None = None,
        by: Literal["tokens", "examples"] = "tokens",
        temperature: float | None = None,
        parents=None,
        parent_weights=None,
        parent_temperature: float | None = None,
        max_repetition: float | None = None,
        tokens_per_epoch: int | None = None,
        rows_per_batch: int = 1,
        algorithm: Literal["bfd", "fill", "ffd", "first_fit", "next_fit", "window_bfd"] = "bfd",
        oversize: Literal["error", "truncate", "drop"] = "error",
        batching: Literal["pack", "bucket"] = "pack",
        buckets=8,
        policy: MixturePolicy | None = None,
        update_every: int = 100,
        pruning=None,
        window: int = 32,
        batches_per_step: int | None = None,
        dataset=None,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        attention_weight: float = 0.0,
        drop_last: bool = False,
        budget=None,
    ):
        max_tokens = budget_max_tokens(budget, max_tokens)
        self.lengths = resolve_lengths(lengths, dataset)
        self.groups, found = mw.resolve_groups(groups, dataset, names)
        if self.groups.shape[0] != self.lengths.shape[0]:
            raise ValueError(
                f"groups has {self.groups.shape[0]} entries but lengths has {self.lengths.shape[0]}; "
                f"give one source id per example"
            )
        for field, value in (("max_tokens", max_tokens), ("rows_per_batch", rows_per_batch), ("window", window), ("update_every", update_every)):
            _positive(field, value)
        if batches_per_step is not None:
            _positive("batches_per_step", batches_per_step)
        if by not in ("tokens", "examples"):
            raise ValueError(f"by must be 'tokens' or 'examples', got {by!r}")
        if oversize not in ("error", "truncate", "drop"):
            raise ValueError(f"oversize must be 'error', 'truncate' or 'drop', got {oversize!r}")
        if batching not in ("pack", "bucket"):
            raise ValueError(f"batching must be 'pack' or 'bucket', got {batching!r}")
        if batching == "bucket" and rows_per_batch != 1:
            raise ValueError("rows_per_batch applies to packed rows; a bucketed batch is one padded batch: drop it or use batching='pack'")
        self.batching = batching
        super().__init__(
            self.lengths.shape[0], seed=seed, shuffle=True, drop_last=drop_last,
            num_replicas=num_replicas, rank=rank, attention_weight=attention_weight,
        )
        self.max_tokens, self.rows_per_batch, self.window = int(max_tokens), int(rows_per_batch), int(window)
        self.budget = budget  # a packwise.selection budget schedule: each window's max_tokens
        self.update_every, self.by, self.algorithm, self.oversize = int(update_every), by, algorithm, oversize
        self.names = found or _source_names(names, self.groups)
        self.num_sources = len(self.names)
        if int(self.groups.max()) >= self.num_sources:
            raise ValueError(f"groups holds id {int(self.groups.max())} but names has {self.num_sources} entries; name every source")
        self._len, kept = self._effective_lengths()
        self._counts = np.bincount(self.groups[kept], minlength=self.num_sources).astype(np.int64)
        self.boundaries = _edges(buckets, self._len[kept], "buckets") if batching == "bucket" else np.zeros(0, np.int64)
        token_sizes = np.bincount(self.groups[kept], weights=self._len[kept], minlength=self.num_sources)
        sizes = token_sizes if by == "tokens" else self._counts.astype(np.float64)
        levels = mw.parent_level(parents, parent_weights, parent_temperature, sizes, self.names)
        self.schedule = mw.schedule(weights, temperature, sizes, self.names, levels)
        self._check_sources()
        self.tokens_per_epoch = int(token_sizes.sum()) if tokens_per_epoch is None else _positive("tokens_per_epoch", tokens_per_epoch)
        self._fill = self._fill_estimate(kept)
        self.num_windows = max(1, int(np.ceil(self.tokens_per_epoch / (self.window * self.rows_per_batch * self.max_tokens * self._fill))))
        self.policy = _check_policy(policy)
        self.batches_per_step = self.num_replicas if batches_per_step is None else int(batches_per_step)
        if self.policy is not None and self.update_every * self.batches_per_step < self.window:
            raise ValueError(
                f"update_every={self.update_every} steps ({self.update_every * self.batches_per_step} global batches at "
                f"batches_per_step={self.batches_per_step}) is shorter than one window ({self.window} batches), whose "
                f"weights are fixed; raise update_every or lower window"
            )
        self.max_repetition = max_repetition
        self._check_repetition(token_sizes)
        self._all = self._sources(kept, max_repetition)
        self.pruning = _check_pruning(pruning, self.lengths.shape[0])
        self._pruned: tuple[int, _Sources] | None = None
        pack(self._len[:1], self.max_tokens, algorithm, "error")  # validates ``algorithm`` early
        self._asked: dict[int, np.ndarray] = {}
        self._origin = 0
        self._resume: dict | None = None
        self._loaded: dict | None = None
        self._marks: dict[int, _Cursor] = {}
        self._loads: dict[int, np.ndarray] = {}
        self._log: list[_Window] = []

    # --- construction helpers ---------------------------------------------------------------
    def _effective_lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """Lengths as packed (``truncate`` clips) and the examples that take part (``drop`` leaves some out)."""
        over = np.flatnonzero(self.lengths > self.max_tokens)
        self.dropped_oversize = int(over.shape[0]) if self.oversize == "drop" else 0
        self.truncated_tokens = int((self.lengths[over] - self.max_tokens).sum()) if self.oversize == "truncate" else 0
        if over.shape[0] and self.oversize == "error":
            i = int(over[0])
            raise ValueError(
                f"lengths[{i}] = {int(self.lengths[i])} is longer than max_tokens={self.max_tokens} "
                f"({over.shape[0]} examples are); raise max_tokens or pass oversize='truncate' or 'drop'"
            )
        kept = np.flatnonzero(self.lengths <= self.max_tokens) if self.oversize == "drop" else np.arange(self.lengths.shape[0])
        return np.minimum(self.lengths, self.max_tokens), kept.astype(np.int64)

    def _fill_estimate(self, kept: np.ndarray) -> float:
        """Real tokens per slot to size the epoch: 1 for packing; for buckets, tokens over each
        example padded to its bucket's longest (a floor: batches rarely hold their bucket's longest)."""
        if self.batching == "pack":
            return 1.0
        lengths = self._len[kept]
        keys = np.searchsorted(self.boundaries, lengths, side="left")
        longest = np.zeros(self.boundaries.shape[0] + 1, np.int64)
        np.maximum.at(longest, keys, lengths)
        return float(lengths.sum() / longest[keys].sum())

    def _check_sources(self) -> None:
        wanted = self.schedule.points.max(axis=0) > 0
        for s in np.flatnonzero(wanted & (self._counts == 0)).tolist():
            raise ValueError(
                f"source {self.names[s]!r} has no examples (groups never holds id {s}, or all were dropped) "
                f"but a weight > 0; give it weight 0"
            )

    def _sources(self, kept: np.ndarray, max_repetition: float | None) -> "_Sources":
        """The examples each source draws from (CSR by source) and its draws allowed per epoch."""
        members = kept[np.argsort(self.groups[kept], kind="stable")]
        counts = np.bincount(self.groups[kept], minlength=self.num_sources).astype(np.int64)
        cap = None if max_repetition is None else np.floor(counts * float(max_repetition)).astype(np.int64)
        return _Sources(members, counts, np.concatenate(([0], np.cumsum(counts))).astype(np.int64), cap)

    def _sources_for(self, epoch: int) -> "_Sources":
        """This epoch's sources: all examples, or those the ``pruning`` policy keeps this epoch."""
        if self.pruning is None:
            return self._all
        if self._pruned is None or self._pruned[0] != epoch:
            kept = np.asarray(self.pruning.indices_for_epoch(epoch), np.int64)
            kept = kept[np.isin(kept, self._all.members)]  # oversize examples stay dropped
            self._pruned = (epoch, self._sources(np.sort(kept), self.max_repetition))
        return self._pruned[1]

    def _check_repetition(self, token_sizes: np.ndarray) -> None:
        """Refuse a static mixture that needs more passes over a source than ``max_repetition``."""
        m = self.max_repetition
        if m is None:
            return
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not np.isfinite(m) or m <= 0:
            raise ValueError(f"max_repetition must be a number > 0 (passes over a source per epoch), got {m!r}")
        if self.schedule.static and self.policy is None:
            w = self.schedule.points[0]
            if self.by == "tokens":
                need = np.divide(w * self.tokens_per_epoch, token_sizes, out=np.zeros_like(w), where=token_sizes > 0)
            else:
                mean = np.divide(token_sizes, self._counts, out=np.zeros_like(w), where=self._counts > 0)
                need = np.divide(w * self.tokens_per_epoch / float((w * mean).sum()), self._counts, out=np.zeros_like(w), where=self._counts > 0)
            for s in np.flatnonzero(need > m + 1e-9).tolist():
                raise ValueError(
                    f"source {self.names[s]!r} needs {need[s]:.2f} passes per epoch at weight {w[s]:.4f} "
                    f"(tokens_per_epoch={self.tokens_per_epoch}) but max_repetition={m}; lower its weight, "
                    f"lower tokens_per_epoch or raise max_repetition"
                )

    def _settings(self) -> tuple:
        timed = not self.schedule.static or self.policy is not None
        return (
            "mixture", self.max_tokens, self.rows_per_batch, self.algorithm, self.oversize, self.by, self.window,
            self.batching, self.boundaries.tolist(),
            self.tokens_per_epoch, self.max_repetition, self.update_every if self.policy is not None else None,
            type(self.policy).__name__ if self.policy is not None else None,
            type(self.pruning).__name__ if self.pruning is not None else None,
            self.batches_per_step if timed else None, self.schedule.steps.tolist(),
            self.schedule.points.tobytes().hex(), self.drop_last, self.attention_weight, tuple(self.names),
        )

    def _lengths_bytes(self) -> bytes:
        return self.lengths.tobytes() + self.groups.tobytes()

    # --- the budget schedule ------------------------------------------------------------------
    @property
    def num_windows(self) -> int:
        """Windows in the current epoch: fixed, or under a budget schedule as many as its
        ``max_tokens`` decided so far need to hold ``tokens_per_epoch`` (fewer as the budget grows)."""
        return self._fixed_windows if self.budget is None else self._budget_windows(self.epoch)

    @num_windows.setter
    def num_windows(self, value: int) -> None:
        self._fixed_windows = int(value)  # without a schedule; a schedule's count follows its changes

    def _window_max_tokens(self, epoch: int, window: int) -> int:
        """The schedule's ``max_tokens`` at the window's first global batch: a change takes effect
        at the first window start at or after it (a window is planned whole)."""
        if self.budget is None:
            return self.max_tokens
        return int(self.budget.at(self._budget_base(epoch) + window * self.window).max_tokens)

    def _budget_windows(self, epoch: int) -> int:
        """Windows until their capacity (``window * rows_per_batch * max_tokens * fill`` each) holds
        ``tokens_per_epoch``, walking the schedule's changes segment by segment."""
        base, span = self._budget_base(epoch), self.window
        need, done = float(self.tokens_per_epoch), 0
        max_tokens = int(self.budget.at(base).max_tokens)
        for change in self.budget.changes:
            if change.position <= base:
                continue
            start = -(-(change.position - base) // span)  # the first window the change applies to
            per = self.window * self.rows_per_batch * max_tokens * self._fill
            if (start - done) * per >= need:
                break
            need -= (start - done) * per
            done, max_tokens = start, int(change.max_tokens)
        per = self.window * self.rows_per_batch * max_tokens * self._fill
        return max(1, done + int(np.ceil(need / per)))

    def _epoch_start(self, epoch: int) -> int:
        """Global batches before ``epoch`` (under a budget schedule, its position at the epoch's start)."""
        return epoch * self.batches_per_epoch if self.budget is None else self._budget_base(epoch)

    def _check_planned(self, key: tuple) -> tuple:
        """Refuse a budget change that applies to a window already planned (a DataLoader that
        prefetched further than the schedule's lag): the epoch would no longer replay exactly."""
        changes = self.budget.changes
        if changes == key:
            return key
        same = next((i for i, (a, b) in enumerate(zip(key, changes)) if a != b), min(len(key), len(changes)))
        planned = max(self._marks) - 1 if self._marks else -1
        for change in changes[same:]:
            at = change.position - self._budget_base(self.epoch)
            start = -(-at // self.window)
            if start <= planned:
                raise ValueError(
                    f"the budget schedule changed max_tokens at global batch {at} (window {start} of "
                    f"epoch {self.epoch}), but this sampler had already planned window {planned}; raise the "
                    f"schedule's lag_batches to at least the DataLoader's prefetch depth (num_workers * "
                    f"prefetch_factor, at least 1)"
                )
        return changes

    # --- weights ----------------------------------------------------------------------------
    @property
    def batches_per_epoch(self) -> int:
        """Canonical global batches per epoch (the same for every world size; under a budget
        schedule, those its changes decided so far give)."""
        return self.num_windows * self.window

    def _step_of(self, epoch: int, window: int) -> int:
        return (self._epoch_start(epoch) + window * self.window) // self.batches_per_step

    def interval_of(self, step: int) -> int:
        """The policy update interval that global ``step`` belongs to."""
        return int(step) // self.update_every

    def global_step(self, steps: int) -> int:
        """The global step (in ``batches_per_step`` units, counted from this epoch's start) reached
        after ``steps`` steps of this rank in this epoch; ``interval_of(global_step(steps))`` tells a
        trainer when an interval ends, also after a resume under another world size."""
        return (self._epoch_start(self.epoch) + self._origin + int(steps) * self.num_replicas) // self.batches_per_step

    def _weights_at(self, step: int) -> np.ndarray:
        """The target for a window starting at global ``step``: scheduled, then the policy's."""
        base = self.schedule.at(step)
        if self.policy is None:
            return base
        k = self.interval_of(step)
        if k not in self._asked:
            w = np.asarray(self.policy.weights(k, base.copy()), dtype=np.float64)
            if w.shape != base.shape or not _valid_weights(w.tolist()):
                raise RuntimeError(
                    f"{type(self.policy).__name__}.weights({k}, base) returned {w.tolist()}; it must return "
                    f"{base.shape[0]} finite weights >= 0, not all zero"
                )
            self._asked[k] = w / w.sum()
        return self._asked[k]

    def sources_of(self, batch_indices) -> np.ndarray:
        """Source id of each example index (int64), for per-source loss tracking."""
        return self.groups[np.asarray(batch_indices, dtype=np.int64)]

    # --- the canonical stream ---------------------------------------------------------------
    def _first_cursor(self) -> _Cursor:
        s = self.num_sources
        return _Cursor(0, np.zeros(s, np.int64), np.zeros(s, np.float64), 0, np.zeros(0, np.int64))

    def _canonical(self, epoch: int, cursor: _Cursor, skip: int, log: list | None = None, marks: dict | None = None) -> Iterator[tuple[list[int], float]]:
        """Global batches from the cursor's window on, less the first ``skip``: ``(indices, cost)``."""
        planner = _Planner(self, epoch, cursor, marks)
        while planner.cursor.window < self.num_windows:
            w = planner.next_window()
            if log is not None:  # the statistics, not the batches
                log.append(replace(w, order=_NONE, offsets=_NONE, costs=_NONE))
            order, offsets = w.order, w.offsets
            for b in range(min(skip, self.window), self.window):
                yield order[offsets[b] : offsets[b + 1]].tolist(), float(w.costs[b])
            skip = max(0, skip - self.window)

    def _dealt(self, batches: Iterator[tuple[list[int], float]], load: np.ndarray, step: int, loads: dict | None = None) -> Iterator[list[list[int]]]:
        """Deal canonical batches to ranks, one group of ``num_replicas`` per step: each step's
        batches in rank order (``[]`` is an empty batch).  ``loads[t]`` records the load before step ``t``."""
        r = self.num_replicas
        group: list[tuple[list[int], float]] = []
        for item in batches:
            group.append(item)
            if len(group) == r:
                step += 1
                yield self._deal_group(group, load, step, loads)
                group = []
        if group and not self.drop_last:
            yield self._deal_group(group + [([], -1.0)] * (r - len(group)), load, step + 1, loads)

    def _deal_group(self, group: list, load: np.ndarray, step: int, loads: dict | None) -> list[list[int]]:
        """One step's batches by rank; records the load after it (before the yield: a caller may stop there)."""
        costs = np.array([c for _, c in group], np.float64)
        table = _mixture_kernels.deal_groups(costs, self.num_replicas, load)[0]
        if loads is not None:
            loads[step] = load.copy()
            loads.pop(step - _KEEP, None)
        return [group[b][0] if b >= 0 else [] for b in table.tolist()]

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """The epoch's canonical global batches, in order (the same for every world size)."""
        epoch = self.epoch if epoch is None else int(epoch)
        return [b for b, _ in self._canonical(epoch, self._first_cursor(), 0)]

    def rank_batches(self, rank: int | None = None, epoch: int | None = None) -> list[list[int]]:
        """Every batch ``rank`` yields in a whole ``epoch`` (empty lists are zero-loss padding batches)."""
        epoch = self.epoch if epoch is None else int(epoch)
        rank = self.rank if rank is None else rank
        load = np.zeros(self.num_replicas, np.float64)
        return [step[rank] for step in self._dealt(self._canonical(epoch, self._first_cursor(), 0), load, 0)]

    # --- the torch protocol -----------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        before = self.epoch
        super().set_epoch(epoch)
        if self.epoch != before:
            self._origin, self._resume, self._loaded = 0, None, None

    def _steps(self) -> int:
        rest = self.batches_per_epoch - self._origin
        return rest // self.num_replicas if self.drop_last else -(-rest // self.num_replicas)

    def __len__(self) -> int:
        """Batches this rank yields this epoch (the same on every rank; after a resume under
        another world size, the rest of the epoch); under accelerate's dealing, ``num_replicas`` times as many."""
        return self._steps() * self._dealt_by(_wrapped.find_caller().dealer)

    def _play(self, caller: _wrapped.Caller, dealt: int) -> Iterator[list[int]]:
        resume, self._resume, self._loaded = self._resume, None, None
        first = self._resume_at
        self._resume_at = 0
        if resume is None:
            self._origin, first = 0, 0
            resume = {"cursor": self._first_cursor(), "at": 0, "load": np.zeros(self.num_replicas), "skip": 0}
        cursor, step = resume["cursor"], first - resume["skip"]
        self._caller, self._start, self._yielded = caller, first, first
        self._marks, self._log = {}, []
        self._loads = {step: resume["load"].copy()}
        log = self._log if self.policy is not None else None  # stats() replans a policy-free epoch itself
        batches = self._canonical(self.epoch, cursor, resume["at"] - cursor.window * self.window, log, self._marks)
        key = self.budget.changes if self.budget is not None else ()
        for t, group in enumerate(self._dealt(batches, resume["load"].copy(), step, self._loads), step):
            if t < first:
                continue
            if t % _KEEP == 0:
                self._prune()
            mine = group[self.rank : self.rank + 1] if dealt == 1 else group
            for batch in mine:
                self._yielded = t + 1
                yield batch
                if self.budget is not None:  # the loop may have stepped the schedule
                    key = self._check_planned(key)

    def _prune(self) -> None:
        newest = max(self._marks)
        for j in [j for j in self._marks if j < newest - _KEEP]:
            del self._marks[j]

    # --- resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Where the epoch stands in the canonical stream, valid for any world size.

        ``{epoch, batches_yielded (steps of this rank consumed), global_batches (canonical batches
        consumed), origin, loads (per rank, at that step), cursor (the window holding it: per-source
        draws and deficits, carried example ids), weights (the policy's answers from that window on),
        policy (its state_dict), seed, num_replicas, rank, fingerprint}``.  Consumed, not prefetched,
        batches count (as in :class:`PackedBatchSampler`).
        """
        if self._loaded is not None:
            return dict(self._loaded)
        done = self._yielded
        if not _wrapped.called_from("torchdata"):
            done = _wrapped.consumed_steps(self._caller, self._yielded, self._start)
        return self.state_at(done)

    def state_at(self, steps: int) -> dict:
        """The state after ``steps`` batches per rank of this pass (a Trainer that counts the
        batches it trained on passes its own count; at most what this pass yielded)."""
        if self._loaded is not None:
            return dict(self._loaded)
        done = int(steps)
        at = min(self._origin + done * self.num_replicas, self.batches_per_epoch)
        j = at // self.window
        if done == 0 and not self._marks:
            cursor, load = self._first_cursor(), np.zeros(self.num_replicas)
        else:
            cursor, load = self._marks.get(j), self._loads.get(done)
        ended = at >= self.batches_per_epoch
        first = self._step_of(self.epoch, j)
        return {
            "epoch": self.epoch,
            "batches_yielded": int(done),
            "steps": int(done),
            "global_batches": int(at),
            "origin": int(self._origin),
            "loads": load.tolist(),
            "cursor": None if ended else cursor.to_dict(),
            "weights": {str(k): w.tolist() for k, w in self._asked.items() if k >= self.interval_of(first)},
            "policy": self.policy.state_dict() if self.policy is not None else None,
            "seed": self.seed,
            "num_replicas": self.num_replicas,
            "rank": self.rank,
            "fingerprint": self._fingerprint_of(),
            **self._budget_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next ``__iter__`` yields the rest of the saved epoch, exactly; under another
        ``num_replicas`` the rest of the canonical stream is dealt to the new ranks."""
        need = {"epoch", "batches_yielded", "steps", "global_batches", "origin", "loads", "cursor", "weights", "policy", "seed", "num_replicas", "fingerprint"}
        missing = need - set(state)
        if missing:
            raise ValueError(f"state_dict is missing {sorted(missing)}; pass a dict saved by MixtureSampler.state_dict()")
        if state["seed"] != self.seed:
            raise ValueError(f"state_dict was saved with seed={state['seed']} but this sampler has seed={self.seed}; rebuild it with the saved seed")
        if state["fingerprint"] != self._fingerprint_of():
            raise ValueError(
                "state_dict was saved for different lengths, groups or sampler settings (fingerprint mismatch); rebuild "
                "the sampler from the same inputs and arguments (under a schedule or policy, pass the saved run's "
                "batches_per_step explicitly when the world size changes)"
            )
        self.set_epoch(int(state["epoch"]))
        self._load_budget_base(state)
        if self.policy is not None and state["policy"] is not None:
            self.policy.load_state_dict(state["policy"])
        self._asked.update({int(k): np.asarray(w, np.float64) for k, w in state["weights"].items()})
        old, steps, done = int(state["num_replicas"]), int(state["steps"]), int(state["batches_yielded"])
        at, origin = int(state["global_batches"]), int(state["origin"])
        if done < steps:
            raise ValueError(f"state_dict batches_yielded={done} is below the {steps} steps its cursor was saved at; save a fresh state_dict")
        cursor = _Cursor.from_dict(state["cursor"]) if state["cursor"] is not None else None
        if old == self.num_replicas:
            self._origin, load, skip, first = origin, np.asarray(state["loads"], np.float64), done - steps, done
        else:  # elastic: deal the rest of the canonical stream to the new ranks from where the old ones stopped
            at = min(origin + done * old, self.batches_per_epoch)
            self._origin, load, skip, first = at, np.zeros(self.num_replicas), 0, 0
        if first > self._steps():
            raise ValueError(f"state_dict batches_yielded={done} is outside [0, {self._steps()}] for epoch {self.epoch}")
        if cursor is None:  # the epoch was finished
            cursor = _Cursor(self.num_windows, np.zeros(self.num_sources, np.int64), np.zeros(self.num_sources), 0, np.zeros(0, np.int64))
            at = cursor.window * self.window
        self._resume = {"cursor": cursor, "at": at, "load": load, "skip": skip}
        self._resume_at = first
        self._yielded = first
        self._caller = None
        self._loaded = dict(state)

    # --- statistics -------------------------------------------------------------------------
    def stats(self, epoch: int | None = None) -> MixtureStats:
        """Per-source target vs realised proportions, passes, caps and padding.

        Without a policy: the whole epoch, planned from lengths alone.  With a policy: the windows
        planned so far in the current pass (later intervals' weights are not known yet).
        """
        epoch = self.epoch if epoch is None else int(epoch)
        if self.policy is None or epoch != self.epoch:
            log: list[_Window] = []
            for _ in self._canonical(epoch, self._first_cursor(), 0, log):
                pass
        else:
            log = self._log
        return self._summarise(epoch, log)

    def _summarise(self, epoch: int, log: list[_Window]) -> MixtureStats:
        s = self.num_sources
        src_tokens = np.sum([w.source_tokens for w in log], axis=0) if log else np.zeros(s, np.int64)
        src_examples = np.sum([w.source_examples for w in log], axis=0) if log else np.zeros(s, np.int64)
        units = [w.source_tokens if self.by == "tokens" else w.source_examples for w in log]
        total = float(sum(u.sum() for u in units))
        target = sum(w.weights * float(u.sum()) for w, u in zip(log, units)) / total if total else np.zeros(s)
        realised = np.sum(units, axis=0) / total if total else np.zeros(s)
        return MixtureStats(
            epoch=epoch,
            num_replicas=self.num_replicas,
            batches_per_rank=self._steps(),
            windows=len(log),
            batches=len(log) * self.window,
            empty_batches=int(sum(w.empty for w in log)),
            examples=int(src_examples.sum()),
            tokens=int(src_tokens.sum()),
            slots=int(sum(w.slots for w in log)),
            names=tuple(self.names),
            target=tuple(round(float(x), 12) for x in target),
            realised=tuple(round(float(x), 12) for x in realised),
            source_tokens=tuple(int(x) for x in src_tokens),
            source_examples=tuple(int(x) for x in src_examples),
            passes=tuple(float(e / n) if n else 0.0 for e, n in zip(src_examples, self._sources_for(epoch).counts)),
            capped_windows=tuple(int(x) for x in np.sum([w.capped for w in log], axis=0)) if log else (0,) * s,
            left_over=int(sum(w.left_over for w in log)),
            dropped_oversize=self.dropped_oversize,
            truncated_tokens=self.truncated_tokens,
        )


def _valid_weights(values: list[float]) -> bool:
    """Finite, >= 0, not all zero: a policy's answer, checked in plain floats (K is small)."""
    return all(0.0 <= x < math.inf for x in values) and sum(values) > 0


def _positive(field: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{field} must be a positive integer, got {value!r}")
    return int(value)


def _source_names(names, groups: np.ndarray) -> list[str]:
    if names is None:
        return [str(i) for i in range(int(groups.max()) + 1)]
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise ValueError(f"names must be unique, got {names}")
    return names


def _check_pruning(pruning, num_examples: int):
    if pruning is None:
        return None
    if not callable(getattr(pruning, "indices_for_epoch", None)):
        raise ValueError(
            f"pruning must implement indices_for_epoch(epoch) (InfoBatch, RS2, ScoreSelector), got {type(pruning).__name__}"
        )
    covered = getattr(pruning, "num_examples", num_examples)
    if covered != num_examples:
        raise ValueError(f"pruning covers {covered} examples but lengths has {num_examples}; build it over the whole mixture")
    return pruning


def _check_policy(policy):
    if policy is None:
        return None
    missing = [m for m in ("weights", "observe", "state_dict", "load_state_dict") if not callable(getattr(policy, m, None))]
    if missing:
        raise ValueError(f"policy must implement the MixturePolicy protocol; {type(policy).__name__} lacks {missing}")
    return policy


# --- building inputs from several datasets ------------------------------------------------------
def _source_lengths(name: str, source, length: str) -> np.ndarray:
    """One source's lengths: an array, a pyarrow Table, a Parquet path or a ``datasets.Dataset``."""
    if isinstance(source, np.ndarray):
        return resolve_lengths(source, name=f"source {name!r}")
    if isinstance(source, (str, Path)):
        import pyarrow.parquet as pq

        path = Path(source)
        if path.suffix != ".parquet" or not path.is_file():
            raise ValueError(f"source {name!r}: {str(path)!r} is not a Parquet file; give a .parquet path, a table or a dataset")
        columns = pq.read_schema(path).names
        if length not in columns:
            raise ValueError(f"source {name!r}: {str(path)!r} has no column {length!r} (columns: {columns}); pass length=<its length column>")
        return resolve_lengths(pq.read_table(path, columns=[length]).column(length), name=f"{path.name} column {length!r}")
    if type(source).__module__.startswith("pyarrow"):
        if length not in source.column_names:
            raise ValueError(f"source {name!r} has no column {length!r} (columns: {source.column_names}); pass length=<its length column>")
        return resolve_lengths(source.column(length), name=f"source {name!r} column {length!r}")
    if hasattr(source, "column_names") and hasattr(source, "with_format"):
        return resolve_lengths(length, source, name=f"source {name!r}")
    raise ValueError(
        f"source {name!r} is a {type(source).__name__}; give a NumPy array of lengths, a pyarrow Table, "
        f"a Parquet path or a datasets.Dataset"
    )


def mixture_inputs(sources: dict, length: str = "length") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(lengths, groups, names)`` for :class:`MixtureSampler` from several sources, concatenated
    in the dict's order (the order :class:`MixtureDataset` indexes them in).

    Each source is a NumPy array of lengths, a pyarrow Table or a Parquet path with a ``length``
    column (integers, or token lists), or a ``datasets.Dataset`` holding that column.

    Example:
        >>> import numpy as np, pyarrow as pa
        >>> from packwise.samplers import mixture_inputs
        >>> lengths, groups, names = mixture_inputs({"web": pa.table({"length": [5, 7]}), "chat": np.array([3])})
        >>> lengths.tolist(), groups.tolist(), names
        ([5, 7, 3], [0, 0, 1], ['web', 'chat'])
    """
    if not isinstance(sources, dict) or not sources:
        raise ValueError("sources must be a non-empty dict {name: dataset, table, Parquet path or lengths array}")
    parts = [_source_lengths(str(name), src, length) for name, src in sources.items()]
    groups = np.repeat(np.arange(len(parts), dtype=np.int64), [p.shape[0] for p in parts])
    return np.concatenate(parts).astype(np.int64), groups, [str(n) for n in sources]


class MixtureDataset(ConcatDataset):
    """The map-style sources concatenated in the order :func:`mixture_inputs` numbers them, so
    ``DataLoader(MixtureDataset(sources), batch_sampler=MixtureSampler(...))`` reads the right row.

    Example:
        >>> from packwise.samplers import MixtureDataset
        >>> ds = MixtureDataset({"web": ["a", "b"], "chat": ["c"]})
        >>> len(ds), ds[2], ds.names, ds.source_of(2)
        (3, 'c', ['web', 'chat'], 1)
    """

    def __init__(self, sources: dict):
        if not isinstance(sources, dict) or not sources:
            raise ValueError("sources must be a non-empty dict {name: map-style dataset}")
        for name, ds in sources.items():
            if not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__") or isinstance(ds, (str, Path)):
                raise ValueError(
                    f"source {name!r} is not a map-style dataset; load it first (e.g. datasets.Dataset.from_parquet(path))"
                )
        super().__init__(list(sources.values()))
        self.names = [str(n) for n in sources]

    def source_of(self, index: int) -> int:
        """The source id of global ``index``."""
        return int(np.searchsorted(self.cumulative_sizes, int(index), side="right"))
