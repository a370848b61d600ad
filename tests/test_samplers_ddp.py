"""Real multi-process checks: gloo DDP ranks iterating DataLoaders with workers, and mid-epoch
resume in a fresh process (plain sampler state and StatefulDataLoader with 2 workers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import end_ddp_worker, free_port as _free_port
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from packwise.samplers import BucketBatchSampler, PackedBatchSampler

SETTINGS = {
    "bucket": (BucketBatchSampler, {"max_tokens": 4096, "seed": 5}),
    "packed": (PackedBatchSampler, {"max_tokens": 2048, "seed": 5, "attention_weight": 1 / 1024}),
}


def _load(data_path: str):
    data = np.load(data_path)
    flat, offsets = data["flat"], data["offsets"]
    return [flat[offsets[i] : offsets[i + 1]] for i in range(offsets.shape[0] - 1)], np.diff(offsets)


def _ddp_worker(rank: int, world: int, port: int, data_path: str, out_path: str) -> None:
    """One DDP rank (a spawned process); its DataLoader workers are forked from it (fast start)."""
    import torch.distributed as dist

    from test_samplers import TokenDataset, pad_collate

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    ids, lengths = _load(data_path)
    seen = {}
    for kind, (cls, kw) in SETTINGS.items():
        sampler = cls(lengths, **kw)  # num_replicas and rank come from torch.distributed
        loader = DataLoader(
            TokenDataset(ids), batch_sampler=sampler, collate_fn=pad_collate, num_workers=2, multiprocessing_context="fork"
        )
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            batches = []
            for batch in loader:
                tokens = torch.tensor([float(batch["input_ids"].ne(0).sum()) * batch["loss_weight"]])
                dist.all_reduce(tokens)  # a collective every step: unequal counts would hang here
                index = batch["index"].tolist()
                for row, i in enumerate(index):  # the right example reached the batch
                    assert batch["input_ids"][row, : len(ids[i])].tolist() == ids[i].tolist()
                batches.append(index)
            seen[f"{kind}/{epoch}"] = {"batches": batches, "len": len(sampler), "world": sampler.num_replicas}
    gathered = [None] * world
    dist.all_gather_object(gathered, seen)
    if rank == 0:
        Path(out_path).write_text(json.dumps(gathered))
    end_ddp_worker()


@pytest.fixture(scope="module")
def alpaca_ids(tokenizer, tmp_path_factory):
    from conftest import load_texts

    ids = [np.asarray(e.ids, np.int64) for e in tokenizer.encode_batch(load_texts("alpaca"), add_special_tokens=False)]
    offsets = np.concatenate(([0], np.cumsum([len(x) for x in ids]))).astype(np.int64)
    path = tmp_path_factory.mktemp("ddp") / "alpaca_ids.npz"
    np.savez(path, flat=np.concatenate(ids), offsets=offsets)
    return str(path), np.diff(offsets)


@pytest.mark.parametrize("world", [2, 3])
def test_real_ddp_ranks_cover_the_epoch_exactly(world, alpaca_ids, tmp_path):
    data_path, lengths = alpaca_ids
    out = tmp_path / "seen.json"
    mp.spawn(_ddp_worker, args=(world, _free_port(), data_path, str(out)), nprocs=world, join=True)
    gathered = json.loads(out.read_text())
    for kind, (cls, kw) in SETTINGS.items():
        orders = []
        for epoch in (0, 1):
            per_rank = [g[f"{kind}/{epoch}"] for g in gathered]
            assert [r["world"] for r in per_rank] == [world] * world
            counts = [len(r["batches"]) for r in per_rank]
            assert counts == [per_rank[0]["len"]] * world  # equal batch counts, equal to len()
            seen = sorted(i for r in per_rank for b in r["batches"] for i in b)
            assert seen == list(range(lengths.shape[0]))  # every example exactly once across ranks
            for rank, r in enumerate(per_rank):  # the plan is the same pure function in every process
                local = cls(lengths, num_replicas=world, rank=rank, **kw)
                assert r["batches"] == local.rank_batches(epoch=epoch)
            orders.append([r["batches"] for r in per_rank])
        assert orders[0] != orders[1]


def _resume_worker(phase: str, data_path: str, state_dir: str, k: int) -> None:
    from torchdata.stateful_dataloader import StatefulDataLoader

    from test_samplers import TokenDataset, pad_collate

    torch.set_num_threads(1)
    ids, lengths = _load(data_path)
    out = {}
    for kind, (cls, kw) in SETTINGS.items():
        for how in ("sampler", "stateful"):
            sampler = cls(lengths, num_replicas=2, rank=1, **kw)
            sampler.set_epoch(2)
            state_path = Path(state_dir) / f"{kind}-{how}.pt"
            if how == "sampler":
                loader = DataLoader(TokenDataset(ids), batch_sampler=sampler, collate_fn=pad_collate)
                owner = sampler
            else:
                loader = StatefulDataLoader(
                    TokenDataset(ids),
                    batch_sampler=sampler,
                    collate_fn=pad_collate,
                    num_workers=2,
                    multiprocessing_context="fork",  # this process is already fresh (spawned); fork its workers
                )
                owner = loader
            seen = []
            if phase == "first":
                for step, batch in enumerate(loader):
                    seen.append(batch["index"].tolist())
                    if step + 1 == k:
                        torch.save(owner.state_dict(), state_path)
                        break
            else:
                owner.load_state_dict(torch.load(state_path))
                seen = [batch["index"].tolist() for batch in loader]
            out[f"{kind}/{how}"] = seen
    Path(state_dir, f"{phase}.json").write_text(json.dumps(out))


def test_resume_in_a_fresh_process_finishes_the_epoch_exactly(alpaca_ids, tmp_path):
    data_path, lengths = alpaca_ids
    k = 7
    ctx = mp.get_context("spawn")
    for phase in ("first", "second"):  # each phase is a new interpreter: nothing survives but the file
        p = ctx.Process(target=_resume_worker, args=(phase, data_path, str(tmp_path), k))
        p.start()
        p.join(300)
        assert p.exitcode == 0, f"{phase} process failed with exit code {p.exitcode}"
    first = json.loads((tmp_path / "first.json").read_text())
    second = json.loads((tmp_path / "second.json").read_text())
    for kind, (cls, kw) in SETTINGS.items():
        expected = cls(lengths, num_replicas=2, rank=1, **kw).rank_batches(epoch=2)
        assert len(expected) > k + 5
        for how in ("sampler", "stateful"):
            head, tail = first[f"{kind}/{how}"], second[f"{kind}/{how}"]
            assert len(head) == k
            assert head + tail == expected, (kind, how)
