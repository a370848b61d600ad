"""SourceLossTracker.add_packed: per-source sums straight from a packed batch's per-token losses,
bit-identical to example_losses + add, with no per-example loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from packwise.packing import PackedCollator, example_losses, pack
from packwise.selection import SourceLossTracker


def _packed_batch(seed: int):
    """A real rows-shaped packed batch of random lengths, random token losses and random sources."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 33, size=int(rng.integers(2, 30)))
    p = pack(lengths, 32)
    idx = np.concatenate([p.bin(b) for b in range(p.num_bins)])
    batch = PackedCollator(shape="rows", capacity=32)([{"input_ids": np.arange(lengths[i]) + 1} for i in idx])
    tok = torch.from_numpy(rng.random(tuple(batch["labels"].shape), dtype=np.float32) * 9)
    return tok, batch, rng.integers(0, 4, size=idx.shape[0])


@pytest.mark.parametrize("seed", range(6))
def test_add_packed_gives_the_same_sums_bit_for_bit_as_example_losses_then_add(seed):
    old, new = SourceLossTracker(None, 4, 3), SourceLossTracker(None, 4, 3)
    for step in range(3):
        tok, batch, sources = _packed_batch(seed * 10 + step)
        loss, tokens = example_losses(tok, batch)
        old.add(loss, sources, tokens)
        new.add_packed(tok, batch, sources)
        assert torch.equal(old._sums, new._sums)
        old.step()
        new.step()
    assert old.last_loss.tobytes() == new.last_loss.tobytes()
    assert new.intervals_observed == 1


def test_add_packed_leaves_out_examples_past_the_sources_like_slicing():
    tok, batch, sources = _packed_batch(3)
    loss, tokens = example_losses(tok, batch)
    old, new = SourceLossTracker(None, 4, 1), SourceLossTracker(None, 4, 1)
    old.add(loss[:2], sources[:2], tokens[:2])
    new.add_packed(tok, batch, sources[:2])
    assert torch.equal(old._sums, new._sums)


def test_add_packed_refuses_a_batch_without_seq_idx_and_bad_sources():
    tok, batch, sources = _packed_batch(1)
    tracker = SourceLossTracker(None, 4, 1)
    no_seq = {k: v for k, v in batch.items() if k != "seq_idx"}
    with pytest.raises(ValueError, match=r"^add_packed needs batch\['seq_idx'\] and batch\['example_index'\]; add 'seq_idx' to the collator layout$"):
        tracker.add_packed(tok, no_seq, sources)
    with pytest.raises(ValueError, match=r"^sources\[0\] = 7 is outside \[0, 4\); pass the sampler's source ids$"):
        tracker.add_packed(tok, batch, np.full(sources.shape[0], 7))
    with pytest.raises(ValueError, match=r"^token losses have shape \(1, 2\) but batch\['labels'\] has"):
        tracker.add_packed(torch.zeros(1, 2), batch, sources)


def test_add_packed_adds_in_example_order_when_segments_are_not():
    """The host-side fast path sorts segments by example: a layout whose segments run in reverse
    example order still gives add()'s sums bit for bit."""
    tok, batch, sources = _packed_batch(4)
    n = sources.shape[0]
    ei = batch["example_index"]
    flipped = dict(batch, example_index=torch.where(ei >= 0, n - 1 - ei, ei))
    loss, tokens = example_losses(tok, flipped)
    old, new = SourceLossTracker(None, 4, 1), SourceLossTracker(None, 4, 1)
    old.add(loss, sources, tokens)
    new.add_packed(tok, flipped, sources)
    assert torch.equal(old._sums, new._sums)


@pytest.mark.parametrize("seed", range(3))
def test_add_packed_cpu_kernel_and_device_path_give_the_same_sums_bit_for_bit(seed, monkeypatch):
    """On CPU add_packed runs one numba pass; tensors on an accelerator take the torch path.  Both
    are checked here on CPU (the torch path forced), sources shorter than the batch included."""
    from packwise.selection import source_loss

    kernel, torch_path = SourceLossTracker(None, 4, 9), SourceLossTracker(None, 4, 9)
    batches = [_packed_batch(seed * 10 + step) for step in range(3)]
    for tok, batch, sources in batches:
        kernel.add_packed(tok, batch, sources[: max(1, sources.shape[0] - seed)])
    monkeypatch.setattr(source_loss, "_all_on_cpu", lambda *tensors: False)
    for tok, batch, sources in batches:
        torch_path.add_packed(tok, batch, sources[: max(1, sources.shape[0] - seed)])
    assert torch.equal(kernel._sums, torch_path._sums)
    assert kernel._sums[1].sum() > 0


def test_add_packed_refuses_a_layout_that_does_not_match_the_losses():
    tok, batch, sources = _packed_batch(2)
    tracker = SourceLossTracker(None, 4, 1)
    short = dict(batch, seq_idx=batch["seq_idx"][:, :-1])
    with pytest.raises(ValueError, match=r"^batch\['seq_idx'\] has \d+ entries but the token losses \d+; pass the collator's batch unchanged$"):
        tracker.add_packed(tok, short, sources)
    bad = dict(batch, seq_idx=torch.full_like(batch["seq_idx"], batch["example_index"].shape[0]))
    with pytest.raises(ValueError, match=r"^batch\['seq_idx'\] holds a segment id outside batch\['example_index'\]; pass the collator's batch unchanged$"):
        tracker.add_packed(tok, bad, sources)
    assert tracker._sums is None or not tracker._sums.any()
