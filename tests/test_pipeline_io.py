"""The pipeline's I/O helpers: read-ahead thread, zero-copy Arrow views, and the shard writer's
background encoder (row groups, order, metadata, errors surfacing on the caller's thread)."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from packwise.pipeline._arrow import arrow_array, numpy_view
from packwise.pipeline._prefetch import prefetched
from packwise.pipeline.pack_stage import PackedRows
from packwise.pipeline.writer import ShardWriter


def _read_ahead_threads() -> int:
    return sum(t.name == "packwise-read-ahead" for t in threading.enumerate())


def test_prefetched_keeps_order_and_reraises_where_the_error_happened():
    def items():
        yield from range(3)
        raise ValueError("row 3: column 'text' is null; drop or fill that row")

    got = []
    with pytest.raises(ValueError, match=r"^row 3: column 'text' is null; drop or fill that row$"):
        for x in prefetched(items()):
            got.append(x)
    assert got == [0, 1, 2]
    assert _read_ahead_threads() == 0


def test_prefetched_closed_early_stops_its_thread_after_a_bounded_read_ahead():
    pulled = []

    def items():
        for i in range(1000):
            pulled.append(i)
            yield i

    it = prefetched(items(), depth=2)
    assert next(it) == 0
    it.close()
    assert _read_ahead_threads() == 0
    assert len(pulled) <= 1 + 2 + 1  # the one consumed, the queue, the one in hand


def test_numpy_view_is_zero_copy_and_refuses_nulls_and_other_types():
    a = pa.array(np.arange(10, dtype=np.int32)).slice(3, 4)
    v = numpy_view(a, np.int32)
    assert v.tolist() == [3, 4, 5, 6] and not v.flags.writeable
    with pytest.raises(ValueError, match=r"^cannot view an Arrow array with 1 nulls as NumPy; fill or drop them first$"):
        numpy_view(pa.array([1, None], pa.int32()), np.int32)
    with pytest.raises(ValueError, match=r"^Arrow array of type int64 is not int32; cast it first$"):
        numpy_view(pa.array([1], pa.int64()), np.int32)
    x = np.array([5, 6, 7], np.int64)
    assert arrow_array(x, pa.int64()).to_pylist() == [5, 6, 7]
    assert arrow_array(x[::2], pa.int32()).to_pylist() == [5, 7]  # strided: copied once, right values


def _rows(n: int, start: int = 0) -> PackedRows:
    """``n`` packed rows, row ``r`` holding one sequence of ``r % 5 + 1`` tokens valued ``start + r``."""
    lens = (np.arange(n) % 5 + 1).astype(np.int32)
    token_offsets = np.concatenate(([0], np.cumsum(lens))).astype(np.int64)
    tokens = np.repeat(np.arange(start, start + n, dtype=np.int32), lens)
    return PackedRows(token_offsets, tokens, None, np.arange(n + 1, dtype=np.int64), lens,
                      np.arange(start, start + n, dtype=np.int64), np.zeros(n, np.int64))  # fmt: skip


def test_shards_land_in_order_with_full_row_groups_and_their_counts(tmp_path):
    w = ShardWriter(tmp_path / "out", settings={"k": 1}, fingerprint="f", shard_rows=2500)
    for start in range(0, 6000, 700):  # batches that straddle row groups and shards
        w.write(_rows(min(700, 6000 - start), start))
    manifest = w.close({"rows_out": 6000})
    assert [s["file"] for s in manifest["shards"]] == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    assert [s["rows"] for s in manifest["shards"]] == [2500, 2500, 1000]
    firsts = []
    for s in manifest["shards"]:
        f = pq.ParquetFile(tmp_path / "out" / s["file"])
        groups = [f.metadata.row_group(g).num_rows for g in range(f.metadata.num_row_groups)]
        assert groups == ([1024, 1024, 452] if s["rows"] == 2500 else [1000])
        assert json.loads(f.metadata.metadata[b"packwise"]) == {k: s[k] for k in ("rows", "tokens", "sequences")}
        t = f.read()
        assert s["tokens"] == sum(len(x) for x in t.column("input_ids").to_pylist())
        firsts += [ids[0] for ids in t.column("input_ids").to_pylist()]
    assert firsts == list(range(6000))
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_an_encoding_error_is_raised_to_the_caller_and_no_manifest_is_written(tmp_path):
    out = tmp_path / "out"
    w = ShardWriter(out, settings={"k": 1}, fingerprint="f", shard_rows=10)
    shutil.rmtree(out)  # the folder vanishes under the run: the encoder thread cannot create a shard
    with pytest.raises(ValueError, match=r"out/shard-00000\.parquet: cannot write it: its folder is gone .*; check the device and rerun"):
        w.write(_rows(25))  # raised at the first call after the failed job: here or in close()
        w.close({"rows_out": 25})
    assert not (out / "manifest.json").exists()
