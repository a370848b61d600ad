"""ClusterBatchSampler on real k-means clusters: homogeneous and quota batches, balanced epochs, DDP, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from _embedded_corpus import corpus
from packwise.samplers import ClusterBatchSampler
from packwise.selection import balanced_caps, kmeans


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    x = corpus().embeddings
    return kmeans(x, 6, spherical=True, seed=11).assign(x)[0]


def _flat(batches):
    return sorted(i for b in batches for i in b)


def test_homogeneous_batches_hold_one_cluster(labels):
    s = ClusterBatchSampler(labels, 16, mode="homogeneous", num_replicas=1, rank=0)
    batches = list(s)
    assert all(len(set(labels[b].tolist())) == 1 for b in batches)
    assert _flat(batches) == list(range(len(labels)))
    assert len(batches) == len(s) == int((-(-np.bincount(labels) // 16)).sum())
    s.set_epoch(1)
    assert list(s) != batches and _flat(list(s)) == list(range(len(labels)))


def test_quota_batches_mirror_the_cluster_mix(labels):
    s = ClusterBatchSampler(labels, 32, mode="quota", num_replicas=1, rank=0, seed=3)
    batches = list(s)
    assert _flat(batches) == list(range(len(labels)))
    share = np.bincount(labels) / len(labels)
    for b in batches[:-1]:  # full batches
        got = np.bincount(labels[b], minlength=6)
        assert np.abs(got - 32 * share).max() < 2, (got, 32 * share)


def test_balanced_epochs_draw_fresh_capped_subsets(labels):
    s = ClusterBatchSampler(labels, 10, mode="quota", epoch_size=60, num_replicas=1, rank=0, seed=1)
    e0, e1 = s.epoch_examples(0), s.epoch_examples(1)
    assert e0.shape == e1.shape == (60,) and not np.array_equal(e0, e1)
    sizes = np.bincount(labels)
    for e in (e0, e1):
        got = np.bincount(labels[e], minlength=6)
        cap = balanced_caps(sizes, 60)
        assert got.sum() == 60 and (got <= sizes).all() and np.abs(np.sort(got) - np.sort(cap)).max() <= 1
    assert _flat(list(s)) == e0.tolist()
    again = ClusterBatchSampler(labels, 10, mode="quota", epoch_size=60, num_replicas=1, rank=0, seed=1)
    assert list(again) == list(s)


@pytest.mark.parametrize("mode", ["homogeneous", "quota"])
def test_ddp_ranks_cover_everything_once_with_equal_counts(labels, mode):
    ranks = [ClusterBatchSampler(labels, 12, mode=mode, num_replicas=3, rank=r, seed=7) for r in range(3)]
    for s in ranks:
        s.set_epoch(2)
    lists = [list(s) for s in ranks]
    assert len({len(x) for x in lists}) == 1 and len(lists[0]) == len(ranks[0])
    assert _flat(b for x in lists for b in x) == list(range(len(labels)))


def test_resume_yields_exactly_the_rest(labels):
    s = ClusterBatchSampler(labels, 8, mode="homogeneous", num_replicas=2, rank=1, seed=5)
    s.set_epoch(3)
    full = list(s)
    it = iter(s)
    head = [next(it) for _ in range(4)]
    state = s.state_dict()
    fresh = ClusterBatchSampler(labels, 8, mode="homogeneous", num_replicas=2, rank=1, seed=5)
    fresh.load_state_dict(state)
    assert head + list(fresh) == full
    other = ClusterBatchSampler(labels, 8, mode="quota", num_replicas=2, rank=1, seed=5)
    with pytest.raises(ValueError, match="fingerprint mismatch"):
        other.load_state_dict(state)


def test_dataloader_with_workers(labels):
    data = TensorDataset(torch.arange(len(labels)))
    s = ClusterBatchSampler(labels, 16, mode="homogeneous", num_replicas=1, rank=0)
    got = [b[0].tolist() for b in DataLoader(data, batch_sampler=s, num_workers=2)]
    assert got == list(s)


def test_bad_inputs():
    with pytest.raises(ValueError, match="labels: example 1 has cluster -1"):
        ClusterBatchSampler(np.array([0, -1]), 2, num_replicas=1, rank=0)
    with pytest.raises(ValueError, match="mode='mixed': use 'homogeneous'"):
        ClusterBatchSampler(np.array([0, 1]), 2, mode="mixed", num_replicas=1, rank=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        ClusterBatchSampler(np.array([0, 1]), 0, num_replicas=1, rank=0)
    with pytest.raises(ValueError, match="labels: expected a non-empty 1-D array of integer cluster ids"):
        ClusterBatchSampler(np.array([0.5, 1.0]), 2, num_replicas=1, rank=0)
    with pytest.raises(ValueError, match=r"lengths: expected one non-negative integer per example \(2,\)"):
        ClusterBatchSampler(np.array([0, 1]), 2, lengths=np.array([3]), num_replicas=1, rank=0)
