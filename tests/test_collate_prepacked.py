"""Already-packed rows (TRL ``pack_dataset``'s ``seq_lengths``, restarting ``position_ids``) fed to
``PackedCollator`` are collated as the separate sequences they hold: the same layout packwise builds
for those sequences given one by one (issue 23, item 5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from packwise.packing import PackedCollator

from conftest import load_texts


def _byte_sequences(n: int, max_len: int) -> list[list[int]]:
    """Real alpaca texts as byte-level token ids (1..256), cut to ``max_len``."""
    return [[b + 1 for b in t.encode("utf-8")[:max_len]] for t in load_texts("alpaca")[:n]]


def _assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(got[key], value), key
        else:
            assert got[key] == value, key


def _trl_rows(seqs: list[list[int]], seq_length: int) -> list[dict]:
    from datasets import Dataset
    from trl import pack_dataset

    packed = pack_dataset(Dataset.from_dict({"input_ids": seqs}), seq_length, strategy="bfd")
    return [dict(r) for r in packed]


def _parts(row: dict) -> list[list[int]]:
    bounds = np.concatenate([[0], np.cumsum(row["seq_lengths"])])
    return [row["input_ids"][a:b] for a, b in zip(bounds[:-1], bounds[1:])]


@pytest.mark.parametrize("layout", [("flash", "seq_idx"), "position_ids", "sdpa"])
def test_trl_pack_dataset_rows_collate_as_their_sequences(layout):
    rows = _trl_rows(_byte_sequences(40, 200), 512)
    assert all(len(r["seq_lengths"]) > 1 for r in rows[:2])  # the rows really hold several documents
    batch = rows[:2]
    want = PackedCollator(layout)([{"input_ids": s} for r in batch for s in _parts(r)])
    got = PackedCollator(layout)(batch)
    _assert_same(got, want)
    assert int((got["position_ids"][0] == 0).sum()) == sum(len(r["seq_lengths"]) for r in batch)


def test_trl_rows_keep_their_rows_in_row_shape():
    rows = _trl_rows(_byte_sequences(40, 200), 512)[:3]
    want = PackedCollator("position_ids", shape="rows", capacity=512)(
        [{"input_ids": s, "bin": i} for i, r in enumerate(rows) for s in _parts(r)]
    )
    got = PackedCollator("position_ids", shape="rows", capacity=512)(rows)
    _assert_same(got, want)
    assert got["input_ids"].shape == (3, 512)


def test_restarting_position_ids_split_the_row_and_keep_labels_and_weight():
    a, b, c = _byte_sequences(3, 30)
    row = {
        "input_ids": a + b,
        "labels": [-100] * 5 + a[5:] + b,
        "position_ids": list(range(len(a))) + list(range(len(b))),
        "weight": 2.0,
    }
    got = PackedCollator()([row, {"input_ids": c, "weight": 1.0}])
    want = PackedCollator()(
        [
            {"input_ids": a, "labels": [-100] * 5 + a[5:], "weight": 2.0},
            {"input_ids": b, "weight": 2.0},
            {"input_ids": c, "weight": 1.0},
        ]
    )
    _assert_same(got, want)
    assert got["cu_seq_lens_q"].tolist() == [0, len(a), len(a) + len(b), len(a) + len(b) + len(c)]


def test_position_ids_of_one_sequence_change_nothing():
    (a,) = _byte_sequences(1, 50)
    _assert_same(PackedCollator()([{"input_ids": a, "position_ids": list(range(len(a)))}]), PackedCollator()([{"input_ids": a}]))


def test_packed_rows_that_cannot_be_honoured_are_refused_with_the_fix():
    a, b = _byte_sequences(2, 20)
    with pytest.raises(ValueError) as e:
        PackedCollator()([{"input_ids": a + b, "seq_lengths": [len(a), len(b) + 1]}])
    assert str(e.value) == (
        f"examples[0]: seq_lengths [{len(a)}, {len(b) + 1}] must be positive integers summing to the {len(a) + len(b)} "
        f"input_ids of the row; recompute them or drop the column (a plain row is one sequence)"
    )
    with pytest.raises(ValueError) as e:
        PackedCollator()([{"input_ids": a}, {"input_ids": a + b, "position_ids": list(range(len(a))) + list(range(7, 7 + len(b)))}])
    assert str(e.value) == (
        f"examples[1]: position_ids[{len(a)}] = 7 starts a sequence at a position other than 0; the collator "
        f"numbers each sequence from position_start, so split a continued document into its own example or drop position_ids"
    )
    with pytest.raises(ValueError) as e:
        PackedCollator()(
            [{"input_ids": a + b, "seq_lengths": [len(a) + len(b)], "position_ids": list(range(len(a))) + list(range(len(b)))}]
        )
    assert str(e.value) == (
        f"examples[0]: seq_lengths [{len(a) + len(b)}] disagree with the sequences its position_ids restart at "
        f"([{len(a)}, {len(b)}]); drop one of the two columns"
    )
