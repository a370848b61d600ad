"""The files users start from, as they are: JSON arrays, plain text, headerless CSV, several text
columns and whole-row templates; document boundaries; a content fingerprint for resume."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import pytest
from test_cli_pack import invoke
from test_pipeline_pack import check_round_trip, read_shards
from typer.testing import CliRunner

from packwise.cli.app import app
from packwise.pipeline import open_input, pack_to_parquet, read
from packwise.pipeline.tokens import TEXT_SEPARATOR, encode

runner = CliRunner()
AG_COLUMNS = "label,title,description"


def shared_files(root: Path) -> dict[str, tuple[list, list[str]]]:
    """Every file in ../shared/data with the options a user passes for it, and its row texts."""
    alpaca = json.load(open(root / "alpaca_en_demo.json", encoding="utf-8"))
    with open(root / "ag_news_test.csv", encoding="utf-8", newline="") as f:
        ag = list(csv.reader(f))
    lines = (root / "wiki_demo.txt").read_text(encoding="utf-8").split("\n")
    return {
        "c4_demo.jsonl": ([], [json.loads(x)["text"] for x in open(root / "c4_demo.jsonl", encoding="utf-8")]),
        "alpaca_en_demo.json": (
            ["--text-column", "instruction,input,output"],
            [TEXT_SEPARATOR.join(v for v in (r["instruction"], r["input"], r["output"]) if v) for r in alpaca],
        ),
        "glaive_toolcall_en_demo.json": (["--chat-template", "chatml"], None),
        "wiki_demo.txt": ([], lines[:-1] if lines[-1] == "" else lines),
        "ag_news_test.csv": (["--csv-columns", AG_COLUMNS, "--text-column", "title,description"],
                             [f"{t}{TEXT_SEPARATOR}{d}" for _, t, d in ag]),  # fmt: skip
    }


def test_every_shared_file_packs_and_reports_as_it_is(tmp_path, shared_data, tokenizer, tok_file):
    """pack and report accept each file unconverted; report's row for pack's packer is pack's row count."""
    files = shared_files(shared_data)
    assert sorted(files) == sorted(p.name for p in shared_data.iterdir() if p.name != "README.md")
    for name, (options, texts) in files.items():
        out = tmp_path / name
        common = ["--max-tokens", 1024, "--tokenizer", tok_file, "--oversize", "split", *options]
        packed = invoke("pack", shared_data / name, out, *common)
        assert packed.exit_code == 0, (name, packed.output)
        stats = read_shards(out)["manifest"]["stats"]
        if texts is not None:
            check_round_trip(out, encode(tokenizer, texts), 1024, "split", "window_bfd")
        reported = invoke("report", shared_data / name, *common, "--json", tmp_path / f"{name}.report.json")
        assert reported.exit_code == 0, (name, reported.output)
        report = json.loads((tmp_path / f"{name}.report.json").read_text())
        row = next(s for s in report["strategies"] if s["name"] == "window_bfd")
        assert row["rows"] == stats["rows_out"], name
        over = stats["oversize_sequences"]
        assert report["length_histogram"]["over_capacity"] == over
        if over:
            assert re.search(rf"│ over 1024 tokens \(--oversize split\) +│ +{over:,}: split into pieces │", packed.output), packed.output
            assert f"{over:,} sequences are longer than 1024 tokens: the packers split them into pieces" in reported.output


def test_readers_match_the_standard_library(shared_data):
    alpaca = json.load(open(shared_data / "alpaca_en_demo.json", encoding="utf-8"))
    assert [r for b in read(shared_data / "alpaca_en_demo.json", batch_size=100) for r in b.to_pylist()] == alpaca
    glaive = json.load(open(shared_data / "glaive_toolcall_en_demo.json", encoding="utf-8"))
    assert [r for b in read(shared_data / "glaive_toolcall_en_demo.json") for r in b.to_pylist()] == glaive
    wiki = [b.column("text").to_pylist() for b in read(shared_data / "wiki_demo.txt", batch_size=7)]
    assert [len(b) for b in wiki] == [7, 7, 7, 7, 2]
    assert sum(wiki, []) == shared_files(shared_data)["wiki_demo.txt"][1]
    with open(shared_data / "ag_news_test.csv", encoding="utf-8", newline="") as f:
        ag = [[int(a), b, c] for a, b, c in csv.reader(f)]
    got = [list(r.values()) for b in read(shared_data / "ag_news_test.csv", csv_header=AG_COLUMNS.split(",")) for r in b.to_pylist()]
    assert got == ag
    auto = next(read(shared_data / "ag_news_test.csv", csv_header=False))
    assert auto.schema.names == ["f0", "f1", "f2"] and auto.column("f1")[0].as_py() == ag[0][1]


def test_json_array_edge_cases_across_block_boundaries(tmp_path, monkeypatch):
    from packwise.pipeline import readers

    monkeypatch.setattr(readers, "_BLOCK_BYTES", 333)  # many blocks: state carried across every cut
    rows = [{"text": f'a "quoted" [x], {{y}} \\ line\nbreak {i}', "n": i} for i in range(50)]
    (tmp_path / "a.json").write_text("\n[\n" + ",\n".join("  " + json.dumps(r, indent=2) for r in rows) + "\n]\n")
    assert [r for b in read(tmp_path / "a.json") for r in b.to_pylist()] == rows
    (tmp_path / "empty.json").write_text(" [ ] ")
    assert list(read(tmp_path / "empty.json")) == []
    (tmp_path / "crlf.txt").write_bytes(b"one\r\ntwo\r\n\r\nfour")
    assert [r for b in read(tmp_path / "crlf.txt") for r in b.column("text").to_pylist()] == ["one", "two", "", "four"]


def test_bad_files_exit_2_naming_row_and_fix(tmp_path, shared_data, tok_file):
    (tmp_path / "numbers.json").write_text('[{"text": "a"}, {"text": "b"}, 3]')
    (tmp_path / "strings.json").write_text('["a", "b"]')
    (tmp_path / "cut.json").write_text('[{"text": "a"}, {"text": "b"}')
    (tmp_path / "raises.py").write_text("def template(row):\n    return row['title'] + row['missing']\n")
    (tmp_path / "notstr.py").write_text("def render(row):\n    return len(row)\n")
    ag = shared_data / "ag_news_test.csv"
    cases = [
        ([tmp_path / "numbers.json"], r"numbers\.json row 2: the JSON array holds a number, not an object; every element must be an object"),
        ([tmp_path / "strings.json"], r"strings\.json row 0: the JSON array holds a string, not an object"),
        ([tmp_path / "cut.json"], r"cut\.json: its JSON array is not closed with '\]'; the file is cut short"),
        ([ag, "--text-column", "text"], r"ag_news_test\.csv: column 'text' not found, and the first row looks like data, not a header .*"
               r"--csv-columns \(3 comma-separated names, e\.g\. --csv-columns c0,c1,c2\) or pass --no-header"),
        ([ag, "--csv-columns", AG_COLUMNS, "--template", f"{tmp_path / 'raises.py'}"],
         r"ag_news_test\.csv row 0: --template template raised KeyError: 'missing'; fix the template \(it receives the whole row, "
         r"a dict of column -> value: \['description', 'label', 'title'\]\) or that row"),
        ([ag, "--no-header", "--template", f"{tmp_path / 'notstr.py'}:render"], r"row 0: --template render returned int, expected str"),
        ([ag, "--no-header", "--template", f"{tmp_path / 'nothere.py'}:render"], r"--template .*nothere\.py:render: no file at"),
        ([ag, "--no-header", "--text-column", "f1", "--add-bos"],
         r"--add-bos: the tokenizer has no BOS token .*; pass --no-add-bos, or a tokenizer with one"),
        ([ag, "--no-header", "--text-column", "f1", "--train-on", "assistant"], r"--train-on assistant needs --chat-template"),
    ]  # fmt: skip
    for k, (args, message) in enumerate(cases):
        out = tmp_path / f"o{k}"
        result = runner.invoke(app, ["pack", str(args[0]), str(out), "--max-tokens", "4096", "--tokenizer", str(tok_file),
                                     *map(str, args[1:])])  # fmt: skip
        assert result.exit_code == 2, (args, result.output)
        assert re.search(message, result.output.replace("\n", "")), (message, result.output)
        assert not (out / "manifest.json").exists() and not list(out.glob("shard-*.parquet"))


def test_template_file_gets_the_whole_row(tmp_path, shared_data, tokenizer, tok_file):
    (tmp_path / "tmpl.py").write_text("def alpaca(row):\n    return f\"### {row['instruction']}\\n{row['output']}\"\n")
    out = tmp_path / "o"
    result = invoke("pack", shared_data / "alpaca_en_demo.json", out, "--max-tokens", 2048, "--tokenizer", tok_file,
                    "--template", f"{tmp_path / 'tmpl.py'}:alpaca")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.load(open(shared_data / "alpaca_en_demo.json", encoding="utf-8"))
    check_round_trip(out, encode(tokenizer, [f"### {r['instruction']}\n{r['output']}" for r in rows]), 2048, "error", "window_bfd")


def test_eos_bos_mark_documents(tmp_path, shared_data, tokenizer):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    hf.save_pretrained(tmp_path / "tok")
    wiki = shared_files(shared_data)["wiki_demo.txt"][1]
    ids = encode(tokenizer, wiki)
    r = pack_to_parquet(shared_data / "wiki_demo.txt", tmp_path / "c", max_tokens=2048, tokenizer=tokenizer, algorithm="concat")
    assert r.manifest["settings"]["add_eos"] is True and r.manifest["settings"]["add_bos"] is False
    check_round_trip(tmp_path / "c", [x + [0] for x in ids], 2048, "split", "concat")
    pack_to_parquet(shared_data / "wiki_demo.txt", tmp_path / "b", max_tokens=2048, tokenizer=tmp_path / "tok",
                    add_bos=True, add_eos=True, oversize="split")  # fmt: skip
    check_round_trip(tmp_path / "b", [[0] + x + [0] for x in ids], 2048, "split", "window_bfd")
    r = pack_to_parquet(shared_data / "wiki_demo.txt", tmp_path / "n", max_tokens=2048, tokenizer=tokenizer,
                        algorithm="concat", add_eos=False)  # fmt: skip
    check_round_trip(tmp_path / "n", ids, 2048, "split", "concat")


def test_fingerprint_is_content_and_path_spelling_does_not_matter(tmp_path, shared_data, tok_file, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    src = data / "c4.jsonl"
    src.write_bytes((shared_data / "c4_demo.jsonl").read_bytes())
    monkeypatch.chdir(tmp_path)
    args = ["--max-tokens", 1024, "--tokenizer", tok_file, "--oversize", "split"]
    assert invoke("pack", "data/c4.jsonl", "out", *args).exit_code == 0
    os.utime(src, (1, 1))  # regenerated: same bytes, another mtime
    for spelling in ("./data/c4.jsonl", str(src), "data/../data/c4.jsonl"):
        again = invoke("pack", spelling, "out", *args)
        assert again.exit_code == 0 and "is up to date" in again.output, (spelling, again.output)
    first = open_input(src).fingerprint()
    body = bytearray(src.read_bytes())
    body[-4] = ord("X") if body[-4] != ord("X") else ord("Y")  # the last MiB is hashed; still valid JSON (inside the text)
    src.write_bytes(bytes(body))
    assert open_input(src).fingerprint() != first
    changed = runner.invoke(app, ["pack", "data/c4.jsonl", "out", *map(str, args)])
    assert changed.exit_code == 2 and "the input files changed" in changed.output


def test_run_that_wrote_no_shard_retries_with_new_settings(tmp_path, shared_data, tok_file):
    out = tmp_path / "o"
    c4 = shared_data / "c4_demo.jsonl"
    failed = runner.invoke(app, ["pack", str(c4), str(out), "--max-tokens", "512", "--tokenizer", str(tok_file)])
    assert failed.exit_code == 2 and "more than --max-tokens 512" in failed.output
    assert (out / ".packwise-run.json").is_file() and not list(out.glob("shard-*.parquet"))
    retry = invoke("pack", c4, out, "--max-tokens", 512, "--tokenizer", tok_file, "--oversize", "split")
    assert retry.exit_code == 0, retry.output
    assert read_shards(out)["manifest"]["settings"]["oversize"] == "split"


def test_report_help_explains_its_columns():
    text = " ".join(invoke("report", "--help").output.replace("│", " ").split())
    assert "vs L1 = computed token slots / (L1 x --max-tokens), where L1 = ceil(tokens / --max-tokens) rows" in text
    assert "attn dense/masked = sum of squared row widths / sum of squared sequence lengths" in text
