"""Issue 22, items 8, 9, 14 and 15: input files written to hurt or to mislead.

File names read from files stay inside their folder; rows nested too deep for Arrow's JSON
parser, invalid UTF-8 and byte order marks are caught by packwise's own byte scan; errors name
the file, row and byte, and escape the file name; Ctrl-C and SIGTERM say what is kept; CSV records
whose quoted fields span lines are counted, and the CSV dialect can be named.  Every failure is a
real CLI run (a subprocess where the old code crashed the interpreter) on real files."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import load_texts
from test_cli_pack import invoke

from packwise.pipeline import PackedDataset, pack_to_parquet
from packwise.pipeline.dataset import PackedIterableDataset
from packwise.pipeline.tokens import encode


def _cli(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    """``packwise ARGS`` in a process of its own (a crash there cannot take pytest down)."""
    cmd = [sys.executable, "-m", "packwise.cli.app", *[str(a) for a in args]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _error(result) -> str:
    """The one error line of a failed run (CliRunner result or subprocess)."""
    text = result.stderr if isinstance(result, subprocess.CompletedProcess) else result.output
    lines = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, text
    return lines[0][len("error: ") :]


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


# --- item 8: paths taken from files --------------------------------------------------------------
@pytest.fixture
def saved(tmp_path, tokenizer):
    """A real ``save_to_disk`` folder of token ids, and a private Arrow file beside it."""
    import datasets

    ids = encode(tokenizer, load_texts("alpaca"))[:50]
    datasets.Dataset.from_dict({"input_ids": ids}).save_to_disk(tmp_path / "data" / "saved")
    secret = tmp_path / "secret"
    secret.mkdir()
    arrow = next((tmp_path / "data" / "saved").glob("*.arrow"))
    shutil.copy(arrow, secret / "private.arrow")
    return tmp_path / "data" / "saved", secret / "private.arrow"


def _list_in_state(folder: Path, name: str) -> None:
    state = json.loads((folder / "state.json").read_text())
    state["_data_files"] = [{"filename": name}]
    (folder / "state.json").write_text(json.dumps(state))


def test_state_json_naming_a_file_outside_its_folder_is_refused(tmp_path, saved):
    folder, private = saved
    _list_in_state(folder, "../../secret/private.arrow")
    result = invoke("pack", folder, tmp_path / "out", "--max-tokens", 512, "--tokens-column", "input_ids")
    assert result.exit_code == 2, result.output
    assert _error(result) == (
        f"{folder / 'state.json'}: _data_files[0].filename '../../secret/private.arrow' resolves to {private}, "
        f"outside {folder}; every file it lists must lie inside that folder: remove the entry or regenerate state.json"
    )
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_state_json_naming_a_symlink_that_leaves_the_folder_is_refused(tmp_path, saved):
    folder, private = saved
    (folder / "inner.arrow").symlink_to(private)
    _list_in_state(folder, "inner.arrow")
    result = invoke("report", folder, "--max-tokens", 512, "--tokens-column", "input_ids")
    assert result.exit_code == 2, result.output
    assert _error(result).startswith(f"{folder / 'state.json'}: _data_files[0].filename 'inner.arrow' resolves to {private}, outside {folder};")


def test_state_json_naming_a_file_inside_its_folder_still_reads(tmp_path, saved):
    folder, _ = saved
    result = invoke("report", folder, "--max-tokens", 512, "--tokens-column", "input_ids", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["num_sequences"] == 50


def test_packed_dataset_refuses_a_manifest_file_outside_its_folder(tmp_path):
    ids = pa.array([[1, 2, 3], [4, 5], [6, 7]], pa.list_(pa.int32()))
    pq.write_table(pa.table({"input_ids": ids}), tmp_path / "in.parquet")
    out = tmp_path / "out"
    pack_to_parquet(tmp_path / "in.parquet", out, max_tokens=5, tokens_column="input_ids")
    shutil.copy(out / "shard-00000.parquet", tmp_path / "x.parquet")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"][0]["file"] = "../x.parquet"
    (out / "manifest.json").write_text(json.dumps(manifest))
    expected = (
        f"{out / 'manifest.json'}: shards[0].file '../x.parquet' resolves to {tmp_path / 'x.parquet'}, outside {out}; "
        f"every file it lists must lie inside that folder: remove the entry or regenerate manifest.json"
    )
    for cls in (PackedDataset, PackedIterableDataset):
        with pytest.raises(ValueError) as err:
            cls(out)
        assert str(err.value) == expected


# --- item 9: rows nested deeper than Arrow's parser survives -----------------------------------
def _deep(levels: int) -> str:
    return '{"text": "deep", "x": ' + "[" * levels + "]" * levels + "}"


@pytest.fixture
def deep_jsonl(tmp_path) -> Path:
    path = tmp_path / "deep.jsonl"
    path.write_text('{"text": "one two"}\n{"text": "three [{ four"}\n' + _deep(20_000) + "\n")
    return path


def _too_deep(where: str) -> str:
    return (
        f"{where}: a JSON value nested more than 1000 levels deep (packwise reads at most 1000 levels of [ and {{; "
        f"deeper nesting crashes Arrow's JSON parser); flatten or remove that row"
    )


def test_pack_and_report_refuse_a_jsonl_row_nested_20000_deep(tmp_path, deep_jsonl, tok_file):
    for args in (["pack", deep_jsonl, tmp_path / "out"], ["report", deep_jsonl]):
        result = _cli(*args, "--max-tokens", 64, "--tokenizer", tok_file)
        assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
        assert _error(result) == _too_deep(f"{deep_jsonl} line 3")


def test_a_json_array_element_nested_too_deep_is_refused_and_1000_levels_read(tmp_path, tok_file):
    deep = tmp_path / "deep.json"
    deep.write_text('[{"text": "a b"},\n' + _deep(20_000) + "]")
    result = _cli("report", deep, "--max-tokens", 64, "--tokenizer", tok_file)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert _error(result) == _too_deep(f"{deep} row 1")
    fine = _write_jsonl(tmp_path / "fine.jsonl", ["a b"])
    with open(fine, "a") as f:
        f.write(_deep(999) + "\n")  # the object is level 1: 1000 levels in all
    result = invoke("report", fine, "--max-tokens", 64, "--tokenizer", tok_file, "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["num_sequences"] == 2


def test_ray_pack_refuses_a_jsonl_row_nested_too_deep(tmp_path, deep_jsonl, tok_file):
    pytest.importorskip("ray")
    result = _cli("pack", deep_jsonl, tmp_path / "out", "--max-tokens", 64, "--tokenizer", tok_file, "--engine", "ray")
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert _error(result) == _too_deep(f"{deep_jsonl} line 3")


# --- item 14: messages -------------------------------------------------------------------------
def _not_utf8(where: str) -> str:
    return f"{where}: invalid UTF-8 (byte 0xff); packwise reads UTF-8 text: convert the file (e.g. iconv -f latin1 -t utf-8) or fix that line"


def test_invalid_utf8_names_file_line_and_byte_offset(tmp_path, tok_file):
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_bytes(b'{"text": "fine"}\n{"text": "caf\xff"}\n')
    csv = tmp_path / "bad.csv"
    csv.write_bytes(b"id,text\n1,fine\n2,caf\xff\n")
    for path, where in ((jsonl, "line 2 (byte offset 30)"), (csv, "line 3 (byte offset 20)")):
        result = invoke("report", path, "--max-tokens", 64, "--tokenizer", tok_file)
        assert result.exit_code == 2, result.output
        assert _error(result) == _not_utf8(f"{path} {where}")


def test_invalid_utf8_after_the_first_block_and_in_plain_text_is_located(tmp_path, monkeypatch):
    """A CSV column typed string by its first block, invalid bytes later; a cut character in a .txt."""
    from packwise.pipeline import read, readers

    monkeypatch.setattr(readers, "_BLOCK_BYTES", 4096)
    csv = tmp_path / "late.csv"
    head = "id,text\n" + "".join(f"{i},row number {i}\n" for i in range(2000))
    csv.write_bytes(head.encode() + b"2000,caf\xe9 au lait\n")
    with pytest.raises(ValueError) as err:
        list(read(csv))
    where = f"line 2002 (byte offset {len(head) + 8})"
    assert str(err.value) == _not_utf8(f"{csv} {where}").replace("byte 0xff", "byte 0xe9 starts no complete character")
    txt = tmp_path / "cut.txt"
    txt.write_bytes("première ligne\nla deuxi".encode() + b"\xc3")
    with pytest.raises(ValueError) as err:
        list(read(txt))
    assert str(err.value) == _not_utf8(f"{txt} line 2 (byte offset 24)").replace("byte 0xff", "byte 0xc3 starts no complete character")


def test_a_json_array_file_with_a_byte_order_mark_reads(tmp_path, tok_file):
    rows = [{"text": t} for t in load_texts("alpaca")[:40]]
    plain, bom = tmp_path / "plain.json", tmp_path / "bom.json"
    plain.write_text(json.dumps(rows), encoding="utf-8")
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    for path in (plain, bom):
        result = invoke("report", path, "--max-tokens", 512, "--tokenizer", tok_file, "--json", tmp_path / f"{path.stem}-report.json")
        assert result.exit_code == 0, result.output
    assert (tmp_path / "bom-report.json").read_text().replace(str(bom), "") == (tmp_path / "plain-report.json").read_text().replace(str(plain), "")


def test_an_over_long_row_in_a_folder_names_its_file_and_row(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table({"input_ids": pa.array([[1] * 10] * 3, pa.list_(pa.int32()))}), folder / "a.parquet")
    pq.write_table(pa.table({"input_ids": pa.array([[2] * 10, [3] * 600], pa.list_(pa.int32()))}), folder / "b.parquet")
    result = invoke("pack", folder, tmp_path / "out", "--max-tokens", 512, "--tokens-column", "input_ids")
    assert result.exit_code == 2, result.output
    assert _error(result) == (
        f"{folder / 'b.parquet'} row 1 has 600 tokens, more than --max-tokens 512; pass --oversize truncate, split or drop, or raise --max-tokens"
    )


def test_a_null_token_id_names_its_file_and_row(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table({"input_ids": pa.array([[1, 2]] * 3, pa.list_(pa.int32()))}), folder / "a.parquet")
    pq.write_table(pa.table({"input_ids": pa.array([[1, 2], [], [3, 4], [5, None, 6]], pa.list_(pa.int32()))}), folder / "b.parquet")
    result = invoke("report", folder, "--max-tokens", 512, "--tokens-column", "input_ids")
    assert result.exit_code == 2, result.output
    assert _error(result) == f"{folder / 'b.parquet'} row 3: column 'input_ids' holds a null token id; drop or fix that row"


def test_a_file_name_with_a_newline_is_escaped_in_the_error(tmp_path, tok_file):
    path = tmp_path / "two\nlines.jsonl"
    path.write_bytes(b'{"text": "caf\xff"}\n')
    result = _cli("report", path, "--max-tokens", 64, "--tokenizer", tok_file)
    assert result.returncode == 2, result.stderr
    assert _error(result) == _not_utf8(f"{str(path)!r} line 1 (byte offset 13)")
    result = _cli("report", tmp_path / "no\nsuch.jsonl", "--max-tokens", 64, "--tokenizer", tok_file)
    assert result.returncode == 2
    assert _error(result).startswith(f"input: no file or folder at {str(tmp_path / ('no' + chr(10) + 'such.jsonl'))!r}; ")


def _interrupted_pack(tmp_path, tok_file, signum: int):
    """Start a real pack, send ``signum`` once it has published 3 shards; (process, stderr, args)."""
    texts = load_texts("alpaca") + load_texts("ag_news")
    src = _write_jsonl(tmp_path / "corpus.jsonl", texts)
    args = [src, tmp_path / "out", "--max-tokens", 1024, "--tokenizer", tok_file, "--oversize", "split", "--shard-rows", 4, "--window", 500]
    proc = subprocess.Popen([sys.executable, "-m", "packwise.cli.app", "pack", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((tmp_path / "out").glob("shard-*.parquet"))) >= 3:
            os.kill(proc.pid, signum)
            break
        time.sleep(0.005)
    _, err = proc.communicate(timeout=240)
    return proc, err, args


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_pack_saying_what_is_kept_and_how_to_resume(tmp_path, tok_file, signum, code):
    proc, err, args = _interrupted_pack(tmp_path, tok_file, signum)
    assert proc.returncode == code, err[-2000:]
    kept = sorted(p.name for p in (tmp_path / "out").glob("shard-*.parquet"))
    assert kept == [f"shard-{k:05d}.parquet" for k in range(len(kept))] and len(kept) >= 3
    assert not (tmp_path / "out" / "manifest.json").exists() and not list((tmp_path / "out").glob(".shard-*.tmp"))
    last = err.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert last == f"interrupted ({name}): {len(kept)} complete shards in {tmp_path / 'out'}; rerun the same command to resume after them"
    resumed = invoke("pack", *args)
    assert resumed.exit_code == 0, resumed.output
    assert f"resumed after {len(kept)} complete shards" in resumed.output


def test_sigterm_stops_select_saying_what_is_left(tmp_path):
    n = 400_000
    pq.write_table(pa.table({"score": np.random.default_rng(0).random(n), "row": np.arange(n)}), tmp_path / "in.parquet")
    out = tmp_path / "sel"
    cmd = ["select", tmp_path / "in.parquet", out, "--method", "score", "--score-column", "score", "--keep", 0.5, "--shard-rows", 500]
    proc = subprocess.Popen([sys.executable, "-m", "packwise.cli.app", *map(str, cmd)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(out.glob("shard-*.parquet"))) >= 2:
            os.kill(proc.pid, signal.SIGTERM)
            break
        time.sleep(0.002)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err[-2000:]
    kept = len(list(out.glob("shard-*.parquet")))
    assert err.strip().splitlines()[-1] == (
        f"interrupted (SIGTERM): {kept} complete shards in {out}; no manifest.json, so no usable selection: "
        f"rerun the same command to select again (a selection starts over)"
    )
    assert not (out / "manifest.json").exists()


# --- item 15: CSV records that span lines, and the CSV dialect -----------------------------------
@pytest.fixture
def merged_csv(tmp_path) -> Path:
    """5 data rows; the quote opened in row 1 is closed in row 3, so Arrow reads 3 records."""
    path = tmp_path / "merged.csv"
    path.write_text('id,text\n1,"alpha beta\n2,gamma delta\n3,epsilon zeta"\n4,eta theta\n5,iota kappa\n', encoding="utf-8")
    return path


def test_csv_records_whose_quotes_span_lines_are_counted_in_every_summary(tmp_path, merged_csv, tok_file):
    packed = invoke("pack", merged_csv, tmp_path / "out", "--max-tokens", 64, "--tokenizer", tok_file)
    assert packed.exit_code == 0, packed.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["stats"]["rows_in"] == 3 and manifest["stats"]["csv_rows_with_quoted_line_breaks"] == 1
    assert re.search(r"│ CSV rows with quoted line breaks +│ +1 │", packed.output), packed.output
    report = invoke("report", merged_csv, "--max-tokens", 64, "--tokenizer", tok_file, "--json", tmp_path / "r.json")
    assert report.exit_code == 0, report.output
    assert "CSV rows with quoted line breaks: 1" in report.output
    assert json.loads((tmp_path / "r.json").read_text())["csv_rows_with_quoted_line_breaks"] == 1
    selected = invoke("select", merged_csv, tmp_path / "sel", "--method", "score", "--score-column", "id", "--keep", 1.0)
    assert selected.exit_code == 0, selected.output
    assert re.search(r"│ CSV rows with quoted line breaks +│ +1 │", selected.output), selected.output


def test_a_header_split_by_another_delimiter_gets_a_hint_and_the_option_reads_it(tmp_path, tok_file):
    texts = load_texts("ag_news")[:30]
    for delimiter, name in ((";", "semi"), ("\t", "tab"), ("|", "pipe")):
        path = tmp_path / f"{name}.csv"
        path.write_text(f"id{delimiter}text\n" + "".join(f"{i}{delimiter}{t.replace(delimiter, ' ')}\n" for i, t in enumerate(texts)), encoding="utf-8")
        result = invoke("report", path, "--max-tokens", 512, "--tokenizer", tok_file)  # no column flag: the layout is detected
        assert result.exit_code == 2, result.output
        assert _error(result) == (
            f"{path}: the header {f'id{delimiter}text'!r} is one column, split by {delimiter!r} and not by ','; "
            f"pass --csv-delimiter {delimiter!r} if the file separates its fields with {delimiter!r}"
        )
        named = invoke("report", path, "--max-tokens", 512, "--tokenizer", tok_file, "--text-column", "text")
        assert _error(named) == _error(result).replace(": the header", ": column 'text' not found: the header", 1)
        option = "\\t" if delimiter == "\t" else delimiter
        result = invoke("report", path, "--max-tokens", 512, "--tokenizer", tok_file, "--csv-delimiter", option, "--json", tmp_path / "r.json")
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / "r.json").read_text())["num_sequences"] == len(texts)


def test_csv_quote_and_escape_options_reach_the_parser(tmp_path, tok_file):
    path = tmp_path / "quoted.csv"
    path.write_text("id,text\n1,'a, b'\n2,'it\\'s'\n3,plain\n", encoding="utf-8")
    args = ["--max-tokens", 64, "--tokenizer", tok_file, "--csv-quote", "'", "--csv-escape", "\\"]
    result = invoke("pack", path, tmp_path / "out", *args)
    assert result.exit_code == 0, result.output
    ids = encode(__import__("tokenizers").Tokenizer.from_file(str(tok_file)), ["a, b", "it's", "plain"])
    row = pq.read_table(tmp_path / "out" / "shard-00000.parquet").column("input_ids").to_pylist()[0]
    assert row == [t for seq in ids for t in seq]
    bad = invoke("pack", path, tmp_path / "out2", "--max-tokens", 64, "--tokenizer", tok_file, "--csv-quote", ",")
    assert bad.exit_code == 2
    assert _error(bad) == "--csv-delimiter ',', --csv-quote ',' and --csv-escape None must be different characters"


def test_a_ray_block_record_naming_a_shard_outside_the_output_is_not_kept(tmp_path):
    """A block record (``OUTPUT/.packwise-blocks/block-*.json``) is a file too: its shard names must
    stay inside OUTPUT, else the block is redone, not listed in the manifest."""
    from packwise.pipeline.ray_engine import BLOCKS, _valid_record

    ids = pa.array([[1, 2, 3], [4, 5], [6, 7]], pa.list_(pa.int32()))
    pq.write_table(pa.table({"input_ids": ids}), tmp_path / "in.parquet")
    pack_to_parquet(tmp_path / "in.parquet", tmp_path / "packed", max_tokens=5, tokens_column="input_ids")
    out = tmp_path / "out"
    (out / BLOCKS).mkdir(parents=True)
    shutil.copy(tmp_path / "packed" / "shard-00000.parquet", tmp_path / "x.parquet")
    shutil.copy(tmp_path / "packed" / "shard-00000.parquet", out / "block-000000-0000.parquet")
    info = json.loads(pq.read_metadata(tmp_path / "x.parquet").metadata[b"packwise"].decode())
    for name, kept in (("block-000000-0000.parquet", True), ("../x.parquet", False)):
        record = {"block": 0, "shards": [{"file": name, **info}], "tail": None, "unlabeled": 0}
        (out / BLOCKS / "block-000000.json").write_text(json.dumps(record))
        assert (_valid_record(out, out / BLOCKS / "block-000000.json") == record) is kept, name
