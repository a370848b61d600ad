"""MixtureSampler under a token-budget schedule: each window is planned with the schedule's
max_tokens at its first global batch, the epoch shrinks as the budget grows, proportions hold
across a change, resume mid-ramp is exact, and 2 gloo ranks with DataLoader workers keep equal
counts through a change."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import end_ddp_worker
from test_budget_schedule import _drive, _free_port, _Ids
from test_mixture import NAMES, TARGET, _worst_deviation
from torch.utils.data import DataLoader

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

    ramp, samplers = fresh()
    whole = [_drive(samplers, [ramp], lengths)]
    for s in samplers:
        s.set_epoch(1)
    whole.append(_drive(samplers, [ramp], lengths))
    ramp, samplers = fresh()
    head = _drive(samplers, [ramp], lengths, stop=12)
    saved = json.dumps({"ramp": ramp.state_dict(), "samplers": [s.state_at(12) for s in samplers]})
    assert ramp.changes[-1].position > ramp.position == 24  # a change decided and still pending
    ramp, samplers = fresh()  # a new process: the schedule first, then the samplers
    state = json.loads(saved)
    with pytest.raises(ValueError, match=r"load the schedule's state_dict \(saved with this one\) before the sampler's"):
        samplers[0].load_state_dict(state["samplers"][0] | {"budget_base": 3})
    ramp.load_state_dict(state["ramp"])
    for s, st in zip(samplers, state["samplers"]):
        s.load_state_dict(st)
    tail = _drive(samplers, [ramp], lengths)
    assert [h + t for h, t in zip(head, tail)] == whole[0]
    for s in samplers:
        s.set_epoch(1)
    assert _drive(samplers, [ramp], lengths) == whole[1]  # the next epoch starts where this one ended


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
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    lengths, groups = _toy(600)
    # 2 workers x prefetch 2 = up to 4 batches ahead of the loop: the lag covers them
    schedule = AdaptiveBudget(512, maximum=2048, multiple=128, world_size=world, lag_batches=4)
    sampler = MixtureSampler(lengths, groups, [0.5, 0.3, 0.2], window=4, seed=2, budget=schedule)  # rank from dist
    loader = DataLoader(_Ids(), batch_sampler=sampler, collate_fn=lambda ids: ids, num_workers=2,
                        prefetch_factor=2, multiprocessing_context="fork")
    seen = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = []
        for ids in loader:
            tokens = torch.tensor([float(lengths[ids].sum())], dtype=torch.float64)
            dist.all_reduce(tokens)  # a collective every step: unequal counts would hang here
            schedule.step(int(tokens.item()), noise=300.0 * (1 + len(batches)))  # the same on every rank
            batches.append(ids)
        seen.append({"batches": batches, "changes": [list(c) for c in schedule.changes], "len": len(sampler)})
    gathered = [None] * world
    dist.all_gather_object(gathered, seen)
    if rank == 0:
        Path(out_path).write_text(json.dumps(gathered))
    end_ddp_worker()


def test_two_gloo_ranks_with_loader_workers_keep_equal_counts_through_a_budget_change(tmp_path):
    out = tmp_path / "ddp.json"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    rank0, rank1 = json.loads(out.read_text())
    lengths, groups = _toy(600)
    for a, b in zip(rank0, rank1):
        assert a["changes"] == b["changes"] and len(a["changes"]) >= 3  # the same decisions, several changes
        assert len(a["batches"]) == len(b["batches"]) == a["len"] == b["len"]
    # replaying the same decisions in one process gives the very same batches on each rank
    schedule = AdaptiveBudget(512, maximum=2048, multiple=128, world_size=2, lag_batches=4)
    samplers = [MixtureSampler(lengths, groups, [0.5, 0.3, 0.2], window=4, seed=2, num_replicas=2, rank=r, budget=schedule)
                for r in range(2)]
    its = [iter(s) for s in samplers]
    replay = [[], []]
    for step in range(len(rank0[0]["batches"])):
        pair = [next(it) for it in its]
        schedule.step(sum(int(lengths[p].sum()) for p in pair), noise=300.0 * (1 + step))
        for r in (0, 1):
            replay[r].append(pair[r])
    assert replay == [rank0[0]["batches"], rank1[0]["batches"]]
    assert all(next(it, None) is None for it in its)
