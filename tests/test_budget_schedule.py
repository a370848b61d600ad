"""Token-budget schedules: exact ramp and adaptive decisions (lag, step boundaries, accumulation),
the LR / EMA rules, samplers that re-plan the rest of the epoch at a change, exact resume
mid-ramp in a fresh sampler, and 2 gloo ranks that keep equal batch counts through a change."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import end_ddp_worker, free_port as _free_port
from torch.utils.data import DataLoader

from packwise.samplers import BucketBatchSampler, PackedBatchSampler
from packwise.selection import AdaptiveBudget, BudgetChange, BudgetScaledLR, RampBudget, ema_momentum, lr_factor

SAMPLERS = {"packed": PackedBatchSampler, "bucket": BucketBatchSampler}


def _lengths(n: int = 600) -> np.ndarray:
    return np.random.default_rng(0).integers(5, 200, n)


# --- the schedules alone ---------------------------------------------------------------------------


def test_ramp_is_linear_in_tokens_seen_rounded_to_the_multiple():
    ramp = RampBudget(1000, 3000, over_tokens=10_000, multiple=100, lag_batches=0)
    budgets = []
    for _ in range(8):
        ramp.step(ramp.budget)
        budgets.append(ramp.budget)
    # seen 1000 -> 1200, 2200 -> 1400, 3600 -> 1700, 5300 -> 2100 (2060), 7400 -> 2500 (2480), 9900 -> 3000 (2980), ...
    assert budgets == [1200, 1400, 1700, 2100, 2500, 3000, 3000, 3000]
    assert ramp.changes[0] == BudgetChange(0, 1000, 1) and len(ramp.changes) == 7


def test_changes_wait_for_the_lag_and_land_on_step_boundaries():
    ada = AdaptiveBudget(256, maximum=4096, multiple=64, world_size=2, lag_batches=3)
    assert ada.step(512, noise=1000.0) == BudgetChange(position=8, max_tokens=512, accumulation=1)
    # position 2 after one step of 2 ranks; lag 3 per rank = 6 global -> 8 (a step boundary)
    assert (ada.position, ada.max_tokens) == (2, 128)
    for _ in range(2):
        assert ada.step(512, noise=900.0) is None  # lower: budgets only grow
    assert ada.max_tokens == 128  # position 6: not yet
    ada.step(512, noise=1000.0)
    assert (ada.position, ada.max_tokens, ada.budget) == (8, 512, 1024)


def test_a_higher_estimate_while_a_change_is_pending_schedules_the_next_one_after_it():
    ada = AdaptiveBudget(100, maximum=10_000, lag_batches=4)
    ada.step(100, noise=300.0)  # -> position 5
    ada.step(100, noise=500.0)  # -> position 6: the pending change at 5 is within reach, kept
    ada.step(100, noise=400.0)
    assert ada.changes == (BudgetChange(0, 100, 1), BudgetChange(5, 300, 1), BudgetChange(6, 500, 1))
    lagless = AdaptiveBudget(100, maximum=10_000, lag_batches=0, warmup_steps=1)
    assert lagless.step(100, noise=300.0) is None  # warm-up: the first estimates are not trusted
    lagless.step(100, noise=300.0)
    assert lagless.changes[-1] == BudgetChange(2, 300, 1)


def test_a_device_cap_raises_accumulation_instead_of_the_row():
    ada = AdaptiveBudget(1024, maximum=1 << 20, multiple=128, max_row_tokens=1024, world_size=2, lag_batches=0)
    ada.step(2048, noise=5000.0)  # 2500 per rank -> 3 micro-batches of 896 (833 to the nearest 128)
    assert (ada.max_tokens, ada.accumulation, ada.budget) == (896, 3, 5376)
    ada.step(5376)  # one optimizer step = 3 micro-batches on each of 2 ranks
    assert ada.position == 2 + 6


def test_resume_mid_ramp_continues_the_same_schedule():
    def run(ramp, steps):
        out = []
        for k in range(steps):
            ramp.step(ramp.budget + k)
            out.append((ramp.position, ramp.budget))
        return out

    whole = RampBudget(512, 4096, over_tokens=20_000, multiple=64, lag_batches=2)
    expected = run(whole, 12)
    first = RampBudget(512, 4096, over_tokens=20_000, multiple=64, lag_batches=2)
    head = run(first, 5)
    second = RampBudget(512, 4096, over_tokens=20_000, multiple=64, lag_batches=2)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert head + [(p, b) for p, b in _continue(second, 5, 12)] == expected
    assert second.changes == whole.changes


def _continue(ramp, start, stop):
    for k in range(start, stop):
        ramp.step(ramp.budget + k)
        yield ramp.position, ramp.budget


def test_bad_schedules_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"end=100 must be >= start=200: a ramp only grows"):
        RampBudget(200, 100, over_tokens=10)
    with pytest.raises(ValueError, match=r"max_row_tokens=100 must be a multiple of multiple=64"):
        AdaptiveBudget(64, maximum=128, multiple=64, max_row_tokens=100)
    with pytest.raises(ValueError, match=r"max_tokens=300 differs from the budget schedule's first max_tokens=256"):
        PackedBatchSampler(_lengths(), 300, budget=RampBudget(256, 512, over_tokens=10), num_replicas=1, rank=0)


# --- learning rate and EMA ---------------------------------------------------------------------------


def test_lr_follows_the_budget_by_the_rule_over_the_base_schedule():
    w = torch.nn.Parameter(torch.zeros(1))
    for rule, expect in (("linear", 4.0), ("sqrt", 2.0), ("none", 1.0)):
        opt = torch.optim.Adam([w], lr=1e-3)
        ramp = RampBudget(100, 400, over_tokens=300, lag_batches=0)
        base = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
        lr = BudgetScaledLR(base, ramp, rule=rule)
        for _ in range(3):
            opt.step()
            ramp.step(ramp.budget)
            lr.step()
        assert ramp.budget == 400
        assert lr.get_last_lr() == [1e-3 / 4 * expect]
    assert (lr_factor("sqrt", 9.0), ema_momentum(0.5, 3.0)) == (3.0, 0.125)
    with pytest.raises(ValueError, match=r"rule must be one of \('linear', 'sqrt', 'none'\) \(linear: SGD, sqrt: Adam\), got 'adam'"):
        lr_factor("adam", 2.0)


# --- samplers ----------------------------------------------------------------------------------------


def _drive(samplers, schedules, lengths, record=None, stop=None):
    """Iterate ``samplers`` (one per rank) in lock step, stepping every rank's schedule with the
    step's global tokens, as a DDP loop does.  Returns the batches per rank."""
    its = [iter(s) for s in samplers]
    out = [[] for _ in samplers]
    step = 0
    while stop is None or step < stop:
        batches = [next(it, None) for it in its]
        if batches[0] is None:
            assert all(b is None for b in batches)
            break
        tokens = sum(int(lengths[b].sum()) for b in batches)
        for schedule in schedules:
            schedule.step(tokens)
        for r, b in enumerate(batches):
            out[r].append(b)
        step += 1
    return out


@pytest.mark.parametrize("kind", SAMPLERS)
def test_a_schedule_that_never_changes_gives_the_plain_plan(kind):
    lengths = _lengths()
    ramp = RampBudget(512, 512, over_tokens=1, lag_batches=0)
    plain = SAMPLERS[kind](lengths, 512, seed=3, num_replicas=1, rank=0)
    scheduled = SAMPLERS[kind](lengths, seed=3, num_replicas=1, rank=0, budget=ramp)
    assert _drive([scheduled], [ramp], lengths) == [list(plain)]


@pytest.mark.parametrize("kind", SAMPLERS)
def test_the_rest_of_the_epoch_is_replanned_at_each_change(kind):
    lengths = _lengths()
    ramp = RampBudget(256, 1024, over_tokens=30_000, multiple=128, lag_batches=3)
    sampler = SAMPLERS[kind](lengths, seed=1, num_replicas=1, rank=0, budget=ramp)
    plain = SAMPLERS[kind](lengths, 256, seed=1, num_replicas=1, rank=0)
    (batches,) = _drive([sampler], [ramp], lengths)
    assert sorted(i for b in batches for i in b) == list(range(600))  # each example once
    first_change = ramp.changes[1].position
    assert batches[:first_change] == list(plain)[:first_change]  # the prefix is untouched
    sizes = [int(lengths[b].max() * len(b)) if kind == "bucket" else int(lengths[b].sum()) for b in batches]
    for change, nxt in zip(ramp.changes, ramp.changes[1:] + (BudgetChange(len(batches), 0, 1),)):
        assert max(sizes[change.position : nxt.position]) <= change.max_tokens
    assert max(sizes) > 256 and len(batches) == len(sampler) < len(plain)
    assert len(ramp.changes) == 7


def test_a_change_on_a_batch_already_handed_out_is_refused_with_the_fix():
    lengths = _lengths()
    ada = AdaptiveBudget(256, maximum=1024, multiple=128, lag_batches=1)  # a loader 3 batches ahead
    it = iter(PackedBatchSampler(lengths, seed=0, num_replicas=1, rank=0, budget=ada))
    handed = [next(it) for _ in range(3)]
    ada.step(int(lengths[handed[0]].sum()), noise=1000.0)  # takes effect at batch 2, handed out already
    with pytest.raises(ValueError, match=(
        r"the budget schedule changed max_tokens at global batch 2 of epoch 0, but this sampler had already handed "
        r"out 3 of the epoch's batches; raise the schedule's lag_batches to at least the DataLoader's prefetch "
        r"depth \(num_workers \* prefetch_factor, at least 1\)"
    )):
        next(it)


@pytest.mark.parametrize("kind", SAMPLERS)
def test_resume_mid_ramp_in_a_fresh_sampler_is_exact(kind):
    lengths = _lengths()

    def fresh():
        ramp = RampBudget(512, 2048, over_tokens=30_000, multiple=128, world_size=2, lag_batches=2)
        return ramp, [SAMPLERS[kind](lengths, seed=4, num_replicas=2, rank=r, budget=ramp) for r in range(2)]

    assert_resume_mid_ramp_is_exact(fresh, lengths, 14)


def assert_resume_mid_ramp_is_exact(fresh, lengths: np.ndarray, stop: int) -> None:
    """``fresh()`` -> (ramp, samplers of 2 ranks): a run saved after ``stop`` steps, with a change
    pending, resumes in a new process (schedule first, then samplers) to the very same batches,
    through the rest of the epoch and the next one."""
    ramp, samplers = fresh()
    whole = [_drive(samplers, [ramp], lengths)]
    for s in samplers:
        s.set_epoch(1)
    whole.append(_drive(samplers, [ramp], lengths))
    ramp, samplers = fresh()
    head = _drive(samplers, [ramp], lengths, stop=stop)
    saved = json.dumps({"ramp": ramp.state_dict(), "samplers": [s.state_at(stop) for s in samplers]})
    assert ramp.changes[-1].position > ramp.position == 2 * stop  # a change decided and still pending
    ramp, samplers = fresh()  # a new process: the schedule first, then the samplers
    state = json.loads(saved)
    with pytest.raises(ValueError, match=r"load the schedule's state_dict \(saved with this one\) before the sampler's"):
        samplers[0].load_state_dict({**state["samplers"][0], "budget_base": 3})
    ramp.load_state_dict(state["ramp"])
    for s, st in zip(samplers, state["samplers"]):
        s.load_state_dict(st)
    tail = _drive(samplers, [ramp], lengths)
    assert [h + t for h, t in zip(head, tail)] == whole[0]
    for s in samplers:
        s.set_epoch(1)
    assert _drive(samplers, [ramp], lengths) == whole[1]  # the next epoch starts where this one ended


# --- 2 gloo ranks ------------------------------------------------------------------------------------


class _Ids(torch.utils.data.Dataset):
    def __len__(self):
        return 600

    def __getitem__(self, i):
        return i


def ddp_budget_run(rank: int, world: int, port: int, out_path: str, lengths: np.ndarray, build, noise: float) -> None:
    """One gloo rank: ``build(schedule)`` makes the sampler (rank and world from torch.distributed),
    2 DataLoader workers run ahead of the loop, and every step all-reduces its tokens and steps an
    adaptive schedule with a noise scale that grows by ``noise`` a step.  Rank 0 writes both ranks'
    batches, changes and ``len`` per epoch to ``out_path``."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    # 2 workers x prefetch 2 = up to 4 batches ahead of the loop: the lag covers them
    schedule = AdaptiveBudget(512, maximum=2048, k=1.0, multiple=128, world_size=world, lag_batches=4)
    sampler = build(schedule)
    loader = DataLoader(_Ids(), batch_sampler=sampler, collate_fn=lambda ids: ids, num_workers=2,
                        prefetch_factor=2, multiprocessing_context="fork")
    seen = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = []
        for ids in loader:
            tokens = torch.tensor([float(lengths[ids].sum())], dtype=torch.float64)
            dist.all_reduce(tokens)  # a collective every step: unequal counts would hang here
            schedule.step(int(tokens.item()), noise=noise * (1 + len(batches)))  # grows, the same on every rank
            batches.append(ids)
        seen.append({"batches": batches, "changes": [list(c) for c in schedule.changes], "len": len(sampler)})
    gathered = [None] * world
    dist.all_gather_object(gathered, seen)
    if rank == 0:
        Path(out_path).write_text(json.dumps(gathered))
    end_ddp_worker()


def replay_budget_run(build, lengths: np.ndarray, steps: int, noise: float) -> tuple[list, list]:
    """The first epoch of :func:`ddp_budget_run` replayed in one process (``build(schedule, rank)``
    makes rank's sampler for 2 ranks): the batches each rank gets, and the iterators left over."""
    schedule = AdaptiveBudget(512, maximum=2048, k=1.0, multiple=128, world_size=2, lag_batches=4)
    its = [iter(build(schedule, r)) for r in range(2)]
    replay = [[], []]
    for step in range(steps):
        pair = [next(it) for it in its]
        schedule.step(sum(int(lengths[p].sum()) for p in pair), noise=noise * (1 + step))
        for r in (0, 1):
            replay[r].append(pair[r])
    return replay, its


def _ddp_worker(rank: int, world: int, port: int, kind: str, out_path: str) -> None:
    lengths = _lengths()
    ddp_budget_run(rank, world, port, out_path, lengths, lambda sch: SAMPLERS[kind](lengths, seed=2, budget=sch), 200.0)


@pytest.mark.parametrize("kind", SAMPLERS)
def test_two_gloo_ranks_keep_equal_counts_through_a_budget_change(kind, tmp_path):
    out = tmp_path / "ddp.json"
    mp.spawn(_ddp_worker, args=(2, _free_port(), kind, str(out)), nprocs=2, join=True)
    rank0, rank1 = json.loads(out.read_text())
    lengths = _lengths()
    for epoch in (0, 1):
        a, b = rank0[epoch], rank1[epoch]
        assert a["changes"] == b["changes"] and len(a["changes"]) >= 3  # the same decisions, several changes
        assert len(a["batches"]) == len(b["batches"]) == a["len"] == b["len"]
        ids = sorted(i for batch in a["batches"] + b["batches"] for i in batch)
        assert ids == list(range(600))  # every example once per epoch, across both ranks
    # replaying the same decisions in one process gives the very same batches on each rank
    build = lambda sch, r: SAMPLERS[kind](lengths, seed=2, num_replicas=2, rank=r, budget=sch)  # noqa: E731
    replay, _ = replay_budget_run(build, lengths, len(rank0[0]["batches"]), 200.0)
    assert replay == [rank0[0]["batches"], rank1[0]["batches"]]
