"""``MixedPackedIterable``: several real token streams mixed by token deficit and packed, through a
real ``DataLoader`` with workers (each worker a disjoint shard of every source) and across DDP ranks."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from torch.utils.data import DataLoader

from conftest import load_texts
from packwise.samplers import MixedPackedIterable

WEIGHTS = {"alpaca": 0.5, "ag_news": 0.3, "wiki": 0.2}
CAP = 512


@pytest.fixture(scope="module")
def sources(tokenizer):
    """Real tokenized rows of three shared datasets (cut at 512 tokens), each tagged with its row."""
    out = {}
    for name, n in (("alpaca", 300), ("ag_news", 600), ("wiki", 30)):
        encs = tokenizer.encode_batch(load_texts(name)[:n], add_special_tokens=False)
        out[name] = [{"input_ids": e.ids[:CAP], "row": i} for i, e in enumerate(encs) if e.ids]
    return out


def _stream(sources, **kw):
    base = dict(max_tokens=CAP, window=64, seed=3, num_replicas=1, rank=0)
    base.update(kw)
    return MixedPackedIterable(sources, WEIGHTS, **base)


def _loader(stream, workers=2):
    return DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=lambda batch: batch)


def _seen(batches):
    return [(ex["source"], ex["row"]) for batch in batches for ex in batch]


def test_workers_read_disjoint_shards_of_every_source_and_all_is_drained(sources):
    got = _seen(_loader(_stream(sources, until="all")))
    assert len(got) == len(set(got))  # nothing twice
    assert sorted(got) == sorted((s, ex["row"]) for s, name in enumerate(WEIGHTS) for ex in sources[name])
    assert all(sum(len(ex["input_ids"]) for ex in b) <= CAP for b in _loader(_stream(sources, until="all")))


def test_each_worker_holds_the_target_token_shares_within_one_example(sources):
    got = [ex for batch in _loader(_stream(sources)) for ex in batch]
    longest = max(len(ex["input_ids"]) for rows in sources.values() for ex in rows)
    for worker in (0, 1):  # positional sharding: row i of every source goes to worker i % 2
        tokens = Counter()
        for ex in got:
            if ex["row"] % 2 == worker:
                tokens[ex["source"]] += len(ex["input_ids"])
        total = sum(tokens.values())
        for s, share in enumerate(WEIGHTS.values()):
            assert abs(tokens[s] - share * total) <= longest, (worker, s, tokens, total)
    # until="first": wiki (30 long articles at a 0.2 share) runs out first and ends the pass
    assert len({ex["row"] for ex in got if ex["source"] == 2}) == len(sources["wiki"])


def test_same_seed_and_epoch_same_batches_another_epoch_another_order(sources):
    def run(epoch, seed=3):
        stream = _stream(sources, seed=seed)
        stream.set_epoch(epoch)
        return [[(ex["source"], ex["row"]) for ex in b] for b in _loader(stream)]

    first = run(0)
    assert run(0) == first
    other = run(1)
    assert other != first  # the packed bins are shuffled with (seed, epoch)
    assert Counter(x for b in other for x in b) == Counter(x for b in first for x in b)  # same examples


def test_ddp_ranks_get_disjoint_shards(sources):
    ranks = [_seen(_stream(sources, until="all", num_replicas=2, rank=r)) for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1])
    assert len(ranks[0]) + len(ranks[1]) == sum(len(v) for v in sources.values())


@pytest.mark.parametrize(
    "kw, error",
    [
        (dict(weights={"alpaca": 1.0, "c4": 1.0}), r"^weights name \['c4'\] but the sources are \['alpaca', 'ag_news', 'wiki'\]"),
        (dict(weights=[1.0, -1.0, 0.0]), r"^weights\['ag_news'\] = -1.0; weights must be finite and >= 0$"),
        (dict(weights=[0.0, 0.0, 0.0]), r"^weights sum to 0; give at least one source a positive weight$"),
        (dict(weights=[1.0, 1.0]), r"^weights has 2 entries for 3 sources; give one per source$"),
        (dict(until="longest"), r"^until must be 'first' \(stop at the first exhausted source\) or 'all', got 'longest'$"),
    ],
)
def test_bad_settings_are_refused(sources, kw, error):
    weights = kw.pop("weights", WEIGHTS)
    with pytest.raises(ValueError, match=error):
        MixedPackedIterable(sources, weights, CAP, num_replicas=1, rank=0, **kw)


def test_an_example_that_already_has_the_source_field_is_refused(sources):
    tagged = {"a": [{"input_ids": [1, 2], "source": "web"}], "b": [{"input_ids": [3]}]}
    with pytest.raises(ValueError, match=r"^an example of source 0 already has a 'source' field; pass another source_key"):
        list(MixedPackedIterable(tagged, [1, 1], 8, num_replicas=1, rank=0))
    assert [len(b) for b in MixedPackedIterable(tagged, [1, 1], 8, num_replicas=1, rank=0, source_key=None)] == [2]


def test_a_mixed_stream_refuses_a_mid_epoch_state_naming_why(sources):
    stream = _stream(sources)
    with pytest.raises(ValueError, match=r"^a MixedPackedIterable mixes each \(rank, worker\)'s own shard of its sources, "
                       r"so this stream cannot say which examples were consumed"):
        stream.state_dict()
