"""Pruning with a token budget (issue 23, item 4): packed batches of a policy's kept examples, an LR
schedule that follows epoch progress, and the clipped InfoBatch prune ratio."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from packwise.samplers import PackedBatchSampler, PackedPruningSampler, ProgressSchedule, PruningSampler
from packwise.selection import InfoBatch

from conftest import load_texts


def _lengths() -> np.ndarray:
    """Byte lengths of 200 real alpaca texts, capped at 512."""
    return np.minimum([len(t.encode("utf-8")) for t in load_texts("alpaca")[:200]], 512).astype(np.int64)


def _losses(n: int) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(0).random(n), dtype=torch.float32)


def test_budgeted_pruning_sampler_packs_the_kept_ids_as_packed_batch_sampler_does():
    lengths = _lengths()
    policy = InfoBatch(200, num_epochs=4, prune_ratio=0.5, seed=0)
    s = PruningSampler(policy, lengths=lengths, max_tokens=2048, seed=3, num_replicas=1, rank=0)
    assert isinstance(s, PackedPruningSampler) and s.policy is policy
    s.set_epoch(0)
    full = PackedBatchSampler(lengths, 2048, seed=3, num_replicas=1, rank=0)
    assert list(s) == list(full)  # nothing seen yet: the whole dataset, packed the same way
    policy.update(np.arange(200), _losses(200))
    s.set_epoch(1)
    kept = policy.indices_for_epoch(1)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == kept.tolist()
    assert len(s) == len(batches) < len(full)
    assert max(int(lengths[b].sum()) for b in batches) <= 2048


def test_budgeted_pruning_sampler_deals_equal_counts_and_resumes():
    lengths = _lengths()
    policy = InfoBatch(200, num_epochs=4, prune_ratio=0.5, seed=0)
    policy.update(np.arange(200), _losses(200))
    ranks = [PruningSampler(policy, lengths=lengths, max_tokens=1024, seed=1, num_replicas=3, rank=r) for r in range(3)]
    for r in ranks:
        r.set_epoch(1)
    dealt = [list(r) for r in ranks]
    assert len({len(d) for d in dealt}) == 1
    assert sorted(i for d in dealt for b in d for i in b) == policy.indices_for_epoch(1).tolist()
    it = iter(ranks[0])
    next(it), next(it)
    state = ranks[0].state_dict()
    again = PruningSampler(policy, lengths=lengths, max_tokens=1024, seed=1, num_replicas=3, rank=0)
    again.load_state_dict(state)
    assert list(again) == dealt[0][2:]


def test_budgeted_pruning_sampler_errors_name_the_fix():
    policy = InfoBatch(4, num_epochs=2)
    with pytest.raises(ValueError) as e:
        PruningSampler(policy, max_tokens=16)
    assert str(e.value) == "max_tokens needs lengths=<tokens per example> (an array, or a column name with dataset=)"
    with pytest.raises(ValueError) as e:
        PruningSampler(policy, lengths=np.array([1, 2, 3]), max_tokens=16)
    assert str(e.value) == (
        "lengths has 3 entries but the policy covers 4 examples; give one length per example of the policy's dataset"
    )
    with pytest.raises(ValueError) as e:
        PruningSampler(policy, lengths=np.array([1, 2, 3, 4]))
    assert str(e.value) == "lengths is used with max_tokens; pass max_tokens=<tokens per batch> too, or drop lengths"


def test_prune_ratio_above_0_9_is_clipped_with_a_warning():
    with pytest.warns(UserWarning) as w:
        ib = InfoBatch(100, num_epochs=4, prune_ratio=0.95)
    assert str(w[0].message) == (
        "prune_ratio[0]=0.95 leaves fewer than 10% of the candidates and weights each kept loss by 20x; clipped to "
        "0.9 (weights up to 10x) as the InfoBatch reference does"
    )
    assert ib.prune_ratio == (0.9,)
    ib.update(np.arange(100), _losses(100))
    kept = ib.indices_for_epoch(1)
    assert float(ib.weights_for(kept).max()) <= 10.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert InfoBatch(100, num_epochs=4, prune_ratio=0.9).prune_ratio == (0.9,)


def _train(sampler, policy, schedule_fn, epochs):
    """A loop like the Trainer's: set_epoch, then one optimizer + scheduler step per batch; the LR of each step."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule_fn)
    used, starts = [], []
    for e in range(epochs):
        sampler.set_epoch(e)
        starts.append(len(used))
        for batch in sampler:
            used.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
            policy.update(np.asarray(batch), _losses(len(batch)))
    return used, starts, opt.param_groups[0]["lr"]


def test_progress_schedule_ends_on_time_when_pruning_changes_the_epoch_length():
    lengths = _lengths()
    policy = InfoBatch(200, num_epochs=4, prune_ratio=0.7, seed=0)
    sampler = PruningSampler(policy, lengths=lengths, max_tokens=1024, seed=0, num_replicas=1, rank=0)
    schedule = ProgressSchedule(sampler, total_epochs=4, final=0.0)
    used, starts, last = _train(sampler, policy, schedule, 4)
    cosine = [0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert [used[s] for s in starts] == pytest.approx(cosine, abs=1e-12)  # each epoch starts where its share says
    assert last == pytest.approx(0.0, abs=1e-12)  # and the run ends at the floor
    assert used == sorted(used, reverse=True)
