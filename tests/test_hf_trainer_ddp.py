"""``PackwiseTrainer`` under real DDP (2 gloo processes): ranks come from the Trainer's accelerator,
every example is trained on once per epoch across ranks, and one optimizer step equals the
single-process step on both ranks' batches (the loss is normalised over all ranks' tokens)."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.multiprocessing as mp

from conftest import end_ddp_worker, free_port as _free_port
from test_hf_trainer import Recording, _args, _lengths, _model, alpaca  # noqa: F401 - shared helpers and fixture
from packwise.packing import token_losses

transformers = pytest.importorskip("transformers", reason="transformers is a test extra (pip install packwise[dev])")


def _end() -> None:
    """A gloo worker with its results on disk ends without the racy process-group teardown
    (two of these tests aborted in it once, SIGABRT after training had finished)."""
    import torch.distributed as dist

    if dist.is_initialized():
        end_ddp_worker()


def _rank(rank: int, port: int, tmp: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from pathlib import Path

    from packwise.integrations.hf import PackwiseTrainer
    from packwise.samplers import PackedBatchSampler

    class AfterFirstStep(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step == 1 and rank == 0:
                torch.save(model.state_dict(), Path(tmp, "step.pt"))

    data = json.loads(Path(tmp, "data.json").read_text())
    sampler = PackedBatchSampler(_lengths(data), max_tokens=128, seed=4)  # built before the Trainer: world of 1
    collator = Recording()
    args = _args(Path(tmp, "run"), num_train_epochs=2)
    PackwiseTrainer(_model(), args, train_dataset=data, sampler=sampler, collator=collator, callbacks=[AfterFirstStep()]).train()
    out = {"epochs": collator.seen, "replicas": [sampler.num_replicas, sampler.rank]}
    Path(tmp, f"rank{rank}.json").write_text(json.dumps(out))
    _end()


def test_ddp_two_ranks(alpaca, tmp_path):
    (tmp_path / "data.json").write_text(json.dumps(alpaca))
    mp.start_processes(_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["replicas"] == [2, 0] and r1["replicas"] == [2, 1]
    assert len(r0["epochs"]) == len(r1["epochs"])  # equal step counts: no hang
    per_epoch = len(r0["epochs"]) // 2
    for e in range(2):
        both = r0["epochs"][e * per_epoch : (e + 1) * per_epoch] + r1["epochs"][e * per_epoch : (e + 1) * per_epoch]
        assert sorted(i for b in both for i in b) == list(range(len(alpaca)))
    # one DDP step == one step on the token mean over both ranks' batches
    ref = _model()
    total, tokens = 0.0, 0
    for i in r0["epochs"][0] + r1["epochs"][0]:
        ids = torch.tensor([alpaca[i]["input_ids"]])
        labels = torch.tensor([alpaca[i].get("labels", alpaca[i]["input_ids"])])
        total = total + token_losses(ref(input_ids=ids, use_cache=False).logits, labels).sum()
        tokens += int((labels[0, 1:] != -100).sum())
    (total / tokens).backward()
    stepped = torch.load(tmp_path / "step.pt")
    worst = max(((p - 0.5 * p.grad) - stepped[n]).abs().max().item() for n, p in ref.named_parameters())
    assert worst < 2e-6


def _elastic_rank(rank: int, world: int, port: int, tmp: str, phase: str) -> None:
    """One process of a run on ``world`` processes: ``first`` saves checkpoint-2, the others resume it."""
    if world > 1:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from pathlib import Path

    from packwise.integrations.hf import PackwiseTrainer
    from packwise.samplers import PackedBatchSampler

    data = json.loads(Path(tmp, "data.json").read_text())
    sampler = PackedBatchSampler(_lengths(data), max_tokens=64, seed=4)
    collator = Recording()
    args = _args(Path(tmp, phase), num_train_epochs=1, save_strategy="steps", save_steps=2, logging_steps=1)
    resume = None if phase == "first" else str(Path(tmp, "first", "checkpoint-2"))
    trainer = PackwiseTrainer(_model(), args, train_dataset=data, sampler=sampler, collator=collator)
    trainer.train(resume_from_checkpoint=resume)
    losses = {int(e["step"]): e["loss"] for e in trainer.state.log_history if "loss" in e}
    out = {"seen": collator.seen, "len": len(sampler), "losses": losses, "step": trainer.state.global_step}
    Path(tmp, f"{phase}-rank{rank}.json").write_text(json.dumps(out))
    _end()


def test_checkpoint_of_two_processes_resumes_in_one_and_in_three(alpaca, tmp_path):
    (tmp_path / "data.json").write_text(json.dumps(alpaca))
    runs = {"first": 2, "one": 1, "three": 3}
    for phase, world in runs.items():
        mp.start_processes(_elastic_rank, args=(world, _free_port(), str(tmp_path), phase), nprocs=world, join=True, start_method="spawn")
    got = {phase: [json.loads((tmp_path / f"{phase}-rank{r}.json").read_text()) for r in range(w)] for phase, w in runs.items()}
    head = [i for r in got["first"] for b in r["seen"][:2] for i in b]  # the 2 steps checkpoint-2 holds
    for phase in ("one", "three"):
        ranks = got[phase]
        assert [len(r["seen"]) for r in ranks] == [len(ranks[0]["seen"])] * runs[phase]  # equal counts: no hang
        tail = [i for r in ranks for b in r["seen"] for i in b]
        assert sorted(head + tail) == list(range(len(alpaca)))  # no batch repeated, none skipped
        steps = len(ranks[0]["seen"])
        assert ranks[0]["step"] == 2 + steps  # the step count goes on from the checkpoint to the epoch's end
        losses = {int(k): v for k, v in ranks[0]["losses"].items()}
        assert sorted(losses) == list(range(1, 3 + steps))  # the loss curve goes on at step 3, one point a step
        assert [losses[1], losses[2]] == [got["first"][0]["losses"][k] for k in ("1", "2")]  # the saved history
        assert all(math.isfinite(v) for v in losses.values())



def _noise_rank(rank: int, port: int, tmp: str) -> None:
    """A PackwiseTrainer on 2 gloo processes with NoiseScaleCallback feeding an adaptive budget."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from pathlib import Path

    from packwise.integrations.hf import NoiseScaleCallback, PackwiseTrainer
    from packwise.samplers import PackedBatchSampler
    from packwise.selection import AdaptiveBudget

    data = json.loads(Path(tmp, "data.json").read_text())
    budget = AdaptiveBudget(128, maximum=256, k=1.0, multiple=32, world_size=2, lag_batches=1)
    sampler = PackedBatchSampler(_lengths(data), seed=4, budget=budget)
    collator = Recording()
    callback = NoiseScaleCallback(budget, beta=0.5)
    args = _args(Path(tmp, "run"), num_train_epochs=2, logging_steps=1)
    trainer = PackwiseTrainer(_model(), args, train_dataset=data, sampler=sampler, collator=collator, callbacks=[callback])
    trainer.train()
    logged = [e["noise_scale"] for e in trainer.state.log_history if "noise_scale" in e]
    out = {"seen": collator.seen, "history": callback.history, "changes": [list(c) for c in budget.changes], "logged": logged}
    Path(tmp, f"noise{rank}.json").write_text(json.dumps(out))
    _end()


def test_noise_scale_callback_under_ddp_feeds_the_same_budget_on_every_rank(alpaca, tmp_path):
    """B_noise from each rank's local gradient against the all-reduced one: both ranks log the same
    values, step the adaptive budget identically, and their samplers follow it with equal counts."""
    (tmp_path / "data.json").write_text(json.dumps(alpaca))
    mp.start_processes(_noise_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    r0, r1 = (json.loads((tmp_path / f"noise{r}.json").read_text()) for r in (0, 1))
    assert r0["history"] == r1["history"] and r0["logged"] == r1["logged"]  # the same numbers on every rank
    noise = [h["noise_scale"] for h in r0["history"]]
    assert len(noise) == len(r0["logged"]) == len(r0["seen"]) and all(math.isfinite(v) and v > 0 for v in noise[1:])
    # step 2's estimate (thousands of tokens) asks for more than the 128-token start: a change 1 step of lag later
    assert r0["changes"] == r1["changes"] == [[0, 64, 1], [6, 128, 1]]
    assert [h["budget"] for h in r0["history"]][:3] == [128, 128, 256]
    lengths = _lengths(alpaca)
    for seen in (r0["seen"], r1["seen"]):
        tokens = [int(lengths[b].sum()) for b in seen]
        assert max(tokens[:3]) <= 64 < max(tokens[3:]) <= 128  # rank steps 4.. are global batches 6..
    assert len(r0["seen"]) == len(r1["seen"])  # equal counts: no hang
    both = r0["seen"] + r1["seen"]  # 2 epochs, the second shorter (bigger batches from its start)
    assert sorted(i for b in both for i in b) == sorted(list(range(len(alpaca))) * 2)


def test_noise_scale_callback_refuses_what_it_cannot_measure_under_ddp():
    from types import SimpleNamespace

    from packwise.integrations.hf import NoiseScaleCallback

    model, args = _model(), SimpleNamespace(world_size=2, gradient_accumulation_steps=1)
    callback = NoiseScaleCallback()
    with pytest.raises(ValueError, match=(
        r"NoiseScaleCallback under world_size=2 reads each rank's gradient in DDP's all-reduce, but the Trainer "
        r"wrapped the model in LlamaForCausalLM; train with plain DDP \(no FSDP or DeepSpeed\), or on one process "
        r"with gradient_accumulation_steps >= 2"
    )):
        callback.bind_wrapped(model, args)
    callback.on_train_begin(args, None, None, model=model)  # a plain Trainer never binds the DDP model
    with pytest.raises(ValueError, match=(
        r"NoiseScaleCallback under DDP needs a PackwiseTrainer \(it hands the callback the DDP-wrapped model, whose "
        r"all-reduce the callback reads\); train with packwise.integrations.hf.PackwiseTrainer"
    )):
        model(input_ids=torch.tensor([[1, 2, 3]]))
