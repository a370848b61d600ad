"""BucketBatchSampler / PackedBatchSampler on real token lengths: coverage, DDP dealing, budgets,
statistics, resume and errors (in one process; real multi-process DDP is in test_samplers_ddp.py)."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.utils.data import DataLoader

from packwise.samplers import BucketBatchSampler, PackedBatchSampler, estimate_boundaries, resolve_lengths


# --- helpers ------------------------------------------------------------------------------------


def make(kind: str, lengths, **kw):
    if kind == "bucket":
        kw.setdefault("max_tokens", 4096)
        return BucketBatchSampler(lengths, **kw)
    kw.setdefault("max_tokens", 2048)
    return PackedBatchSampler(lengths, **kw)


def all_ranks(kind, lengths, replicas, **kw):
    return [list(make(kind, lengths, num_replicas=replicas, rank=r, **kw)) for r in range(replicas)]


def pad_collate(examples):
    """A small padded collator; an empty example list is a valid zero-loss batch."""
    if not examples:
        return {"index": torch.zeros(0, dtype=torch.long), "input_ids": torch.zeros(1, 0, dtype=torch.long), "loss_weight": 0.0}
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.zeros(len(examples), width, dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e["input_ids"])] = torch.as_tensor(e["input_ids"])
    return {"index": torch.tensor([e["index"] for e in examples]), "input_ids": ids, "loss_weight": 1.0}


class TokenDataset(torch.utils.data.Dataset):
    def __init__(self, ids):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"index": i, "input_ids": self.ids[i]}


@pytest.fixture(scope="module")
def alpaca(real_lengths):
    return real_lengths["alpaca"]


@pytest.fixture(scope="module")
def c4(real_lengths):
    return real_lengths["c4"]


# --- coverage, equal counts, determinism ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["bucket", "packed"])
@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_every_example_once_with_equal_counts(kind, replicas, alpaca):
    per_rank = all_ranks(kind, alpaca, replicas, seed=7)
    expected = len(make(kind, alpaca, num_replicas=replicas, rank=0, seed=7))
    assert [len(b) for b in per_rank] == [expected] * replicas
    seen = np.sort(np.concatenate([np.asarray(b, np.int64) for batches in per_rank for b in batches]))
    np.testing.assert_array_equal(seen, np.arange(alpaca.shape[0]))
    stats = make(kind, alpaca, num_replicas=replicas, rank=0, seed=7).stats()
    empties = sum(1 for batches in per_rank for b in batches if not b)
    assert stats.empty_batches == empties
    assert stats.examples == alpaca.shape[0] and stats.dropped_last_examples == 0
    assert stats.batches + empties == expected * replicas


@pytest.mark.parametrize("kind", ["bucket", "packed"])
def test_same_seed_same_plan_new_epoch_new_order(kind, alpaca):
    a = make(kind, alpaca, seed=3, num_replicas=2, rank=1)
    b = make(kind, alpaca, seed=3, num_replicas=2, rank=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    assert first != second
    assert list(make(kind, alpaca, seed=4, num_replicas=2, rank=1)) != first
    b.set_epoch(1)
    assert list(b) == second  # a plan is a pure function of (lengths, seed, epoch, world, settings)


def test_unshuffled_bucket_batches_come_in_bucket_order(alpaca):
    s = BucketBatchSampler(alpaca, max_tokens=4096, buckets=[100, 200, 400], shuffle=False, num_replicas=1, rank=0)
    buckets = [np.searchsorted(s.boundaries[0], alpaca[b], side="left") for b in s]
    firsts = [int(k[0]) for k in buckets]
    assert all((k == k[0]).all() for k in buckets)
    assert firsts == sorted(firsts)
    assert list(s)[0] == [int(i) for i in np.flatnonzero(alpaca <= 100)[: len(list(s)[0])]]


# --- budgets and batch shapes --------------------------------------------------------------------


@pytest.mark.parametrize("replicas", [1, 3])
def test_bucket_budget_and_single_bucket_batches(replicas, real_lengths):
    lengths = real_lengths["ag_news"]
    for r in range(replicas):
        s = BucketBatchSampler(lengths, max_tokens=2000, buckets=8, num_replicas=replicas, rank=r, seed=1)
        edges = s.boundaries[0]
        for batch in s:
            if not batch:
                continue
            ls = lengths[batch]
            assert len(batch) * int(ls.max()) <= 2000
            keys = np.searchsorted(edges, ls, side="left")
            assert (keys == keys[0]).all()


def test_bucket_fixed_batch_size(alpaca):
    s = BucketBatchSampler(alpaca, batch_size=16, buckets=4, num_replicas=1, rank=0, seed=0)
    sizes = sorted(len(b) for b in s)
    assert sizes[-1] == 16
    edges = s.boundaries[0]
    per_bucket = np.bincount(np.searchsorted(edges, alpaca, side="left"))
    assert sum(1 for x in sizes if x < 16) <= per_bucket.shape[0]  # at most one short batch per bucket
    assert len(s) == int(sum(-(-c // 16) for c in per_bucket))


@pytest.mark.parametrize("algorithm", ["bfd", "ffd", "first_fit", "next_fit", "window_bfd"])
def test_packed_budget_and_counts(algorithm, c4):
    s = PackedBatchSampler(c4, max_tokens=12000, algorithm=algorithm, num_replicas=1, rank=0, seed=2)
    batches = list(s)
    assert all(int(c4[b].sum()) <= 12000 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(c4.shape[0]))
    assert s.stats().tokens == int(c4.sum())
    assert s.stats().slots == 12000 * len(batches)


def test_packed_rows_per_batch_refit_into_rows(c4):
    s = PackedBatchSampler(c4, max_tokens=12000, rows_per_batch=4, num_replicas=2, rank=0, seed=5)
    single = PackedBatchSampler(c4, max_tokens=12000, num_replicas=1, rank=0, seed=5)
    total = sum(len(b) for r in range(2) for b in PackedBatchSampler(c4, max_tokens=12000, rows_per_batch=4, num_replicas=2, rank=r, seed=5))
    assert total == c4.shape[0]
    assert s.stats().batches == -(-single.stats().batches // 4)
    for batch in s:
        rows, used = 0, 12000
        for i in batch:  # next fit in batch order rebuilds at most rows_per_batch rows
            if used + c4[i] > 12000:
                rows, used = rows + 1, 0
            used += int(c4[i])
        assert rows <= 4


def test_first_fit_keeps_the_shuffled_order_inside_packs(alpaca):
    keep = PackedBatchSampler(alpaca, max_tokens=2048, algorithm="first_fit", shuffle=False, num_replicas=1, rank=0)
    batches = list(keep)
    assert all(b == sorted(b) for b in batches)
    assert batches[0][0] == 0
    bfd = list(PackedBatchSampler(alpaca, max_tokens=2048, shuffle=False, num_replicas=1, rank=0))
    assert any(b != sorted(b) for b in bfd)  # best fit places longest first
    assert all(list(alpaca[b]) == sorted(alpaca[b], reverse=True) for b in bfd)


def test_oversize_policies(c4):
    with pytest.raises(ValueError, match=r"lengths\[\d+\] = \d+ is longer than max_tokens=4096 \(\d+ examples are\)"):
        PackedBatchSampler(c4, max_tokens=4096)
    with pytest.raises(ValueError, match=r"longer than max_tokens=4096 .*oversize='drop'"):
        BucketBatchSampler(c4, max_tokens=4096)
    long = int((c4 > 4096).sum())
    dropped = PackedBatchSampler(c4, max_tokens=4096, oversize="drop", num_replicas=1, rank=0)
    seen = [i for b in dropped for i in b]
    assert len(seen) == c4.shape[0] - long and all(c4[i] <= 4096 for i in seen)
    assert dropped.stats().dropped_oversize == long
    trunc = PackedBatchSampler(c4, max_tokens=4096, oversize="truncate", num_replicas=1, rank=0)
    assert sorted(i for b in trunc for i in b) == list(range(c4.shape[0]))
    assert trunc.stats().truncated_tokens == int((c4[c4 > 4096] - 4096).sum())
    assert all(int(np.minimum(c4[b], 4096).sum()) <= 4096 for b in trunc)
    bucket = BucketBatchSampler(c4, max_tokens=4096, oversize="drop", num_replicas=1, rank=0)
    assert bucket.stats().dropped_oversize == long and sum(len(b) for b in bucket) == c4.shape[0] - long


# --- distributed dealing -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bucket", "packed"])
def test_drop_last_is_counted(kind, alpaca):
    replicas = 3
    per_rank = all_ranks(kind, alpaca, replicas, seed=11, drop_last=True)
    stats = make(kind, alpaca, num_replicas=replicas, rank=0, seed=11, drop_last=True).stats()
    seen = [i for batches in per_rank for b in batches for i in b]
    assert len(seen) == len(set(seen)) == stats.examples
    assert stats.examples + stats.dropped_last_examples == alpaca.shape[0]
    assert all(b for batches in per_rank for b in batches)  # no empty batch with drop_last
    full = make(kind, alpaca, num_replicas=replicas, rank=0, seed=11).stats()
    assert stats.dropped_last_batches == full.batches % replicas
    assert stats.batches_per_rank == full.batches // replicas


def test_work_per_rank_is_the_cost_model(c4):
    w = 1 / 2048
    per_rank = all_ranks("packed", c4, 3, seed=0, attention_weight=w, max_tokens=12000)
    stats = make("packed", c4, num_replicas=3, rank=0, seed=0, attention_weight=w, max_tokens=12000).stats()
    cost = [sum(float(c4[b].sum()) + w * float((c4[b].astype(np.float64) ** 2).sum()) for b in batches) for batches in per_rank]
    np.testing.assert_allclose(stats.work_per_rank, cost, rtol=1e-12)
    assert stats.imbalance == pytest.approx(max(cost) / np.mean(cost))


def test_quadratic_cost_balances_attention_across_ranks(real_lengths):
    lengths = np.concatenate([real_lengths["c4"], real_lengths["glaive"], real_lengths["alpaca"]])
    replicas = 4

    def sq_imbalance(weight):
        sq = []
        for r in range(replicas):
            s = PackedBatchSampler(lengths, max_tokens=12000, num_replicas=replicas, rank=r, seed=0, attention_weight=weight)
            sq.append(sum(float((lengths[b].astype(np.float64) ** 2).sum()) for b in s))
        return max(sq) / np.mean(sq)

    tokens_only, quadratic = sq_imbalance(0.0), sq_imbalance(1.0 / 512)
    assert quadratic < tokens_only - 0.1  # 59 bins over 4 ranks: 1.18 with tokens only
    assert quadratic < 1.08


def test_token_balance_beats_round_robin(real_lengths):
    lengths = real_lengths["ag_news"]
    replicas = 3
    s = BucketBatchSampler(lengths, max_tokens=3000, num_replicas=replicas, rank=0, seed=0)
    plan = s.plan()
    work = plan.batches.work
    naive = np.zeros(replicas)
    for k in range(work.shape[0]):  # what a DistributedSampler-style stride gives
        naive[k % replicas] += work[k]
    assert s.stats().imbalance <= naive.max() / naive.mean()
    assert s.stats().imbalance < 1.001


def test_replicas_default_from_torch_distributed_when_uninitialised(alpaca):
    s = PackedBatchSampler(alpaca, max_tokens=2048)
    assert (s.num_replicas, s.rank) == (1, 0)
    with pytest.raises(ValueError, match=r"rank must be in \[0, num_replicas=2\), got 2"):
        PackedBatchSampler(alpaca, max_tokens=2048, num_replicas=2, rank=2)


# --- statistics ----------------------------------------------------------------------------------


def test_bucket_stats_match_the_batches(real_lengths):
    lengths = real_lengths["ag_news"]
    s = BucketBatchSampler(lengths, max_tokens=3000, num_replicas=2, rank=0, seed=0)
    batches = [b for r in range(2) for b in BucketBatchSampler(lengths, max_tokens=3000, num_replicas=2, rank=r, seed=0) if b]
    slots = sum(len(b) * int(lengths[b].max()) for b in batches)
    st = s.stats()
    assert st.slots == slots and st.tokens == int(lengths.sum())
    assert st.padding_fraction == pytest.approx(1 - lengths.sum() / slots)
    assert st.max_batch_examples == max(len(b) for b in batches)
    assert st.summary()["padding_fraction"] == st.padding_fraction
    assert st.padding_fraction < 0.05  # equal-token buckets on real news lengths


def test_equal_token_boundaries(real_lengths):
    lengths = real_lengths["ag_news"]
    k = 6
    edges = estimate_boundaries(lengths, k)
    ordered = np.sort(lengths)
    total = ordered.sum()
    for j, e in enumerate(edges, 1):  # edge j is the smallest length whose prefix mass reaches j/k
        assert ordered[ordered <= e].sum() >= total * j / k
        assert ordered[ordered < e].sum() < total * j / k
    share = np.bincount(np.searchsorted(edges, lengths, side="left"), weights=lengths) / total
    assert share.shape[0] == k and share.max() < 2.0 / k
    assert estimate_boundaries(np.array([1] * 100 + [10] * 10 + [100]), 3).tolist() == [1, 10]


# --- two-dimensional lengths ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def alpaca_pairs(shared_data, tokenizer):
    rows = json.load(open(shared_data / "alpaca_en_demo.json", encoding="utf-8"))
    from packwise.pipeline.tokenizer import token_lengths

    src = token_lengths(tokenizer, [r["instruction"] + "\n" + r["input"] for r in rows])
    tgt = token_lengths(tokenizer, [r["output"] or " " for r in rows])
    return np.stack([src, tgt], axis=1)


def test_two_dimensional_buckets_with_per_bucket_caps(alpaca_pairs):
    caps = np.array([[32, 24, 16], [16, 12, 8], [8, 6, 4]])
    s = BucketBatchSampler(alpaca_pairs, max_tokens=3000, buckets=(3, 3), bucket_batch_size=caps, num_replicas=2, rank=0, seed=0)
    assert s.two_dims and s.num_buckets == 9
    edges_in, edges_out = s.boundaries
    seen = []
    for r in range(2):
        for batch in BucketBatchSampler(alpaca_pairs, max_tokens=3000, buckets=(3, 3), bucket_batch_size=caps, num_replicas=2, rank=r, seed=0):
            if not batch:
                continue
            pairs = alpaca_pairs[batch]
            assert len(batch) * int(pairs[:, 0].max()) <= 3000 and len(batch) * int(pairs[:, 1].max()) <= 3000
            bi = np.searchsorted(edges_in, pairs[:, 0], side="left")
            bo = np.searchsorted(edges_out, pairs[:, 1], side="left")
            assert (bi == bi[0]).all() and (bo == bo[0]).all()
            assert len(batch) <= caps[bi[0], bo[0]]
            seen += batch
    assert sorted(seen) == list(range(alpaca_pairs.shape[0]))
    st = s.stats()
    slots = 0
    for r in range(2):
        for b in BucketBatchSampler(alpaca_pairs, max_tokens=3000, buckets=(3, 3), bucket_batch_size=caps, num_replicas=2, rank=r, seed=0):
            if b:
                slots += len(b) * int(alpaca_pairs[b, 0].max()) + len(b) * int(alpaca_pairs[b, 1].max())
    assert st.slots == slots and st.tokens == int(alpaca_pairs.sum())
    with pytest.raises(ValueError, match=r"bucket_batch_size must be positive integers shaped like the bucket grid \(3, 3\)"):
        BucketBatchSampler(alpaca_pairs, max_tokens=3000, buckets=(3, 3), bucket_batch_size=np.ones((2, 2), int))


# --- lengths from datasets and Arrow -------------------------------------------------------------


def test_lengths_from_dataset_columns_and_arrow(tokenizer, shared_data):
    from conftest import load_texts

    texts = load_texts("alpaca")[:200]
    ids = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    expected = np.array([len(x) for x in ids], np.int64)
    ds = datasets.Dataset.from_dict({"input_ids": ids, "n": expected.tolist(), "text": texts})
    np.testing.assert_array_equal(resolve_lengths("input_ids", ds), expected)
    np.testing.assert_array_equal(resolve_lengths("n", ds), expected)
    np.testing.assert_array_equal(resolve_lengths(pa.array(ids)), expected)
    np.testing.assert_array_equal(resolve_lengths(pa.chunked_array([expected[:50], expected[50:]])), expected)
    picked = ds.select([5, 3, 1])
    np.testing.assert_array_equal(resolve_lengths("input_ids", picked), expected[[5, 3, 1]])
    a = PackedBatchSampler("input_ids", max_tokens=2048, dataset=ds, num_replicas=1, rank=0)
    b = PackedBatchSampler(expected, max_tokens=2048, num_replicas=1, rank=0)
    assert list(a) == list(b)
    with pytest.raises(ValueError, match=r"lengths has 199 entries but the dataset has 200 rows"):
        BucketBatchSampler(expected[:199], max_tokens=4096, dataset=ds)
    with pytest.raises(ValueError, match=r"lengths column .text. is a text column; lengths must be token counts: tokenize first"):
        BucketBatchSampler("text", max_tokens=4096, dataset=ds)
    with pytest.raises(ValueError, match=r"'missing' is not a column of the dataset"):
        BucketBatchSampler("missing", max_tokens=4096, dataset=ds)
    with pytest.raises(ValueError, match=r"names a column: pass dataset="):
        BucketBatchSampler("input_ids", max_tokens=4096)
    with pytest.raises(ValueError, match=r"lengths\[2\] is null"):
        resolve_lengths(pa.array([3, 4, None]))


def test_bad_arguments(alpaca):
    bad = alpaca.copy()
    bad[17] = -4
    with pytest.raises(ValueError, match=r"lengths\[17\] = -4: every length must be >= 1 token"):
        BucketBatchSampler(bad, max_tokens=4096)
    with pytest.raises(ValueError, match=r"lengths\[17\] = -4"):
        PackedBatchSampler(bad, max_tokens=4096)
    with pytest.raises(ValueError, match=r"max_tokens must be a positive integer, got 0"):
        PackedBatchSampler(alpaca, max_tokens=0)
    with pytest.raises(ValueError, match=r"give max_tokens"):
        BucketBatchSampler(alpaca)
    with pytest.raises(ValueError, match=r"algorithm must be one of"):
        PackedBatchSampler(alpaca, max_tokens=2048, algorithm="magic")
    with pytest.raises(ValueError, match=r"buckets\[2\] = 50 is not above buckets\[1\]"):
        BucketBatchSampler(alpaca, max_tokens=4096, buckets=[10, 100, 50])
    with pytest.raises(ValueError, match=r"must be a NumPy array"):
        BucketBatchSampler(list(alpaca), max_tokens=4096)
    with pytest.raises(ValueError, match=r"attention_weight must be a finite number >= 0"):
        PackedBatchSampler(alpaca, max_tokens=2048, attention_weight=-1.0)
    with pytest.raises(ValueError, match=r"oversize must be 'error', 'truncate' or 'drop'"):
        PackedBatchSampler(alpaca, max_tokens=2048, oversize="split")


# --- resume --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bucket", "packed"])
def test_resume_mid_epoch_in_process(kind, alpaca):
    full = make(kind, alpaca, num_replicas=2, rank=1, seed=9)
    full.set_epoch(3)
    expected = list(full)
    s = make(kind, alpaca, num_replicas=2, rank=1, seed=9)
    s.set_epoch(3)
    it = iter(s)
    head = [next(it) for _ in range(5)]
    state = s.state_dict()
    assert state["epoch"] == 3 and state["batches_yielded"] == 5
    fresh = make(kind, alpaca, num_replicas=2, rank=1, seed=9)
    fresh.load_state_dict(state)
    assert len(fresh) == len(expected)
    assert head + list(fresh) == expected
    assert list(fresh) == expected  # the resume point applies to one pass only
    done = fresh.state_dict()
    assert done["batches_yielded"] == len(expected)
    again = make(kind, alpaca, num_replicas=2, rank=1, seed=9)
    again.load_state_dict(done)
    assert list(again) == []
    again.set_epoch(4)  # the next epoch starts at its first batch, also in a state saved right away
    assert again.state_dict()["epoch"] == 4 and again.state_dict()["batches_yielded"] == 0
    assert len(list(again)) == len(again)


def test_resume_rejects_different_data_or_an_old_state_under_another_world(alpaca):
    # a state with the global cursor resumes under any world size (tests/test_elastic_resume.py);
    # one saved by a packwise before it (per-rank counters only) resumes only under its own
    s = PackedBatchSampler(alpaca, max_tokens=2048, num_replicas=2, rank=0)
    state = s.state_dict()
    old = {k: state[k] for k in ("epoch", "batches_yielded", "seed", "num_replicas", "fingerprint")} | {"rank": 0}
    with pytest.raises(ValueError, match=r"saved with num_replicas=2 by a packwise without a global cursor, so it resumes only under num_replicas=2"):
        PackedBatchSampler(alpaca, max_tokens=2048, num_replicas=3, rank=0).load_state_dict(old)
    PackedBatchSampler(alpaca, max_tokens=2048, num_replicas=2, rank=1).load_state_dict(old)
    PackedBatchSampler(alpaca, max_tokens=2048, num_replicas=3, rank=2).load_state_dict(state)
    with pytest.raises(ValueError, match=r"fingerprint mismatch\); PackedBatchSampler resumes only from the same lengths and seed, max_tokens, "):
        PackedBatchSampler(alpaca[:-1], max_tokens=2048, num_replicas=2, rank=0).load_state_dict(state)
    with pytest.raises(ValueError, match=r"fingerprint mismatch"):
        PackedBatchSampler(alpaca, max_tokens=4096, num_replicas=2, rank=0).load_state_dict(state)
    with pytest.raises(ValueError, match=r"state_dict is missing \['batches_yielded'\]"):
        s.load_state_dict({k: v for k, v in state.items() if k != "batches_yielded"})


# --- with a real DataLoader ----------------------------------------------------------------------


def test_dataloader_with_workers_and_empty_padding_batches(tokenizer):
    from conftest import load_texts

    texts = load_texts("alpaca")
    ids = [np.asarray(e.ids, np.int64) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    lengths = np.array([len(x) for x in ids])
    replicas = 3
    seen, counts, zero_loss = [], [], 0
    for r in range(replicas):
        sampler = PackedBatchSampler(lengths, max_tokens=2048, num_replicas=replicas, rank=r, seed=0)
        loader = DataLoader(TokenDataset(ids), batch_sampler=sampler, collate_fn=pad_collate, num_workers=2)
        batches = list(loader)
        counts.append(len(batches))
        for batch in batches:
            if batch["loss_weight"] == 0.0:
                zero_loss += 1
                continue
            index = batch["index"].tolist()
            seen += index
            for row, i in enumerate(index):
                np.testing.assert_array_equal(batch["input_ids"][row, : len(ids[i])].numpy(), ids[i])
    assert counts == [len(sampler)] * replicas
    assert sorted(seen) == list(range(len(ids)))
    assert zero_loss == sampler.stats().empty_batches


def test_packed_batches_go_through_the_packed_collator(tokenizer):
    from conftest import load_texts

    from packwise.packing import PackedCollator

    texts = load_texts("alpaca")
    ids = [np.asarray(e.ids, np.int64) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    lengths = np.array([len(x) for x in ids])
    replicas, seen = 3, []
    for rows_per_batch in (1, 2):
        collator = PackedCollator(layout=("flash", "seq_idx"), shape="rows", capacity=2048)
        for r in range(replicas):
            sampler = PackedBatchSampler(lengths, max_tokens=2048, rows_per_batch=rows_per_batch, num_replicas=replicas, rank=r, seed=4)
            plan = sampler.rank_batches()
            loader = DataLoader(TokenDataset(ids), batch_sampler=sampler, collate_fn=collator, num_workers=2)
            for batch, planned in zip(loader, plan):
                if not planned:  # a padding batch: runs the model, trains on nothing
                    assert (batch["labels"] == -100).all()
                    continue
                assert batch["input_ids"].shape[0] <= rows_per_batch and batch["input_ids"].shape[1] == 2048
                flat, cu = batch["input_ids"].reshape(-1), batch["cu_seq_lens_q"].tolist()
                positions = batch["example_index"].tolist()  # example behind each segment, -1 = padding
                assert sorted(p for p in positions if p >= 0) == list(range(len(planned)))
                for seg, pos in enumerate(positions):
                    if pos >= 0:
                        i = planned[pos]
                        assert flat[cu[seg] : cu[seg] + len(ids[i])].tolist() == ids[i].tolist()
                seen += planned
    assert sorted(seen) == sorted(list(range(len(ids))) * 2)


# --- properties over arbitrary length multisets ----------------------------------------------------

from hypothesis import given, settings, strategies as hst  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(
    lengths=hst.lists(hst.integers(1, 300), min_size=1, max_size=120),
    replicas=hst.integers(1, 4),
    seed=hst.integers(0, 2**31),
    packed=hst.booleans(),
    drop_last=hst.booleans(),
)
def test_any_lengths_any_world_cover_once_within_budget(lengths, replicas, seed, packed, drop_last):
    lengths = np.asarray(lengths, np.int64)
    cls = PackedBatchSampler if packed else BucketBatchSampler
    kw = dict(max_tokens=600, seed=seed, drop_last=drop_last)
    if not packed:
        kw["buckets"] = 4
    per_rank = [list(cls(lengths, num_replicas=replicas, rank=r, **kw)) for r in range(replicas)]
    stats = cls(lengths, num_replicas=replicas, rank=0, **kw).stats()
    assert {len(b) for b in per_rank} == {stats.batches_per_rank}
    seen = [i for batches in per_rank for b in batches for i in b]
    assert len(seen) == len(set(seen)) == stats.examples
    assert stats.examples + stats.dropped_last_examples == lengths.shape[0]
    if not drop_last:
        assert sorted(seen) == list(range(lengths.shape[0]))
    for batches in per_rank:
        for b in batches:
            if b:
                cost = int(lengths[b].sum()) if packed else len(b) * int(lengths[b].max())
                assert cost <= 600


def test_state_dict_counts_consumed_not_prefetched_batches_with_workers(tokenizer):
    """Two workers prefetch four batches ahead; the saved state is what the loop received."""
    from conftest import load_texts

    ids = [e.ids for e in tokenizer.encode_batch(load_texts("alpaca")[:300], add_special_tokens=False)]
    lengths = np.array([len(x) for x in ids])
    sampler = PackedBatchSampler(lengths, max_tokens=1024, seed=1, num_replicas=1, rank=0)
    loader = DataLoader(TokenDataset(ids), batch_sampler=sampler, collate_fn=pad_collate, num_workers=2)
    head = []
    for batch in loader:
        head.append(batch["index"].tolist())
        if len(head) == 5:
            break
    state = sampler.state_dict()
    assert state["batches_yielded"] == 5
    fresh = PackedBatchSampler(lengths, max_tokens=1024, seed=1, num_replicas=1, rank=0)
    fresh.load_state_dict(state)
    tail = [b["index"].tolist() for b in DataLoader(TokenDataset(ids), batch_sampler=fresh, collate_fn=pad_collate)]
    assert head + tail == sampler.rank_batches()


def test_plan_is_fixed_at_the_first_batch_not_at_iter(alpaca):
    s = PackedBatchSampler(alpaca, max_tokens=2048, seed=4, num_replicas=2, rank=1)
    it = iter(s)  # a StatefulDataLoader's early state_dict() does this before the user's set_epoch
    s.set_epoch(1)
    assert list(it) == s.rank_batches(epoch=1) != s.rank_batches(epoch=0)
