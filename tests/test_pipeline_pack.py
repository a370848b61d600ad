"""The pipeline end to end through the Python API on real token sequences: round trips token by
token for every algorithm and oversize policy, bounded windows, labels, templates, transformers
tokenizers, seeds, settings checks, and ``PackedDataset`` through real DataLoader workers."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import load_texts

from packwise.packing import pack
from packwise.pipeline import PackedDataset, pack_to_parquet, resolve_tokenizer
from packwise.pipeline.tokens import encode

CAP = 512


def read_shards(out) -> dict:
    """Every packed row straight from the Parquet shards (pyarrow only, independent of PackedDataset)."""
    manifest = json.loads((out / "manifest.json").read_text())
    tables = [pq.read_table(out / s["file"]) for s in manifest["shards"]]
    assert [t.num_rows for t in tables] == [s["rows"] for s in manifest["shards"]]
    table = pa.concat_tables(tables)
    return {"manifest": manifest, **{name: table.column(name).to_pylist() for name in table.column_names}}


def reassemble(out, capacity: int) -> dict[int, list[int]]:
    """Input row -> its tokens, rebuilt from the shards' pieces (source_index, source_start, seq_lens)."""
    got = read_shards(out)
    pieces: dict[int, list] = {}
    for r, ids in enumerate(got["input_ids"]):
        assert 1 <= len(ids) <= capacity
        lens = got["seq_lens"][r]
        assert sum(lens) == len(ids) and len(got["source_index"][r]) == len(lens) == len(got["source_start"][r])
        pos = 0
        for src, start, n in zip(got["source_index"][r], got["source_start"][r], lens):
            pieces.setdefault(src, []).append((start, ids[pos : pos + n]))
            pos += n
    out_seqs = {}
    for src, parts in pieces.items():
        parts.sort()
        flat, expect = [], 0
        for start, toks in parts:
            assert start == expect, f"row {src}: piece at {start}, expected {expect} (a token lost or repeated)"
            flat.extend(toks)
            expect += len(toks)
        out_seqs[src] = flat
    return out_seqs


def check_round_trip(out, sequences: list[list[int]], capacity: int, oversize: str, algorithm: str) -> None:
    """Every input token is in the output once, in order, or truncated / dropped and counted."""
    got = reassemble(out, capacity)
    stats = json.loads((out / "manifest.json").read_text())["stats"]
    lengths = np.array([len(s) for s in sequences])
    truncated = dropped = 0
    for i, seq in enumerate(sequences):
        if not seq:
            assert i not in got
        elif algorithm == "concat" or oversize == "split" or len(seq) <= capacity:
            assert got[i] == seq, f"row {i} differs"
        elif oversize == "truncate":
            assert got[i] == seq[:capacity]
            truncated += len(seq) - capacity
        else:
            assert i not in got
            dropped += len(seq)
    assert stats["truncated_tokens"] == truncated and stats["dropped_tokens"] == dropped
    assert stats["tokens_in"] == int(lengths.sum()) == stats["tokens_out"] + truncated + dropped
    assert stats["empty_rows"] == int((lengths == 0).sum()) and stats["rows_in"] == len(sequences)


@pytest.fixture(scope="module")
def c4_ids(tokenizer) -> list[list[int]]:
    return encode(tokenizer, load_texts("c4"))


@pytest.fixture(scope="module")
def c4_parquet(tmp_path_factory, c4_ids):
    path = tmp_path_factory.mktemp("c4") / "c4_tokens.parquet"
    ids = c4_ids[:150] + [[]] + c4_ids[150:]  # one empty row: skipped and counted
    pq.write_table(pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32()))}), path, row_group_size=64)
    return path, ids


@pytest.mark.parametrize("algorithm", ["bfd", "ffd", "first_fit", "next_fit", "window_bfd", "concat"])
@pytest.mark.parametrize("oversize", ["truncate", "split", "drop"])
def test_round_trip_token_by_token(tmp_path, c4_parquet, algorithm, oversize):
    path, ids = c4_parquet
    out = tmp_path / "out"
    r = pack_to_parquet(
        path, out, max_tokens=CAP, tokens_column="input_ids", algorithm=algorithm, oversize=oversize,
        window=40, shard_rows=33, batch_size=25,
    )  # fmt: skip
    check_round_trip(out, ids, CAP, oversize, algorithm)
    shards = r.manifest["shards"]
    assert [s["rows"] for s in shards[:-1]] == [33] * (len(shards) - 1) and 1 <= shards[-1]["rows"] <= 33
    assert sum(s["rows"] for s in shards) == r.manifest["stats"]["rows_out"]
    assert not (out / ".packwise-run.json").exists()
    if algorithm == "concat":  # every row full but the last
        assert [len(x) for x in read_shards(out)["input_ids"][:-1]] == [CAP] * (r.manifest["stats"]["rows_out"] - 1)


def test_a_window_as_large_as_the_data_gives_the_packing_core_plan(tmp_path, c4_parquet):
    path, ids = c4_parquet
    pack_to_parquet(path, tmp_path / "o", max_tokens=CAP, tokens_column="input_ids", algorithm="bfd", oversize="truncate")
    kept = [i for i, s in enumerate(ids) if s]
    plan = pack(np.array([len(ids[i]) for i in kept]), CAP, algorithm="bfd", oversize="truncate")
    expected = [[kept[j] for j in plan.bin(b)] for b in range(plan.num_bins)]
    assert read_shards(tmp_path / "o")["source_index"] == expected


def test_window_bfd_holds_a_bounded_number_of_sequences(tmp_path, tokenizer):
    """20k real sequences through a 500-sequence window: the pending pool stays within 5 windows."""
    rng = np.random.default_rng(0)
    texts = load_texts("ag_news") + load_texts("alpaca")
    pool = encode(tokenizer, texts)
    pick = rng.integers(0, len(pool), 20_000)
    ids = [pool[i] for i in pick]
    path = tmp_path / "boot.parquet"
    pq.write_table(pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32()))}), path)
    r = pack_to_parquet(path, tmp_path / "o", max_tokens=1024, tokens_column="input_ids", window=500, oversize="split")
    stats = r.manifest["stats"]
    assert stats["windows"] == 41 and stats["sequences"] == 20_000
    assert 500 <= stats["max_pending_sequences"] <= 5 * 500
    assert stats["rows_over_bound"] < 0.01  # windowed best fit stays within 1% of the L1 bound
    check_round_trip(tmp_path / "o", ids, 1024, "split", "window_bfd")


def test_labels_column_travels_with_the_tokens(tmp_path, c4_ids):
    ids = [s[:300] for s in c4_ids[:120]]
    labels = [[-100] * (len(s) // 2) + s[len(s) // 2 :] for s in ids]
    path = tmp_path / "sft.parquet"
    pq.write_table(
        pa.table({"input_ids": pa.array(ids, pa.list_(pa.int64())), "labels": pa.array(labels, pa.list_(pa.int64()))}),
        path,
    )
    pack_to_parquet(path, tmp_path / "o", max_tokens=CAP, tokens_column="input_ids", labels_column="labels")
    got = read_shards(tmp_path / "o")
    flat = {}
    for r in range(len(got["input_ids"])):
        pos = 0
        for src, n in zip(got["source_index"][r], got["seq_lens"][r]):
            flat[src] = (got["input_ids"][r][pos : pos + n], got["labels"][r][pos : pos + n])
            pos += n
    assert flat == {i: (ids[i], labels[i]) for i in range(len(ids))}
    bad = tmp_path / "bad.parquet"
    labels[7] = labels[7][:-1]
    pq.write_table(pa.table({"input_ids": pa.array(ids), "labels": pa.array(labels)}), bad)
    with pytest.raises(ValueError, match=r"bad\.parquet row 7: column 'labels' has \d+ labels for \d+ tokens"):
        pack_to_parquet(bad, tmp_path / "o2", max_tokens=CAP, tokens_column="input_ids", labels_column="labels")


def render_chat(row: dict) -> str:
    return "\n".join(f"<|{m['from']}|> {m['value']}" for m in row["conversations"])


def test_chat_column_rendered_by_a_template_and_tokenized(tmp_path, shared_data, tokenizer):
    rows = json.load(open(shared_data / "glaive_toolcall_en_demo.json", encoding="utf-8"))
    path = tmp_path / "glaive.parquet"
    pq.write_table(pa.table({"conversations": [r["conversations"] for r in rows]}), path)
    expected = encode(tokenizer, [render_chat(r) for r in rows])
    pack_to_parquet(path, tmp_path / "o", max_tokens=2048, tokenizer=tokenizer, text_column="conversations",
                    template=render_chat, oversize="split", algorithm="ffd")  # fmt: skip
    check_round_trip(tmp_path / "o", expected, 2048, "split", "ffd")
    with pytest.raises(ValueError, match=r"glaive\.parquet: column 'conversations' has type list<.*not text"):
        pack_to_parquet(path, tmp_path / "o3", max_tokens=2048, tokenizer=tokenizer, text_column="conversations")


def test_transformers_tokenizer_folder(tmp_path, tokenizer, shared_data):
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(tmp_path / "tok")
    loaded = resolve_tokenizer(tmp_path / "tok")
    assert type(loaded).__module__.startswith("transformers")
    texts = load_texts("c4")
    pack_to_parquet(shared_data / "c4_demo.jsonl", tmp_path / "o", max_tokens=CAP, tokenizer=tmp_path / "tok", oversize="split")
    check_round_trip(tmp_path / "o", encode(tokenizer, texts), CAP, "split", "window_bfd")
    with pytest.raises(ValueError, match=r"tokenizer: nothing at .*missing; pass --tokenizer"):
        resolve_tokenizer(tmp_path / "missing")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"tokenizer: .*junk\.json is not a valid tokenizers JSON file"):
        resolve_tokenizer(tmp_path / "junk.json")


def test_seed_shuffles_rows_reproducibly(tmp_path, c4_parquet):
    path, _ = c4_parquet
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8), ("none", None)):
        pack_to_parquet(path, tmp_path / name, max_tokens=CAP, tokens_column="input_ids", oversize="split", seed=seed, window=100)
        runs[name] = read_shards(tmp_path / name)["input_ids"]
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"] and runs["a"] != runs["none"]
    assert sorted(runs["a"]) == sorted(runs["c"]) == sorted(runs["none"])
    a = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in a)


def test_settings_guard_overwrite_and_up_to_date(tmp_path, c4_parquet):
    path, _ = c4_parquet
    out = tmp_path / "o"
    first = pack_to_parquet(path, out, max_tokens=CAP, tokens_column="input_ids", oversize="split")
    assert first.state == "new"
    again = pack_to_parquet(path, out, max_tokens=CAP, tokens_column="input_ids", oversize="split")
    assert again.state == "complete" and again.manifest == first.manifest
    with pytest.raises(ValueError, match=r"other settings or inputs \(max_tokens: 512 -> 256.*pass --overwrite"):
        pack_to_parquet(path, out, max_tokens=256, tokens_column="input_ids", oversize="split")
    third = pack_to_parquet(path, out, max_tokens=256, tokens_column="input_ids", oversize="split", overwrite=True)
    assert third.state == "new" and third.manifest["settings"]["max_tokens"] == 256
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.parquet"]


def test_value_errors_name_row_and_fix(tmp_path, c4_parquet, tokenizer):
    path, ids = c4_parquet
    first_long = next(i for i, s in enumerate(ids) if len(s) > CAP)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} row {first_long} has {len(ids[first_long])} tokens, more than --max-tokens 512; pass --oversize"):
        pack_to_parquet(path, tmp_path / "o", max_tokens=CAP, tokens_column="input_ids")
    with pytest.raises(ValueError, match=r"max_tokens must be >= 1 token, got 0"):
        pack_to_parquet(path, tmp_path / "o", max_tokens=0, tokens_column="input_ids")
    with pytest.raises(ValueError, match=r"algorithm must be one of"):
        pack_to_parquet(path, tmp_path / "o", max_tokens=CAP, tokens_column="input_ids", algorithm="best")
    with pytest.raises(ValueError, match=r"pass exactly one of --tokenizer PATH, --train-tokenizer or --tokens-column"):
        pack_to_parquet(path, tmp_path / "o", max_tokens=CAP)
    nulls = tmp_path / "nulls.jsonl"
    nulls.write_text('{"text": "a b c"}\n{"text": null}\n')
    with pytest.raises(ValueError, match=r"nulls\.jsonl row 1: column 'text' is null; drop or fill that row"):
        pack_to_parquet(nulls, tmp_path / "o4", max_tokens=CAP, tokenizer=tokenizer)
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"input_ids": pa.array([], pa.list_(pa.int32()))}), empty)
    with pytest.raises(ValueError, match=r"empty\.parquet has no rows: empty input"):
        pack_to_parquet(empty, tmp_path / "o5", max_tokens=CAP, tokens_column="input_ids")


def test_packed_dataset_map_style_and_iterable_through_dataloader_workers(tmp_path, c4_parquet):
    from torch.utils.data import DataLoader

    path, ids = c4_parquet
    out = tmp_path / "o"
    pack_to_parquet(path, out, max_tokens=CAP, tokens_column="input_ids", oversize="split", shard_rows=40)
    raw = read_shards(out)
    ds = PackedDataset(out)
    assert len(ds) == len(raw["input_ids"]) == raw["manifest"]["stats"]["rows_out"]
    assert [ds[i]["input_ids"].tolist() for i in range(len(ds))] == raw["input_ids"]
    assert ds[-1]["seq_lens"].tolist() == raw["seq_lens"][-1]
    with pytest.raises(IndexError):
        ds[len(ds)]

    seen = []
    for batch in DataLoader(ds, batch_size=4, num_workers=2, collate_fn=ds.collate):
        b = batch["input_ids"].shape[0]
        assert tuple(batch["input_ids"].shape) == (b, CAP)
        for j in range(b):
            row = raw["input_ids"][len(seen)]
            lens = raw["seq_lens"][len(seen)]
            assert batch["input_ids"][j, : len(row)].tolist() == row
            expected_pos = [p for n in lens for p in range(n)]
            assert batch["position_ids"][j, : len(row)].tolist() == expected_pos
            starts = np.cumsum([0] + lens[:-1])
            assert batch["labels"][j, starts].tolist() == [-100] * len(lens)
            seen.append(row)
    assert seen == raw["input_ids"]

    it = ds.iterable()
    rows = [r["input_ids"].tolist() for r in DataLoader(it, batch_size=None, num_workers=2)]
    assert sorted(rows) == sorted(raw["input_ids"]) and len(it) == len(ds)
    shuffled = ds.iterable(shuffle_shards=True, seed=1)
    assert sorted(r["input_ids"].tolist() for r in shuffled) == sorted(raw["input_ids"])
    with pytest.raises(ValueError, match=r"no manifest\.json in .*run packwise pack to the end"):
        PackedDataset(tmp_path)


@pytest.mark.parametrize("algorithm, seed", [("window_bfd", None), ("window_bfd", 3), ("bfd", 1), ("concat", None)])
def test_part_rows_splits_a_window_into_parts_with_the_same_rows_in_order(c4_ids, algorithm, seed):
    """The local writer asks for row-group-sized parts: the rows, their order and the stats are
    those of one part per window."""
    from packwise.pipeline.pack_stage import StreamPacker
    from packwise.pipeline.tokens import TokenBatch

    ids = c4_ids[:300]
    offsets = np.zeros(len(ids) + 1, np.int64)
    np.cumsum([len(x) for x in ids], out=offsets[1:])
    values = np.concatenate([np.asarray(x, np.int32) for x in ids])
    batches = [TokenBatch(offsets[a : b + 1] - offsets[a], values[offsets[a] : offsets[b]], np.arange(a, b), rows_read=b - a)
               for a, b in ((0, 120), (120, 300))]  # fmt: skip

    def run(part_rows):
        packer = StreamPacker(CAP, algorithm, "split", window=100, seed=seed, part_rows=part_rows)
        parts = [r for tb in batches for r in packer.add(tb)] + list(packer.finish())
        rows = [(r.tokens[r.token_offsets[k] : r.token_offsets[k + 1]].tolist(), r.source_index[r.seq_offsets[k] : r.seq_offsets[k + 1]].tolist())
                for r in parts for k in range(r.num_rows)]  # fmt: skip
        return rows, [r.num_rows for r in parts], packer.stats.to_dict()

    whole, whole_sizes, whole_stats = run(None)
    split, split_sizes, split_stats = run(7)
    assert split == whole and split_stats == whole_stats and len(whole) > 40
    assert max(split_sizes) == 7 and len(split_sizes) > len(whole_sizes)
    with pytest.raises(ValueError, match="part_rows"):
        StreamPacker(CAP, part_rows=0)
