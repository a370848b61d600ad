"""MixtureSampler under a token-budget schedule: each window is planned with the schedule's
max_tokens at its first global batch, the epoch shrinks as the budget grows, proportions hold
across a change, resume mid-ramp is exact, and 2 gloo ranks with DataLoader workers keep equal
counts through a change."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch.multiprocessing as mp
from test_budget_schedule import _drive, _free_port, assert_resume_mid_ramp_is_exact, ddp_budget_run, replay_budget_run
from test_mixture import NAMES, TARGET, _worst_deviation

from packwise.samplers import MixtureSampler
from packwise.selection import AdaptiveBudget, RampBudget


def _toy(n: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return rng.integers(5, 250, n), rng.integers(0, 3, n)


def _mixture(lengths, groups, **kw) -> MixtureSampler:
    kw = {"window": 4, "seed": 2, "num_replicas": 1, "rank": 0, **kw}
    return MixtureSampler(lengths, groups, [0.5, 0.3, 0.2], **kw)


def test_each_window_is_planned_with_the_budget_at_its_first_batch():
    lengths, groups = _toy()
    ramp = RampBudget(256, 1024, over_tokens=60_000, multiple=128, lag_batches=2)
    sampler = _mixture(lengths, groups, budget=ramp, window=5)
    plain = list(_mixture(lengths, groups, max_tokens=256, window=5))
    (batches,) = _drive([sampler], [ramp], lengths)
    assert len(ramp.changes) == 7 and len(batches) == len(sampler) < len(plain)
    first = -(-ramp.changes[1].position // 5) * 5  # the first window start at or after the first change
    assert ramp.changes[1].position % 5 and batches[:first] == plain[:first]  # the prefix is untouched
    for start in range(0, len(batches), 5):
        window = batches[start : start + 5]
        assert max(int(lengths[b].sum()) for b in window) <= ramp.at(start).max_tokens
    assert max(int(lengths[b].sum()) for b in batches) > 256
    tokens = sum(int(lengths[b].sum()) for b in batches)
    assert abs(tokens - sampler.tokens_per_epoch) < 250  # the epoch's tokens (to one example), in fewer batches


def test_a_budget_that_never_changes_gives_the_plain_plan():
    lengths, groups = _toy()
    ramp = RampBudget(512, 512, over_tokens=1, lag_batches=0)
    scheduled = _mixture(lengths, groups, budget=ramp)
    assert _drive([scheduled], [ramp], lengths) == [list(_mixture(lengths, groups, max_tokens=512))]


def test_token_proportions_stay_within_half_a_percent_over_every_1000_batches_across_changes(real_lengths):
    lengths = np.concatenate([real_lengths[n] for n in NAMES]).astype(np.int64)
    groups = np.repeat(np.arange(len(NAMES)), [real_lengths[n].shape[0] for n in NAMES])
    ramp = RampBudget(1024, 2048, over_tokens=2_000_000, multiple=512, lag_batches=8)
    sampler = MixtureSampler(lengths, groups, TARGET, names=list(NAMES), oversize="truncate", tokens_per_epoch=4_000_000,
                             seed=3, num_replicas=1, rank=0, budget=ramp)
    clipped = np.minimum(lengths, 1024)  # as packed: truncated at the first budget
    (batches,) = _drive([sampler], [ramp], clipped)
    assert [c.max_tokens for c in ramp.changes] == [1024, 1536, 2048] and len(batches) == len(sampler) > 2000
    tokens = np.zeros((len(batches), len(NAMES)))
    for k, b in enumerate(batches):
        np.add.at(tokens[k], groups[b], clipped[b])
    target = np.tile([TARGET[n] for n in NAMES], (len(batches), 1))
    assert _worst_deviation(tokens, target) <= 0.005


def test_resume_mid_ramp_in_a_fresh_sampler_is_exact():
    lengths, groups = _toy()

    def fresh():
        ramp = RampBudget(512, 2048, over_tokens=60_000, multiple=128, world_size=2, lag_batches=2)
        return ramp, [_mixture(lengths, groups, num_replicas=2, rank=r, budget=ramp) for r in range(2)]

    assert_resume_mid_ramp_is_exact(fresh, lengths, 12)


def test_a_change_on_a_window_already_planned_is_refused_with_the_fix():
    lengths, groups = _toy()
    ada = AdaptiveBudget(256, maximum=1024, multiple=128, lag_batches=1)  # a loader 5 batches ahead
    it = iter(_mixture(lengths, groups, budget=ada))
    handed = [next(it) for _ in range(5)]  # windows 0 and 1 planned
    ada.step(int(lengths[handed[0]].sum()), noise=1000.0)  # takes effect at batch 2: window 1
    with pytest.raises(ValueError, match=(
        r"the budget schedule changed max_tokens at global batch 2 \(window 1 of epoch 0\), but this sampler had "
        r"already planned window 1; raise the schedule's lag_batches to at least the DataLoader's prefetch depth "
        r"\(num_workers \* prefetch_factor, at least 1\)"
    )):
        next(it)
    with pytest.raises(ValueError, match=r"max_tokens=300 differs from the budget schedule's first max_tokens=256"):
        _mixture(lengths, groups, max_tokens=300, budget=RampBudget(256, 512, over_tokens=10))


def _ddp_worker(rank: int, world: int, port: int, out_path: str) -> None:
    lengths, groups = _toy(600)
    build = lambda sch: MixtureSampler(lengths, groups, [0.5, 0.3, 0.2], window=4, seed=2, budget=sch)  # noqa: E731
    ddp_budget_run(rank, world, port, out_path, lengths, build, 300.0)


def test_two_gloo_ranks_with_loader_workers_keep_equal_counts_through_a_budget_change(tmp_path):
    out = tmp_path / "ddp.json"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    rank0, rank1 = json.loads(out.read_text())
    lengths, groups = _toy(600)
    for a, b in zip(rank0, rank1):
        assert a["changes"] == b["changes"] and len(a["changes"]) >= 3  # the same decisions, several changes
        assert len(a["batches"]) == len(b["batches"]) == a["len"] == b["len"]
    # replaying the same decisions in one process gives the very same batches on each rank
    build = lambda sch, r: MixtureSampler(lengths, groups, [0.5, 0.3, 0.2], window=4, seed=2, num_replicas=2, rank=r, budget=sch)  # noqa: E731
    replay, its = replay_budget_run(build, lengths, len(rank0[0]["batches"]), 300.0)
    assert replay == [rank0[0]["batches"], rank1[0]["batches"]]
    assert all(next(it, None) is None for it in its)
