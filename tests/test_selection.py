"""Exact semantics of the selection math: score store, InfoBatch, RS2, score policies, stream filter,
and unbiasedness of the returned loss (seeded Monte-Carlo on a linear model)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from packwise.selection import (
    RS2,
    InfoBatch,
    LossThresholdFilter,
    ScoreSelector,
    ScoreStore,
    per_example_loss,
    select_by_score,
)
from packwise.selection import _kernels


def _scored(ib, scores, epoch=0):
    """Plan ``epoch`` (all data at epoch 0), then record ``scores`` for every example."""
    ids = ib.indices_for_epoch(epoch)
    ib.update(ids, torch.as_tensor(np.asarray(scores, np.float32)[ids]))
    return ib


# --- score store -------------------------------------------------------------------------------


def test_store_records_last_value_ema_seen_and_epoch():
    store = ScoreStore(5)
    store.update(np.array([4, 1, 4]), np.array([1.0, 2.0, 3.0], np.float32), epoch=2)  # repeat: later row wins
    assert store.scores.tolist() == [0.0, 2.0, 0.0, 0.0, 3.0]
    assert store.seen.tolist() == [False, True, False, False, True]
    assert store.last_epoch.tolist() == [-1, 2, -1, -1, 2]
    assert store.seen_mean() == (2.5, 2)
    ema = ScoreStore(2, momentum=0.25)
    ema.update([0], [4.0], 0)
    ema.update([0], [8.0], 1)
    assert ema.scores[0] == pytest.approx(0.25 * 8.0 + 0.75 * 4.0)
    assert store.nbytes / store.num_examples <= 16


def test_store_state_round_trip_and_errors():
    store = ScoreStore(4, momentum=0.5)
    store.update([0, 3], [1.5, 2.5], 1)
    other = ScoreStore(4, momentum=0.5)
    other.load_state_dict(store.state_dict())
    for field in ("scores", "seen", "last_epoch"):
        assert np.array_equal(getattr(other, field), getattr(store, field))
    with pytest.raises(ValueError, match=r"ids\[1\] = 4 is outside \[0, 4\)"):
        store.update([0, 4], [1.0, 1.0], 0)
    with pytest.raises(ValueError, match=r"values\[0\] = nan is not finite"):
        store.update([0], [float("nan")], 0)
    with pytest.raises(ValueError, match="momentum=0.5 but this store has momentum=None"):
        ScoreStore(4).load_state_dict(store.state_dict())
    with pytest.raises(ValueError, match="ids must be integer example ids"):
        store.update(np.array([0.0]), [1.0], 0)


# --- InfoBatch ---------------------------------------------------------------------------------

HAND = np.array([0.5, 4.0, 0.25, 0.75, 6.0, 0.5, 5.0, 0.25, 1.0, 7.0], np.float32)  # mean 2.525


def test_infobatch_hand_made_epoch_keeps_exactly_what_the_rules_say():
    ib = _scored(InfoBatch(10, num_epochs=8, prune_ratio=0.5, seed=3), HAND)
    assert ib.plan(0).kept == 10 and not ib.plan(0).full_data  # epoch 0: nothing was seen, nothing pruned
    kept = ib.indices_for_epoch(1)
    below = np.flatnonzero(HAND < HAND.mean())  # 6 candidates: ids 0, 2, 3, 5, 7, 8
    assert below.tolist() == [0, 2, 3, 5, 7, 8]
    assert kept.dtype == np.int64 and np.all(np.diff(kept) > 0)
    assert set([1, 4, 6, 9]) <= set(kept.tolist())  # above the mean: always kept
    assert len(set(kept.tolist()) & set(below.tolist())) == 3  # exactly round(0.5 * 6) pruned
    weights = ib.weights_for(kept)
    assert weights.dtype == np.float32
    assert weights.tolist() == [2.0 if i in below else 1.0 for i in kept]
    plan = ib.plan()
    assert plan.kept == 7 and plan.kept_fraction == 0.7 and plan.groups == ((6, 3, 2.0),)
    assert plan.thresholds == (pytest.approx(2.525),)
    assert len(ib) == 7
    assert kept.tolist() == [0, 1, 3, 4, 6, 7, 9]  # the seeded draw itself (seed 3, epoch 1), pinned
    again = _scored(InfoBatch(10, num_epochs=8, prune_ratio=0.5, seed=3), HAND)
    assert np.array_equal(again.indices_for_epoch(1), kept)  # same seed, same scores: same plan
    assert not np.array_equal(again.indices_for_epoch(2), kept) or not np.array_equal(
        again.indices_for_epoch(3), kept
    )


def test_infobatch_never_prunes_unseen_examples():
    ib = InfoBatch(10, num_epochs=4, prune_ratio=0.9, seed=0)
    ib.indices_for_epoch(0)
    ib.update(np.arange(5), torch.tensor([0.1, 0.2, 9.0, 0.3, 0.4]))  # ids 5..9 never scored
    kept = ib.indices_for_epoch(1)
    assert set(range(5, 10)) <= set(kept.tolist())
    assert ib.weights_for(np.arange(5, 10)).tolist() == [1.0] * 5
    # 4 candidates (0,1,3,4) below the mean 2.0; round(0.9 * 4) = 4 capped at 3 so one survives
    assert ib.plan().groups == ((4, 3, 4.0),)


def test_infobatch_annealing_uses_integer_epoch_arithmetic():
    ib = _scored(InfoBatch(10, num_epochs=10, seed=0), HAND)
    assert ib.prune_epochs == 8
    assert [ib.plan(e).full_data for e in range(10)] == [False] * 8 + [True] * 2
    assert ib.weights_for(ib.indices_for_epoch(9)).tolist() == [1.0] * 10
    assert InfoBatch(10, num_epochs=90).prune_epochs == 78  # 78.75: weights reset from epoch 78 on
    assert InfoBatch(10, num_epochs=100, delta=0.29).prune_epochs == 29  # 100 * 0.29 = 28.999... in floats
    ib90 = _scored(InfoBatch(10, num_epochs=90, seed=0), HAND)
    assert ib90.plan(77).kept < 10 and ib90.plan(78).full_data and ib90.plan(78).kept == 10
    with pytest.raises(ValueError, match="epoch 10 is past num_epochs=10"):
        ib.indices_for_epoch(10)


def test_infobatch_quantile_buckets_prune_per_bucket():
    scores = np.arange(20, dtype=np.float32)  # quantiles 0.2 -> 3.8, 0.5 -> 9.5
    ib = _scored(InfoBatch(20, num_epochs=4, threshold=(0.2, 0.5), prune_ratio=(0.75, 0.5), seed=1), scores)
    kept = ib.indices_for_epoch(1)
    plan = ib.plan()
    assert plan.thresholds == (pytest.approx(3.8), pytest.approx(9.5))
    assert plan.groups == ((4, 3, 4.0), (6, 3, 2.0))
    assert set(range(10, 20)) <= set(kept.tolist())
    w = dict(zip(kept.tolist(), ib.weights_for(kept).tolist()))
    assert [w[i] for i in kept if i < 4] == [4.0] and all(w[i] == 2.0 for i in kept if 4 <= i < 10)


def test_infobatch_target_keep_meets_the_fraction_exactly():
    rng = np.random.default_rng(0)
    scores = rng.lognormal(0.0, 1.0, 1000).astype(np.float32)
    ib = _scored(InfoBatch(1000, num_epochs=10, target_keep=0.6, seed=0), scores)
    assert ib.planned_sizes(10).tolist() == [1000] + [600] * 7 + [1000] * 2
    for epoch in range(1, 8):
        assert ib.plan(epoch).kept == 600 and ib.plan(epoch).kept_fraction == 0.6
    assert ib.planned_steps(10, batch_size=64) == 16 + 7 * 10 + 2 * 16
    # few below-mean examples: candidates widen to the lowest scores so the target still holds
    skew = np.array([0.0] * 100 + [10.0] * 900, np.float32)  # mean 9: only 100 below it
    ib2 = _scored(InfoBatch(1000, num_epochs=4, target_keep=0.5, seed=0), skew)
    kept = ib2.indices_for_epoch(1)
    assert kept.shape[0] == 500
    need = math.ceil(500 / 0.9)  # 556 candidates so no more than 90% of them are pruned
    assert ib2.plan().groups == ((need, 500, pytest.approx(need / (need - 500))),)
    assert set(range(need, 1000)) <= set(kept.tolist())  # stable order: the lowest 556 ids are candidates


def test_infobatch_update_returns_the_weighted_mean_and_leaves_the_loss_alone():
    ib = _scored(InfoBatch(10, num_epochs=8, prune_ratio=0.5, seed=3), HAND)
    kept = ib.indices_for_epoch(1)  # [0, 1, 3, 4, 6, 7, 9]; 0, 3, 7 weigh 2
    batch = torch.tensor([1, 3, 7])
    loss = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    before = loss.detach().clone()
    out = ib.update(batch, loss)
    assert out.item() == pytest.approx((1.0 * 1 + 2.0 * 2 + 4.0 * 2) / 3)
    assert torch.equal(loss.detach(), before)
    out.backward()
    assert loss.grad.tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert ib.store.scores[[1, 3, 7]].tolist() == [1.0, 2.0, 4.0] and ib.store.last_epoch[7] == 1
    with pytest.raises(ValueError, match=r"indices\[0\] = 2 is not kept in epoch 1"):
        ib.update(torch.tensor([2]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"indices\[1\] = 10 is outside \[0, 10\)"):
        ib.update(torch.tensor([1, 10]), torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="must be integer example ids"):
        ib.update(torch.tensor([1.0]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="per_example_loss must be 1-D"):
        ib.update(torch.tensor([1]), torch.tensor([[1.0]]))
    with pytest.raises(ValueError, match="indices has 2 ids but per_example_loss has 1"):
        ib.update(torch.tensor([1, 3]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"per_example_loss\[0\] = inf is not finite \(index 1\)"):
        ib.update(torch.tensor([1]), torch.tensor([float("inf")]))
    assert kept.tolist() == [0, 1, 3, 4, 6, 7, 9]


def test_infobatch_argument_errors_name_the_field():
    with pytest.raises(ValueError, match=r"prune_ratio\[0\] must be in \[0, 1\)"):
        InfoBatch(10, 5, prune_ratio=1.0)
    with pytest.raises(ValueError, match="delta must be in"):
        InfoBatch(10, 5, delta=1.5)
    with pytest.raises(ValueError, match="prune_ratio has 1 values but threshold defines 2"):
        InfoBatch(10, 5, threshold=(0.2, 0.5), prune_ratio=(0.5,))
    with pytest.raises(ValueError, match="threshold quantiles must be increasing"):
        InfoBatch(10, 5, threshold=(0.5, 0.2), prune_ratio=(0.5, 0.5))
    with pytest.raises(ValueError, match="target_keep must be in"):
        InfoBatch(10, 5, target_keep=0.0)
    with pytest.raises(ValueError, match="num_examples must be an integer >= 1"):
        InfoBatch(0, 5)


def test_infobatch_state_dict_restores_the_epoch_plan_despite_newer_scores():
    ib = _scored(InfoBatch(10, num_epochs=8, seed=3), HAND)
    kept = ib.indices_for_epoch(1)
    ib.update(torch.tensor([1]), torch.tensor([0.0]))  # scores move on mid-epoch
    state = ib.state_dict()
    fresh = InfoBatch(10, num_epochs=8, seed=3)
    fresh.load_state_dict(state)
    assert fresh.epoch == 1 and np.array_equal(fresh.indices_for_epoch(1), kept)
    assert np.array_equal(fresh.weights_for(kept), ib.weights_for(kept))
    assert np.array_equal(fresh.store.scores, ib.store.scores)
    assert np.array_equal(fresh.indices_for_epoch(2), ib.indices_for_epoch(2))
    with pytest.raises(ValueError, match="saved with seed=3 but this infobatch has seed=4"):
        InfoBatch(10, num_epochs=8, seed=4).load_state_dict(state)


# --- RS2 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,fraction", [(10, 0.3), (1000, 0.1), (997, 0.25), (50, 0.34), (7, 1.0)])
def test_rs2_without_replacement_covers_every_example_each_round(n, fraction):
    rs2 = RS2(n, fraction, seed=11)
    k = math.ceil(fraction * n)
    rounds = rs2.epochs_per_round
    assert rounds <= math.ceil(1 / fraction)
    for r in range(3):
        union = []
        for e in range(r * rounds, (r + 1) * rounds):
            ids = rs2.indices_for_epoch(e)
            assert ids.shape[0] == k and np.unique(ids).shape[0] == k  # distinct within the epoch
            assert rs2.weights_for(ids).tolist() == [1.0] * k
            union.extend(ids.tolist())
        assert set(union) == set(range(n))
        if k * rounds == n:
            assert sorted(union) == list(range(n))  # exactly once each
    assert rs2.planned_steps(6, batch_size=8) == 6 * math.ceil(k / 8) == 6 * rs2.steps_per_epoch(8)


def test_rs2_seeded_rounds_differ_and_replacement_draws_are_independent():
    a, b = RS2(100, 0.2, seed=1), RS2(100, 0.2, seed=1)
    assert all(np.array_equal(a.indices_for_epoch(e), b.indices_for_epoch(e)) for e in range(7))
    assert not np.array_equal(a.indices_for_epoch(0), a.indices_for_epoch(5))  # round 1 reshuffled
    rep = RS2(100, 0.2, replacement=True, seed=1)
    draws = [set(rep.indices_for_epoch(e).tolist()) for e in range(5)]
    assert all(len(d) == 20 for d in draws)
    assert len(set().union(*draws)) < 100  # independent draws overlap: no coverage promise


def test_rs2_stratified_keeps_class_shares_and_covers_each_class():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    rs2 = RS2(100, 0.2, seed=2, stratify=labels)
    assert rs2.per_epoch == 12 + 6 + 2
    union = set()
    for e in range(5):
        ids = rs2.indices_for_epoch(e)
        assert np.bincount(labels[ids], minlength=3).tolist() == [12, 6, 2]
        union |= set(ids.tolist())
    assert union == set(range(100))
    with pytest.raises(ValueError, match=r"stratify must hold one label per example, shape \(100,\)"):
        RS2(100, 0.2, stratify=labels[:5])
    with pytest.raises(ValueError, match="fraction must be in"):
        RS2(100, 0.0)


# --- score policies ----------------------------------------------------------------------------


def test_bottom_k_kernel_matches_a_full_sort():
    rng = np.random.default_rng(0)
    for n, k in [(1, 1), (10, 3), (1000, 999), (5000, 17), (64, 64), (8, 0)]:
        keys = rng.random(n)
        ids, tau = _kernels.bottom_k(keys, k)
        order = np.argsort(keys)
        assert ids.tolist() == sorted(order[:k].tolist())
        assert tau == (keys[order[k]] if k < n else np.inf)
    tied = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    assert _kernels.bottom_k(tied, 3)[0].tolist() == [0, 1, 4]  # ties: lower id first


def test_deterministic_policies_are_exact():
    s = np.array([0.1, 3.0, 0.5, 2.0, 9.0, 3.0], np.float32)
    ids, w = select_by_score(s, 3, "topk")
    assert ids.tolist() == [1, 4, 5] and w.tolist() == [1.0] * 3
    assert select_by_score(s, 2, "topk")[0].tolist() == [1, 4]  # tie at 3.0: lower id wins
    ids, w = select_by_score(s, policy="threshold", threshold=2.0)
    assert ids.tolist() == [1, 3, 4, 5]
    with pytest.raises(ValueError, match=r"scores\[0\] = -1.0 is negative; policy='power'"):
        select_by_score(np.array([-1.0, 1.0]), 1, "power")
    with pytest.raises(ValueError, match="k=3 but only 2 scores have a nonzero probability"):
        select_by_score(np.array([0.0, 1.0, 2.0]), 3, "power")
    with pytest.raises(ValueError, match="policy must be one of"):
        select_by_score(s, 2, "random")
    with pytest.raises(ValueError, match=r"scores\[1\] = nan is not finite"):
        select_by_score(np.array([1.0, np.nan]), 1, "softmax")


@pytest.mark.parametrize(
    "policy,beta,expected",
    [
        ("softmax", 1.0, np.exp([0.0, 1.0, 2.0, 3.0])),
        ("power", 2.0, np.array([0.0, 1.0, 4.0, 9.0])),
        ("softrank", 1.0, 1.0 / np.array([4.0, 3.0, 2.0, 1.0])),
    ],
)
def test_stochastic_policies_draw_with_the_stated_probabilities(policy, beta, expected):
    s = np.array([0.0, 1.0, 2.0, 3.0])
    p = expected / expected.sum()
    draws = 20000
    counts = np.zeros(4)
    for e in range(draws):  # k = 1: the first draw of Gumbel-top-k is exactly categorical(p)
        counts[select_by_score(s, 1, policy, beta, seed=0, epoch=e)[0][0]] += 1
    se = np.sqrt(p * (1 - p) / draws)
    assert np.all(np.abs(counts / draws - p) <= 4 * se + 1e-12)


def test_importance_weights_make_the_sample_mean_unbiased():
    rng = np.random.default_rng(1)
    s = rng.gamma(2.0, 1.0, 200)
    x = rng.normal(size=200) + s  # a value correlated with the score (the biased case)
    draws = 3000
    est, naive = np.empty(draws), np.empty(draws)
    for e in range(draws):
        ids, w = select_by_score(s, 20, "softmax", 1.0, seed=5, epoch=e)
        est[e] = np.mean(w * x[ids])
        naive[e] = np.mean(x[ids])
    tol = 4 * est.std() / np.sqrt(draws)
    assert abs(est.mean() - x.mean()) <= tol
    assert abs(naive.mean() - x.mean()) > 10 * tol  # without the weights it is far off: the test can fail


def test_score_selector_keeps_unseen_and_reweights():
    sel = ScoreSelector(8, fraction=0.5, policy="softmax", seed=0)
    sel.indices_for_epoch(0)
    sel.update(np.arange(4), torch.tensor([0.5, 1.0, 2.0, 3.0]))
    kept = sel.indices_for_epoch(1)
    assert kept.tolist() == [4, 5, 6, 7]  # 4 unseen fill the budget of 4
    assert sel.weights_for(kept).tolist() == [0.5] * 4  # total / N with inclusion probability 1
    sel.update(np.arange(4, 8), torch.tensor([0.5, 1.0, 2.0, 3.0]))
    kept = sel.indices_for_epoch(2)
    assert kept.shape[0] == 4 and sel.plan().kept == 4
    sel.set_scores(np.arange(8, dtype=np.float32))
    assert ScoreSelector(8, 0.5, "topk").indices_for_epoch(0).shape[0] == 8
    topk = ScoreSelector(8, 0.25, "topk")
    topk.set_scores(np.arange(8, dtype=np.float32))
    assert topk.indices_for_epoch(1).tolist() == [6, 7]


# --- unbiased gradients on a linear model -------------------------------------------------------


def _linear_problem(n=120, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, generator=g) + 0.5 * torch.randn(n, generator=g) + 1.0
    w0 = torch.zeros(d)
    losses = (x @ w0 - y) ** 2
    full = torch.autograd.functional.jacobian(lambda w: ((x @ w - y) ** 2).mean(), w0)
    return x, y, w0, losses, full


def test_infobatch_returned_gradient_is_unbiased_in_expectation():
    """E[(K/N) * grad(update(kept, loss))] = full-data mean gradient: InfoBatch keeps the epoch's
    summed gradient unbiased with fewer examples.  2000 seeded draws, tolerance 4 standard errors."""
    x, y, w0, losses, full = _linear_problem()
    n = x.shape[0]
    ib = InfoBatch(n, num_epochs=3000, delta=1.0, prune_ratio=0.7, seed=0)
    _scored(ib, losses.numpy())
    grads, naive = [], []
    for epoch in range(1, 2001):
        kept = ib.indices_for_epoch(epoch)
        w = w0.clone().requires_grad_(True)
        idx = torch.from_numpy(kept)
        per = (x[idx] @ w - y[idx]) ** 2
        ib.update(idx, per).backward()
        grads.append(w.grad * len(kept) / n)
        naive.append((2 * (x[idx] @ w0 - y[idx]) @ x[idx]) / n)  # pruned, not reweighted
    grads, naive = torch.stack(grads), torch.stack(naive)
    se = grads.std(dim=0) / math.sqrt(grads.shape[0])
    assert torch.all((grads.mean(dim=0) - full).abs() <= 4 * se + 1e-6)
    assert torch.any((naive.mean(dim=0) - full).abs() > 10 * se)  # unweighted pruning is biased


def test_importance_weighted_selector_gradient_is_unbiased_per_step():
    x, y, w0, losses, full = _linear_problem(seed=1)
    n = x.shape[0]
    sel = ScoreSelector(n, fraction=0.2, policy="power", beta=1.0, seed=0)
    sel.set_scores(losses.numpy())
    grads = []
    for epoch in range(1, 2001):
        kept = sel.indices_for_epoch(epoch)
        w = w0.clone().requires_grad_(True)
        idx = torch.from_numpy(kept)
        loss = torch.from_numpy(sel.weights_for(kept)) * (x[idx] @ w - y[idx]) ** 2
        loss.mean().backward()
        grads.append(w.grad.clone())
    grads = torch.stack(grads)
    se = grads.std(dim=0) / math.sqrt(grads.shape[0])
    assert torch.all((grads.mean(dim=0) - full).abs() <= 4 * se + 1e-6)


# --- sequences and streams ---------------------------------------------------------------------


def test_per_example_loss_is_a_masked_mean_without_padding(tokenizer):
    texts = ["short text", "a somewhat longer piece of news text about markets"]
    ids = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    width = max(map(len, ids))
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
    token_loss = torch.arange(2 * width, dtype=torch.float32).reshape(2, width) + 100 * (1 - mask)
    out = per_example_loss(token_loss, mask)
    expected = [float(token_loss[r, : len(i)].mean()) for r, i in enumerate(ids)]
    assert out.tolist() == pytest.approx(expected)
    assert per_example_loss(torch.ones(1, 3), torch.zeros(1, 3)).tolist() == [0.0]
    with pytest.raises(ValueError, match="token_loss must be"):
        per_example_loss(torch.ones(3), torch.ones(3))


def test_stream_filter_skips_easy_examples_and_reweights_survivors():
    f = LossThresholdFilter(prune_ratio=0.5, window=100, seed=0, num_examples=4)
    f.update(np.arange(100), np.r_[np.zeros(50), np.full(50, 2.0)])  # threshold: mean 1.0; store grows
    assert f.threshold == 1.0 and f.store.num_examples >= 100
    keep, w = f.select(np.arange(100))
    easy_kept = keep[:50]
    assert keep[50:].all() and (w[50:] == 1.0).all()  # hard ones always kept, weight 1
    assert 10 < easy_kept.sum() < 40  # about half the easy ones skipped
    assert (w[:50][easy_kept] == 2.0).all() and (w[:50][~easy_kept] == 0.0).all()
    keep2, _ = f.select([500])  # never seen: kept
    assert keep2.tolist() == [True]
    state = f.state_dict()
    a = f.select(np.arange(50))
    g = LossThresholdFilter(prune_ratio=0.5, window=100, seed=0)
    g.load_state_dict(state)
    b = g.select(np.arange(50))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])  # resumable, same decisions
    stream = [(i, f"example {i}") for i in range(100)]
    out = list(g.filter(stream))
    assert all(i >= 50 or wt == 2.0 for (i, _), wt in out) and len(out) < 100
    q = LossThresholdFilter(quantile=0.9, window=10)
    q.update(np.arange(10), np.arange(10, dtype=np.float32))
    assert q.threshold == pytest.approx(8.1)


def test_selection_math_imports_without_torch():
    import subprocess

    code = "import sys, packwise.selection as s; s.InfoBatch(4, 2).indices_for_epoch(0); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
