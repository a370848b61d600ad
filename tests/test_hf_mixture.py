"""``PackwiseTrainer`` with a ``MixtureSampler`` and ODM, run the way a user runs it (``trainer.train()``,
checkpoints, resume) on a random tiny Llama and real text of three shared sources: per-source loss
logged, the policy fed once per interval, and a mid-epoch resume giving the same batches and weights."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import load_texts

transformers = pytest.importorskip("transformers", reason="transformers is a test extra (pip install packwise[dev])")
from test_hf_trainer import Recording, _args, _model  # noqa: E402

from packwise.integrations.hf import STATE_FILE, PackwiseTrainer  # noqa: E402
from packwise.samplers import MixtureSampler, load_state  # noqa: E402
from packwise.selection import ODM  # noqa: E402

NAMES = ["alpaca", "ag_news", "wiki"]


@pytest.fixture(scope="module")
def mixed(tokenizer):
    """12 real examples of each source, 4..60 tokens."""
    data, groups = [], []
    for s, name in enumerate(NAMES):
        for i, enc in enumerate(tokenizer.encode_batch(load_texts(name)[:12], add_special_tokens=False)):
            data.append({"input_ids": enc.ids[: 4 + (13 * i) % 57]})
            groups.append(s)
    return data, np.array(groups)


def _sampler(mixed):
    data, groups = mixed
    lengths = np.array([len(d["input_ids"]) for d in data])
    return MixtureSampler(lengths, groups, None, max_tokens=96, names=NAMES, policy=ODM(3), update_every=2,
                          window=2, tokens_per_epoch=8 * 96, seed=5)  # fmt: skip


def _run(mixed, out, resume=None, **kw):
    collator = Recording()
    args = _args(out, num_train_epochs=3, save_strategy="steps", save_steps=10, logging_steps=2, **kw)
    trainer = PackwiseTrainer(_model(), args, train_dataset=mixed[0], sampler=_sampler(mixed), collator=collator)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, collator.seen


def test_mixture_logs_per_source_loss_and_feeds_odm_once_per_interval(mixed, tmp_path):
    trainer, seen = _run(mixed, tmp_path)
    sampler = trainer.packwise_sampler
    steps = trainer.state.global_step
    assert steps == 3 * len(sampler) and len(seen) == steps
    tracker = trainer.packwise_mixture
    assert tracker.steps == steps and tracker.intervals_observed == steps // 2
    policy = sampler.policy
    assert policy._updates + len(policy._pending) == steps // 2  # every interval observed once
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all({f"loss/{n}" for n in NAMES} & set(h) for h in logged)
    # the per-source loss logged is the token mean over the last interval's examples of that source
    last = logged[-1]
    assert {k for k in last if k.startswith("loss/")} <= {f"loss/{n}" for n in NAMES}
    assert not np.allclose(policy.estimated_reward, 0.0)  # ODM learned from the losses
    # late intervals: exploration decayed, the weights moved away from uniform
    late = sampler._asked[max(sampler._asked)]
    assert abs(float(late.sum()) - 1.0) < 1e-12 and np.abs(late - 1 / 3).max() > 1e-4


def test_resume_with_odm_gives_the_same_following_batches_and_weights(mixed, tmp_path):
    full, seen_full = _run(mixed, tmp_path / "a")
    per_epoch = len(full.packwise_sampler)
    ckpt = tmp_path / "a" / "checkpoint-10"
    saved = load_state(ckpt / STATE_FILE.format(rank=0))
    assert (saved["epoch"], saved["batches_consumed"]) == (10 // per_epoch, 10 % per_epoch)
    assert 0 < saved["batches_consumed"] and saved["mixture_loss"]["steps"] == 10
    assert saved["sampler"]["policy"]["kind"] == "ODM"
    resumed, seen_resumed = _run(mixed, tmp_path / "b", resume=str(ckpt))
    assert seen_resumed == seen_full[10:]
    a, b = full.packwise_sampler, resumed.packwise_sampler
    later = sorted(k for k in a._asked if k >= 6)
    assert later and all(np.allclose(a._asked[k], b._asked[k], rtol=0, atol=1e-9) for k in later)
    assert np.allclose(a.policy.estimated_reward, b.policy.estimated_reward, rtol=0, atol=1e-6)
    worst = max((x - y).abs().max().item() for x, y in zip(full.model.parameters(), resumed.model.parameters()))
    assert worst < 1e-6


def test_ignore_data_skip_with_a_mixture_is_refused(mixed, tmp_path):
    _run(mixed, tmp_path / "a", max_steps=10)
    with pytest.raises(ValueError, match=r"^ignore_data_skip=True restarts the epoch, but a MixtureSampler's plan"):
        _run(mixed, tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-10"), ignore_data_skip=True)
