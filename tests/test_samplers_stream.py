"""PackedIterable / BucketedIterable over real tokenized streams: sharding by DataLoader worker and
DDP rank, budgets, bounded buffers, determinism and errors."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import DataLoader, IterableDataset

from packwise.samplers import BucketedIterable, PackedIterable


class Docs(IterableDataset):
    """A real stream of tokenized documents; counts how many examples have been read."""

    def __init__(self, ids):
        self.ids = ids
        self.read = 0

    def __iter__(self):
        for i, x in enumerate(self.ids):
            self.read += 1
            yield {"index": i, "input_ids": x}


@pytest.fixture(scope="module")
def docs(tokenizer):
    from conftest import load_texts

    texts = load_texts("alpaca") + load_texts("ag_news")[:3000]
    return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


def identity(batch):
    return batch


def _indices(batches):
    return [[e["index"] for e in b] for b in batches]


@pytest.mark.parametrize("cls", [PackedIterable, BucketedIterable])
def test_ranks_and_workers_cover_the_stream_once(cls, docs):
    lengths = np.array([len(x) for x in docs])
    seen = []
    for rank in range(2):
        stream = cls(Docs(docs), max_tokens=2048, length="input_ids", window=256, num_replicas=2, rank=rank, seed=3)
        loader = DataLoader(stream, batch_size=None, collate_fn=identity, num_workers=2)
        for batch in _indices(loader):
            assert batch
            if cls is PackedIterable:
                assert lengths[batch].sum() <= 2048
            else:
                assert len(batch) * lengths[batch].max() <= 2048
            seen += batch
    assert sorted(seen) == list(range(len(docs)))


def test_packed_stream_is_dense_deterministic_and_epoch_seeded(docs):
    lengths = np.array([len(x) for x in docs])
    stream = PackedIterable(Docs(docs), max_tokens=2048, window=512, num_replicas=1, rank=0, seed=1)
    first = _indices(stream)
    assert _indices(PackedIterable(Docs(docs), max_tokens=2048, window=512, num_replicas=1, rank=0, seed=1)) == first
    slots = 2048 * len(first)
    assert lengths.sum() / slots > 0.97  # windowed best fit on real lengths
    stream.set_epoch(1)
    second = _indices(stream)
    assert second != first and sorted(map(sorted, second)) == sorted(map(sorted, first))


def test_packed_stream_rows_per_batch(docs):
    lengths = np.array([len(x) for x in docs])
    batches = _indices(PackedIterable(Docs(docs), max_tokens=1024, rows_per_batch=3, window=300, num_replicas=1, rank=0))
    assert sorted(i for b in batches for i in b) == list(range(len(docs)))
    for b in batches:  # next fit in order rebuilds at most 3 rows of 1024
        rows, used = 0, 1024
        for i in b:
            if used + lengths[i] > 1024:
                rows, used = rows + 1, 0
            used += int(lengths[i])
        assert rows <= 3
    assert lengths.sum() / (3 * 1024 * len(batches)) > 0.9


@pytest.mark.parametrize("cls,canonical", [(PackedIterable, 1), (PackedIterable, 8), (BucketedIterable, 1), (BucketedIterable, 8)])
def test_buffer_stays_bounded(cls, canonical, docs):
    source = Docs(docs)
    window = 200
    kw = {"buckets": [64, 128, 256]} if cls is BucketedIterable else {}
    stream = cls(source, max_tokens=2048, window=window, canonical=canonical, num_replicas=1, rank=0, **kw)
    emitted, worst = 0, 0
    for batch in stream:
        emitted += len(batch)
        worst = max(worst, source.read - emitted)
    assert emitted == len(docs)
    # per canonical substream: packed, open bins live at most max_age=4 windows (and its ready batches
    # at most one more window); bucketed, one window plus one batch per bucket
    if cls is PackedIterable:
        bound = 5 * window if canonical == 1 else canonical * 6 * window
    else:
        bound = canonical * (window + 4 * 2048 // 16)
    assert worst <= bound


@pytest.mark.parametrize("canonical", [1, 8])
def test_bucketed_stream_batches_share_a_bucket_and_fixed_sizes(canonical, docs):
    lengths = np.array([len(x) for x in docs])
    edges = np.array([64, 128, 256])
    stream = BucketedIterable(Docs(docs), batch_size=8, buckets=edges, window=300, canonical=canonical, num_replicas=1, rank=0)
    batches = _indices(stream)
    assert sorted(i for b in batches for i in b) == list(range(len(docs)))
    keys = [np.searchsorted(edges, lengths[b], side="left") for b in batches]
    assert all((k == k[0]).all() for k in keys)
    sizes = [len(b) for b in batches]
    assert max(sizes) == 8 and sum(1 for s in sizes if s < 8) <= 4 * canonical  # one short batch per bucket at most


def test_stream_errors(docs):
    first_long = next(i for i, x in enumerate(docs) if len(x) > 512)
    with pytest.raises(ValueError, match=rf"stream row {first_long} has length {len(docs[first_long])} > max_tokens=512; pass oversize='truncate' or 'split'"):
        list(PackedIterable(Docs(docs), max_tokens=512, window=2000, num_replicas=1, rank=0))
    with pytest.raises(ValueError, match=rf"stream row {first_long} has length \d+ > max_tokens=512; .*oversize='drop'"):
        list(BucketedIterable(Docs(docs), max_tokens=512, window=2000, num_replicas=1, rank=0))
    dropping = BucketedIterable(Docs(docs), max_tokens=512, oversize="drop", window=500, num_replicas=1, rank=0)
    kept = sum(len(b) for b in dropping)
    assert kept + dropping.dropped == len(docs) and dropping.dropped == sum(len(x) > 512 for x in docs)
    with pytest.raises(ValueError, match=r"stream row 1 has length 0; every example needs >= 1 token"):
        list(PackedIterable(Docs([[1, 2], []]), max_tokens=8, num_replicas=1, rank=0))
    with pytest.raises(ValueError, match=r"give max_tokens"):
        BucketedIterable(Docs(docs))


def test_packed_stream_oversize_truncate_split_drop(docs):
    """Like ``packwise pack``: truncate keeps the head, split cuts max_tokens pieces (each packed on its
    own, other fields copied), drop leaves the example out; every field as long as the tokens is cut."""
    rows = [{"index": i, "input_ids": x, "labels": x} for i, x in enumerate(docs[:400])]
    long = [r for r in rows if len(r["input_ids"]) > 256]
    assert long
    seen = {}
    for how in ("truncate", "split", "drop"):
        stream = PackedIterable(rows, max_tokens=256, window=64, oversize=how, num_replicas=1, rank=0, seed=2)
        got = [e for batch in stream for e in batch]
        assert all(sum(len(e["input_ids"]) for e in b) <= 256 for b in stream)
        assert all(e["labels"] == e["input_ids"] for e in got)
        seen[how] = (got, stream.truncated_tokens, stream.dropped)
    got, truncated, dropped = seen["truncate"]
    assert sorted((e["index"], tuple(e["input_ids"])) for e in got) == sorted(
        (r["index"], tuple(r["input_ids"][:256])) for r in rows
    )
    assert (truncated, dropped) == (sum(len(r["input_ids"]) - 256 for r in long), 0)
    got, truncated, dropped = seen["split"]
    pieces = {}
    for e in got:
        pieces.setdefault(e["index"], []).append(e["input_ids"])
    for r in rows:  # the pieces, in order of their first token, rebuild the example
        parts = pieces[r["index"]]
        assert sorted(tuple(p) for p in parts) == sorted(
            tuple(r["input_ids"][a : a + 256]) for a in range(0, len(r["input_ids"]), 256)
        )
    assert (truncated, dropped) == (0, 0)
    got, truncated, dropped = seen["drop"]
    assert sorted(e["index"] for e in got) == sorted(r["index"] for r in rows if len(r["input_ids"]) <= 256)
    assert (truncated, dropped) == (0, len(long))
    with pytest.raises(ValueError, match=r"oversize='split' cuts the token field: pass length=<field name>"):
        PackedIterable(rows, max_tokens=256, length=lambda e: len(e["input_ids"]), oversize="split")
    with pytest.raises(ValueError, match=r"oversize must be 'error', 'truncate', 'split' or 'drop', got 'cut'"):
        PackedIterable(rows, max_tokens=256, oversize="cut")


def test_hf_streaming_dataset_is_sharded_once_by_its_own_workers(docs, tmp_path):
    """datasets shards an IterableDataset by DataLoader worker itself; sharding again by position
    lost every other document (150 of 300 with 2 workers).  A pre-split source must match the rank."""
    import json

    import datasets
    from datasets.distributed import split_dataset_by_node

    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"index": i, "input_ids": x}) + "\n" for i, x in enumerate(docs[:300])))
    source = datasets.load_dataset("json", data_files=str(path), split="train", streaming=True)
    stream = PackedIterable(source, max_tokens=2048, window=64, num_replicas=1, rank=0)
    loader = DataLoader(stream, batch_size=None, collate_fn=identity, num_workers=2)
    assert sorted(i for b in _indices(loader) for i in b) == list(range(300))
    with pytest.raises(ValueError, match=r"an HF IterableDataset shards itself by worker and rank, so this stream cannot say"):
        stream.state_dict()
    split = split_dataset_by_node(source, rank=1, world_size=2)
    with pytest.raises(ValueError, match=r"split_dataset_by_node\(rank=1, world_size=2\) but this stream is rank 0 of num_replicas=2"):
        list(PackedIterable(split, max_tokens=2048, num_replicas=2, rank=0))
