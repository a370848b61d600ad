"""MixtureSampler under real gloo ranks with DataLoader workers: every rank plans the same
policy-driven mixture with one collective per update interval, and a run saved on 3 ranks
finishes its epoch on 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import end_ddp_worker, free_port as _free_port
from torch.utils.data import DataLoader

from packwise.samplers import MixtureDataset, MixtureSampler

NAMES = ["c4", "alpaca", "glaive", "ag_news"]
POLICY = {"tokens_per_epoch": 500_000, "update_every": 8, "batches_per_step": 2, "window": 16, "seed": 4, "attention_weight": 1 / 2048}
ELASTIC = {"weights": [(0, [0.7, 0.1, 0.1, 0.1]), (20, [0.1, 0.3, 0.3, 0.3])], "tokens_per_epoch": 600_000, "batches_per_step": 6}
STOP = 9  # steps the 3-rank run trains before it is saved


def _inputs(data_path: str):
    data = np.load(data_path)
    return data["lengths"], data["groups"]


def _sampler(lengths, groups, **kw) -> MixtureSampler:
    return MixtureSampler(lengths, groups, kw.pop("weights", None), 2048, names=NAMES, oversize="truncate", **kw)


def _dataset(groups) -> MixtureDataset:
    """One list of rows per source, so a batch shows which source row the sampler's index reached."""
    return MixtureDataset({n: [{"src": g, "row": r} for r in range(int((groups == g).sum()))] for g, n in enumerate(NAMES)})


def _collate(rows):
    return [(r["src"], r["row"]) for r in rows]


def _loader(sampler, groups):
    return DataLoader(_dataset(groups), batch_sampler=sampler, collate_fn=_collate, num_workers=2, multiprocessing_context="fork")


def _worker(rank: int, world: int, port: int, phase: str, data_path: str, out_dir: str) -> None:
    import torch.distributed as dist

    from test_mixture import LagPolicy, fake_loss

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    lengths, groups = _inputs(data_path)
    starts = np.concatenate(([0], np.cumsum(np.bincount(groups))))
    if phase == "policy":
        sampler = _sampler(lengths, groups, policy=LagPolicy(), **POLICY)  # world and rank from torch.distributed
    else:
        sampler = _sampler(lengths, groups, **ELASTIC)
        if phase == "second":
            sampler.load_state_dict(json.loads(Path(out_dir, "state.json").read_text()))
    loader = _loader(sampler, groups)
    seen, collectives, step = [], 0, sampler._resume_at
    sums = torch.zeros(2, len(NAMES), dtype=torch.float64)
    interval = sampler.interval_of(sampler.global_step(step))
    for batch in loader:
        seen.append(batch)
        step += 1
        signal = torch.ones(1)
        dist.all_reduce(signal)  # the training step's gradient sync: unequal counts would hang here
        if phase == "policy":
            src = np.array([g for g, _ in batch], np.int64)
            rows = starts[src] + np.array([r for _, r in batch], np.int64) if batch else np.zeros(0, np.int64)
            np.add.at(sums[0].numpy(), src, fake_loss(lengths[rows]))
            np.add.at(sums[1].numpy(), src, lengths[rows])
            if sampler.interval_of(sampler.global_step(step)) != interval:  # one all-reduce per interval, then every rank observes
                dist.all_reduce(sums)
                collectives += 1
                sampler.policy.observe(interval, sums[0].numpy().copy(), sums[1].numpy().copy())
                sums.zero_()
                interval = sampler.interval_of(sampler.global_step(step))
        if phase == "first" and step == STOP:
            if rank == 0:
                Path(out_dir, "state.json").write_text(json.dumps(sampler.state_dict()))
            break
    gathered = [None] * world
    dist.all_gather_object(gathered, {"seen": seen, "len": len(sampler), "collectives": collectives})
    if rank == 0:
        Path(out_dir, f"{phase}.json").write_text(json.dumps(gathered))
    end_ddp_worker()


@pytest.fixture(scope="module")
def mix_file(real_lengths, tmp_path_factory):
    lengths = np.concatenate([real_lengths[n] for n in NAMES]).astype(np.int64)
    groups = np.repeat(np.arange(len(NAMES)), [real_lengths[n].shape[0] for n in NAMES])
    path = tmp_path_factory.mktemp("mix") / "mix.npz"
    np.savez(path, lengths=lengths, groups=groups)
    return str(path), lengths, groups


def _spawn(world: int, phase: str, data_path: str, out_dir: Path) -> list[dict]:
    mp.spawn(_worker, args=(world, _free_port(), phase, data_path, str(out_dir)), nprocs=world, join=True)
    return json.loads((out_dir / f"{phase}.json").read_text())


def _as_rows(batches, groups):
    starts = np.concatenate(([0], np.cumsum(np.bincount(groups))))
    return [[[int(groups[i]), int(i - starts[groups[i]])] for i in b] for b in batches]


def test_gloo_ranks_plan_the_same_policy_mixture_with_one_collective_per_interval(mix_file, tmp_path):
    from test_mixture import LagPolicy, train_with_policy

    data_path, lengths, groups = mix_file
    got = _spawn(2, "policy", data_path, tmp_path)
    local = [_sampler(lengths, groups, policy=LagPolicy(), num_replicas=2, rank=r, **POLICY) for r in (0, 1)]
    expected, _ = train_with_policy(local, lengths)  # the same loop, both ranks in lockstep in this process
    assert [g["len"] for g in got] == [len(g["seen"]) for g in got] == [len(expected[0])] * 2
    assert [g["seen"] for g in got] == [_as_rows(e, groups) for e in expected]
    steps = len(expected[0])
    assert [g["collectives"] for g in got] == [steps // POLICY["update_every"]] * 2
    plain = _sampler(lengths, groups, num_replicas=2, rank=0, **POLICY).rank_batches()
    assert _as_rows(expected[0], groups) != _as_rows(plain, groups)  # the observed losses moved the mixture


@pytest.mark.parametrize("world", [2, 4])
def test_gloo_run_saved_on_three_ranks_finishes_on_two_and_on_four(mix_file, tmp_path, world):
    data_path, lengths, groups = mix_file
    first = _spawn(3, "first", data_path, tmp_path)
    second = _spawn(world, "second", data_path, tmp_path)
    canonical = _as_rows(_sampler(lengths, groups, num_replicas=1, rank=0, **ELASTIC).global_batches(), groups)
    assert [len(g["seen"]) for g in first] == [STOP] * 3
    for t in range(STOP):
        assert sorted(g["seen"][t] for g in first) == sorted(canonical[3 * t : 3 * t + 3])
    rest = canonical[3 * STOP :]
    assert [g["len"] for g in second] == [len(g["seen"]) for g in second] == [-(-len(rest) // world)] * world
    for t in range(len(second[0]["seen"])):
        group = rest[world * t : world * t + world]
        assert sorted(g["seen"][t] for g in second) == sorted(group + [[]] * (world - len(group)))
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["global_batches"] == 3 * STOP and len(json.dumps(state)) <= 4096
