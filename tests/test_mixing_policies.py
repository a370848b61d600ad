"""Online mixture policies (``ODM``: EXP3 with the paper's exploration schedule; ``SoftmaxLoss``)
and the ``SourceLossTracker`` that feeds them: exact updates on hand-computed numbers, the
two-intervals-back rule, JSON state round trips, determinism, refusals naming the field, and the
tracker under 2 real gloo processes (one ``all_reduce`` per interval, identical weights on both ranks)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import end_ddp_worker, free_port as _free_port

from packwise.samplers import load_state, save_state
from packwise.selection import ODM, SoftmaxLoss, SourceLossTracker, count_all_reduce

HALF = np.array([0.5, 0.5])


def _feed(policy, observations, base, upto):
    """Ask weights for intervals 0..upto-1, observing interval i right after asking for it."""
    out = []
    for i in range(upto):
        out.append(policy.weights(i, base))
        if i < len(observations):
            policy.observe(i, *observations[i])
    return out


def test_odm_exp3_updates_match_hand_computed_numbers():
    """K=2, smoothing 0.9: R_i <- 0.9 R_i + 0.1 L_i / pi_i, pi = (1-2eps_u) softmax(eps_{u-1} R) + eps_u."""
    odm = ODM(2, smoothing=0.9)
    obs = [
        (np.array([30.0, 10.0]), np.array([10, 10])),  # mean losses 3, 1
        (np.array([20.0, 40.0]), np.array([10, 10])),  # 2, 4
        (np.array([5.0, 0.0]), np.array([1, 0])),  # 5, source 1 absent
    ]
    w = _feed(odm, obs, HALF, 5)
    assert [x.tolist() for x in w[:3]] == [[0.5, 0.5]] * 3  # eps_0 = eps_1 = 1/K: uniform
    # folded for interval 3: intervals 0 and 1, both drawn with [0.5, 0.5]
    r0, r1 = 0.9 * (0.1 * 3 / 0.5) + 0.1 * 2 / 0.5, 0.9 * (0.1 * 1 / 0.5) + 0.1 * 4 / 0.5  # 0.94, 0.98
    eps2 = math.sqrt(math.log(2) / 4)  # 0.41628 < 1/2
    g0 = 1.0 / (1.0 + math.exp(0.5 * (r1 - r0)))  # eps_1 = 1/2 multiplies R
    assert w[3].tolist() == pytest.approx([(1 - 2 * eps2) * g0 + eps2, (1 - 2 * eps2) * (1 - g0) + eps2], abs=1e-15)
    assert round(float(w[3][0]), 6) == 0.499163  # 0.16744 * 0.49500 + 0.41628
    # interval 4 folds interval 2, drawn with interval 2's weights [0.5, 0.5]; source 1 had no tokens
    assert odm.estimated_reward.tolist() == pytest.approx([0.9 * r0 + 0.1 * 5 / 0.5, r1], abs=1e-15)
    # importance weight = the proportions the interval was drawn with (interval 3's, not uniform)
    odm.observe(3, np.array([4.0, 4.0]), np.array([2, 2]))
    before = odm.estimated_reward
    odm.weights(5, HALF)
    expect = 0.9 * before + 0.1 * 2.0 / w[3]
    assert odm.estimated_reward.tolist() == pytest.approx(expect.tolist(), abs=1e-15)


def test_odm_exploration_follows_the_paper_schedule():
    odm = ODM(5)
    assert [odm.exploration(u) for u in (0, 1, 8, 9, 100)] == [
        0.2, 0.2, 0.2, math.sqrt(math.log(5) / 45), math.sqrt(math.log(5) / 500),
    ]  # fmt: skip


def test_odm_prior_base_starts_from_the_sampler_weights():
    base = np.array([0.7, 0.2, 0.1])
    assert ODM(3, prior="base").weights(0, base).tolist() == pytest.approx(base.tolist(), abs=1e-15)
    assert ODM(3).weights(0, base).tolist() == pytest.approx([1 / 3] * 3, abs=1e-15)


def test_softmax_loss_weights_and_mix():
    p = SoftmaxLoss(3, temperature=0.5, mix=0.25)
    base = np.array([2.0, 1.0, 1.0])  # normalised to 0.5, 0.25, 0.25
    p.observe(0, np.array([2.0, 3.0, 0.0]), np.array([2, 2, 0]))  # source 2 not seen yet
    p.observe(1, np.array([0.0, 0.0, 9.0]), np.array([0, 0, 6]))
    assert p.weights(2, base).tolist() == [0.5, 0.25, 0.25]  # interval 0 folded: source 2 unseen -> base
    got = p.weights(3, base)
    z = np.exp(np.array([1.0, 1.5, 1.5]) / 0.5)
    assert got.tolist() == pytest.approx((0.75 * z / z.sum() + 0.25 * np.array([0.5, 0.25, 0.25])).tolist(), abs=1e-15)
    assert p.last_loss.tolist() == [1.0, 1.5, 1.5]


def test_weights_use_only_observations_two_intervals_back():
    """Interval 2 sees interval 0 but not 1; asking again for 2 later gives the same answer."""
    obs = [(np.array([9.0, 1.0]), np.array([1, 1])), (np.array([1.0, 9.0]), np.array([1, 1]))]
    a = SoftmaxLoss(2)
    a.observe(0, *obs[0])
    a.observe(1, *obs[1])
    only_first = SoftmaxLoss(2)
    only_first.observe(0, *obs[0])
    w2 = a.weights(2, HALF)
    assert w2.tolist() == only_first.weights(2, HALF).tolist()
    assert w2[0] > 0.99
    assert a.weights(3, HALF)[1] > 0.99  # interval 1 now usable
    assert a.weights(2, HALF).tolist() == w2.tolist()  # re-asked: the issued answer, not recomputed


@pytest.mark.parametrize("make", [lambda: ODM(3, smoothing=0.5), lambda: SoftmaxLoss(3, temperature=2.0, mix=0.1)])
def test_state_round_trips_through_json_and_state_files_bit_for_bit(make, tmp_path):
    rng = np.random.default_rng(0)
    obs = [(rng.random(3) * 40, rng.integers(0, 20, 3)) for _ in range(12)]
    base = np.array([0.5, 0.3, 0.2])
    full = make()
    first = _feed(full, obs, base, 12)
    half = make()
    _feed(half, obs[:6], base, 6)  # asked 0..5, observed 0..5 (4 and 5 still held back)
    state = json.loads(json.dumps(half.state_dict()))
    save_state(tmp_path / "p.npz", half.state_dict())
    for restored_state in (state, load_state(tmp_path / "p.npz")):
        resumed = make()
        resumed.load_state_dict(restored_state)
        assert resumed.weights(5, base).tolist() == first[5].tolist()  # an issued interval is remembered
        rest = []
        for i in range(6, 12):
            rest.append(resumed.weights(i, base))
            resumed.observe(i, *obs[i])
        assert all(np.array_equal(a.view(np.uint64), b.view(np.uint64)) for a, b in zip(first[6:], rest))


def test_same_observations_same_weights_bit_for_bit():
    rng = np.random.default_rng(1)
    obs = [(rng.random(4) * 10, rng.integers(1, 9, 4)) for _ in range(30)]
    base = np.full(4, 0.25)
    a, b = _feed(ODM(4), obs, base, 30), _feed(ODM(4), obs, base, 30)
    assert all(np.array_equal(x.view(np.uint64), y.view(np.uint64)) for x, y in zip(a, b))
    assert not np.allclose(a[-1], 0.25)  # it did move away from uniform
    assert all(abs(float(x.sum()) - 1.0) < 1e-12 for x in a)


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: ODM(2, smoothing=1.0), r"smoothing must be in \[0, 1\), got 1.0"),
        (lambda: ODM(2, prior="natural"), r"prior must be 'uniform' \(the paper\) or 'base'"),
        (lambda: ODM(0), r"num_sources must be an integer >= 1, got 0"),
        (lambda: SoftmaxLoss(2, temperature=0), r"temperature must be a finite number > 0, got 0"),
        (lambda: SoftmaxLoss(2, mix=1.5), r"mix must be in \[0, 1\], got 1.5"),
        (lambda: ODM(2).observe(0, [1.0], [1, 1]), r"loss_sum must have one entry per source \(2\), got shape \(1,\)"),
        (lambda: ODM(2).observe(0, [1.0, float("nan")], [1, 1]), r"loss_sum\[1\] = nan; every entry must be finite and >= 0"),
        (lambda: ODM(2).observe(0, [1.0, 1.0], [1, -3]), r"tokens\[1\] = -3.0; every entry must be finite and >= 0"),
        (lambda: ODM(2).observe(0, [1.0, 1.0], [1.5, 1]), r"tokens\[0\] = 1.5 is not a whole number of tokens"),
        (lambda: ODM(2).weights(0, [0.0, 0.0]), r"base weights sum to 0; give at least one source a positive weight"),
        (lambda: ODM(2).weights(-1, HALF), r"interval must be an integer >= 0, got -1"),
    ],
)
def test_bad_input_is_refused_naming_the_field(call, error):
    with pytest.raises(ValueError, match=error):
        call()


def test_weights_before_the_needed_losses_were_observed_is_an_error():
    odm = ODM(2)
    odm.weights(0, HALF)
    odm.weights(1, HALF)  # needs nothing yet
    with pytest.raises(RuntimeError, match=r"^ODM.weights\(3\) needs the losses of interval 0: call observe\(0, loss_sum, tokens\) first"):
        odm.weights(3, HALF)
    odm.observe(0, [1.0, 1.0], [1, 1])
    with pytest.raises(RuntimeError, match=r"^ODM.weights\(3\) needs the losses of interval 1"):
        odm.weights(3, HALF)


def test_observing_an_interval_twice_and_mismatched_states_are_refused():
    odm = ODM(2)
    odm.observe(0, [1.0, 1.0], [1, 1])
    with pytest.raises(ValueError, match=r"^interval 0 was already observed; observe each interval once$"):
        odm.observe(0, [1.0, 1.0], [1, 1])
    with pytest.raises(ValueError, match=r"^state_dict is a ODM state; this policy is a SoftmaxLoss$"):
        SoftmaxLoss(2).load_state_dict(odm.state_dict())
    with pytest.raises(ValueError, match=r"state_dict was saved with smoothing=0.9 but this ODM has smoothing=0.5"):
        ODM(2, smoothing=0.5).load_state_dict(odm.state_dict())


def test_tracker_sums_per_source_and_observes_once_per_interval():
    seen = []

    class Spy:
        def observe(self, interval, loss_sum, tokens):
            seen.append((interval, loss_sum.tolist(), tokens.tolist()))

    tr = SourceLossTracker(Spy(), num_sources=3, update_every=2, names=["c4", "alpaca", "wiki"])
    tr.add(torch.tensor([2.0, 1.0]), np.array([0, 2]), torch.tensor([3, 1]))
    tr.step()
    assert seen == []
    tr.add(torch.tensor([4.0, 0.5]), torch.tensor([0, 0]), None)  # per-token: each counts 1
    tr.step()
    assert seen == [(0, [10.5, 0.0, 1.0], [5.0, 0.0, 1.0])]
    assert tr.logs() == {"loss/c4": 2.1, "loss/wiki": 1.0}
    tr.add(torch.tensor([1.0]), np.array([1]), torch.tensor([4]))
    state = json.loads(json.dumps(tr.state_dict()))
    again = SourceLossTracker(Spy(), num_sources=3, update_every=2)
    again.load_state_dict(state)
    again.step()
    again.step()  # a resumed tracker ends interval 1 with the partial sums it was saved with
    assert seen[-1] == (1, [0.0, 4.0, 0.0], [0.0, 4.0, 0.0])
    with pytest.raises(ValueError, match=r"^sources\[1\] = 3 is outside \[0, 3\); pass the sampler's source ids$"):
        tr.add(torch.tensor([1.0, 1.0]), np.array([0, 3]))
    with pytest.raises(ValueError, match=r"^sources has 1 entries but losses has 2; give one source id per loss$"):
        tr.add(torch.tensor([1.0, 1.0]), np.array([0]))


def _tracker_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    odm = ODM(3)
    tracker = SourceLossTracker(odm, num_sources=3, update_every=4)
    rng = np.random.default_rng(rank)  # each rank sees different losses: only the reduction makes them agree
    weights, counts = [], []
    with count_all_reduce() as calls:  # wraps torch.distributed.all_reduce
        for step in range(40):
            if step % 4 == 0:
                weights.append(odm.weights(step // 4, np.array([0.5, 0.3, 0.2])).tolist())
            n = int(rng.integers(1, 6))
            tracker.add(torch.from_numpy(rng.random(n) * (1 + rank)), rng.integers(0, 3, n), torch.from_numpy(rng.integers(1, 9, n)))
            tracker.step()
            counts.append(len(calls))
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"weights": weights, "calls": counts}))
    end_ddp_worker()


def test_tracker_under_gloo_one_collective_per_interval_and_same_weights_on_every_rank(tmp_path):
    mp.spawn(_tracker_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["calls"] == r1["calls"] == [(s + 1) // 4 for s in range(40)]  # 1 after steps 4, 8, ..., 40 and no others
    assert r0["weights"] == r1["weights"]  # identical floats on both ranks
    assert len({tuple(w) for w in r0["weights"]}) > 1  # and the weights did change
