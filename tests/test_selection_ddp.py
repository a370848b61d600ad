"""InfoBatch under real DDP (2 gloo processes): identical kept sets and scores on both ranks, equal
batch counts, exact int64 id gathers; and mid-epoch resume in fresh processes reproducing the rest
of the run bit for bit (order, weights, losses, scores, model)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import end_ddp_worker, free_port as _free_port
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset

WORLD = 2
EPOCHS = 4
BATCH = 8
STOP = (1, 3)  # the full run saves a checkpoint after 3 steps of epoch 1


def _worker(rank: int, phase: str, port: int, data_path: str, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from packwise.samplers import PruningSampler, WithIndex
    from packwise.selection import InfoBatch
    from packwise.selection._torch import gather

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    data = np.load(data_path)
    x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Linear(x.shape[1], 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ib = InfoBatch(x.shape[0], num_epochs=EPOCHS, prune_ratio=0.5, delta=0.75, seed=1)
    sampler = PruningSampler(ib, seed=2)  # num_replicas and rank from torch.distributed
    loader = DataLoader(WithIndex(TensorDataset(x, y)), batch_size=BATCH, sampler=sampler)
    state_path = Path(out_dir) / f"state-{rank}.pkl"
    start = 0
    if phase == "second":
        state = pickle.loads(state_path.read_bytes())
        ib.load_state_dict(state["policy"])
        sampler.load_state_dict(state["sampler"])
        model.module.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = sampler.epoch
    big = np.array([2**24 + 1, 2**40 + 3 + rank], np.int64)  # float32 would round these
    ids, _ = gather(big, np.array([0.5, 1.5], np.float32))
    record = {"gather": ids.tolist(), "steps": [], "epochs": {}}
    for epoch in range(start, EPOCHS):
        sampler.set_epoch(epoch)
        kept = ib.indices_for_epoch(epoch).tolist()
        batches = 0
        resumed = sampler.state_dict()["yielded"] // BATCH  # batches already done this epoch
        for step, (idx, (xb, yb)) in enumerate(loader, resumed):
            per_example = torch.nn.functional.cross_entropy(model(xb), yb, reduction="none")
            loss = ib.update(idx, per_example)
            opt.zero_grad()
            loss.backward()
            opt.step()
            batches += 1
            record["steps"].append(
                {"epoch": epoch, "step": step, "ids": idx.tolist(), "w": ib.weights_for(idx).tolist(), "loss": loss.item()}
            )
            if phase == "full" and (epoch, step + 1) == STOP:  # checkpoint mid-epoch, keep going
                state = {
                    "policy": ib.state_dict(),
                    "sampler": sampler.state_dict(),
                    "model": model.module.state_dict(),
                    "opt": opt.state_dict(),
                }
                state_path.write_bytes(pickle.dumps(state))
        record["epochs"][epoch] = {"kept": kept, "len": len(loader), "batches": batches}
    record["scores"] = ib.store.scores.tolist()
    record["seen"] = ib.store.seen.tolist()
    record["params"] = [p.detach().reshape(-1).tolist() for p in model.parameters()]
    Path(out_dir, f"{phase}-{rank}.json").write_text(json.dumps(record))
    end_ddp_worker()


@pytest.fixture(scope="module")
def agnews_features(tokenizer, tmp_path_factory):
    """Hashed bag-of-tokens features of 90 real AG News rows (labels from the CSV)."""
    import csv

    from conftest import shared_data_dir

    with open(shared_data_dir() / "ag_news_test.csv", encoding="utf-8", newline="") as f:
        rows = [r for _, r in zip(range(90), csv.reader(f))]
    encoded = tokenizer.encode_batch([f"{t} {d}" for _, t, d in rows], add_special_tokens=False)
    x = np.zeros((len(rows), 32), np.float32)
    for i, e in enumerate(encoded):
        np.add.at(x[i], np.asarray(e.ids) % 32, 1.0 / len(e.ids))
    y = np.array([int(r[0]) - 1 for r in rows], np.int64)
    path = tmp_path_factory.mktemp("sel-ddp") / "agnews.npz"
    np.savez(path, x=x, y=y)
    return str(path)


def _run(phase: str, data_path: str, out_dir: Path) -> list[dict]:
    mp.spawn(_worker, args=(phase, _free_port(), data_path, str(out_dir)), nprocs=WORLD, join=True)
    return [json.loads((out_dir / f"{phase}-{r}.json").read_text()) for r in range(WORLD)]


def test_ddp_ranks_agree_and_resume_reproduces_the_rest_of_the_run(agnews_features, tmp_path):
    full = _run("full", agnews_features, tmp_path)
    n = 90
    for rank, rec in enumerate(full):
        assert rec["gather"] == [2**24 + 1, 2**40 + 3, 2**24 + 1, 2**40 + 4]  # int64, rank order, exact
    assert full[0]["scores"] == full[1]["scores"] and full[0]["seen"] == full[1]["seen"] == [True] * n
    kept_fractions = []
    for epoch in range(EPOCHS):
        e0, e1 = full[0]["epochs"][str(epoch)], full[1]["epochs"][str(epoch)]
        assert e0["kept"] == e1["kept"]  # same kept set from the same scores and seed
        assert e0["batches"] == e1["batches"] == e0["len"] == e1["len"]  # equal batch counts
        ids = [i for r in full for s in r["steps"] if s["epoch"] == epoch for i in s["ids"]]
        assert set(ids) == set(e0["kept"])  # the ranks together cover the kept set
        assert len(ids) == len(e0["kept"]) + (-len(e0["kept"]) % WORLD)  # padded to equal shares only
        kept_fractions.append(len(e0["kept"]) / n)
    assert kept_fractions[0] == 1.0 and kept_fractions[3] == 1.0  # epoch 0 unseen, epoch 3 anneals
    assert all(f < 1.0 for f in kept_fractions[1:3])
    assert full[0]["params"] == full[1]["params"]

    second = _run("second", agnews_features, tmp_path)  # fresh processes: only the state files survive
    for rank in range(WORLD):
        tail = [s for s in full[rank]["steps"] if (s["epoch"], s["step"]) >= (STOP[0], STOP[1])]
        assert tail and second[rank]["steps"] == tail  # ids, weights, order and loss values, exactly
        assert second[rank]["scores"] == full[rank]["scores"]
        assert second[rank]["params"] == full[rank]["params"]
