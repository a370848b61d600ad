"""Elastic resume of PackedIterable over a real JSONL stream: canonical substreams whose bins do not
depend on the topology, per-substream counts read from real DataLoader workers, states merged
across real gloo ranks, and resume under the same or another (num_replicas, num_workers)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import end_ddp_worker, free_port as _free_port
from torch.utils.data import DataLoader, IterableDataset

from packwise.samplers import BucketedIterable, PackedIterable, load_state, save_state

MAX_TOKENS = 512
KINDS = ("packed", "bucketed")


class JsonlStream(IterableDataset):
    """A JSONL file read line by line, every pass from its first line."""

    def __init__(self, path: str):
        self.path = path

    def __iter__(self):
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)


def pieces(batch: list) -> list[list[int]]:
    """A batch as ``[document, first token offset]`` per piece (``pos`` is cut with the tokens)."""
    return [[e["index"], e["pos"][0]] for e in batch]


def make_stream(path: str, kind: str = "packed", **kw) -> PackedIterable | BucketedIterable:
    """Packed: 512-token bins, long documents split in pieces; bucketed: 4 documents of one bucket."""
    if kind == "packed":
        return PackedIterable(JsonlStream(path), max_tokens=MAX_TOKENS, window=8, oversize="split", seed=7, **kw)
    return BucketedIterable(JsonlStream(path), batch_size=4, buckets=[128, 256, 512, 1024], window=8, seed=7, **kw)


def read(stream: PackedIterable, workers: int, k: int | None = None) -> tuple[list, dict]:
    """The first ``k`` batches (all when ``None``) through a real DataLoader, and the state after them."""
    fork = {"multiprocessing_context": "fork"} if workers else {}  # fork the workers: a fast start
    loader = DataLoader(stream, batch_size=None, collate_fn=pieces, num_workers=workers, **fork)
    it = iter(loader)
    got = []
    for batch in it:
        got.append(batch)
        if len(got) == k:
            break
    return got, stream.state_dict(loader=it)


def every_piece(path: str, kind: str = "packed") -> list[tuple[int, int]]:
    out = []
    for row in JsonlStream(path):
        step = MAX_TOKENS if kind == "packed" else len(row["input_ids"])
        out += [(row["index"], a) for a in range(0, len(row["input_ids"]), step)]
    return sorted(out)


def as_pieces(batches) -> list[tuple[int, int]]:
    return sorted((i, a) for b in batches for i, a in b)


@pytest.fixture(scope="module")
def c4_path(tokenizer, tmp_path_factory) -> str:
    from conftest import load_texts

    ids = [e.ids for e in tokenizer.encode_batch(load_texts("c4"), add_special_tokens=False)]
    assert sum(len(x) > MAX_TOKENS for x in ids) > 20  # split really cuts pieces
    path = tmp_path_factory.mktemp("stream") / "c4_tokens.jsonl"
    path.write_text("".join(json.dumps({"index": i, "input_ids": x, "pos": list(range(len(x)))}) + "\n" for i, x in enumerate(ids)))
    return str(path)


@pytest.mark.parametrize("kind", KINDS)
def test_same_topology_resume_yields_exactly_the_rest(kind, c4_path):
    """1 rank x 2 workers: stopped after k batches (early, and once substreams have ended), the
    resumed stream yields exactly what the uninterrupted one would have; one process gets the same bins."""
    full, end = read(make_stream(c4_path, kind, num_replicas=1, rank=0), workers=2)
    assert as_pieces(full) == every_piece(c4_path, kind)
    assert sum(end["consumed"]) == len(full) and end["ended"] == list(range(8))  # 8 * num_replicas substreams
    for k in (3, len(full) - 4):
        stream = make_stream(c4_path, kind, num_replicas=1, rank=0)
        head, state = read(stream, workers=2, k=k)
        assert head == full[:k]
        assert sum(state["consumed"]) == k
        resumed = make_stream(c4_path, kind, num_replicas=1, rank=0)
        resumed.load_state_dict(state)
        rest, _ = read(resumed, workers=2)
        assert head + rest == full, k
        other = make_stream(c4_path, kind, num_replicas=1, rank=0)
        other.load_state_dict(state)
        rest1, _ = read(other, workers=0)  # read in this process
        assert Counter(map(str, head + rest1)) == Counter(map(str, full))  # the same bins, dealt otherwise
    other.set_epoch(1)  # a new epoch starts from its beginning, with its own shuffle
    assert other.state_dict()["consumed"] == [0] * 8
    again, _ = read(other, workers=0)
    assert as_pieces(again) == every_piece(c4_path, kind) and again != rest1


def _ddp_phase(rank: int, world: int, port: int, path: str, out_dir: str, phase: str, k: int) -> None:
    """One gloo rank: ``first`` reads k batches of each stream with 2 workers and saves the merged
    states; ``second`` loads them and reads the rest of the epoch with 1 worker."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    out = {}
    for kind in KINDS:
        stream = make_stream(path, kind)  # num_replicas and rank from torch.distributed
        state_path = str(Path(out_dir) / f"{kind}.npz")
        if phase == "second":
            stream.load_state_dict(load_state(state_path))
        got, state = read(stream, workers=2 if phase == "first" else 1, k=k if phase == "first" else None)
        gathered = [None] * world
        dist.all_gather_object(gathered, {"batches": got, "state": state})
        merged = type(stream).merge_states([g["state"] for g in gathered])
        if rank == 0:
            save_state(state_path, merged)
        out[kind] = {"batches": [g["batches"] for g in gathered], "state": merged}
    if rank == 0:
        Path(out_dir, f"{phase}.json").write_text(json.dumps(out))
    end_ddp_worker()


def test_elastic_resume_from_2_ranks_x_2_workers_to_3_ranks_x_1_worker(c4_path, tmp_path):
    k = 15
    for phase, world in (("first", 2), ("second", 3)):
        mp.spawn(_ddp_phase, args=(world, _free_port(), c4_path, str(tmp_path), phase, k), nprocs=world, join=True)
    first = json.loads((tmp_path / "first.json").read_text())
    second = json.loads((tmp_path / "second.json").read_text())
    for kind in KINDS:
        head, tail = first[kind], second[kind]
        assert [len(b) for b in head["batches"]] == [k, k]
        saved = head["state"]
        assert (saved["canonical"], saved["num_replicas"], saved["num_workers"], sum(saved["consumed"])) == (16, 2, 2, 2 * k)
        assert len(json.dumps(saved)) < 1024  # 16 small ints and a few fields
        batches = [b for rank in head["batches"] + tail["batches"] for b in rank]
        assert as_pieces(batches) == every_piece(c4_path, kind)  # every piece of every document exactly once
        # and they are the canonical batches: one process with the same canonical count makes the same ones
        alone, _ = read(make_stream(c4_path, kind, canonical=16, num_replicas=1, rank=0), workers=0)
        assert Counter(map(str, batches)) == Counter(map(str, alone))
        assert tail["state"]["ended"] == list(range(16)) and tail["state"]["epoch"] == 0
        # what the stream promises per rank: each rank plays its substreams to their end (no equal counts)
        per_rank = [len(b) for b in tail["batches"]]
        assert sum(per_rank) == len(alone) - 2 * k and min(per_rank) > 0


def test_state_checks_name_the_fix(c4_path):
    stream = make_stream(c4_path, num_replicas=2, rank=1)
    _, state = read(stream, workers=2, k=4)
    assert state["turns"] == [None, state["turns"][1]] and sum(state["consumed"]) == 4
    with pytest.raises(ValueError, match=r"state_dict covers only some ranks \(ranks \[0\] of 2 are missing\); .*merge_states"):
        make_stream(c4_path, num_replicas=1, rank=0).load_state_dict(state)
    with pytest.raises(ValueError, match=r"pass state_dict\(loader=it\) with it = iter\(loader\)"):
        stream.state_dict()
    zero_state = make_stream(c4_path, num_replicas=2, rank=0)
    _, zero_state = read(zero_state, workers=2, k=3)
    merged = PackedIterable.merge_states([zero_state, state])
    assert merged["turns"][0] is not None and sum(merged["consumed"]) == 7
    with pytest.raises(ValueError, match=r"states\[1\] has epoch=1 but states\[0\] has epoch=0"):
        PackedIterable.merge_states([zero_state, {**state, "epoch": 1}])
    with pytest.raises(ValueError, match=r"states\[1\] and another state both saved rank 1"):
        PackedIterable.merge_states([state, state])
    with pytest.raises(ValueError, match=r"saved with seed=7 but this stream has seed=8"):
        PackedIterable(JsonlStream(c4_path), max_tokens=MAX_TOKENS, window=8, oversize="split", seed=8).load_state_dict(merged)
    with pytest.raises(ValueError, match=r"saved by another stream class or with other settings \(max_tokens, window, max_age"):
        PackedIterable(JsonlStream(c4_path), max_tokens=MAX_TOKENS, window=9, oversize="split", seed=7).load_state_dict(merged)
    with pytest.raises(ValueError, match=r"saved by another stream class or with other settings \(max_tokens, batch_size"):
        make_stream(c4_path, "bucketed").load_state_dict(merged)
    with pytest.raises(ValueError, match=r"saved with canonical=16 but this stream has canonical=4; pass canonical=16"):
        make_stream(c4_path, canonical=4, num_replicas=1, rank=0).load_state_dict(merged)
    with pytest.raises(ValueError, match=r"missing \['turns'\]"):
        make_stream(c4_path).load_state_dict({k: v for k, v in merged.items() if k != "turns"})
    resumed = make_stream(c4_path, num_replicas=1, rank=0)
    resumed.load_state_dict(merged)
    assert resumed.canonical == 16
    again = make_stream(c4_path, num_replicas=2, rank=1)  # saved again before reading: the same position
    again.load_state_dict(merged)
    assert again.state_dict() == {**merged, "turns": [None, merged["turns"][1]]}
    with pytest.raises(ValueError, match=r"build the DataLoader with batch_size=None \(the stream yields whole batches\)"):
        resumed.state_dict(loader=iter(DataLoader(resumed, batch_size=2, collate_fn=pieces)))
    with pytest.raises(ValueError, match=r"3 ranks x 1 DataLoader workers = 3 shards but the stream has canonical=2 substreams; build it with canonical >= 3"):
        list(make_stream(c4_path, canonical=2, num_replicas=3, rank=2))
    with pytest.raises(ValueError, match=r"loader must be the iterator of a torch DataLoader over this stream"):
        resumed.state_dict(loader=iter(DataLoader(make_stream(c4_path), batch_size=None)))
