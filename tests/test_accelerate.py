"""The samplers and streams under accelerate, HF Trainer and HF streaming, as users run them: two
real gloo processes (``Accelerator(cpu=True)`` from the torchrun environment), real alpaca token
ids, a real JSONL file read by ``datasets`` in streaming mode, a tiny random Llama.  Every example
must arrive exactly once per epoch across ranks, epochs must change the order, a resume must yield
exactly the rest.  One spawn runs every scenario (start-up is the cost); the tests read its record."""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from conftest import end_ddp_worker
from packwise.samplers import BucketBatchSampler, PackedBatchSampler

pytest.importorskip("accelerate")
WORLD = 2
SETTINGS = {
    "packed": (PackedBatchSampler, {"max_tokens": 2048, "seed": 5, "attention_weight": 1 / 1024}),
    "bucket": (BucketBatchSampler, {"max_tokens": 4096, "seed": 5}),
}


def _prepared(acc, sampler, ids, **kw):
    from torch.utils.data import DataLoader

    from test_samplers import TokenDataset, pad_collate

    return acc.prepare(DataLoader(TokenDataset(ids), batch_sampler=sampler, collate_fn=pad_collate, **kw))


def _indices(loader, limit=None):
    out = []
    for batch in loader:
        out.append(batch["index"].tolist())
        if limit is not None and len(out) == limit:
            break
    return out


def _accelerate_scenarios(acc, ids, lengths) -> dict:
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    from packwise.samplers import audit
    from test_samplers import TokenDataset, pad_collate

    rec = {}
    for kind, (cls, kw) in SETTINGS.items():
        # defect 1: a rank-aware sampler under Accelerator.prepare (BatchSamplerShard)
        sampler = cls(lengths, **kw)  # num_replicas / rank from torch.distributed
        loader = _prepared(acc, sampler, ids)
        rec[f"{kind}/len"] = [len(loader), len(sampler)]
        for epoch in (0, 1):  # no set_epoch: accelerate's pass counter is the epoch
            rec[f"{kind}/pass{epoch}"] = _indices(loader)
        # defect 3a: an explicit sampler.set_epoch wins over accelerate's counter
        sampler = cls(lengths, **kw)
        loader = _prepared(acc, sampler, ids)
        sampler.set_epoch(3)
        rec[f"{kind}/explicit3"] = _indices(loader)
        rec[f"{kind}/after3"] = _indices(loader)  # the loader's next pass counts on from 3
        loader.set_epoch(6)  # Trainer's way: the prepared loader's set_epoch reaches the sampler
        rec[f"{kind}/loader6"] = _indices(loader)
        # defect 3b: sampler.state_dict() counts consumed batches, not accelerate's look-ahead
        sampler = cls(lengths, **kw)
        sampler.set_epoch(2)
        head = _indices(_prepared(acc, sampler, ids), limit=5)
        state = sampler.state_dict()
        fresh = cls(lengths, **kw)
        fresh.load_state_dict(state)
        rec[f"{kind}/resume"] = [head, state["batches_yielded"], _indices(_prepared(acc, fresh, ids))]
        # the same with DataLoader workers (they prefetch 2 x 2 batches ahead)
        sampler = cls(lengths, **kw)
        sampler.set_epoch(2)
        head = _indices(_prepared(acc, sampler, ids, num_workers=2, multiprocessing_context="fork"), limit=5)
        rec[f"{kind}/resume_workers"] = [head, sampler.state_dict()["batches_yielded"]]

    # defect 3c: use_stateful_dataloader: state_dict() at prepare iterates early; set_epoch still counts
    cls, kw = SETTINGS["packed"]
    sampler = cls(lengths, num_replicas=1, rank=0, **kw)
    base = DataLoader(TokenDataset(ids), batch_sampler=sampler, collate_fn=pad_collate)
    loader = prepare_data_loader(base, num_processes=1, process_index=0, use_stateful_dataloader=True)
    sampler.set_epoch(1)
    rec["stateful1/plays"] = _indices(loader)
    sampler = cls(lengths, **kw)
    loader = _prepared_stateful(sampler, ids)
    sampler.set_epoch(1)
    rec["stateful2/plays"] = _indices(loader)
    # the loader's own resume path: its state_dict after k batches, a fresh loader loads it
    sampler = cls(lengths, **kw)
    sampler.set_epoch(2)
    loader = _prepared_stateful(sampler, ids)
    head = _indices(loader, limit=4)
    state = loader.state_dict()
    fresh = cls(lengths, **kw)
    fresh.set_epoch(2)
    loader = _prepared_stateful(fresh, ids)
    loader.load_state_dict(state)
    rec["stateful2/resume"] = [head, _indices(loader)]

    # a sampler planned for one rank under two processes is refused, with the fix
    try:
        list(_prepared(acc, cls(lengths, num_replicas=1, rank=0, **kw), ids))
        rec["refused"] = None
    except ValueError as e:
        rec["refused"] = str(e)

    # dispatch_batches=True: process 0 reads the global plan, accelerate concatenates and slices rows
    from packwise.packing import PackedCollator

    packer = PackedCollator(layout="position_ids", capacity=2048, use_cache=None)  # accelerate concatenates tensors only

    def fixed_shape(examples):
        batch = packer([{"input_ids": e["input_ids"].tolist()} for e in examples])
        index = torch.full((1, 256), -1, dtype=torch.long)
        index[0, : len(examples)] = torch.tensor([e["index"] for e in examples], dtype=torch.long)
        batch["index"] = index
        return batch

    sampler = cls(lengths, **kw)
    base = DataLoader(TokenDataset(ids), batch_sampler=sampler, collate_fn=fixed_shape)
    loader = prepare_data_loader(base, device=torch.device("cpu"), put_on_device=True, dispatch_batches=True)
    rec["dispatch/len"] = len(loader)
    rec["dispatch"] = [[i for i in b["index"][0].tolist() if i >= 0] for b in loader]

    # samplers that must not be dealt again are refused with their fix
    from packwise.samplers import PruningSampler, SuperBatch
    from packwise.selection import InfoBatch

    for name, make in (
        ("pruning", lambda: PruningSampler(InfoBatch(lengths.shape[0], num_epochs=2, seed=0), seed=0)),
        ("superbatch", lambda: SuperBatch(lengths, batch_size=8, filter_ratio=0.5)),
    ):
        base = make()
        kwargs = {"sampler": base, "batch_size": 4} if name == "pruning" else {"batch_sampler": base}
        loader = acc.prepare(DataLoader(TokenDataset(ids), collate_fn=pad_collate, **kwargs))
        try:
            next(iter(loader))
            rec[f"refused/{name}"] = None
        except ValueError as e:
            rec[f"refused/{name}"] = str(e)

    # the coverage guard: passes here, raises on accelerate's own even_batches wrap-around
    rec["audit"] = list(audit(_prepared(acc, cls(lengths, **kw), ids), epochs=2).examples)
    plain = acc.prepare(DataLoader(TokenDataset(ids), batch_size=4, collate_fn=pad_collate))
    try:
        audit(plain, epochs=1)
        rec["audit_plain"] = None
    except ValueError as e:
        rec["audit_plain"] = str(e)
    return rec


def _prepared_stateful(sampler, ids):
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    from test_samplers import TokenDataset, pad_collate

    base = DataLoader(TokenDataset(ids), batch_sampler=sampler, collate_fn=pad_collate)
    return prepare_data_loader(base, use_stateful_dataloader=True)


def _stream_scenarios(jsonl: str, rank: int) -> dict:
    import datasets
    from datasets.distributed import split_dataset_by_node
    from torch.utils.data import DataLoader

    from packwise.samplers import PackedIterable

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    rec = {}
    for how in ("whole", "presplit"):
        source = datasets.load_dataset("json", data_files=jsonl, split="train", streaming=True)
        if how == "presplit":
            source = split_dataset_by_node(source, rank=rank, world_size=WORLD)
        stream = PackedIterable(source, max_tokens=1024, length="input_ids", window=64, oversize="split", seed=1)
        loader = DataLoader(stream, batch_size=None, collate_fn=lambda b: b, num_workers=2, multiprocessing_context="fork")
        got = []
        for batch in loader:
            assert sum(len(e["input_ids"]) for e in batch) <= 1024
            got += [[e["index"], e["input_ids"][0]] for e in batch]
        rec[f"stream/{how}"] = got
    return rec


class _Recorder:
    """Training steps record the example ids they receive (the loader side, not the collator)."""

    def __init__(self):
        self.epochs: list[list[int]] = []


def _trainer_scenario(ids, lengths, out_dir: str) -> dict:
    from torch.utils.data import DataLoader
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from packwise.packing import PackedCollator
    from test_samplers import TokenDataset

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=4096, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=2048,
        )
    )
    collate = PackedCollator(layout="position_ids")
    record = _Recorder()

    def collator(examples):
        batch = collate([{"input_ids": e["input_ids"].tolist()} for e in examples])
        batch["index"] = torch.tensor([e["index"] for e in examples], dtype=torch.long)
        return batch

    class EpochMarks(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kw):
            record.epochs.append([])

    class PackedTrainer(Trainer):
        def get_train_dataloader(self):
            sampler = PackedBatchSampler(lengths, max_tokens=1024, seed=3)  # rank-aware
            loader = DataLoader(TokenDataset(ids), batch_sampler=sampler, collate_fn=collator)
            return self.accelerator.prepare(loader)

        def compute_loss(self, model, inputs, return_outputs=False, **kw):
            record.epochs[-1] += inputs.pop("index").tolist()
            return super().compute_loss(model, inputs, return_outputs=return_outputs, **kw)

    args = TrainingArguments(
        out_dir, num_train_epochs=2, use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
        learning_rate=1e-3, disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0,
    )
    trainer = PackedTrainer(model=model, args=args, train_dataset=TokenDataset(ids), callbacks=[EpochMarks()])
    trainer.train()
    return {"trainer": record.epochs}


def _worker(rank: int, port: int, data_path: str, jsonl: str, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(WORLD),
    )
    torch.set_num_threads(1)
    from accelerate import Accelerator

    from test_samplers_ddp import _load

    ids, lengths = _load(data_path)
    acc = Accelerator(cpu=True)
    rec = {}
    for name, run in (
        ("accelerate", lambda: _accelerate_scenarios(acc, ids, lengths)),
        ("stream", lambda: _stream_scenarios(jsonl, rank)),
        ("trainer", lambda: _trainer_scenario(ids[:120], lengths[:120], str(Path(out_dir) / "trainer"))),
    ):
        try:
            rec.update(run())
        except Exception:  # recorded, so the failing scenario's test reports it; the others still run
            rec[f"error/{name}"] = traceback.format_exc()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(rec))
    end_ddp_worker()  # results are on disk: skip the racy process-group teardown


@pytest.fixture(scope="module")
def record(tokenizer, tmp_path_factory):
    from conftest import load_texts
    from test_samplers_ddp import _free_port

    tmp = tmp_path_factory.mktemp("accelerate")
    ids = [np.asarray(e.ids, np.int64) for e in tokenizer.encode_batch(load_texts("alpaca"), add_special_tokens=False)]
    offsets = np.concatenate(([0], np.cumsum([len(x) for x in ids]))).astype(np.int64)
    np.savez(tmp / "alpaca_ids.npz", flat=np.concatenate(ids), offsets=offsets)
    with open(tmp / "alpaca.jsonl", "w", encoding="utf-8") as f:  # a real JSONL file, read by datasets' json loader
        for i, x in enumerate(ids[:300]):
            f.write(json.dumps({"index": i, "input_ids": (x.tolist() * 4)[: 4 * len(x)]}) + "\n")
    mp.spawn(_worker, args=(_free_port(), str(tmp / "alpaca_ids.npz"), str(tmp / "alpaca.jsonl"), str(tmp)), nprocs=WORLD)
    ranks = [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(WORLD)]
    return {"ranks": ranks, "lengths": np.diff(offsets), "docs": [(x.tolist() * 4)[: 4 * len(x)] for x in ids[:300]]}


def _no_error(record, name):
    for r, rec in enumerate(record["ranks"]):
        assert f"error/{name}" not in rec, f"rank {r}:\n{rec[f'error/{name}']}"


def _plans(kind, lengths, epoch):
    cls, kw = SETTINGS[kind]
    return [cls(lengths, num_replicas=WORLD, rank=r, **kw).rank_batches(epoch=epoch) for r in range(WORLD)]


def _covers_once(per_rank, n):
    return sorted(i for batches in per_rank for b in batches for i in b) == list(range(n))


@pytest.mark.parametrize("kind", list(SETTINGS))
def test_prepare_keeps_every_example_once_with_the_balanced_plan(record, kind):
    _no_error(record, "accelerate")
    lengths, ranks = record["lengths"], record["ranks"]
    steps = len(_plans(kind, lengths, 0)[0])
    for rec in ranks:
        assert rec[f"{kind}/len"] == [steps, steps]  # the prepared loader and the sampler agree: this rank's batches
    for epoch in (0, 1):  # accelerate's pass counter reaches the sampler: each pass is a new epoch
        per_rank = [rec[f"{kind}/pass{epoch}"] for rec in ranks]
        assert per_rank == _plans(kind, lengths, epoch)  # exactly the token-balanced plan, rank by rank
        assert _covers_once(per_rank, lengths.shape[0])
    assert ranks[0][f"{kind}/pass0"] != ranks[0][f"{kind}/pass1"]


@pytest.mark.parametrize("kind", list(SETTINGS))
def test_explicit_and_loader_set_epoch_reach_the_sampler(record, kind):
    _no_error(record, "accelerate")
    lengths, ranks = record["lengths"], record["ranks"]
    for key, epoch in (("explicit3", 3), ("after3", 4), ("loader6", 6)):
        assert [rec[f"{kind}/{key}"] for rec in ranks] == _plans(kind, lengths, epoch), key


@pytest.mark.parametrize("kind", list(SETTINGS))
def test_sampler_state_counts_consumed_batches_and_resumes_the_rest(record, kind):
    _no_error(record, "accelerate")
    lengths, ranks = record["lengths"], record["ranks"]
    plans = _plans(kind, lengths, 2)
    for rank, rec in enumerate(ranks):
        head, saved, tail = rec[f"{kind}/resume"]
        assert saved == 5  # accelerate had already fetched a 6th batch
        assert head + tail == plans[rank]
        head, saved = rec[f"{kind}/resume_workers"]
        assert (head, saved) == (plans[rank][:5], 5)  # workers prefetched more; 5 were consumed


def test_stateful_dataloader_plays_the_epoch_set_after_prepare_and_resumes(record):
    _no_error(record, "accelerate")
    lengths, ranks = record["lengths"], record["ranks"]
    cls, kw = SETTINGS["packed"]
    assert ranks[0]["stateful1/plays"] == cls(lengths, num_replicas=1, rank=0, **kw).rank_batches(epoch=1)
    assert [rec["stateful2/plays"] for rec in ranks] == _plans("packed", lengths, 1)
    plans = _plans("packed", lengths, 2)
    for rank, rec in enumerate(ranks):
        head, tail = rec["stateful2/resume"]
        assert len(head) == 4 and head + tail == plans[rank]


def test_a_sampler_planned_for_one_rank_is_refused_with_the_fix(record):
    _no_error(record, "accelerate")
    for rank, rec in enumerate(record["ranks"]):
        assert rec["refused"] == (
            f"PackedBatchSampler plans for num_replicas=1, rank=0 but accelerate deals its batches to 2 processes "
            f"(this is process {rank}); build it with num_replicas=2, rank={rank} (the default once "
            f"torch.distributed is initialised) so every rank gets its token-balanced share exactly once"
        )


def test_dispatch_batches_hands_each_rank_its_planned_batches(record):
    _no_error(record, "accelerate")
    lengths, ranks = record["lengths"], record["ranks"]
    plans = _plans("packed", lengths, 0)
    assert [rec["dispatch"] for rec in ranks] == plans
    assert [rec["dispatch/len"] for rec in ranks] == [len(plans[0])] * WORLD


def test_samplers_that_deal_ranks_themselves_are_refused_under_accelerate(record):
    _no_error(record, "accelerate")
    for rec in record["ranks"]:
        assert rec["refused/pruning"].startswith(
            "PruningSampler deals ranks itself (num_replicas=2) and accelerate deals its batches again over 2 processes"
        )
        assert rec["refused/superbatch"].startswith(
            "SuperBatch gives every rank the same super-batch, but accelerate deals its batches over 2 processes"
        )


def test_audit_passes_exact_loaders_and_catches_accelerates_wrap_around(record):
    _no_error(record, "accelerate")
    n = record["lengths"].shape[0]
    for rec in record["ranks"]:
        assert rec["audit"] == [n, n]
        # 999 examples in batches of 4 over 2 ranks: accelerate's even_batches repeats example 0
        assert n == 999
        assert rec["audit_plain"].startswith(
            "audit epoch 0 over 2 rank(s): 0 of 999 examples never arrived () and 1 arrived more than once (0); "
        )


def test_hf_streaming_with_two_workers_on_two_ranks_reads_every_document_once(record):
    _no_error(record, "stream")
    docs, ranks = record["docs"], record["ranks"]
    for how in ("whole", "presplit"):
        pieces = sorted(tuple(p) for rec in ranks for p in rec[f"stream/{how}"])
        # oversize="split": a document longer than 1024 tokens arrives as consecutive pieces
        expected = sorted((i, d[a]) for i, d in enumerate(docs) for a in range(0, len(d), 1024))
        assert pieces == expected, how
    assert any(len(d) > 1024 for d in docs)


def test_trainer_on_two_processes_trains_on_every_example_once_per_epoch(record):
    _no_error(record, "trainer")
    ranks, lengths = record["ranks"], record["lengths"][:120]
    for epoch in (0, 1):
        for rank, rec in enumerate(ranks):
            plan = PackedBatchSampler(lengths, max_tokens=1024, seed=3, num_replicas=WORLD, rank=rank).rank_batches(epoch=epoch)
            assert rec["trainer"][epoch] == [i for b in plan for i in b]
        assert sorted(i for rec in ranks for i in rec["trainer"][epoch]) == list(range(120))
    assert ranks[0]["trainer"][0] != ranks[0]["trainer"][1]
