"""``packwise.integrations.hf``: the HF Trainer and TRL SFTTrainer on packwise samplers, checked the way a
user runs them (``trainer.train()``, checkpoints, resume) on a random tiny Llama and real alpaca text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import Payload, load_texts

transformers = pytest.importorskip("transformers", reason="transformers is a test extra (pip install packwise[dev])")
from packwise.integrations.hf import STATE_FILE, PackwiseTrainer  # noqa: E402
from packwise.packing import PackedCollator, token_losses  # noqa: E402
from packwise.samplers import PackedBatchSampler, PruningSampler, load_state  # noqa: E402
from packwise.selection import InfoBatch  # noqa: E402

VOCAB = 4096


@pytest.fixture(scope="module")
def alpaca(tokenizer):
    """24 real alpaca examples, 3..60 tokens, every third with its first third prompt-masked."""
    out = []
    for i, enc in enumerate(tokenizer.encode_batch(load_texts("alpaca")[:24], add_special_tokens=False)):
        ids = enc.ids[: 3 + (37 * i) % 58]
        ex = {"input_ids": ids}
        if i % 3 == 0:
            ex["labels"] = [-100] * (len(ids) // 3) + ids[len(ids) // 3 :]
        out.append(ex)
    return out


def _lengths(data) -> np.ndarray:
    return np.array([len(d["input_ids"]) for d in data], np.int64)


def _model(seed: int = 0):
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )  # fmt: skip
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)


def _args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, optim="sgd", learning_rate=0.5, lr_scheduler_type="constant",
        weight_decay=0.0, max_grad_norm=0.0, save_strategy="no", logging_steps=1000, disable_tqdm=True, seed=0,
    )  # fmt: skip
    base.update(kw)
    return transformers.TrainingArguments(**base)


class Recording(PackedCollator):
    """A PackedCollator that records the dataset ids of every batch it builds."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.seen: list[list[int]] = []

    def __call__(self, examples):
        self.seen.append([ex["index"] for ex in examples])
        return super().__call__(examples)


def test_one_step_with_accumulation_equals_the_token_mean_of_unpacked_runs(alpaca, tmp_path):
    """GA=2: one SGD step moves the weights by -lr * grad(sum of token losses / supervised tokens of both batches)."""
    sampler = PackedBatchSampler(_lengths(alpaca), max_tokens=160, seed=3)
    collator = Recording()
    model = _model()
    ref = _model()
    args = _args(tmp_path, max_steps=1, gradient_accumulation_steps=2)
    PackwiseTrainer(model, args, train_dataset=alpaca, sampler=sampler, collator=collator).train()
    assert collator.seen == sampler.rank_batches(epoch=0)[:2]
    total, tokens = 0.0, 0
    for i in collator.seen[0] + collator.seen[1]:
        ids = torch.tensor([alpaca[i]["input_ids"]])
        labels = torch.tensor([alpaca[i].get("labels", alpaca[i]["input_ids"])])
        total = total + token_losses(ref(input_ids=ids, use_cache=False).logits, labels).sum()
        tokens += int((labels[0, 1:] != -100).sum())
    (total / tokens).backward()
    worst = max(((p0 - 0.5 * p0.grad) - p1).abs().max().item() for p0, p1 in zip(ref.parameters(), model.parameters()))
    assert worst < 2e-6


def test_set_epoch_each_epoch_every_example_once(alpaca, tmp_path):
    sampler = PackedBatchSampler(_lengths(alpaca), max_tokens=128, seed=1)
    collator = Recording()
    args = _args(tmp_path, num_train_epochs=2)
    PackwiseTrainer(_model(), args, train_dataset=alpaca, sampler=sampler, collator=collator).train()
    first, second = sampler.rank_batches(epoch=0), sampler.rank_batches(epoch=1)
    assert first != second
    assert collator.seen == first + second
    assert sorted(i for b in first for i in b) == list(range(len(alpaca)))


def test_infobatch_weights_the_loss_and_learns_scores(alpaca, tmp_path):
    policy = InfoBatch(len(alpaca), num_epochs=3, prune_ratio=0.5, delta=0.67, seed=0)
    sampler = PruningSampler(policy, seed=0)
    collator = Recording()
    trainer = PackwiseTrainer(
        _model(), _args(tmp_path, num_train_epochs=3, per_device_train_batch_size=4),
        train_dataset=alpaca, sampler=sampler, collator=collator,
    )  # fmt: skip
    trainer.train()
    sizes = policy.planned_sizes(3).tolist()
    assert sizes[0] == sizes[2] == len(alpaca) > sizes[1]  # scores were fed back: epoch 1 pruned
    n0, n1 = -(-len(alpaca) // 4), -(-sizes[1] // 4)
    assert len(collator.seen) == n0 + n1 + n0  # epoch 2 is the full-data tail
    epoch1 = [i for b in collator.seen[n0 : n0 + n1] for i in b]
    assert len(set(epoch1)) == len(epoch1) == sizes[1]
    kept1 = policy.indices_for_epoch(1)  # re-planned from the final scores, for the loss check below
    # the loss of a batch: sum(weight * token loss) / supervised tokens
    trainer.model.eval()
    batch = trainer.packwise_collator([{**alpaca[i], "index": i} for i in kept1[:4].tolist()])
    with torch.no_grad():
        logits = trainer.model(**{k: v for k, v in batch.items() if k not in ("labels", "example_ids", "example_index")}).logits
        tok = token_losses(logits, batch["labels"])
        w = policy.weights_for(kept1[:4])
        seg_w = torch.as_tensor(w)[batch["example_index"]]
        expect = (tok * seg_w[batch["seq_idx"].long()]).sum() / (batch["labels"] != -100).sum()
        trainer.model.train()
        got = trainer.compute_loss(trainer.model, batch, num_items_in_batch=(batch["labels"] != -100).sum())
    assert w.max() > 1.0 and abs(float(got) - float(expect)) < 1e-5


@pytest.mark.parametrize("kind", ["infobatch", "packed"])
def test_resume_mid_epoch_from_a_trainer_checkpoint(alpaca, tmp_path, kind):
    """Checkpoint at step 8 (batch 2 of epoch 1), resume a fresh trainer: same batches, same weights."""

    def sampler():
        if kind == "packed":  # 6 batches per epoch
            return PackedBatchSampler(_lengths(alpaca), max_tokens=128, seed=7)
        return PruningSampler(InfoBatch(len(alpaca), num_epochs=2, prune_ratio=0.5, delta=0.5, seed=0), seed=0)

    def run(out, resume=None):
        collator = Recording()
        args = _args(out, num_train_epochs=2, per_device_train_batch_size=4, save_strategy="steps", save_steps=8)
        trainer = PackwiseTrainer(_model(), args, train_dataset=alpaca, sampler=sampler(), collator=collator)
        trainer.train(resume_from_checkpoint=resume)
        return trainer, collator.seen

    s = sampler()
    assert (len(s) if kind == "packed" else -(-len(s) // 4)) == 6  # epoch 0: 6 batches either way
    full, seen_full = run(tmp_path / "a")
    ckpt = tmp_path / "a" / "checkpoint-8"
    assert (ckpt / STATE_FILE.format(rank=0)).is_file()
    saved = load_state(ckpt / STATE_FILE.format(rank=0))
    assert saved["epoch"] == 1 and saved["batches_consumed"] == 2
    resumed, seen_resumed = run(tmp_path / "b", resume=str(ckpt))
    assert seen_resumed == seen_full[8:]
    worst = max((a - b).abs().max().item() for a, b in zip(full.model.parameters(), resumed.model.parameters()))
    assert worst < 1e-6


@pytest.mark.parametrize(
    "name, error",
    [
        (STATE_FILE.format(rank=0), r"packwise_rank0.npz is not a packwise state file .*never unpickles state"),
        ("packwise_rank0.pt", r"packwise_rank0.pt is a pickle from an older packwise and packwise no longer unpickles"),
    ],
)
def test_resume_refuses_a_crafted_pickle_without_running_it(alpaca, tmp_path, name, error):
    """A checkpoint whose packwise state is a malicious pickle: resume stops with a ValueError, the payload never runs."""
    args = _args(tmp_path / "a", max_steps=2, per_device_train_batch_size=4, save_strategy="steps", save_steps=2)
    PackwiseTrainer(_model(), args, train_dataset=alpaca, sampler=PackedBatchSampler(_lengths(alpaca), 128)).train()
    ckpt, marker = tmp_path / "a" / "checkpoint-2", tmp_path / "ran"
    (ckpt / STATE_FILE.format(rank=0)).unlink()
    torch.save({"epoch": Payload(marker)}, ckpt / name)  # what torch.load(weights_only=False) would run
    args = _args(tmp_path / "b", max_steps=4, per_device_train_batch_size=4)
    trainer = PackwiseTrainer(_model(), args, train_dataset=alpaca, sampler=PackedBatchSampler(_lengths(alpaca), 128))
    with pytest.raises(ValueError, match=error):
        trainer.train(resume_from_checkpoint=str(ckpt))
    assert not marker.exists()


def test_sft_trainer_trains_on_the_packwise_batches(alpaca, tmp_path):
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    from packwise.integrations.hf import PackwiseSFTTrainer

    data = Dataset.from_list([{"input_ids": ex["input_ids"]} for ex in alpaca])
    sampler = PackedBatchSampler(_lengths(alpaca), max_tokens=128, seed=2)
    collator = Recording()
    args = trl.SFTConfig(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, max_steps=3, disable_tqdm=True, dataset_kwargs={"skip_prepare_dataset": True},
    )  # fmt: skip
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=_tiny_tokenizer(), pad_token="<pad>", eos_token="<pad>")
    trainer = PackwiseSFTTrainer(_model(), args, train_dataset=data, processing_class=tok, sampler=sampler, collator=collator)
    assert trainer.train().global_step == 3
    assert collator.seen == sampler.rank_batches(epoch=0)[:3]


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models

    return Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1}, unk_token="<unk>"))


def test_policy_needs_seq_idx_in_the_layout(alpaca, tmp_path):
    sampler = PruningSampler(InfoBatch(len(alpaca), num_epochs=2, seed=0), seed=0)
    with pytest.raises(ValueError, match=r"needs per-example losses: give the collator a layout with 'seq_idx'"):
        PackwiseTrainer(_model(), _args(tmp_path), train_dataset=alpaca, sampler=sampler, collator=PackedCollator(layout="flash"))


def test_an_empty_ddp_padding_batch_adds_zero_loss_and_still_updates_the_policy(alpaca, tmp_path):
    policy = InfoBatch(len(alpaca), num_epochs=2, seed=0)
    trainer = PackwiseTrainer(_model(), _args(tmp_path), train_dataset=alpaca, sampler=PruningSampler(policy, seed=0))
    calls = []
    update = policy.update
    policy.update = lambda ids, loss: calls.append((ids.tolist(), loss.tolist())) or update(ids, loss)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, trainer.packwise_collator([]), num_items_in_batch=torch.tensor(7))
    assert float(loss) == 0.0 and calls == [([], [])]


def test_evaluate_gives_the_token_mean_loss_of_the_examples_alone(alpaca, tmp_path):
    model = _model()
    evalset = alpaca[:8]
    trainer = PackwiseTrainer(
        model, _args(tmp_path, per_device_eval_batch_size=8), train_dataset=alpaca, eval_dataset=evalset,
        sampler=PackedBatchSampler(_lengths(alpaca), max_tokens=128),
    )  # fmt: skip
    got = trainer.evaluate()["eval_loss"]
    total, tokens = 0.0, 0
    with torch.no_grad():
        for ex in evalset:
            labels = torch.tensor([ex.get("labels", ex["input_ids"])])
            total += float(token_losses(model(input_ids=torch.tensor([ex["input_ids"]]), use_cache=False).logits, labels).sum())
            tokens += int((labels[0, 1:] != -100).sum())
    assert abs(got - total / tokens) < 1e-5


def test_sft_trainer_on_text_with_a_sampler_factory(tokenizer, tmp_path):
    """TRL tokenizes the text itself; the sampler is built on the dataset it prepared."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    from packwise.integrations.hf import PackwiseSFTTrainer

    texts = [t[:300] for t in load_texts("alpaca")[:16]]
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<|pad|>", eos_token="<|endoftext|>")
    args = trl.SFTConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, max_steps=2, disable_tqdm=True, max_length=128)
    built = []

    def make(ds):
        built.append(PackedBatchSampler("input_ids", max_tokens=256, dataset=ds, seed=0))
        return built[-1]

    collator = Recording()
    trainer = PackwiseSFTTrainer(_model(), args, train_dataset=Dataset.from_dict({"text": texts}), processing_class=tok,
                                 sampler=make, collator=collator)  # fmt: skip
    assert trainer.train().global_step == 2
    ids = trainer.train_dataset["input_ids"]
    assert collator.seen == built[0].rank_batches(epoch=0)[:2]
    assert built[0].lengths.tolist() == [len(x) for x in ids] and max(map(len, ids)) <= 128


def test_infobatch_with_max_tokens_trains_on_packed_rows_and_logs_the_plain_loss(alpaca, tmp_path):
    """Issue 23 item 4: PruningSampler(max_tokens=...) gives the Trainer packed batches of the kept examples."""
    policy = InfoBatch(len(alpaca), num_epochs=3, prune_ratio=0.5, delta=0.67, seed=0)
    sampler = PruningSampler(policy, lengths=_lengths(alpaca), max_tokens=128, seed=0)
    collator = Recording()
    trainer = PackwiseTrainer(
        _model(), _args(tmp_path, num_train_epochs=3, logging_steps=1), train_dataset=alpaca, sampler=sampler, collator=collator,
    )  # fmt: skip
    trainer.train()
    sizes = policy.planned_sizes(3).tolist()
    assert sizes[0] == sizes[2] == len(alpaca) > sizes[1]
    epochs, seen = [], list(collator.seen)
    for size in sizes:  # the Trainer's batches, epoch by epoch (the policy re-plans past epochs from new scores)
        count, batches = 0, []
        while count < size:
            batches.append(seen.pop(0))
            count += len(batches[-1])
        epochs.append(batches)
    assert not seen and len(epochs[1]) < len(epochs[0])
    lengths = _lengths(alpaca)
    for e, batches in enumerate(epochs):
        ids = [i for b in batches for i in b]
        assert len(ids) == sizes[e] == len(set(ids))
        assert max(int(lengths[b].sum()) for b in batches) <= 128  # packed rows of at most max_tokens
        assert min(len(b) for b in batches) > 1
    assert epochs[2] == sampler.rank_batches(epoch=2)  # the full-data epoch, as the sampler packs it
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == trainer.state.global_step and all("plain_loss" in h for h in logs)
    first = logs[: len(epochs[0])]  # epoch 0 prunes nothing: every weight is 1
    assert all(abs(h["loss"] - h["plain_loss"]) < 1e-3 for h in first)
    pruned = logs[len(epochs[0]) : len(epochs[0]) + len(epochs[1])]
    assert sum(h["loss"] for h in pruned) > sum(h["plain_loss"] for h in pruned)  # kept losses weighted by 1/(1-r) > 1


def test_noise_scale_callback_measures_the_accumulation_micro_steps(alpaca, tmp_path):
    """GA=2: the first step's noise scale equals the estimator on reference gradients of the two
    micro-batches (token losses over the step's supervised tokens, as the Trainer computes them);
    the ramp is stepped with the step's tokens and the learning rate follows it linearly."""
    from packwise.integrations.hf import NoiseScaleCallback
    from packwise.selection import GradientNoiseScale, RampBudget

    sampler = PackedBatchSampler(_lengths(alpaca), max_tokens=160, seed=3)
    collator = Recording()
    ramp = RampBudget(320, 1280, over_tokens=600, multiple=32, lag_batches=0)
    callback = NoiseScaleCallback(ramp, rule="linear", beta=0.5)
    args = _args(tmp_path, max_steps=2, gradient_accumulation_steps=2)
    trainer = PackwiseTrainer(_model(), args, train_dataset=alpaca, sampler=sampler, collator=collator)
    trainer.add_callback(callback)
    trainer.train()

    ref = _model()
    micro = collator.seen[:2]
    supervised = sum(int((torch.tensor([alpaca[i].get("labels", alpaca[i]["input_ids"])])[0, 1:] != -100).sum()) for b in micro for i in b)
    sqnorms, grads = [], []
    for batch in micro:
        ref.zero_grad()
        total = 0.0
        for i in batch:
            ids = torch.tensor([alpaca[i]["input_ids"]])
            labels = torch.tensor([alpaca[i].get("labels", alpaca[i]["input_ids"])])
            total = total + token_losses(ref(input_ids=ids, use_cache=False).logits, labels).sum()
        (total / supervised).backward()
        g = torch.cat([p.grad.reshape(-1).double() for p in ref.parameters()])
        grads.append(g)
        sqnorms.append(4 * float(g.pow(2).sum()))  # a micro-step's share of the step: scaled to a mean gradient
    sizes = [int(_lengths(alpaca)[b].sum()) for b in micro]
    expected = GradientNoiseScale(0.5).update(sqnorms, sum(sizes) / 2, float((grads[0] + grads[1]).pow(2).sum()), sum(sizes))
    first = callback.history[0]
    assert first["step"] == 1 and first["noise_scale"] == pytest.approx(round(expected, 2), rel=1e-3)
    assert [h["step"] for h in callback.history] == [1, 2]
    assert ramp.steps == 2 and ramp.tokens_seen == sum(int(_lengths(alpaca)[b].sum()) for b in collator.seen[:4])
    assert first["budget"] > 320 and trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * ramp.budget / 320)


def test_noise_scale_callback_needs_accumulation(alpaca, tmp_path):
    from packwise.integrations.hf import NoiseScaleCallback

    sampler = PackedBatchSampler(_lengths(alpaca), max_tokens=160, seed=3)
    trainer = PackwiseTrainer(_model(), _args(tmp_path, max_steps=1), train_dataset=alpaca, sampler=sampler)
    trainer.add_callback(NoiseScaleCallback())
    with pytest.raises(ValueError, match=r"NoiseScaleCallback needs gradient_accumulation_steps >= 2 \(the micro-steps are its small batches\)"):
        trainer.train()


def test_a_budget_ramp_under_the_trainer_resumes_with_the_same_batches(alpaca, tmp_path):
    """The sampler follows a ramp stepped by NoiseScaleCallback; a checkpoint holds the ramp, and a
    fresh trainer resumed from it trains on exactly the rest of the batches."""
    from packwise.integrations.hf import NoiseScaleCallback
    from packwise.selection import RampBudget

    def run(out, resume=None):
        ramp = RampBudget(128, 256, over_tokens=1500, multiple=32, lag_batches=0)
        sampler = PackedBatchSampler(_lengths(alpaca), seed=7, budget=ramp)
        collator = Recording()
        args = _args(out, num_train_epochs=2, gradient_accumulation_steps=2, save_strategy="steps", save_steps=3)
        trainer = PackwiseTrainer(_model(), args, train_dataset=alpaca, sampler=sampler, collator=collator)
        trainer.add_callback(NoiseScaleCallback(ramp))
        trainer.train(resume_from_checkpoint=resume)
        return ramp, collator.seen

    ramp, seen_full = run(tmp_path / "a")
    assert len(ramp.changes) > 2 and ramp.changes[-1].max_tokens == 256  # the ramp ran its course
    assert sorted(i for b in seen_full for i in b) == sorted(list(range(len(alpaca))) * 2)  # each example once per epoch
    saved = load_state(tmp_path / "a" / "checkpoint-3" / STATE_FILE.format(rank=0))
    consumed = saved["budget"]["position"]  # global batches (one rank): micro-batches trained on so far
    assert saved["budget"]["steps"] == 3 and 0 < consumed < len(seen_full)
    resumed, seen_resumed = run(tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-3"))
    assert seen_resumed == seen_full[consumed:]
    assert resumed.changes == ramp.changes
