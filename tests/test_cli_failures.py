"""The CLI failure list of issue 18, walked: each exits 2 with one line naming the file, row or
option and the fix (no traceback), and leaves earlier output untouched.  A full disk and a busy
output folder are walked in test_output_faults.py; CSV/JSONL parse rows in test_read_blocks.py."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import load_texts
from test_cli_pack import invoke

from packwise.packing import pack
from packwise.pipeline.tokens import encode


@pytest.fixture(scope="module")
def token_parquet(tmp_path_factory, tokenizer):
    """Real c4 rows as token ids, plus a numeric and a text score column."""
    texts = load_texts("c4")
    ids = encode(tokenizer, texts)
    path = tmp_path_factory.mktemp("walk") / "c4.parquet"
    pq.write_table(pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32())), "text": texts,
                             "score": np.arange(len(texts), dtype=np.float64), "grade": [f"g{i}" for i in range(len(texts))]}), path)  # fmt: skip
    return path, ids


def _fails(result, *parts):
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    message = result.output.split("error: ", 1)[1]
    for part in parts:
        assert part in message, (part, message)
    assert "Traceback" not in result.output


def _bad_ids(tmp_path, ids, row, value, dtype=pa.int64()):
    bad = [list(r) for r in ids]
    bad[row][3] = value
    path = tmp_path / f"ids-{value}.parquet"
    pq.write_table(pa.table({"input_ids": pa.array(bad, pa.list_(dtype)), "labels": pa.array(bad, pa.list_(dtype))}), path)
    return path


def _read_only_folder(tmp_path):
    """A folder this process cannot write: chmod as a user, a read-only tmpfs as root."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return folder
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"as root only a read-only mount makes a read-only folder, and mount failed: {done.stderr.strip()}")
    return folder


def test_the_cli_failure_list_exits_2_naming_the_file_row_or_option_and_the_fix(tmp_path, shared_data, tok_file, token_parquet):  # noqa: F811
    src, ids = token_parquet
    c4 = shared_data / "c4_demo.jsonl"
    pack_ids = ["--max-tokens", 1024, "--tokens-column", "input_ids", "--oversize", "split"]

    # --labels-column with a tokenizer (was a KeyError)
    _fails(invoke("pack", c4, tmp_path / "o1", "--max-tokens", 512, "--tokenizer", tok_file, "--labels-column", "labels"),
           "--labels-column needs --tokens-column", "drop --labels-column")  # fmt: skip
    # the output's parent is a file (was a NotADirectoryError trace), for pack and select
    (tmp_path / "a_file").write_text("x")
    _fails(invoke("pack", src, tmp_path / "a_file" / "out", *pack_ids), f"{tmp_path / 'a_file' / 'out'}: cannot write it: a parent of it is a file")
    _fails(invoke("select", src, tmp_path / "a_file" / "sel", "--method", "score", "--score-column", "score", "--keep", 0.5),
           "a parent of it is a file", "choose a path you can write to")  # fmt: skip
    # report --json onto a folder: refused before the report runs
    (tmp_path / "jdir").mkdir()
    r = invoke("report", src, "--max-tokens", 1024, "--tokens-column", "input_ids", "--json", tmp_path / "jdir")
    _fails(r, f"--json {tmp_path / 'jdir'}: is a folder; pass a file path")
    assert "padding waste" not in r.output
    # negative token ids (-100) and ids >= 2**31: the file and the row
    neg = _bad_ids(tmp_path, ids, 7, -100)
    _fails(invoke("pack", neg, tmp_path / "o2", *pack_ids), f"{neg} row 7: column 'input_ids' holds a token id -100",
           "-100 and other masks belong in --labels-column")  # fmt: skip
    big = _bad_ids(tmp_path, ids, 11, 2**31)
    _fails(invoke("pack", big, tmp_path / "o3", *pack_ids), f"{big} row 11: column 'input_ids' holds a token id 2147483648", "[0, 2**31)")
    labels_ok = invoke("pack", neg, tmp_path / "o4", "--max-tokens", 1024, "--tokens-column", "labels", "--labels-column", "labels", "--oversize", "split")
    _fails(labels_ok, "column 'labels' holds a token id -100")  # as token ids no, ...
    masked = _bad_ids(tmp_path, [[abs(t) for t in r] for r in ids], 7, 5)
    t = pq.read_table(masked)
    labels = [list(r) for r in t.column("labels").to_pylist()]
    labels[7][0] = -100
    pq.write_table(t.set_column(1, "labels", pa.array(labels, pa.list_(pa.int64()))), masked)
    ok = invoke("pack", masked, tmp_path / "o5", *pack_ids, "--labels-column", "labels")
    assert ok.exit_code == 0, ok.output  # ... as labels -100 is the mask
    # --seed -1
    _fails(invoke("pack", src, tmp_path / "o6", *pack_ids, "--seed", -1), "--seed -1: must be an integer >= 0")
    _fails(invoke("select", src, tmp_path / "s6", "--method", "score", "--score-column", "score", "--keep", 0.5, "--seed", -1), "--seed -1: must be >= 0")
    _fails(invoke("report", src, "--max-tokens", 1024, "--tokens-column", "input_ids", "--seed", -1), "--seed -1: must be an integer >= 0")
    # a text score column (was "could not convert string to float")
    _fails(invoke("select", src, tmp_path / "s7", "--method", "score", "--score-column", "grade", "--keep", 0.5),
           f"{src} row 0: --score-column grade has type string (e.g. 'g0'), not numbers")  # fmt: skip
    # uint64 lengths over 2**63 (were shown wrapped to negative)
    with pytest.raises(ValueError, match=r"lengths\[1\] = 18446744073709551615 is not a token count"):
        pack(np.array([3, 2**64 - 1], np.uint64), 10)
    # an output inside the input folder or glob
    (tmp_path / "data").mkdir()
    pq.write_table(pq.read_table(src), tmp_path / "data" / "c4.parquet")
    _fails(invoke("pack", tmp_path / "data", tmp_path / "data" / "packed", *pack_ids), "lies inside the input", "choose an output folder outside the input")
    _fails(invoke("pack", str(tmp_path / "data" / "**" / "*.parquet"), tmp_path / "data" / "p2", *pack_ids), "lies inside the input")
    assert invoke("pack", str(tmp_path / "data" / "*.parquet"), tmp_path / "data" / "p3", *pack_ids).exit_code == 0  # shards not matched


def test_select_overwrite_with_a_bad_option_leaves_the_old_selection_untouched(tmp_path, token_parquet):
    src, _ = token_parquet
    out = tmp_path / "sel"
    assert invoke("select", src, out, "--method", "score", "--score-column", "score", "--keep", 0.5).exit_code == 0
    (out / ".shard-00009.parquet.left.tmp").write_bytes(b"a killed run's temp")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for bad, says in ((["--method", "dedup", "--embeddings-column", "e", "--eps", 5], "--eps 5.0: must be in [0, 2)"),
                      (["--method", "dedup", "--embeddings-column", "e", "--order", "hardest"], "--order hardest: use one of hard, easy, random, index"),
                      (["--method", "prototypes", "--embeddings-column", "e", "--keep", 1.5], "--keep F, a fraction in [0, 1]"),
                      (["--method", "balance", "--embeddings-column", "e"], "pass exactly one of --target N (rows) or --keep F"),
                      (["--method", "score", "--score-column", "score", "--keep", 0.5, "--policy", "top"], "--policy top: use one of topk"),
                      (["--method", "score", "--score-column", "score", "--keep", 0.5, "--shard-rows", 0], "--shard-rows 0: must be >= 1")):  # fmt: skip
        _fails(invoke("select", src, out, *bad, "--overwrite"), says)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    again = invoke("select", src, out, "--method", "score", "--score-column", "score", "--keep", 0.25, "--overwrite")
    assert again.exit_code == 0, again.output
    assert not list(out.glob(".*.tmp")) and json.loads((out / "manifest.json").read_text())["rows_out"] == 75


def test_a_read_only_output_folder_exits_2_for_pack_select_and_report_json(tmp_path, token_parquet):
    src, _ = token_parquet
    ro = _read_only_folder(tmp_path)
    try:
        why = "no permission to write there" if os.geteuid() else "the file system is read-only"
        _fails(invoke("pack", src, ro, "--max-tokens", 1024, "--tokens-column", "input_ids", "--oversize", "split"), f"{ro}/.packwise.lock: cannot write it: {why}")
        _fails(invoke("select", src, ro, "--method", "score", "--score-column", "score", "--keep", 0.5), f"cannot write it: {why}")
        r = invoke("report", src, "--max-tokens", 1024, "--tokens-column", "input_ids", "--json", ro / "r.json")
        _fails(r, f"--json {ro}/r.json: cannot write it: {why}")
        assert "padding waste" not in r.output
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)], check=True)
        else:
            ro.chmod(0o755)
