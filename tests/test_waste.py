"""waste_report: every strategy's numbers, hand-computed."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from packwise.packing import ALGORITHMS, pack, waste_report

LENGTHS = np.array([100, 20, 512, 300, 64, 64, 10, 400])


def test_padded_strategies_exact():
    r = waste_report(LENGTHS, capacity=512, batch_size=2, seed=0)
    real = 1470
    assert (r.num_sequences, r.total_tokens, r.lower_bound_l1, r.max_length) == (8, real, 3, 512)
    pad = r["pad_to_max"]
    assert (pad.rows, pad.steps, pad.slots) == (8, 4, 8 * 512)
    assert pad.padding_fraction == pytest.approx(1 - real / 4096)
    assert pad.attention_dense == 8 * 512**2
    # bucketed: sorted 512,400 | 300,100 | 64,64 | 20,10, each pair padded to its longest
    bucketed = r["bucketed_batches"]
    assert bucketed.slots == 2 * 512 + 2 * 300 + 2 * 64 + 2 * 20
    assert bucketed.attention_dense == 2 * (512**2 + 300**2 + 64**2 + 20**2)
    assert bucketed.attention_masked == float((LENGTHS.astype(float) ** 2).sum())
    assert bucketed.vs_lower_bound == pytest.approx(bucketed.slots / (3 * 512))
    # random: the seed's permutation, batches of two padded to their longest
    perm = np.random.default_rng(0).permutation(8)
    shuffled = LENGTHS[perm]
    expected = sum(2 * max(shuffled[i : i + 2]) for i in range(0, 8, 2))
    assert r["random_batches"].slots == expected


def test_packers_match_pack_and_the_best_is_a_packer():
    r = waste_report(LENGTHS, capacity=512, batch_size=2)
    assert [s.name for s in r.strategies] == ["pad_to_max", "random_batches", "bucketed_batches", *ALGORITHMS]
    for algorithm in ALGORITHMS:
        p = pack(LENGTHS, 512, algorithm)
        s = r[algorithm]
        assert (s.rows, s.real_tokens, s.slots) == (p.num_bins, p.total_tokens, p.num_bins * 512)
        assert s.sequences_per_row == pytest.approx(8 / p.num_bins)
        assert s.steps == -(-p.num_bins // 2)
    assert r["bfd"].rows == 3 and r["bfd"].vs_lower_bound == 1.0
    assert r.best().name == "bfd"


def test_truncation_is_counted_the_same_way_for_every_strategy():
    r = waste_report(np.array([10, 30, 5]), capacity=20, batch_size=3)
    for s in r.strategies:
        assert s.truncation_fraction == pytest.approx(10 / 45), s.name
        assert s.real_tokens == 35
    split = waste_report(np.array([10, 30, 5]), capacity=20, batch_size=3, oversize="split")
    assert split["bfd"].truncation_fraction == 0.0 and split["bfd"].real_tokens == 45


def test_to_dict_is_json_ready_and_unknown_strategy_is_named():
    r = waste_report(LENGTHS, capacity=512, algorithms=("bfd",))
    data = json.loads(json.dumps(r.to_dict()))
    assert [s["name"] for s in data["strategies"]] == ["pad_to_max", "random_batches", "bucketed_batches", "bfd"]
    with pytest.raises(KeyError, match=re.escape("no strategy 'ffd'")):
        r["ffd"]


def test_bad_input():
    with pytest.raises(ValueError, match=re.escape("batch_size must be >= 1 token, got 0")):
        waste_report(LENGTHS, 512, batch_size=0)
    with pytest.raises(ValueError, match=re.escape("lengths[0] = 0")):
        waste_report(np.array([0, 3]), 512)


def test_real_corpus_packing_beats_padding(real_lengths):
    r = waste_report(real_lengths["alpaca"], capacity=1024, batch_size=8)
    assert r["bfd"].padding_fraction < 0.01
    assert r["bucketed_batches"].padding_fraction < r["random_batches"].padding_fraction
    assert r["random_batches"].padding_fraction < r["pad_to_max"].padding_fraction
    assert r["bfd"].attention_masked < r["bfd"].attention_dense
