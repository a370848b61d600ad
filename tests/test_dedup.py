"""Semantic and exact dedup on real MiniLM embeddings of the shared datasets, with planted duplicates."""

from __future__ import annotations

import numpy as np
import pytest

from _embedded_corpus import corpus
from packwise.selection import exact_dedup, exact_duplicates, hash_rows, kmeans, semantic_dedup


@pytest.fixture(scope="module")
def data():
    c = corpus()
    km = kmeans(c.embeddings, 4, spherical=True, seed=3)
    labels, dist = km.assign(c.embeddings)
    return c, labels, dist


def _reference(x, labels, key, eps_list, exact_of):
    """Plain O(n^2) greedy per cluster: drop j when cos(j, earlier kept i) > 1 - eps."""
    n = len(labels)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    kept = np.zeros((n, len(eps_list)), bool)
    dup = np.full((n, len(eps_list)), -1)
    nearest = np.full(n, -1)
    for c in np.unique(labels):
        rows = sorted(np.flatnonzero(labels == c), key=lambda r: (key[r], r))
        for pos, j in enumerate(rows):
            earlier = rows[:pos]
            if earlier:
                sims = xn[earlier] @ xn[j]
                nearest[j] = earlier[int(np.argmax(sims))]
            for e, eps in enumerate(eps_list):
                kept_before = [i for i in earlier if kept[i, e]]
                if kept_before:
                    sims = xn[kept_before] @ xn[j]
                    dup[j, e] = kept_before[int(np.argmax(sims))]
                    too_close = sims.max() > 1 - eps
                else:
                    too_close = False
                kept[j, e] = exact_of[j] == j and not too_close
    return kept, dup, nearest


def _assert_same_nearest(x, actual, expected, order):
    """Equal, except where the two candidates are identical vectors (a planted exact copy).

    Their similarities to a third row tie in exact arithmetic, and BLAS may round them a last
    ulp apart depending on where the rows fall in a GEMM tile, so either index is a right answer.
    """
    for j in np.flatnonzero(actual != expected):
        a, e = int(actual[j]), int(expected[j])
        assert a >= 0 and e >= 0 and np.array_equal(x[a], x[e]), (
            f"{order}: nearest[{j}] = {a}, expected {e} (not identical vectors)"
        )


def test_planted_duplicates_found_and_nothing_else(data):
    c, labels, dist = data
    planted = {**c.near, **c.exact}
    for i, j in planted.items():
        assert labels[i] == labels[j], f"planted pair {i},{j} split across clusters"
    r = semantic_dedup(c.embeddings, labels=labels, distances=dist, eps=0.05, hashes=hash_rows(c.texts))
    dropped = set(np.flatnonzero(~r.keep_mask(0.05)).tolist())
    assert len(dropped) == len(planted) == 20
    for i, j in c.near.items():
        assert (i in dropped) != (j in dropped), (i, j)
        loser, winner = (i, j) if i in dropped else (j, i)
        assert r.duplicate_of[loser, 0] == winner
        assert r.duplicate_similarity[loser, 0] > 0.95
    for i, j in c.exact.items():  # the later verbatim copy goes, whatever the in-cluster order
        assert i in dropped and j not in dropped
        assert r.exact_of[i] == j and r.reasons(0.05)[i] == "exact"
    assert r.kept_rows(0.05).shape[0] == c.embeddings.shape[0] - 20
    near_reasons = r.reasons(0.05)[sorted(dropped - set(c.exact))]
    assert set(near_reasons) == {"near"}


def test_matches_brute_force_greedy_for_every_order_and_eps(data):
    c, labels, dist = data
    hashes = hash_rows(c.texts)
    exact_of = exact_duplicates(hashes)
    eps_list = (0.05, 0.2, 0.3)
    keys = {
        "hard": -dist.astype(np.float64),
        "easy": dist.astype(np.float64),
        "random": np.random.default_rng(5).random(len(labels)),
        "index": np.arange(len(labels), dtype=np.float64),
    }
    for order, key in keys.items():
        r = semantic_dedup(c.embeddings, labels=labels, distances=dist, eps=eps_list, order=order, hashes=hashes, seed=5, block=7)
        kept, dup, nearest = _reference(c.embeddings, labels, key, eps_list, exact_of)
        np.testing.assert_array_equal(r.kept, kept, err_msg=order)
        np.testing.assert_array_equal(r.duplicate_of, dup, err_msg=order)
        _assert_same_nearest(c.embeddings, r.nearest, nearest, order)
    # looser eps drops strictly more on real data (natural pairs above 0.8 exist in ag_news)
    assert r.kept[:, 0].sum() > r.kept[:, 1].sum() > r.kept[:, 2].sum()


def test_block_size_does_not_change_decisions(data):
    c, labels, dist = data
    a = semantic_dedup(c.embeddings, labels=labels, distances=dist, eps=(0.05, 0.25), block=1)
    b = semantic_dedup(c.embeddings, labels=labels, distances=dist, eps=(0.05, 0.25), block=10_000)
    for name in ("kept", "duplicate_of", "nearest", "rank"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_allclose(a.similarity, b.similarity, atol=1e-5)


def test_audit_table_explains_every_decision(data):
    c, labels, dist = data
    r = semantic_dedup(c.embeddings, labels=labels, distances=dist, eps=0.05, hashes=hash_rows(c.texts))
    t = r.to_arrow(0.05).to_pydict()
    assert list(t) == ["row_id", "cluster", "rank", "kept", "reason", "duplicate_of", "similarity", "nearest", "nearest_similarity"]
    kept = dict(zip(t["row_id"], t["kept"]))
    for row, k, reason, dup, sim, cl, rank in zip(t["row_id"], t["kept"], t["reason"], t["duplicate_of"], t["similarity"], t["cluster"], t["rank"]):
        assert cl == labels[row]
        if k:
            assert reason == "kept" and (dup == -1 or sim <= 0.95)
        else:
            assert reason in ("near", "exact") and kept[dup] and labels[dup] == cl
            assert sim > 0.95
    first = [row for row, rank in zip(t["row_id"], t["rank"]) if rank == 0]
    assert sorted(labels[first].tolist()) == list(range(4))
    assert all(t["nearest"][row] == -1 for row in first)
    # row ids can be remapped (e.g. to global ids of a shard)
    shifted = r.to_arrow(0.05, row_ids=np.arange(len(labels)) + 1000).to_pydict()
    assert shifted["row_id"][0] == 1000 and all(d == -1 or d >= 1000 for d in shifted["duplicate_of"])


def test_per_cluster_counts(data):
    c, labels, dist = data
    r = semantic_dedup(c.embeddings, labels=labels, distances=dist, eps=0.05, hashes=hash_rows(c.texts))
    ids, rows_in, rows_kept = r.per_cluster(0.05)
    assert ids.tolist() == [0, 1, 2, 3]
    assert rows_in.tolist() == np.bincount(labels).tolist()
    assert int((rows_in - rows_kept).sum()) == 20


def test_exact_dedup_on_real_token_ids(tokenizer):
    c = corpus()
    ids = [tokenizer.encode(t).ids for t in c.texts]
    first = exact_duplicates(hash_rows(ids))
    expected = np.arange(len(ids))
    for i, j in c.exact.items():
        expected[i] = j
    np.testing.assert_array_equal(first, expected)  # whitespace / changed-word variants are not exact
    assert exact_dedup(hash_rows(ids)).sum() == len(ids) - len(c.exact)
    assert hash_rows([[1, 2], [2, 1], [1, 2, 0], [1, 2]]).tolist()[0] == hash_rows([[1, 2]]).tolist()[0]
    assert len(set(hash_rows([[1, 2], [2, 1], [1, 2, 0], []]).tolist())) == 4


def test_random_order_is_seeded(data):
    c, labels, dist = data
    a = semantic_dedup(c.embeddings, labels=labels, eps=0.3, order="random", seed=1)
    b = semantic_dedup(c.embeddings, labels=labels, eps=0.3, order="random", seed=1)
    d = semantic_dedup(c.embeddings, labels=labels, eps=0.3, order="random", seed=2)
    np.testing.assert_array_equal(a.kept, b.kept)
    assert not np.array_equal(a.rank, d.rank)


def test_bad_inputs_name_the_problem():
    x = np.eye(4, dtype=np.float32)
    labels = np.zeros(4, np.int64)
    with pytest.raises(ValueError, match=r"labels: expected one cluster id per row \(4,\)"):
        semantic_dedup(x, labels=labels[:3], order="index")
    with pytest.raises(ValueError, match="labels: row 2 has cluster -1"):
        semantic_dedup(x, labels=np.array([0, 0, -1, 0]), order="index")
    with pytest.raises(ValueError, match=r"eps=1.5|eps=2.5"):
        semantic_dedup(x, labels=labels, eps=2.5, order="index")
    with pytest.raises(ValueError, match="order='hard' needs distances"):
        semantic_dedup(x, labels=labels)
    with pytest.raises(ValueError, match="order='farthest': use one of hard, easy, random, index"):
        semantic_dedup(x, labels=labels, order="farthest")
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="embeddings: row 3 has a NaN"):
        semantic_dedup(bad, labels=labels, order="index")
    zero = x.copy()
    zero[2] = 0
    with pytest.raises(ValueError, match="embeddings: row 2 is the zero vector"):
        semantic_dedup(zero, labels=labels, order="index")
    with pytest.raises(ValueError, match="expected a 2-D array"):
        semantic_dedup(x[0], labels=labels[:1], order="index")
    with pytest.raises(ValueError, match="eps=0.2: not computed; this result has eps \\[0.05\\]"):
        semantic_dedup(x, labels=labels, eps=0.05, order="index").kept_rows(0.2)
    with pytest.raises(ValueError, match="tokens: row 1 is not a flat list of integer token ids"):
        hash_rows([[1, 2], [1.5, 2.0]])
