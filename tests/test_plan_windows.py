"""Issue 26, last target: epochs planned window by window (``plan_window``), so a restore plans only
the cursor's window; a keyed bijection picks each window's members; xxh3 fingerprints, with states
carrying the older blake2b one still loading where the plan is the one they were saved under."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from packwise.samplers import BucketBatchSampler, PackedBatchSampler, PruningSampler
from packwise.samplers._planned import window_members
from packwise.selection import InfoBatch, RampBudget

N, WINDOW, TOKENS = 1000, 64, 1024


def _lengths() -> np.ndarray:
    return np.random.default_rng(5).integers(1, 300, N)


def _sampler(world: int, rank: int, **kw) -> PackedBatchSampler:
    s = PackedBatchSampler(_lengths(), max_tokens=TOKENS, num_replicas=world, rank=rank, seed=7, plan_window=WINDOW, **kw)
    s.set_epoch(1)
    return s


def _count_windows(s: PackedBatchSampler) -> list:
    """Record each plan window ``s`` packs (and ``"epoch"`` for a whole-epoch plan)."""
    planned = []
    window_batches, batches = s._window_batches, s._batches
    s._window_batches = lambda epoch, k: planned.append(k) or window_batches(epoch, k)
    s._batches = lambda epoch: planned.append("epoch") or batches(epoch)
    return planned


def _ids(batches) -> list[int]:
    return [i for b in batches for i in b]


def test_window_members_are_a_permutation_and_the_same_on_every_machine():
    for n in (1, 2, 3, 63, 64, 65, 1000, 4096, 4097):
        members = np.concatenate([window_members(n, 7, 1, k, WINDOW, True) for k in range(-(-n // WINDOW))])
        assert np.array_equal(np.sort(members), np.arange(n))
    assert window_members(N, 0, 1, 0, WINDOW, True)[:8].tolist() == [865, 653, 294, 242, 384, 649, 238, 440]
    assert window_members(N, 0, 2, 0, WINDOW, True)[:8].tolist() != [865, 653, 294, 242, 384, 649, 238, 440]
    assert window_members(N, 0, 1, 15, WINDOW, False).tolist() == list(range(960, 1000))


def test_a_windowed_epoch_plays_every_example_once_in_equal_counts():
    ranks = [_sampler(3, r) for r in range(3)]
    assert ranks[0].num_windows() == 16 and ranks[0].canonical().starts.shape[0] == 16
    played = [list(s) for s in ranks]
    assert [len(p) for p in played] == [len(ranks[0])] * 3
    assert sorted(_ids(sum(played, []))) == list(range(N))
    assert played == [s.rank_batches() for s in ranks]  # what plays is what the whole-epoch plan says
    for s, p in zip(ranks, played):
        assert all(sum(s.lengths[b]) <= TOKENS for b in p)
    rows = [_sampler(3, r, rows_per_batch=2) for r in range(3)]
    assert sorted(_ids(sum((list(s) for s in rows), []))) == list(range(N))


def test_up_to_plan_window_examples_the_plan_is_the_whole_epochs():
    x = _lengths()
    one = PackedBatchSampler(x, max_tokens=TOKENS, num_replicas=2, rank=1, seed=7, plan_window=N)
    default = PackedBatchSampler(x, max_tokens=TOKENS, num_replicas=2, rank=1, seed=7)
    planned = _count_windows(one)
    assert one.num_windows() == 1 and list(one) == list(default) and planned == ["epoch"]


def test_elastic_restore_3_to_2_plans_only_the_cursors_window():
    saved = [_sampler(3, r) for r in range(3)]
    head = [s.rank_batches()[:20] for s in saved]
    state = json.loads(json.dumps(saved[0].state_at(20)))
    assert (state["cursor"], state["total"], state["window"], state["window_start"]) == (60, 152, 5, 53)
    tail = []
    for r in range(2):
        s = PackedBatchSampler(_lengths(), max_tokens=TOKENS, num_replicas=2, rank=r, seed=7, plan_window=WINDOW)
        planned = _count_windows(s)
        s.load_state_dict(state)
        assert planned == [5] and len(s) == 46  # (152 - 60) / 2, from the state: no other window planned
        it = iter(s)
        first = next(it)
        assert planned == [5, 6]  # the cursor's window [53, 63), and window 6 for its last group (62, 63)
        tail.append([first] + list(it))
        assert planned == list(range(5, 16))  # then window by window, each once
        assert len(tail[-1]) == 46 and tail[-1] == s.rank_batches()  # the whole-epoch plan's dealing, lazily
    assert sorted(_ids(sum(head, []) + sum(tail, []))) == list(range(N))


@pytest.mark.parametrize("kind", [PackedBatchSampler, BucketBatchSampler])
def test_a_one_window_restore_plans_the_epoch_once(kind):
    state = kind(_lengths(), max_tokens=TOKENS, num_replicas=3, rank=0, seed=7).state_at(5)
    s = kind(_lengths(), max_tokens=TOKENS, num_replicas=2, rank=1, seed=7)
    planned = _count_windows(s)
    s.load_state_dict(state)
    rest = list(s)
    assert rest == s.rank_batches() and s.stats().batches == state["total"] - state["cursor"]
    assert planned == ["epoch"]  # the restore, the play and the statistics share one plan


def test_restore_under_the_same_world_continues_bit_for_bit():
    whole = [_sampler(3, r).rank_batches() for r in range(3)]
    state = _sampler(3, 0).state_at(27)
    for r in range(3):
        s = PackedBatchSampler(_lengths(), max_tokens=TOKENS, num_replicas=3, rank=r, seed=7, plan_window=WINDOW)
        planned = _count_windows(s)
        s.load_state_dict(state)
        assert list(s) == whole[r][27:] and planned[0] == state["window"] and "epoch" not in planned
        assert s.state_dict() == {**state, "batches_yielded": len(whole[r]), "cursor": 152, "window": 15, "window_start": 146}


def test_a_restored_state_that_does_not_fit_its_windows_is_refused():
    state = _sampler(3, 0).state_at(20)
    s = PackedBatchSampler(_lengths(), max_tokens=TOKENS, num_replicas=2, rank=0, seed=7, plan_window=WINDOW)
    with pytest.raises(ValueError, match=r"state_dict cursor=60 is not in plan window 4 \(canonical positions 42 to 53, of 152\)"):
        s.load_state_dict({**state, "window": 4, "window_start": 42})
    with pytest.raises(ValueError, match=r"state_dict has window=16, window_start=53, cursor=60, total=152, which do not fit epoch 1 \(16 plan windows\)"):
        s.load_state_dict({**state, "window": 16})
    with pytest.raises(ValueError, match=r"fingerprint mismatch\).*attention_weight, plan_window \(num_replicas"):
        PackedBatchSampler(_lengths(), max_tokens=TOKENS, num_replicas=2, rank=0, seed=7, plan_window=128).load_state_dict(state)


def _blake2b_state(s: PackedBatchSampler, steps: int) -> dict:
    """A state as the packwise before windowed plans wrote it (blake2b fingerprint, no window fields)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(s.lengths.tobytes())
    h.update(repr(s._settings()).encode())
    state = {k: v for k, v in s.state_at(steps).items() if k not in ("total", "window", "window_start")}
    return {**state, "fingerprint": h.hexdigest()}


def test_states_with_the_old_blake2b_fingerprint_load_where_the_epoch_is_one_window():
    x = _lengths()
    old = PackedBatchSampler(x, max_tokens=TOKENS, num_replicas=2, rank=0, seed=7)
    assert old.state_dict()["fingerprint"].startswith("xxh3:") and len(old.state_dict()["fingerprint"]) == 37
    state = _blake2b_state(old, 10)
    fresh = PackedBatchSampler(x, max_tokens=TOKENS, num_replicas=2, rank=0, seed=7)
    fresh.load_state_dict(state)
    assert list(fresh) == old.rank_batches()[10:]
    windowed = PackedBatchSampler(x, max_tokens=TOKENS, num_replicas=2, rank=0, seed=7, plan_window=WINDOW)
    with pytest.raises(ValueError, match=(
        r"state_dict was saved by a packwise that planned the epoch as one window, but this sampler plans epoch 0 in "
        r"16 windows of plan_window=64 examples; rebuild it with plan_window >= 1000 to resume that plan"
    )):
        windowed.load_state_dict(state)
    with pytest.raises(ValueError, match=r"fingerprint mismatch"):
        PackedBatchSampler(x, max_tokens=TOKENS + 1, num_replicas=2, rank=0, seed=7).load_state_dict(state)


def test_a_budget_schedule_replans_the_rest_over_windows_each_example_once():
    ramp = RampBudget(384, 1024, over_tokens=30_000, multiple=128, lag_batches=3)
    s = PackedBatchSampler(_lengths(), seed=1, num_replicas=1, rank=0, budget=ramp, plan_window=WINDOW)
    batches = []
    for b in s:
        ramp.step(int(s.lengths[b].sum()))
        batches.append(b)
    assert sorted(_ids(batches)) == list(range(N)) and len(ramp.changes) > 2 and len(batches) == len(s)


def test_a_pruned_epoch_is_windowed_over_its_kept_examples():
    policy = InfoBatch(N, num_epochs=4, prune_ratio=0.5, seed=0)
    policy.update(np.arange(N), torch.as_tensor(np.random.default_rng(0).random(N), dtype=torch.float32))
    ranks = [PruningSampler(policy, lengths=_lengths(), max_tokens=TOKENS, num_replicas=2, rank=r, plan_window=WINDOW)
             for r in range(2)]
    for s in ranks:
        s.set_epoch(1)
    kept = policy.indices_for_epoch(1)
    assert ranks[0].num_windows() == -(-kept.shape[0] // WINDOW) > 1
    assert sorted(_ids(sum((list(s) for s in ranks), []))) == kept.tolist()


def test_windows_smaller_than_a_step_deal_and_restore_the_same_lazily():
    x = _lengths()[:60]

    def make(world, rank):
        s = PackedBatchSampler(x, max_tokens=TOKENS, num_replicas=world, rank=rank, seed=7, plan_window=4)
        s.set_epoch(1)
        return s

    saved = [make(3, r) for r in range(3)]
    assert saved[0].num_windows() == 15 and saved[0].canonical().batches.num_batches < 3 * 15  # groups span windows
    state = saved[0].state_at(3)
    head = [s.rank_batches()[:3] for s in saved]
    tail = []
    for r in range(2):
        s = PackedBatchSampler(x, max_tokens=TOKENS, num_replicas=2, rank=r, seed=7, plan_window=4)
        s.load_state_dict(state)
        tail.append(list(s))
        assert tail[-1] == s.rank_batches() and len(tail[-1]) == len(s)
    assert sorted(_ids(sum(head, []) + sum(tail, []))) == list(range(60))
