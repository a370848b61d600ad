"""PackedCollator and the loss helpers: exact outputs, layouts, shapes, errors, DataLoader workers."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from packwise.packing import (
    LAYOUTS,
    PackedCollator,
    block_causal_mask,
    example_losses,
    flex_block_mask,
    pack,
    packed_loss,
    token_losses,
)

from conftest import load_texts

EX = [{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}, {"input_ids": [10, 11, 12, 13]}]


def _dense_reference(seq_idx: torch.Tensor) -> torch.Tensor:
    """Loop-built document-causal mask, independent of the implementation."""
    rows, width = seq_idx.shape
    out = torch.zeros(rows, 1, width, width, dtype=torch.bool)
    for r in range(rows):
        for q in range(width):
            for k in range(q + 1):
                out[r, 0, q, k] = bool(seq_idx[r, q] == seq_idx[r, k])
    return out


# --- padding-free -------------------------------------------------------------------------------


def test_padding_free_every_key_exact():
    b = PackedCollator(layout=("flash", "seq_idx", "sdpa"))(EX)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11, 12, 13]]
    assert b["labels"].tolist() == [[-100, 6, 7, -100, 9, -100, 11, 12, 13]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert b["cu_seq_lens_q"].tolist() == b["cu_seq_lens_k"].tolist() == [0, 3, 5, 9]
    assert b["cu_seq_lens_q"].dtype == b["cu_seq_lens_k"].dtype == torch.int32
    assert b["max_length_q"] == b["max_length_k"] == 4 and type(b["max_length_q"]) is int
    assert b["seq_idx"].tolist() == [[0, 0, 0, 1, 1, 2, 2, 2, 2]] and b["seq_idx"].dtype == torch.int32
    assert b["example_index"].tolist() == [0, 1, 2]
    assert b["input_ids"].dtype == b["labels"].dtype == b["position_ids"].dtype == torch.int64
    assert torch.equal(b["attention_mask"], _dense_reference(b["seq_idx"]))
    assert "loss_weight" not in b and "cu_seq_lens_unpadded" not in b


def test_layout_only_adds_its_keys():
    base = {"input_ids", "labels", "position_ids", "use_cache"}
    assert set(PackedCollator(layout="position_ids")(EX)) == base
    assert PackedCollator(layout="position_ids")(EX)["use_cache"] is False
    assert set(PackedCollator(layout="position_ids", use_cache=None)(EX)) == base - {"use_cache"}
    assert set(PackedCollator(layout="flash")(EX)) == base | {"cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"}
    assert set(PackedCollator(layout="seq_idx")(EX)) == base | {"seq_idx", "example_index"}
    assert set(PackedCollator(layout="sdpa")(EX)) == base | {"attention_mask"}
    flex = PackedCollator(layout="flex")(EX)["attention_mask"]
    assert type(flex).__name__ == "BlockMask"


def test_labels_given_and_position_start():
    ex = [{"input_ids": [5, 6, 7], "labels": [-100, -100, 7]}, {"input_ids": np.array([8, 9]), "labels": torch.tensor([1, 2])}]
    b = PackedCollator(layout="position_ids", position_start=2)(ex)
    assert b["labels"].tolist() == [[-100, -100, 7, -100, 2]]
    assert b["position_ids"].tolist() == [[2, 3, 4, 2, 3]]


def test_inputs_as_arrays_and_tensors_equal_lists():
    as_lists = PackedCollator(layout=("flash", "seq_idx"))(EX)
    mixed = [{"input_ids": np.array(EX[0]["input_ids"], np.int32)}, {"input_ids": torch.tensor(EX[1]["input_ids"])}, EX[2]]
    other = PackedCollator(layout=("flash", "seq_idx"))(mixed)
    for key in as_lists:
        a, o = as_lists[key], other[key]
        assert (a == o) if isinstance(a, int) else torch.equal(a, o), key


def test_context_parallel_padding_and_constant_cu_seq_lens():
    c = PackedCollator(layout=("flash", "seq_idx"), pad_to_multiple_of=4, max_sequences=6, pad_token_id=1)
    b = c(EX)
    assert b["input_ids"].tolist() == [[5, 6, 7, 1, 8, 9, 1, 1, 10, 11, 12, 13]]
    assert b["labels"].tolist() == [[-100, 6, 7, -100, -100, 9, -100, -100, -100, 11, 12, 13]]
    # positions run on through a sequence's own padding (one segment per sequence)
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]]
    assert b["cu_seq_lens_q"].tolist() == [0, 4, 8, 12, 12, 12, 12]
    assert b["cu_seq_lens_unpadded"].tolist() == [0, 3, 5, 9, 9, 9, 9]
    assert b["max_length_q"] == 4
    assert b["seq_idx"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]]
    with pytest.raises(ValueError, match=r"max_sequences=2 but this batch has 3 sequences"):
        PackedCollator(layout="flash", max_sequences=2)(EX)


def test_padding_free_fixed_capacity_pads_a_tail_segment():
    b = PackedCollator(layout=("flash", "seq_idx"), capacity=12)(EX)
    assert b["input_ids"].shape == (1, 12)
    assert b["labels"][0, 9:].tolist() == [-100, -100, -100]
    assert b["position_ids"][0, 9:].tolist() == [0, 1, 2]
    assert b["cu_seq_lens_q"].tolist() == [0, 3, 5, 9, 12]
    assert b["example_index"].tolist() == [0, 1, 2, -1]
    with pytest.raises(ValueError, match=r"the 3 examples take 9 tokens, more than capacity=8 of the padding-free row"):
        PackedCollator(capacity=8)(EX)


# --- rows ---------------------------------------------------------------------------------------


def test_rows_first_fit_in_given_order():
    ex = [{"input_ids": [1, 2, 3, 4]}, {"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}, {"input_ids": [10, 11]}]
    b = PackedCollator(layout=("flash", "seq_idx", "sdpa"), shape="rows", capacity=6, pad_token_id=0)(ex)
    # first fit: [4] -> row 0; [3] -> row 1; [2] -> row 0 (4 + 2 = 6); [2] -> row 1
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 8, 9], [5, 6, 7, 10, 11, 0]]
    assert b["labels"].tolist() == [[-100, 2, 3, 4, -100, 9], [-100, 6, 7, -100, 11, -100]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 1, 0]]
    assert b["cu_seq_lens_q"].tolist() == [0, 4, 6, 9, 11, 12]
    assert b["seq_idx"].tolist() == [[0, 0, 0, 0, 1, 1], [2, 2, 2, 3, 3, 4]]
    assert b["example_index"].tolist() == [0, 2, 1, 3, -1]
    assert torch.equal(b["attention_mask"], _dense_reference(b["seq_idx"]))


def test_rows_by_bin_id_in_order_of_first_appearance():
    ex = [{"input_ids": [1, 2], "bin": 9}, {"input_ids": [3, 4, 5], "bin": 4}, {"input_ids": [6, 7], "bin": 9}]
    b = PackedCollator(layout="seq_idx", shape="rows", capacity=5, pad_token_id=0)(ex)
    assert b["input_ids"].tolist() == [[1, 2, 6, 7, 0], [3, 4, 5, 0, 0]]
    assert b["example_index"].tolist() == [0, 2, -1, 1, -1]
    with pytest.raises(ValueError, match=r"bin 9 holds 4 tokens, more than capacity=3"):
        PackedCollator(shape="rows", capacity=3)(ex)
    with pytest.raises(ValueError, match=r"examples\[1\] has no 'bin' while others do"):
        PackedCollator(shape="rows", capacity=4)([ex[0], {"input_ids": [1, 2]}])


def test_rows_from_a_real_packing(tokenizer):
    """Sampler-style use: bins of a real BFD packing -> rows equal to the bins, exactly."""
    texts = load_texts("alpaca")[:200]
    ids = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    lengths = np.array([len(x) for x in ids])
    p = pack(lengths, capacity=1024)
    bins = [0, 1, 2, 3]
    items = np.concatenate([p.bin(b) for b in bins])
    bin_of = np.repeat(bins, [len(p.bin(b)) for b in bins])
    examples = [{"input_ids": ids[i], "bin": int(bo)} for i, bo in zip(items, bin_of)]
    b = PackedCollator(layout=("flash", "seq_idx"), shape="rows", capacity=1024)(examples)
    assert b["input_ids"].shape == (4, 1024)
    for r, bin_id in enumerate(bins):
        row_tokens = np.concatenate([ids[i] for i in p.bin(bin_id)])
        assert b["input_ids"][r, : row_tokens.shape[0]].tolist() == row_tokens.tolist()
        assert int((b["labels"][r] != -100).sum()) == int(row_tokens.shape[0] - len(p.bin(bin_id)))
    # without bin ids, first fit in the given order never needs more rows than the bins it was given
    plain = PackedCollator(layout="seq_idx", shape="rows", capacity=1024)([{"input_ids": e["input_ids"]} for e in examples])
    assert plain["input_ids"].shape[0] <= len(bins)
    flat_ids, flat_seq = plain["input_ids"].reshape(-1), plain["seq_idx"].reshape(-1)
    for s, e in enumerate(plain["example_index"].tolist()):
        tokens = flat_ids[flat_seq == s].tolist()
        assert tokens == (ids[items[e]] if e >= 0 else [0] * len(tokens))
    with pytest.raises(ValueError, match=r"examples\[\d+\] takes \d+ tokens .*more than capacity=64"):
        PackedCollator(shape="rows", capacity=64)(examples)


# --- empty batch and weights --------------------------------------------------------------------


@pytest.mark.parametrize("shape,capacity", [("padding_free", None), ("padding_free", 16), ("rows", 16)])
def test_empty_batch_is_one_token_with_zero_loss(shape, capacity):
    c = PackedCollator(layout=("flash", "seq_idx", "sdpa"), shape=shape, capacity=capacity, loss_weights=True, pad_token_id=3)
    b = c([])
    assert b["input_ids"].tolist() == [[3]] and b["labels"].tolist() == [[-100]]
    assert b["position_ids"].tolist() == [[0]] and b["seq_idx"].tolist() == [[0]]
    assert b["cu_seq_lens_q"].tolist() == [0, 1] and b["max_length_q"] == 1
    assert b["attention_mask"].tolist() == [[[[True]]]]
    assert b["loss_weight"].tolist() == [[0.0]]
    assert b["example_index"].tolist() == [-1]
    logits = torch.randn(1, 1, 7, requires_grad=True)
    for normalize in ("token", "sequence"):
        loss = packed_loss(token_losses(logits, b["labels"]), b, normalize)
        assert loss.item() == 0.0
        loss.backward()  # a padded DDP rank still runs backward
    assert "loss_weight" not in PackedCollator()([])


def test_loss_weight_per_token():
    ex = [dict(EX[0], weight=2.0), dict(EX[1], weight=torch.tensor(0.5))]
    b = PackedCollator(layout="flash", pad_to_multiple_of=2)(ex)
    assert b["loss_weight"].tolist() == [[2.0, 2.0, 2.0, 0.0, 0.5, 0.5]]
    assert b["loss_weight"].dtype == torch.float32
    b = PackedCollator(layout="flash", loss_weights=True)([ex[0], EX[1]])
    assert b["loss_weight"].tolist() == [[2.0, 2.0, 2.0, 1.0, 1.0]]
    assert "loss_weight" not in PackedCollator(loss_weights=False)(ex)


def test_loss_helpers_exact():
    ex = [{"input_ids": [1, 2, 3], "weight": 2.0}, {"input_ids": [4, 5, 6, 7], "labels": [-100, -100, 6, 7], "weight": 0.5}]
    b = PackedCollator(layout="seq_idx", shape="rows", capacity=4)(ex)
    assert b["example_index"].tolist() == [0, -1, 1]
    tok = torch.tensor([[9.0, 1.0, 3.0, 9.0], [9.0, 9.0, 4.0, 6.0]])  # 9s sit on ignored labels
    loss, n = example_losses(tok, b)
    assert loss.tolist() == [2.0, 5.0] and n.tolist() == [2, 2]
    assert packed_loss(tok, b).item() == pytest.approx((2 * (1 + 3) + 0.5 * (4 + 6)) / 4)
    assert packed_loss(tok, b, "sequence").item() == pytest.approx((2 * 2.0 + 0.5 * 5.0) / 2)
    assert packed_loss(tok, b, denominator=10.0).item() == pytest.approx(13.0 / 10)
    with pytest.raises(ValueError, match="normalize must be one of"):
        packed_loss(tok, b, "batch")
    no_seq = PackedCollator(layout="flash")(ex)
    with pytest.raises(ValueError, match="add 'seq_idx' to the collator layout"):
        packed_loss(torch.zeros(1, 7), no_seq, "sequence")


def test_allow_unlabeled_adds_nothing():
    ex = [{"input_ids": [1, 2, 3]}, {"input_ids": [7]}]
    b = PackedCollator(layout="seq_idx", allow_unlabeled=True)(ex)
    assert b["labels"].tolist() == [[-100, 2, 3, -100]]
    loss, n = example_losses(torch.tensor([[0.0, 1.0, 2.0, 5.0]]), b)
    assert loss.tolist() == [1.5, 0.0] and n.tolist() == [2, 0]
    assert packed_loss(torch.tensor([[0.0, 1.0, 2.0, 5.0]]), b, "sequence").item() == 1.5


def test_token_losses_shift_and_ignore():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = 5.0
    out = token_losses(logits, torch.tensor([[-100, 2, -100]]))
    expected = torch.nn.functional.cross_entropy(logits[0, :1], torch.tensor([2]))
    assert out[0, 0].item() == 0.0 and out[0, 2].item() == 0.0
    assert out[0, 1].item() == pytest.approx(expected.item(), abs=1e-7)


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "examples,message",
    [
        ([{"input_ids": [1, 2]}, {"input_ids": []}], r"examples\[1\]: input_ids is empty; drop empty examples"),
        ([{"input_ids": [1, 2]}, {"text": "x"}], r"examples\[1\] has no 'input_ids'"),
        ([{"input_ids": [1, 2], "labels": [1]}], r"examples\[0\]: labels has 1 entries but input_ids has 2"),
        ([{"input_ids": [1, 2]}, {"input_ids": [3, 4], "labels": [-100, -100]}], r"examples\[1\]: every label is -100"),
        ([{"input_ids": [1, 2]}, {"input_ids": [7]}], r"examples\[1\]: every label is -100"),
        ([{"input_ids": [1, 2]}, {"input_ids": [3, -4]}], r"examples\[1\]: input_ids has a negative token id \(-4\)"),
        ([{"input_ids": [1, 2], "labels": [1, -5]}], r"examples\[0\]: labels\[1\] = -5"),
        ([{"input_ids": np.array([1.0, 2.0])}], r"examples\[0\]\['input_ids'\] must hold integers, got dtype float64"),
        ([{"input_ids": np.zeros((2, 2), np.int64)}], r"examples\[0\]\['input_ids'\] must be 1-D"),
        ([{"input_ids": [1, 2]}, {"input_ids": [1.5, 2.5]}], r"examples\[1\]\['input_ids'\] must hold integers, got dtype float64"),
        ([{"input_ids": [1, 2]}, {"input_ids": [1, [2, 3]]}], r"examples\[1\]\['input_ids'\] is not a flat sequence of token ids"),
        ([{"input_ids": [1, 2], "weight": 1.0}, {"input_ids": [1, 2]}], r"examples\[1\] has no 'weight' but examples\[0\] has one"),
        ([{"input_ids": [1, 2], "weight": -1.0}], r"examples\[0\]: weight = -1.0; weights must be finite and >= 0"),
        ({"input_ids": [1, 2]}, r"got a single dict; wrap it in a list"),
    ],
)
def test_bad_examples(examples, message):
    with pytest.raises(ValueError, match=message):
        PackedCollator(layout=("flash", "seq_idx"))(examples)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"layout": "flash_attention_2"}, r"layout 'flash_attention_2' is unknown"),
        ({"layout": ()}, r"layout must name at least one of"),
        ({"layout": ("sdpa", "flex")}, r"'sdpa' and 'flex' both fill attention_mask"),
        ({"shape": "grid"}, r"shape must be one of \('padding_free', 'rows'\)"),
        ({"shape": "rows"}, r"shape='rows' needs capacity"),
        ({"capacity": 0}, r"capacity must be a positive integer, got 0"),
        ({"capacity": 10, "pad_to_multiple_of": 4}, r"capacity=10 is not a multiple of pad_to_multiple_of=4"),
        ({"position_start": -1}, r"position_start must be an integer >= 0"),
        ({"pad_token_id": -100}, r"pad_token_id must be a token id >= 0"),
        ({"loss_weights": "yes"}, r"loss_weights must be None \(auto\), True or False"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PackedCollator(**kwargs)


# --- masks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [2, 3, 4, 16])
def test_flex_block_mask_matches_dense(block):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 12, size=12)
    assert lengths.sum() >= 50
    seq = torch.from_numpy(np.repeat(np.arange(12), lengths)[None].astype(np.int32))
    seq = torch.cat([seq[:, :40], seq[:, 10:50] + 100])  # two rows, non-decreasing each
    bm = flex_block_mask(seq, block_size=block)
    dense = block_causal_mask(seq)
    from torch.nn.attention.flex_attention import create_mask

    assert torch.equal(create_mask(bm.mask_mod, 2, 1, 40, 40, device="cpu"), dense)
    # the block layout marks every block with an allowed pair, and calls a block full only if it is
    blocks = bm.to_dense().bool()
    nb = blocks.shape[-1]
    padded = torch.zeros(2, 1, nb * block, nb * block, dtype=torch.bool)
    padded[..., :40, :40] = dense
    any_allowed = padded.reshape(2, 1, nb, block, nb, block).any(dim=(3, 5))
    assert torch.equal(blocks, any_allowed)
    full = torch.zeros_like(blocks)
    for r in range(2):
        for q in range(nb):
            for i in range(int(bm.full_kv_num_blocks[r, 0, q])):
                full[r, 0, q, int(bm.full_kv_indices[r, 0, q, i])] = True
    beyond = torch.ones_like(padded)  # slots past the row end do not exist: they never veto "full"
    beyond[..., :40, :40] = dense
    all_allowed = beyond.reshape(2, 1, nb, block, nb, block).all(dim=(3, 5))
    assert not bool((full & ~all_allowed).any())
    off_diagonal = ~torch.eye(nb, dtype=torch.bool)
    assert torch.equal(full, all_allowed & off_diagonal)  # every skippable block is skipped
    assert (int(full.sum()) > 0) == (block <= 4)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_matches_sdpa_on_cpu():
    from torch.nn.attention.flex_attention import flex_attention

    b = PackedCollator(layout=("flex", "seq_idx"), shape="rows", capacity=8, flex_block_size=4)(EX)
    q, k, v = torch.randn(3, b["input_ids"].shape[0], 2, 8, 4).unbind(0)
    out = flex_attention(q, k, v, block_mask=b["attention_mask"])
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=block_causal_mask(b["seq_idx"]))
    assert (out - ref).abs().max().item() <= 1e-6


# --- DataLoader, determinism, import hygiene -----------------------------------------------------


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, ids):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "weight": 1.0 + (i % 3)}


def test_dataloader_workers_pickle_every_layout(tokenizer):
    ids = [e.ids[:64] for e in tokenizer.encode_batch(load_texts("ag_news")[:48], add_special_tokens=False)]
    collator = PackedCollator(layout=("flex", "flash", "seq_idx"), shape="rows", capacity=128, pad_to_multiple_of=2)
    ds = _Tokens(ids)
    in_process = [collator([ds[i] for i in range(s, s + 8)]) for s in range(0, 48, 8)]
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, collate_fn=collator)
    got = list(loader)
    assert len(got) == 6
    for a, b in zip(in_process, got):
        assert set(a) == set(b)
        for key in a:
            if key == "attention_mask":
                assert torch.equal(a[key].to_dense(), b[key].to_dense())
                assert torch.equal(a[key].mask_mod.seq_idx, b[key].mask_mod.seq_idx)
            elif isinstance(a[key], int):
                assert a[key] == b[key]
            else:
                assert torch.equal(a[key], b[key]), key
    assert pickle.loads(pickle.dumps(collator)).layout == collator.layout


def test_import_packing_does_not_import_torch():
    code = "import sys, packwise.packing; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_layouts_constant():
    assert LAYOUTS == ("position_ids", "flash", "seq_idx", "sdpa", "flex")


# --- invariants on random batches ---------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(2, 20), min_size=1, max_size=12),
    shape=st.sampled_from(["padding_free", "rows"]),
    multiple=st.sampled_from([1, 2, 4]),
    start=st.integers(0, 3),
)
def test_layout_invariants(lengths, shape, multiple, start):
    examples = [{"input_ids": list(range(100 * i + 1, 100 * i + 1 + n))} for i, n in enumerate(lengths)]
    capacity = 24 if shape == "rows" else None
    b = PackedCollator(layout=("flash", "seq_idx"), shape=shape, capacity=capacity, pad_to_multiple_of=multiple, position_start=start)(
        examples
    )
    ids, labels, pos, seq = (b[k].reshape(-1) for k in ("input_ids", "labels", "position_ids", "seq_idx"))
    cu = b["cu_seq_lens_q"].tolist()
    example_index = b["example_index"].tolist()
    # segments tile the buffer in order; seq_idx numbers them; cu_seq_lens are their bounds
    assert cu[0] == 0 and cu[-1] == ids.shape[0] and len(cu) == len(example_index) + 1
    assert torch.equal(seq, torch.repeat_interleave(torch.arange(len(cu) - 1, dtype=torch.int32), torch.tensor(cu).diff()))
    assert b["max_length_q"] == max(np.diff(cu))
    assert sorted(e for e in example_index if e >= 0) == list(range(len(lengths)))
    for s, e in enumerate(example_index):
        a, z = cu[s], cu[s + 1]
        assert pos[a:z].tolist() == list(range(start, start + z - a))  # restart per segment
        assert labels[a] == -100  # nothing predicts across a boundary
        if e < 0:
            assert (labels[a:z] == -100).all() and (ids[a:z] == 0).all()
            continue
        n = lengths[e]
        assert ids[a : a + n].tolist() == examples[e]["input_ids"]
        assert labels[a + 1 : a + n].tolist() == examples[e]["input_ids"][1:]
        assert (labels[a + n : z] == -100).all() and z - a == -(-n // multiple) * multiple
    # every example's tokens are there exactly once, and nothing else is trained on
    assert int((labels != -100).sum()) == sum(n - 1 for n in lengths)
    if shape == "rows":
        assert b["input_ids"].shape[1] == 24 and all(
            len({r for r in range(b["input_ids"].shape[0]) if (b["seq_idx"][r] == s).any()}) == 1 for s in range(len(cu) - 1)
        )
