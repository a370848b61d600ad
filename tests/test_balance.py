"""Water-filling caps, group weights, balanced subsets and prototype pruning: exact on hand-made sizes, real clusters."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _embedded_corpus import corpus
from packwise.selection import (
    balanced_caps,
    balanced_subset,
    group_weights,
    kmeans,
    proportional_quotas,
    prototype_prune,
    select_per_cluster,
)


def test_water_filling_exact_cases():
    assert balanced_caps(np.array([5, 5, 5]), 9).tolist() == [3, 3, 3]
    assert balanced_caps(np.array([100, 1, 1, 50]), 40).tolist() == [19, 1, 1, 19]
    assert balanced_caps(np.array([3, 8, 1, 20]), 12).tolist() == [3, 4, 1, 4]
    # cap 4 fills 11 of 12; the last unit goes to group 0 or 2 (both above the cap), by seed
    got = {tuple(balanced_caps(np.array([10, 2, 7, 1]), 12, seed=s).tolist()) for s in range(20)}
    assert got == {(5, 2, 4, 1), (4, 2, 5, 1)}
    assert balanced_caps(np.array([10, 2, 7, 1]), 12, seed=3).tolist() == balanced_caps(np.array([10, 2, 7, 1]), 12, seed=3).tolist()
    assert balanced_caps(np.array([4, 0, 2]), 100).tolist() == [4, 0, 2]
    assert balanced_caps(np.array([4, 0, 2]), 0).tolist() == [0, 0, 0]


def test_weighted_water_filling():
    assert balanced_caps(np.array([100, 100, 100]), 100, weights=np.array([1.0, 2.0, 1.0])).tolist() == [25, 50, 25]
    # group 1 saturates at its 10 rows; the rest is shared evenly
    assert balanced_caps(np.array([100, 10, 100]), 100, weights=np.array([1.0, 4.0, 1.0])).tolist() == [45, 10, 45]


def test_group_weights_upsample_rare_groups():
    sizes = np.array([900, 100])
    np.testing.assert_allclose(group_weights(sizes, alpha=0.5), [0.75, 0.25])
    assert balanced_caps(sizes, 40, weights=group_weights(sizes, 0.5)).tolist() == [30, 10]
    assert balanced_caps(sizes, 40, weights=group_weights(sizes, 1.0)).tolist() == [36, 4]
    assert balanced_caps(sizes, 40, weights=group_weights(sizes, 0.0)).tolist() == [20, 20]
    assert balanced_caps(sizes, 400, weights=group_weights(sizes, 0.5)).tolist() == [300, 100]  # rare group exhausted


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 60), min_size=1, max_size=12), st.integers(0, 400), st.integers(0, 3))
def test_water_filling_properties(sizes, target, seed):
    sizes = np.array(sizes)
    q = balanced_caps(sizes, target, seed=seed)
    assert q.sum() == min(target, sizes.sum())
    assert ((q >= 0) & (q <= sizes)).all()
    if (q < sizes).any():  # every group below its size sits at the cap level x or x + 1
        level = q[q < sizes].min()
        assert (q[q < sizes] <= level + 1).all()
        assert (q[q == sizes] <= level + 1).all()


def test_proportional_quotas_exact_total():
    assert proportional_quotas(np.array([4, 2]), 0.5).tolist() == [2, 1]
    q = proportional_quotas(np.array([7, 3, 5, 1]), 0.4)  # 6.4 rows -> 6: 2.8, 1.2, 2.0, 0.4
    assert q.tolist() == [3, 1, 2, 0] and q.sum() == round(0.4 * 16)


@pytest.fixture(scope="module")
def clusters():
    x = corpus().embeddings
    labels, dist = kmeans(x, 6, spherical=True, seed=11).assign(x)
    return labels, dist


def test_balanced_subset_on_real_clusters(clusters):
    labels, dist = clusters
    sizes = np.bincount(labels)
    rows = balanced_subset(labels, 90, seed=4)
    assert rows.dtype == np.int64 and (np.diff(rows) > 0).all() and rows.shape[0] == 90
    np.testing.assert_array_equal(np.bincount(labels[rows], minlength=6), balanced_caps(sizes, 90, seed=4))
    np.testing.assert_array_equal(rows, balanced_subset(labels, 90, seed=4))
    assert not np.array_equal(rows, balanced_subset(labels, 90, seed=5))
    closest = balanced_subset(labels, 90, within="closest", distances=dist, seed=4)
    for c in range(6):  # the kept rows of a cluster are its closest ones
        mine = closest[labels[closest] == c]
        rest = np.setdiff1d(np.flatnonzero(labels == c), mine)
        if len(mine) and len(rest):
            assert dist[mine].max() <= dist[rest].min()


def test_balanced_subset_with_group_weights_by_source(clusters):
    c = corpus()
    src_ids = {name: i for i, name in enumerate(["ag_news", "alpaca", "c4", "wiki", "planted"])}
    groups = np.array([src_ids[s] for s in c.source])
    sizes = np.bincount(groups)
    w = group_weights(sizes, alpha=0.3)
    rows = balanced_subset(groups, 100, weights=w, seed=0)
    got = np.bincount(groups[rows], minlength=5)
    np.testing.assert_array_equal(got, balanced_caps(sizes, 100, weights=w, seed=0))
    share = got / 100
    assert share[src_ids["wiki"]] > sizes[src_ids["wiki"]] / sizes.sum()  # the rare source is up-sampled
    assert share[src_ids["ag_news"]] < sizes[src_ids["ag_news"]] / sizes.sum()


def test_prototype_pruning_on_real_clusters(clusters):
    labels, dist = clusters
    sizes = np.bincount(labels)
    hard = prototype_prune(labels, dist, keep=0.3, mode="hard")
    easy = prototype_prune(labels, dist, keep=0.3, mode="easy")
    assert hard.shape[0] == easy.shape[0] == round(0.3 * labels.shape[0])
    np.testing.assert_array_equal(np.bincount(labels[hard], minlength=6), proportional_quotas(sizes, 0.3))
    for c in range(6):
        members = np.flatnonzero(labels == c)
        h, e = hard[labels[hard] == c], easy[labels[easy] == c]
        assert dist[h].min() >= np.sort(dist[members])[::-1][len(h) - 1] - 1e-7
        assert dist[e].max() <= np.sort(dist[members])[len(e) - 1] + 1e-7
        if len(h):
            assert dist[h].min() >= dist[np.setdiff1d(members, h)].max()


def test_select_per_cluster_ties_go_to_lower_row():
    labels = np.array([1, 0, 1, 1, 0])
    dist = np.array([0.5, 0.2, 0.5, 0.1, 0.2])
    assert select_per_cluster(labels, np.array([1, 2]), within="farthest", distances=dist).tolist() == [0, 1, 2]
    assert select_per_cluster(labels, np.array([1, 1]), within="closest", distances=dist).tolist() == [1, 3]


def test_bad_inputs():
    with pytest.raises(ValueError, match="sizes: group 1 has size -2; sizes must be >= 0"):
        balanced_caps(np.array([3, -2]), 1)
    with pytest.raises(ValueError, match="weights: group 0 has weight 0.0; weights must be finite and > 0"):
        balanced_caps(np.array([3, 2]), 1, weights=np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"weights: expected one weight per group \(2,\)"):
        balanced_caps(np.array([3, 2]), 1, weights=np.array([1.0]))
    with pytest.raises(ValueError, match="target=-1: need a non-negative integer"):
        balanced_caps(np.array([3, 2]), -1)
    with pytest.raises(ValueError, match="within='middle': use one of random, closest, farthest"):
        balanced_subset(np.array([0, 1]), 1, within="middle")
    with pytest.raises(ValueError, match="within='closest' needs distances="):
        balanced_subset(np.array([0, 1]), 1, within="closest")
    with pytest.raises(ValueError, match="labels: row 1 has group -1"):
        balanced_subset(np.array([0, -1]), 1)
    with pytest.raises(ValueError, match="keep=1.5: must be a fraction in"):
        prototype_prune(np.array([0, 1]), np.array([0.1, 0.2]), keep=1.5)
    with pytest.raises(ValueError, match="mode='medium'"):
        prototype_prune(np.array([0, 1]), np.array([0.1, 0.2]), keep=0.5, mode="medium")
    with pytest.raises(ValueError, match="distances: row 1 is NaN"):
        prototype_prune(np.array([0, 1]), np.array([0.1, np.nan]), keep=0.5)
    with pytest.raises(ValueError, match="alpha=2: must be in"):
        group_weights(np.array([1, 2]), alpha=2)
