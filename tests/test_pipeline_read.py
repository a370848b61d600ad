"""Streaming readers over real files built from ../shared/data: every format, projection, errors."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from conftest import load_texts

from packwise.pipeline import open_input, read


def _column(batches, name):
    out = []
    for b in batches:
        assert isinstance(b, pa.RecordBatch)
        out.extend(b.column(name).to_pylist())
    return out


@pytest.fixture(scope="module")
def alpaca_table():
    texts = load_texts("alpaca")
    return pa.table({"id": list(range(len(texts))), "text": texts, "extra": ["x"] * len(texts)})


def test_jsonl_streams_the_real_c4_file(shared_data):
    batches = list(read(shared_data / "c4_demo.jsonl", columns=["text"]))
    assert all(b.schema.names == ["text"] for b in batches)
    assert _column(batches, "text") == load_texts("c4")


def test_parquet_file_folder_and_glob_project_columns_and_bound_batches(tmp_path, alpaca_table):
    folder = tmp_path / "parts"
    folder.mkdir()
    for k, start in enumerate(range(0, alpaca_table.num_rows, 400)):
        pq.write_table(alpaca_table.slice(start, 400), folder / f"part-{k}.parquet", row_group_size=128)
    expected = alpaca_table.column("text").to_pylist()
    for source in (folder, str(folder / "part-*.parquet")):
        batches = list(read(source, columns=["text"], batch_size=100))
        assert all(b.schema.names == ["text"] and b.num_rows <= 100 for b in batches)
        assert _column(batches, "text") == expected
    one = folder / "part-0.parquet"
    assert _column(read(one, columns=["id", "text"]), "id") == list(range(400))
    assert open_input(folder, ["text"]).num_rows == alpaca_table.num_rows


def test_csv_and_arrow_ipc_file_stream_and_feather(tmp_path, shared_data):
    with open(shared_data / "ag_news_test.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    path = tmp_path / "ag.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["label", "title", "description"])
        w.writerows(rows)
    assert _column(read(path, columns=["title"]), "title") == [r[1] for r in rows]
    assert [b.schema.names for b in read(path, columns=["description"])][0] == ["description"]

    table = pa.table({"title": [r[1] for r in rows], "label": [int(r[0]) for r in rows]})
    with ipc.new_file(tmp_path / "ag.arrow", table.schema) as w:
        w.write_table(table, max_chunksize=1000)
    with ipc.new_stream(tmp_path / "ag_stream.ipc", table.schema) as w:
        w.write_table(table, max_chunksize=3000)
    feather.write_feather(table, tmp_path / "ag.feather", chunksize=2000)
    for name in ("ag.arrow", "ag_stream.ipc", "ag.feather"):
        batches = list(read(tmp_path / name, columns=["label"], batch_size=700))
        assert all(b.schema.names == ["label"] and b.num_rows <= 700 for b in batches)
        assert _column(batches, "label") == table.column("label").to_pylist()


def test_hugging_face_dataset_iterable_streaming_and_save_to_disk(tmp_path, alpaca_table):
    import datasets

    ds = datasets.Dataset.from_dict(alpaca_table.to_pydict()).shuffle(seed=3)
    expected = ds["text"]
    assert _column(read(ds, columns=["text"], batch_size=256), "text") == expected
    assert open_input(ds, ["text"]).num_rows == len(ds)

    ds.save_to_disk(tmp_path / "saved", num_shards=3)
    assert _column(read(tmp_path / "saved", columns=["text"]), "text") == expected

    pq.write_table(alpaca_table, tmp_path / "a.parquet")
    streamed = datasets.load_dataset("parquet", data_files=str(tmp_path / "a.parquet"), split="train", streaming=True)
    batches = list(read(streamed, columns=["text"], batch_size=300))
    assert all(b.schema.names == ["text"] for b in batches)
    assert _column(batches, "text") == alpaca_table.column("text").to_pylist()
    assert _column(read(ds.to_iterable_dataset(num_shards=2), columns=["id"]), "id") == ds["id"]


def test_missing_column_names_file_column_and_the_columns_present(tmp_path, alpaca_table):
    pq.write_table(alpaca_table, tmp_path / "a.parquet")
    with pytest.raises(ValueError, match=r"a\.parquet: column 'txt' not found \(columns: \['id', 'text', 'extra'\]\)"):
        list(read(tmp_path / "a.parquet", columns=["txt"]))
    with open(tmp_path / "a.jsonl", "w") as f:
        f.write(json.dumps({"body": "hello"}) + "\n")
    with pytest.raises(ValueError, match=r"a\.jsonl: column 'text' not found \(columns: \['body'\]\)"):
        list(read(tmp_path / "a.jsonl", columns=["text"]))


def test_bad_inputs_are_value_errors_naming_the_path_and_fix(tmp_path, shared_data, alpaca_table):
    with pytest.raises(ValueError, match=r"input: no file or folder at .*nope\.parquet; pass an existing path"):
        open_input(tmp_path / "nope.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"input: folder .*empty holds no data files .*empty input"):
        open_input(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"input: glob .* holds no data files"):
        open_input(str(tmp_path / "*.parquet"))
    (tmp_path / "notes.md").write_text("hi")
    with pytest.raises(ValueError, match=r"notes\.md: unknown file type '\.md'; pass --format"):
        open_input(tmp_path / "notes.md")
    pq.write_table(alpaca_table, tmp_path / "good.parquet")
    data = (tmp_path / "good.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.parquet: cannot read it as parquet .*check the file is complete"):
        list(read(tmp_path / "cut.parquet"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl: cannot read it as json"):
        list(read(tmp_path / "bad.jsonl"))
    with pytest.raises(ValueError, match=r"format must be one of"):
        open_input(tmp_path / "good.parquet", format="xml")
    with pytest.raises(ValueError, match=r"batch_size must be >= 1 row, got 0"):
        open_input(tmp_path / "good.parquet", batch_size=0)
