"""Packing memory follows the items, not the capacity: huge capacities work, and the packers
give the bins a dense per-capacity index gave (checked against plain references)."""

from __future__ import annotations

import numpy as np
import pytest

from packwise.packing import ALGORITHMS, WindowPacker, lower_bounds, pack
from packwise.packing import _kernels
from packwise.samplers import PackedBatchSampler


def _reference_best_fit(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Best-fit decreasing, stable by position: the tightest bin; among equals the one whose
    free space changed last (the stack order of the kernel)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins, free, stamp = [], [], []
    for t, i in enumerate(order):
        fits = [b for b in range(len(bins)) if free[b] >= lengths[i] and free[b] > 0]
        if fits:
            b = min(fits, key=lambda b: (free[b], -stamp[b]))
        else:
            b = len(bins)
            bins.append([])
            free.append(capacity)
            stamp.append(t)
        bins[b].append(i)
        free[b] -= lengths[i]
        stamp[b] = t
    return bins


def _reference_l2(lengths: np.ndarray, capacity: int) -> int:
    half, best = capacity // 2, 0
    for alpha in range(half + 1):
        j1 = lengths[lengths > capacity - alpha]
        j2 = lengths[(lengths > half) & (lengths <= capacity - alpha)]
        j3 = lengths[(lengths >= max(alpha, 1)) & (lengths <= half)]
        spill = int(j3.sum()) - (len(j2) * capacity - int(j2.sum()))
        best = max(best, len(j1) + len(j2) + max(0, -(-spill // capacity)))
    return best


@pytest.mark.parametrize("name", ["c4", "alpaca"])
def test_bfd_bins_match_the_reference_at_small_and_huge_capacities(real_lengths, name):
    x = real_lengths[name][:400].astype(np.int64)
    for capacity in (int(x.max()), 1024 + int(x.max()), 4 * int(x.sum()) // 5, 10**12):
        p = pack(x, capacity, "bfd")
        assert [p.bin(b).tolist() for b in range(p.num_bins)] == _reference_best_fit(x, capacity)


def test_l2_bound_matches_the_definition_over_every_alpha(real_lengths):
    x = np.minimum(real_lengths["glaive"][:300], 700).astype(np.int64)
    for capacity in (700, 701, 1000, 1500):
        assert lower_bounds(x, capacity)[1] == _reference_l2(x, capacity)
    rng = np.random.default_rng(3)
    for _ in range(30):
        capacity = int(rng.integers(2, 120))
        y = rng.integers(1, capacity + 1, int(rng.integers(1, 40)))
        assert _kernels.lower_bound_l2(y, capacity) == _reference_l2(y, capacity)


def test_counting_and_merge_sort_give_the_same_stable_order(real_lengths):
    x = real_lengths["ag_news"].astype(np.int64)
    small = _kernels.counting_sort_desc(x, int(x.max()))
    large = _kernels.counting_sort_desc(x, 10**12)  # takes the merge sort
    assert np.array_equal(small[0], large[0]) and np.array_equal(small[1], large[1])
    assert np.array_equal(small[0], np.argsort(-x, kind="stable"))


def _dense(capacity: int, window: int, max_age: int) -> WindowPacker:
    """A ``WindowPacker`` whose free-space index spans the whole capacity from the start (the
    layout before the index followed the items): the result every packer must reproduce."""
    p = WindowPacker(capacity, window=window, max_age=max_age)
    p._top = capacity
    p._words, p._starts = _kernels.new_bitset(capacity)
    p._head = np.full(capacity + 1, -1, np.int64)
    return p


def test_window_packer_widening_its_index_gives_the_dense_bins(real_lengths):
    x = np.concatenate([real_lengths[n] for n in ("alpaca", "c4", "glaive", "ag_news")]).astype(np.int64)
    rng = np.random.default_rng(7)
    for capacity, window, max_age in ((4096, 97, 2), (20_000, 300, 4), (2048, 1000, 1)):
        y = np.minimum(x, capacity)
        streams = [y, np.sort(y), rng.permutation(y)]  # sorted: the longest item keeps growing
        for stream in streams:
            a, b = WindowPacker(capacity, window=window, max_age=max_age), _dense(capacity, window, max_age)
            for start in range(0, stream.shape[0], window):
                ca, cb = a.add(stream[start : start + window]), b.add(stream[start : start + window])
                assert np.array_equal(ca.ids, cb.ids) and np.array_equal(ca.offsets, cb.offsets)
            fa, fb = a.flush(), b.flush()
            assert np.array_equal(fa.ids, fb.ids) and np.array_equal(fa.offsets, fb.offsets)
            assert a._head.shape[0] <= 2 * int(stream.max()) + 1  # the index follows the items


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_capacity_of_1e15_tokens_packs_without_allocating_it(real_lengths, algorithm):
    x = real_lengths["c4"].astype(np.int64)  # before: arrays of 1e15 entries (MemoryError)
    p = pack(x, 10**15, algorithm)
    assert p.num_bins == 1 and sorted(p.order.tolist()) == list(range(x.shape[0])) and p.lower_bound_l2 == 1
    assert lower_bounds(x, 10**15) == (1, 1)
    sampler = PackedBatchSampler(x, max_tokens=10**15, algorithm=algorithm, seed=0)
    assert [sorted(b) for b in sampler] == [list(range(x.shape[0]))]
