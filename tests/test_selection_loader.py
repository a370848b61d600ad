"""Pruning through real DataLoaders: worker processes, WithIndex, the real tokenizer on AG News,
StatefulDataLoader resume, and composition with the bucketed / packed batch samplers."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from packwise.samplers import BucketBatchSampler, PackedBatchSampler, PruningSampler, WithIndex
from packwise.selection import RS2, InfoBatch


class AgNews(Dataset):
    def __init__(self, ids, labels):
        self.ids, self.labels = ids, labels

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "label": int(self.labels[i])}


def collate(batch):
    index = torch.tensor([i for i, _ in batch], dtype=torch.int64)
    flat = torch.tensor([t for _, ex in batch for t in ex["input_ids"]], dtype=torch.int64)
    offsets = torch.tensor(np.cumsum([0] + [len(ex["input_ids"]) for _, ex in batch[:-1]]), dtype=torch.int64)
    return index, flat, offsets, torch.tensor([ex["label"] for _, ex in batch])


@pytest.fixture(scope="module")
def agnews(tokenizer):
    from conftest import shared_data_dir

    with open(shared_data_dir() / "ag_news_test.csv", encoding="utf-8", newline="") as f:
        rows = [r for _, r in zip(range(300), csv.reader(f))]
    encoded = tokenizer.encode_batch([f"{t} {d}" for _, t, d in rows], add_special_tokens=False)
    return AgNews([e.ids for e in encoded], np.array([int(r[0]) - 1 for r in rows]))


def _train(loader, sampler, ib, model, epochs, stop=None):
    """Run epochs; returns [(epoch, ids, loss)] per step.  ``stop=(epoch, steps)`` ends early."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    out = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        for step, (idx, flat, offsets, labels) in enumerate(loader):
            per = torch.nn.functional.cross_entropy(model(flat, offsets), labels, reduction="none")
            loss = ib.update(idx, per)
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append((epoch, idx.tolist(), loss.item()))
            if stop == (epoch, step + 1):
                return out
    return out


def test_workers_deliver_exactly_the_kept_examples(agnews):
    ib = InfoBatch(len(agnews), num_epochs=4, seed=0)
    sampler = PruningSampler(ib, seed=1, num_replicas=1, rank=0)
    loader = DataLoader(WithIndex(agnews), batch_size=32, sampler=sampler, collate_fn=collate, num_workers=2)
    torch.manual_seed(0)
    model = torch.nn.EmbeddingBag(4096, 4, mode="mean")
    for epoch in range(4):
        sampler.set_epoch(epoch)
        seen = []
        for idx, flat, offsets, labels in loader:
            first = int(idx[0])
            assert flat[: len(agnews.ids[first])].tolist() == agnews.ids[first]  # the index came with its example
            assert labels.tolist() == agnews.labels[idx.numpy()].tolist()
            per = torch.nn.functional.cross_entropy(model(flat, offsets), labels, reduction="none")
            ib.update(idx, per).backward()
            seen.extend(idx.tolist())
        kept = ib.indices_for_epoch(epoch)
        assert sorted(seen) == kept.tolist()  # every kept example once, nothing else
        assert len(loader) == -(-kept.shape[0] // 32) and len(sampler) == kept.shape[0]
    assert ib.plan(1).kept < len(agnews) and ib.plan(3).full_data


def test_stateful_dataloader_with_workers_resumes_mid_epoch(agnews):
    from torchdata.stateful_dataloader import StatefulDataLoader

    def build():
        ib = InfoBatch(len(agnews), num_epochs=3, seed=4)
        sampler = PruningSampler(ib, seed=4, num_replicas=1, rank=0)
        loader = StatefulDataLoader(WithIndex(agnews), batch_size=16, sampler=sampler, collate_fn=collate, num_workers=2)
        torch.manual_seed(0)
        return ib, sampler, loader, torch.nn.EmbeddingBag(4096, 4, mode="mean")

    ib, sampler, loader, model = build()
    full = _train(loader, sampler, ib, model, range(3))
    ib, sampler, loader, model = build()
    head = _train(loader, sampler, ib, model, range(3), stop=(1, 5))
    saved = {"loader": loader.state_dict(), "policy": ib.state_dict(), "model": model.state_dict()}
    ib, sampler, loader, model = build()
    ib.load_state_dict(saved["policy"])
    loader.load_state_dict(saved["loader"])
    model.load_state_dict(saved["model"])
    # (the optimizer is plain SGD without momentum, so it carries no state)
    tail = _train(loader, sampler, ib, model, range(1, 3))
    assert [(e, i) for e, i, _ in head + tail] == [(e, i) for e, i, _ in full]
    assert [l for *_, l in head + tail] == pytest.approx([l for *_, l in full], abs=0, rel=0)


def test_prune_first_then_bucket_or_pack_what_is_kept(agnews):
    lengths = np.array([len(x) for x in agnews.ids], np.int64)
    ib = InfoBatch(len(agnews), num_epochs=4, seed=0)
    ib.indices_for_epoch(0)
    ib.update(np.arange(len(agnews)), torch.from_numpy(lengths.astype(np.float32)))  # a score per example
    kept = ib.indices_for_epoch(1)
    assert kept.shape[0] < len(agnews)
    buckets = BucketBatchSampler(lengths[kept], max_tokens=512, seed=0, num_replicas=1, rank=0)
    batches = [kept[b] for b in buckets]  # positions in the kept subset -> global ids
    assert sorted(np.concatenate(batches).tolist()) == kept.tolist()
    assert all(len(b) * lengths[b].max() <= 512 for b in batches)
    assert all(ib.weights_for(b).min() >= 1.0 for b in batches)
    rs2 = RS2(len(agnews), 0.25, seed=0, stratify=agnews.labels)
    sub = rs2.indices_for_epoch(0)
    packed = PackedBatchSampler(lengths[sub], max_tokens=512, seed=0, num_replicas=1, rank=0)
    bins = [sub[b] for b in packed]
    assert sorted(np.concatenate(bins).tolist()) == sub.tolist()
    assert all(lengths[b].sum() <= 512 for b in bins)
