"""In-step batch selection: pairwise JEST on hand-built learnability matrices (exact first-block
distribution, conditional logits, best sub-batch at large beta), the softmax-contrastive scores
against brute force, RHO-LOSS against a hand top-k, reference scores through Parquet, SuperBatch
sizing / re-packing / rank shares on real AG News lengths, errors, seeding and exact resume."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from packwise.samplers import SuperBatch
from packwise.selection import (
    JEST,
    ReferenceScores,
    RhoLoss,
    conditional_learnability,
    pairwise_learnability,
    reference_scores,
    softmax_conditional_learnability,
)

# A hand-built 6 x 6 learnability matrix: diagonal ln(w) so softmax(diag) = w / sum(w) exactly.
W = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 5.0])
A6 = np.diag(np.log(W))
A6[0, 1], A6[1, 0] = 0.5, 0.25
A6[2, 4] = 1.0
A6[5, 3], A6[3, 5] = -0.5, 2.0


def test_first_block_distribution_and_conditional_logits_are_the_hand_computed_ones():
    jest = JEST("pairwise", filter_ratio=2 / 3, n_chunks=2, beta=1.0)  # keep 2 of 6: blocks of 1
    first = jest.block_logits(A6)
    probs = np.exp(first - first.max()) / np.exp(first - first.max()).sum()
    np.testing.assert_allclose(probs, [1 / 20, 2 / 20, 3 / 20, 4 / 20, 5 / 20, 5 / 20], rtol=1e-12)
    # given {3}: A_ii + A_i3 + A_3i; by hand: 0: ln1, 1: ln2, 2: ln3, 4: ln5, 5: ln5 - 0.5 + 2.0
    np.testing.assert_allclose(
        jest.block_logits(A6, [3]), [0.0, math.log(2), math.log(3), -np.inf, math.log(5), math.log(5) + 1.5]
    )
    # given {0, 2}: 1: ln2 + 0.25 + 0.5; 3: ln4; 4: ln5 + 1.0 (A_24); 5: ln5
    np.testing.assert_allclose(
        jest.block_logits(A6, [0, 2]), [-np.inf, math.log(2) + 0.75, -np.inf, math.log(4), math.log(5) + 1.0, math.log(5)]
    )
    hot = JEST("pairwise", n_chunks=2, beta=2.5)
    np.testing.assert_allclose(hot.block_logits(A6, [3]), 2.5 * jest.block_logits(A6, [3]))


def test_first_block_is_drawn_from_softmax_of_the_diagonal_and_the_second_from_its_conditional():
    draws = 3000
    first = np.zeros(6)
    second_given_3 = np.zeros(6)
    for seed in range(draws):
        jest = JEST("pairwise", filter_ratio=2 / 3, n_chunks=2, beta=1.0, seed=seed)
        sel = jest.select_learnability(np.arange(6), A6)
        a, b = int(sel.blocks[0][0]), int(sel.blocks[1][0])
        first[a] += 1
        if a == 3:
            second_given_3[b] += 1
    np.testing.assert_allclose(first / draws, W / W.sum(), atol=0.025)
    logits = JEST("pairwise", beta=1.0).block_logits(A6, [3])
    expected = np.exp(logits - logits.max())
    np.testing.assert_allclose(second_given_3 / second_given_3.sum(), expected / expected.sum(), atol=0.05)


def test_large_beta_picks_the_best_sub_batch_which_pointwise_topk_misses():
    a = np.diag([4.0, 3.0, 2.0, 1.0, 0.5, 0.2])
    a[0, 5] = a[5, 0] = 3.0
    a[1, 4] = 2.0

    def value(s):
        return sum(a[i, j] for i in s for j in s)

    best = max(itertools.combinations(range(6), 4), key=value)
    assert best == (0, 1, 4, 5) and value(best) == pytest.approx(15.7)
    jest = JEST("pairwise", filter_ratio=1 / 3, n_chunks=2, beta=1e6, seed=3)
    sel = jest.select_learnability(np.arange(100, 106), a)
    assert sel.positions.tolist() == [0, 1, 4, 5] and sel.ids.tolist() == [100, 101, 104, 105]
    assert [b.tolist() for b in sel.blocks] == [[0, 1], [4, 5]]
    np.testing.assert_allclose(sel.scores, np.diag(a))
    top = JEST("pairwise", filter_ratio=1 / 3, n_chunks=1, beta=1e6).select_learnability(np.arange(6), a)
    assert top.positions.tolist() == [0, 1, 2, 3] and value(top.positions) < value(best)  # one block = diagonal top-k


def test_sigmoid_learnability_is_the_pairwise_softplus_difference():
    learner = torch.tensor([[2.0, 0.0], [1.0, -1.0]], dtype=torch.float64)
    ref = torch.zeros(2, 2, dtype=torch.float64)
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expected = [[sp(-2.0) - math.log(2), sp(0.0) - math.log(2)], [sp(1.0) - math.log(2), sp(1.0) - math.log(2)]]
    np.testing.assert_allclose(pairwise_learnability(learner, ref).numpy(), expected, rtol=1e-12)
    gen = torch.Generator().manual_seed(0)
    big_l, big_r = torch.randn(12, 12, generator=gen, dtype=torch.float64), torch.randn(12, 12, generator=gen, dtype=torch.float64)
    a = JEST("pairwise", filter_ratio=0.5, n_chunks=3, seed=5).select(np.arange(12), big_l, big_r)
    b = JEST("pairwise", filter_ratio=0.5, n_chunks=3, seed=5).select_learnability(
        np.arange(12), pairwise_learnability(big_l, big_r)
    )
    assert a.positions.tolist() == b.positions.tolist() and len(a) == 6


def _clip_loss(s: np.ndarray, subset) -> float:
    """Two-way InfoNCE summed over the subset's examples (rows and columns normalised within it)."""
    sub = s[np.ix_(subset, subset)]
    row = -np.diag(sub) + np.log(np.exp(sub).sum(1))
    col = -np.diag(sub) + np.log(np.exp(sub).sum(0))
    return float(0.5 * (row + col).sum())


def test_softmax_scores_are_the_exact_marginal_loss_increase_learner_minus_reference():
    rng = np.random.default_rng(0)
    learner, ref = 3 * rng.standard_normal((7, 7)), 3 * rng.standard_normal((7, 7))
    first = softmax_conditional_learnability(learner, ref).numpy()

    def full(s):  # each example's two-way InfoNCE with the whole super-batch as negatives
        return 0.5 * (-2 * np.diag(s) + np.log(np.exp(s).sum(1)) + np.log(np.exp(s).sum(0)))

    np.testing.assert_allclose(first, np.subtract(full(learner), full(ref)), rtol=1e-10)
    chosen = [4, 1, 6]
    cond = softmax_conditional_learnability(learner, ref, chosen).numpy()
    for i in range(7):
        if i in chosen:
            continue
        gain = lambda s: _clip_loss(s, chosen + [i]) - _clip_loss(s, chosen)  # noqa: E731
        assert cond[i] == pytest.approx(gain(learner) - gain(ref), rel=1e-10)
    sel = JEST("pairwise", loss="softmax", filter_ratio=4 / 7, n_chunks=3, beta=1e6).select(np.arange(7), learner, ref)
    greedy = [int(np.argmax(first))]
    for _ in range(2):
        c = softmax_conditional_learnability(learner, ref, greedy).numpy()
        c[greedy] = -np.inf
        greedy.append(int(np.argmax(c)))
    assert [b.tolist() for b in sel.blocks] == [[g] for g in greedy]


def test_rho_loss_is_the_hand_computed_top_k():
    ref = ReferenceScores.from_array(np.array([0.5, 0.1, 2.0, 0.0, 1.0, 0.3, 0.2, 0.4, 0.9, 0.6], np.float32))
    ids = np.array([9, 2, 4, 0, 7, 3, 1, 8, 5, 6])
    learner = np.array([0.7, 2.1, 3.0, 0.6, 1.4, 0.05, 0.9, 1.0, 0.35, 1.2], np.float32)
    # reducible = learner - ref[ids]: 0.1, 0.1, 2.0, 0.1, 1.0, 0.05, 0.8, 0.1, 0.05, 1.0 -> top 4: 4, 7, 0.8@1, 6
    sel = RhoLoss(ref, filter_ratio=0.6).select(ids, torch.from_numpy(learner))
    assert sel.ids.tolist() == [4, 7, 1, 6] and sel.positions.tolist() == [2, 4, 6, 9]
    assert sel.weights.tolist() == [1.0] * 4
    online = RhoLoss(filter_ratio=0.6).select(ids, learner, reference_loss=ref[ids])
    assert online.ids.tolist() == sel.ids.tolist()
    pointwise = JEST("pointwise", ref, filter_ratio=0.6, policy="topk").select(ids, learner)
    assert pointwise.ids.tolist() == sel.ids.tolist()  # additive loss: joint == pointwise
    assert RhoLoss(ref, policy="threshold", threshold=0.9).select(ids, learner).ids.tolist() == [4, 7, 6]


def test_seeded_draws_are_bit_for_bit_and_resume_exactly():
    rng = np.random.default_rng(1)
    ids = np.arange(50)
    learner, ref = rng.random(50).astype(np.float32), rng.random(50).astype(np.float32)
    logits = [(torch.from_numpy(rng.standard_normal((40, 40))), torch.from_numpy(rng.standard_normal((40, 40))))
              for _ in range(6)]
    for make, call in (
        (lambda: RhoLoss(policy="softmax", beta=3.0, seed=4, importance_weights=True),
         lambda s, t: s.select(ids, learner, ref)),
        (lambda: JEST("pairwise", n_chunks=4, seed=4), lambda s, t: s.select(np.arange(40), *logits[t])),
        (lambda: JEST("pairwise", loss="softmax", n_chunks=4, seed=4), lambda s, t: s.select(np.arange(40), *logits[t])),
    ):
        a, b = make(), make()
        first = [call(a, t) for t in range(3)]
        assert [x.ids.tolist() for x in first] == [call(b, t).ids.tolist() for t in range(3)]
        assert len({tuple(x.ids.tolist()) for x in first}) > 1  # the step moves the stream
        state = a.state_dict()
        rest = [call(a, t) for t in range(3, 6)]
        c = make()
        c.load_state_dict(state)
        resumed = [call(c, t) for t in range(3, 6)]
        assert [x.ids.tolist() for x in resumed] == [x.ids.tolist() for x in rest]
        assert all(np.array_equal(x.weights, y.weights) for x, y in zip(resumed, rest))
    with pytest.raises(ValueError, match="saved with seed=4 but this rho_loss has seed=5"):
        RhoLoss(policy="softmax", beta=3.0, seed=5, importance_weights=True).load_state_dict(
            RhoLoss(policy="softmax", beta=3.0, seed=4, importance_weights=True).state_dict())
    with pytest.raises(ValueError, match="a jest state; this selector is a rho_loss"):
        RhoLoss().load_state_dict(JEST().state_dict())
    with pytest.raises(ValueError, match=r"missing \['step'\]"):
        RhoLoss().load_state_dict({"kind": "rho_loss", "settings": {}})


def test_bad_input_names_the_field_and_the_fix():
    ref = ReferenceScores(5)
    ref.update([0, 1, 2], [0.1, 0.2, 0.3])
    rho = RhoLoss(ref)
    with pytest.raises(ValueError, match=r"ids\[1\] = 3 has no reference score; run reference_scores"):
        rho.select([0, 3], torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"ids\[0\] = 9 is outside the reference table \[0, 5\)"):
        rho.select([9], torch.tensor([1.0]))
    with pytest.raises(ValueError, match="no reference loss: pass reference_loss="):
        RhoLoss().select([0, 1], torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"learner_loss\[1\] = nan is not finite"):
        rho.select([0, 1], torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match=r"learner_loss must have shape \(2,\)"):
        rho.select([0, 1], torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"ids\[1\] = -2 is negative"):
        rho.select([0, -2], torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="ids must be integer example ids, got a torch.float32 tensor"):
        rho.select(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="k=3 is larger than the super-batch"):
        rho.select([0, 1], torch.tensor([1.0, 2.0]), k=3)
    with pytest.raises(ValueError, match=r"filter_ratio must be in \[0, 1\)"):
        RhoLoss(filter_ratio=1.0)
    with pytest.raises(ValueError, match="policy must be one of"):
        RhoLoss(policy="greedy")
    with pytest.raises(ValueError, match="policy='threshold' needs threshold="):
        RhoLoss(policy="threshold")
    with pytest.raises(ValueError, match="mode must be one of"):
        JEST("joint")
    with pytest.raises(ValueError, match="loss must be one of"):
        JEST("pairwise", loss="hinge")
    with pytest.raises(ValueError, match="applies to mode='pointwise' only"):
        JEST("pairwise", policy="topk")
    with pytest.raises(ValueError, match="mode='pointwise' takes per-example losses"):
        JEST("pointwise").select(np.arange(3), torch.zeros(3, 3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"learner_logits must be a square B x B matrix"):
        JEST("pairwise").select(np.arange(3), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="needs reference="):
        JEST("pairwise").select(np.arange(3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"learner_logits \(3, 3\) and reference_logits \(4, 4\) differ"):
        JEST("pairwise").select(np.arange(3), torch.zeros(3, 3), torch.zeros(4, 4))
    bad = torch.zeros(3, 3)
    bad[1, 2] = float("inf")
    with pytest.raises(ValueError, match=r"learner_logits\[1, 2\] = inf is not finite"):
        JEST("pairwise").select(np.arange(3), bad, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="ids has 2 entries but the logits are 3 x 3"):
        JEST("pairwise").select(np.arange(2), torch.zeros(3, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"n_chunks must be an integer >= 1"):
        JEST("pairwise", n_chunks=0)
    with pytest.raises(ValueError, match=r"chosen has repeated positions"):
        conditional_learnability(torch.zeros(3, 3), [1, 1])
    with pytest.raises(ValueError, match="select_learnability is the pairwise sampler"):
        JEST("pointwise").select_learnability(np.arange(3), torch.zeros(3, 3))


def test_reference_scores_write_an_atomic_parquet_score_column(tmp_path):
    batches = [(torch.tensor([3, 0]), torch.tensor([0.5, 1.5])), (torch.tensor([1]), torch.tensor([2.5]))]
    path = tmp_path / "ref.parquet"
    ref = reference_scores(lambda b: b, batches, num_examples=4, path=path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.parquet"]  # no temporary left behind
    table = pq.read_table(path)
    assert table.column_names == ["row_id", "score"]
    assert table.column("row_id").to_pylist() == [0, 1, 3] and table.column("score").to_pylist() == [1.5, 2.5, 0.5]
    back = ReferenceScores.from_parquet(path, num_examples=4)
    assert back[[3, 1]].tolist() == ref[[3, 1]].tolist() == [0.5, 2.5] and back.num_scored == 3
    with pytest.raises(ValueError, match="loss_fn must return"):
        reference_scores(lambda b: b[0], batches, num_examples=4)
    with pytest.raises(ValueError, match=r"ids\[0\] = 7 is outside \[0, 4\)"):
        ReferenceScores(4).update([7], [1.0])


@pytest.fixture(scope="module")
def agnews_lengths(real_lengths):
    return real_lengths["ag_news"]


def test_superbatch_sizes_and_rank_shares_on_real_lengths(agnews_lengths):
    lengths = agnews_lengths[:2000]
    sb = SuperBatch(lengths, batch_size=32, filter_ratio=0.8, buckets=8, seed=1, num_replicas=1, rank=0)
    assert sb.super_batch_size == 160
    supers = list(sb)
    assert sorted(i for s in supers for i in s) == list(range(2000))  # every example once per epoch
    assert max(len(s) for s in supers) == 160
    rng = np.random.default_rng(0)
    ref = ReferenceScores.from_array(rng.random(2000).astype(np.float32))
    ranks = [SuperBatch(lengths, batch_size=32, filter_ratio=0.8, buckets=8, seed=1, num_replicas=2, rank=r) for r in (0, 1)]
    for super_ids in supers[:5]:
        k = ranks[0].sub_batch_size(super_ids)
        assert k == min(32, round(0.2 * len(super_ids))) // 2 * 2
        shares = [r.score_share(super_ids) for r in ranks]
        assert np.concatenate(shares).tolist() == list(super_ids)
        sel = RhoLoss(ref, seed=2).select(super_ids, torch.from_numpy(lengths[super_ids].astype(np.float32)), k=k)
        parts = [r.train_batch(sel) for r in ranks]
        assert len(parts[0].ids) == len(parts[1].ids) == k // 2
        assert sorted(np.concatenate([p.ids for p in parts]).tolist()) == sorted(sel.ids.tolist())
    assert [list(s) for s in ranks[1]] == [list(s) for s in supers]  # every rank sees the same super-batches
    capped = SuperBatch(lengths, batch_size=32, max_tokens=400, buckets=8, seed=1, num_replicas=1, rank=0)
    for super_ids in capped:
        assert capped.sub_batch_size(super_ids) * int(lengths[super_ids].max()) <= 400
    with pytest.raises(ValueError, match="batch_size=33 is not divisible by num_replicas=2"):
        SuperBatch(lengths, batch_size=33, num_replicas=2, rank=0)
    with pytest.raises(ValueError, match="packed=True takes max_tokens"):
        SuperBatch(lengths, batch_size=32, packed=True)


def test_packed_superbatch_repacks_the_selection_into_the_token_budget(agnews_lengths):
    lengths = agnews_lengths[:3000]
    ranks = [
        SuperBatch(lengths, packed=True, max_tokens=512, rows_per_batch=2, filter_ratio=0.8, seed=3, num_replicas=2, rank=r)
        for r in (0, 1)
    ]
    assert ranks[0].sampler.rows_per_batch == 20  # 2 rows x 2 ranks / (1 - 0.8)
    jest = JEST("pointwise", ReferenceScores.from_array(np.zeros(3000, np.float32)), seed=1)
    left = 0
    for step, super_ids in zip(range(6), ranks[0]):
        super_ids = np.asarray(super_ids)
        assert int(lengths[super_ids].sum()) <= 20 * 512
        sel = jest.select(super_ids, torch.from_numpy(lengths[super_ids].astype(np.float32)), k=ranks[0].sub_batch_size(super_ids))
        parts = [r.train_batch(sel) for r in ranks]
        for p in parts:
            assert p.row_offsets.shape[0] == 3  # exactly rows_per_batch rows on every rank
            rows = np.split(lengths[p.ids], p.row_offsets[1:-1])
            assert all(int(r.sum()) <= 512 for r in rows)
        kept = np.concatenate([p.ids for p in parts])
        assert np.unique(kept).shape[0] == kept.shape[0] and set(kept.tolist()) <= set(sel.ids.tolist())
        assert kept.shape[0] + parts[0].left_out == len(sel) and parts[0].left_out == parts[1].left_out
        dropped = np.setdiff1d(sel.ids, kept)
        if dropped.shape[0]:  # what did not fit scored no higher than anything kept
            score = dict(zip(sel.super_ids.tolist(), sel.scores.tolist()))
            assert max(score[i] for i in dropped.tolist()) <= min(score[i] for i in kept.tolist())
        left += parts[0].left_out
    state = ranks[0].state_dict()
    epoch = [list(s) for s in ranks[1]]
    fresh = SuperBatch(lengths, packed=True, max_tokens=512, rows_per_batch=2, seed=3, num_replicas=2, rank=0)
    fresh.load_state_dict(state)
    assert [list(s) for s in fresh] == epoch[6:] and len(epoch) == len(fresh)
