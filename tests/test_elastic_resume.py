"""Elastic resume: the epoch's canonical batch order does not depend on the world size, the state is
one global cursor (the same on every rank, a few hundred bytes), and a state saved by 3 gloo ranks
resumes on 2 and on 4 ranks with every example of the epoch seen exactly once, equal batch counts."""

from __future__ import annotations

import json
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import end_ddp_worker, free_port as _free_port

from packwise.samplers import BucketBatchSampler, ClusterBatchSampler, PackedBatchSampler, PruningSampler, load_state, save_state
from packwise.selection import InfoBatch

KINDS = ("packed", "bucket", "cluster", "pruned", "pruned_packed")
PER_INDEX_BATCH = 8  # the per-index PruningSampler's ids per step
EPOCH = 1  # InfoBatch prunes from epoch 1 on (epoch 0 scores everything)
STEPS = 4  # steps the 3 ranks consume before saving


def _losses(ids: np.ndarray) -> torch.Tensor:
    """A deterministic per-example loss, so every process scores the same."""
    return torch.from_numpy(((ids * 7919) % 101).astype(np.float32) / 10.0)


def build(kind: str, lengths: np.ndarray, world: int, rank: int):
    """``(sampler, policy)`` of one kind for one rank; policies are fresh (epoch 0 unscored)."""
    common = dict(seed=3, num_replicas=world, rank=rank)
    if kind == "packed":
        return PackedBatchSampler(lengths, max_tokens=1024, attention_weight=1 / 1024, **common), None
    if kind == "bucket":
        return BucketBatchSampler(lengths, max_tokens=2048, buckets=8, **common), None
    if kind == "cluster":
        return ClusterBatchSampler(lengths % 7, 16, mode="quota", lengths=lengths, **common), None
    ib = InfoBatch(lengths.shape[0], num_epochs=4, prune_ratio=0.5, delta=0.75, seed=1)
    if kind == "pruned":
        return PruningSampler(ib, **common), ib
    return PruningSampler(ib, lengths=lengths, max_tokens=1024, **common), ib


def _steps(sampler, kind: str):
    """This rank's batches, one per step (the per-index sampler's ids cut into fixed batches)."""
    if kind != "pruned":
        return iter(sampler)
    ids = iter(sampler)
    return iter(lambda: list(islice(ids, PER_INDEX_BATCH)), [])


def score_epoch_zero(ib: InfoBatch, lengths: np.ndarray, world: int, rank: int) -> None:
    """Every rank scores its share of epoch 0 (``update`` gathers), so epoch 1 prunes."""
    ib.indices_for_epoch(0)
    ids = np.arange(lengths.shape[0], dtype=np.int64)[rank::world]
    ib.update(ids, _losses(ids))


def consume(kind, sampler, policy, limit: int | None) -> list[list[int]]:
    """Play up to ``limit`` steps (all when None), feeding losses back to the policy like training."""
    seen = []
    for batch in islice(_steps(sampler, kind), limit):
        if policy is not None:
            ids = np.asarray(batch, np.int64)
            policy.update(ids, _losses(ids))
        seen.append([int(i) for i in batch])
    return seen


def _worker(rank: int, world: int, phase: str, port: int, data_path: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    lengths = np.load(data_path)
    out = {}
    for kind in KINDS:
        sampler, policy = build(kind, lengths, world, rank)
        path = Path(out_dir, f"{kind}.npz")
        if phase == "first":
            if policy is not None:
                score_epoch_zero(policy, lengths, world, rank)
            sampler.set_epoch(EPOCH)
            seen = consume(kind, sampler, policy, STEPS)
            state = sampler.state_dict()
            states = [None] * world
            dist.all_gather_object(states, state)
            assert all(s == state for s in states), states  # one global state, whatever the rank
            if rank == 0:
                save_state(path, {"sampler": state, "policy": policy.state_dict() if policy is not None else None})
        else:
            saved = load_state(path)
            if policy is not None:
                policy.load_state_dict(saved["policy"])
            sampler.load_state_dict(saved["sampler"])
            seen = consume(kind, sampler, policy, None)
        steps = len(sampler) if kind != "pruned" else -(-len(sampler) // PER_INDEX_BATCH)
        out[kind] = {"seen": seen, "len": steps, "items": len(sampler)}
    gathered = [None] * world
    dist.all_gather_object(gathered, out)
    if rank == 0:
        Path(out_dir, f"{phase}.json").write_text(json.dumps(gathered))
    end_ddp_worker()


@pytest.fixture(scope="module")
def alpaca(real_lengths):
    return real_lengths["alpaca"]


def test_three_ranks_resume_on_two_and_on_four_each_example_once(alpaca, tmp_path):
    data_path = tmp_path / "lengths.npy"
    np.save(data_path, alpaca)
    runs = {"first": 3, "two": 2, "four": 4}
    for phase, world in runs.items():
        mp.spawn(_worker, args=(world, phase, _free_port(), str(data_path), str(tmp_path)), nprocs=world, join=True)
    results = {phase: json.loads((tmp_path / f"{phase}.json").read_text()) for phase in runs}
    for kind in KINDS:
        saved = load_state(tmp_path / f"{kind}.npz")
        state = saved["sampler"]
        assert len(json.dumps(state)) <= 4096 and "rank" not in state
        if saved["policy"] is not None:  # the epoch's kept set is part of the plan
            expected = sorted(int(i) for i in saved["policy"]["kept"])
            assert len(expected) < alpaca.shape[0]  # the epoch prunes
        else:
            expected = list(range(alpaca.shape[0]))
        head = [i for r in results["first"] for b in r[kind]["seen"] for i in b]
        assert [len(r[kind]["seen"]) for r in results["first"]] == [STEPS] * 3
        for phase in ("two", "four"):
            per_rank = [r[kind] for r in results[phase]]
            counts = [len(r["seen"]) for r in per_rank]
            assert counts == [per_rank[0]["len"]] * runs[phase] and counts[0] > 0  # equal counts, = len()
            tail = [i for r in per_rank for b in r["seen"] for i in b]
            if kind == "pruned":  # ids wrap around to fill the last step: the only repeats
                pad = per_rank[0]["items"] * runs[phase] - (len(expected) - state["cursor"])
                assert sorted(set(head + tail)) == expected and len(head) + len(tail) == len(expected) + pad
                twice = [i for i, n in Counter(head + tail).items() if n > 1]
                assert len(twice) == pad and set(twice).isdisjoint(head)  # nothing consumed comes again
            else:
                assert sorted(head + tail) == expected, (kind, phase)


@pytest.mark.parametrize("kind", ["packed", "bucket", "cluster"])
def test_canonical_order_is_the_same_for_every_world_size(kind, alpaca):
    # ranks take consecutive groups of the canonical order: step s of every world size deals the
    # canonical batches s*W .. s*W+W-1
    canon = None
    for world in (1, 2, 3, 5):
        samplers = [build(kind, alpaca, world, r)[0] for r in range(world)]
        c = samplers[0].canonical(2)
        order, offsets = c.batches.order, c.batches.offsets
        batches = [sorted(order[offsets[b] : offsets[b + 1]].tolist()) for b in c.sequence.tolist()]
        canon = batches if canon is None else canon
        assert batches == canon
        dealt = [sorted(b) for step in zip(*(s.rank_batches(epoch=2) for s in samplers)) for b in step if b]
        by_step = [sorted(map(tuple, dealt[k : k + world])) for k in range(0, len(dealt), world)]
        assert by_step == [sorted(map(tuple, canon[k : k + world])) for k in range(0, len(canon), world)]


@pytest.mark.parametrize("kind", ["packed", "bucket", "cluster"])
def test_same_world_resume_continues_bit_for_bit_after_an_elastic_one(kind, alpaca):
    # 3 ranks -> 2 ranks (fresh dealing at the cursor) -> 2 ranks again: the second resume keeps
    # the 2-rank dealing it interrupts, step for step
    first = build(kind, alpaca, 3, 0)[0]
    first.set_epoch(1)
    list(islice(iter(first), 5))
    state = first.state_dict()
    assert state["cursor"] == 15 and state["origin"] == 0
    two = build(kind, alpaca, 2, 1)[0]
    two.load_state_dict(state)
    expected = list(two)
    again = build(kind, alpaca, 2, 1)[0]
    again.load_state_dict(state)
    it = iter(again)
    head = list(islice(it, 3))
    later = again.state_dict()
    assert later["origin"] == 15 and later["cursor"] == 15 + 3 * 2 and later["batches_yielded"] == 3
    resumed = build(kind, alpaca, 2, 1)[0]
    resumed.load_state_dict(later)
    assert head + list(resumed) == expected and len(resumed) == len(expected)


def test_refusal_names_what_must_stay_fixed(alpaca):
    state = PackedBatchSampler(alpaca, max_tokens=1024, num_replicas=3, rank=0).state_dict()
    with pytest.raises(
        ValueError,
        match=r"PackedBatchSampler resumes only from the same lengths and seed, max_tokens, rows_per_batch, algorithm, "
        r"oversize, shuffle, drop_last, attention_weight, plan_window \(num_replicas, rank and DataLoader workers may change\)",
    ):
        PackedBatchSampler(alpaca, max_tokens=2048, num_replicas=2, rank=0).load_state_dict(state)
