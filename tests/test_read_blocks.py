"""CSV and JSON Lines read block by block: quoted newlines across blocks, rows over a block, and
parse errors that name the file row."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import load_texts

from packwise.pipeline import read
from packwise.pipeline import readers


@pytest.fixture(scope="module")
def quoted_rows():
    """> 8 MiB of real texts (alpaca: multi-line) with doubled quotes and newlines inside values."""
    texts = load_texts("alpaca")
    rows, size, i = [], 0, 0
    while size < 12 << 20:
        text = f'say "hi" {i}\nsecond line\n{texts[i % len(texts)]}'
        rows.append((i, text))
        size += len(text) + 12
        i += 1
    return rows


def test_csv_over_8_mib_with_quoted_newlines_reads_row_exact(tmp_path, quoted_rows):
    path = tmp_path / "quoted.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows(quoted_rows)
    assert path.stat().st_size > 8 << 20 and b'""hi""' in path.read_bytes()[:200]
    got = [(i, t) for b in read(path, columns=["id", "text"]) for i, t in zip(b.column("id").to_pylist(), b.column("text").to_pylist())]
    assert len(got) == len(quoted_rows)
    assert got == quoted_rows


def test_rows_longer_than_a_block_grow_the_block(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "_BLOCK_BYTES", 1 << 10)
    texts = ["x" * 5000, "short", "y" * 20000, "z"]
    (tmp_path / "big.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    with open(tmp_path / "big.csv", "w", newline="") as f:
        csv.writer(f).writerows([["text"]] + [[t + "\n"] for t in texts])
    assert [t for b in read(tmp_path / "big.jsonl", ["text"]) for t in b.column("text").to_pylist()] == texts
    assert [t for b in read(tmp_path / "big.csv", ["text"]) for t in b.column("text").to_pylist()] == [t + "\n" for t in texts]
    monkeypatch.setattr(readers, "_MAX_BLOCK_BYTES", 8 << 10)
    with pytest.raises(ValueError, match=r"big\.jsonl: row 2 is longer than 8,192 bytes .*; split it"):
        list(read(tmp_path / "big.jsonl", ["text"]))


def test_parse_errors_name_the_file_row_past_the_first_block(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "_BLOCK_BYTES", 1 << 10)
    lines = [json.dumps({"text": f"row {i}"}) for i in range(300)]
    lines[217] = '{"text": broken'
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl: cannot read it as json: row 217 \(JSON parse error.*fix or remove that row"):
        list(read(tmp_path / "bad.jsonl", ["text"]))
    rows = [f"{i},row {i}" for i in range(300)]
    rows[250] = "250,row,250"
    (tmp_path / "bad.csv").write_text("id,text\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"bad\.csv: cannot read it as csv: row 250 \(CSV parse error: Expected 2 columns, got 3: 250,row,250\)"):
        list(read(tmp_path / "bad.csv", ["text"]))
