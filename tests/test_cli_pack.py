"""``packwise pack`` and ``packwise report`` end to end on real files, exit codes, and a SIGKILLed run
that resumes to the same bytes as an uninterrupted one."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import kill_after_shards, load_texts
from test_pipeline_pack import check_round_trip, read_shards
from typer.testing import CliRunner

from packwise.cli.app import app
from packwise.packing import ALGORITHMS
from packwise.pipeline.tokens import encode

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def ag_csv(tmp_path_factory, shared_data) -> Path:
    path = tmp_path_factory.mktemp("ag") / "ag_news.csv"
    with open(shared_data / "ag_news_test.csv", encoding="utf-8", newline="") as f, open(path, "w", newline="") as g:
        w = csv.writer(g)
        w.writerow(["label", "title", "text"])
        w.writerows([lab, t, f"{t} {d}"] for lab, t, d in csv.reader(f))
    return path


def test_pack_jsonl_csv_parquet_round_trip_and_summary(tmp_path, shared_data, tokenizer, tok_file, ag_csv):
    alpaca = load_texts("alpaca")
    pq.write_table(pa.table({"text": alpaca}), tmp_path / "alpaca.parquet")
    cases = [
        (shared_data / "c4_demo.jsonl", load_texts("c4"), ["--oversize", "split"]),
        (ag_csv, load_texts("ag_news"), ["--algorithm", "bfd"]),
        (tmp_path / "alpaca.parquet", alpaca, ["--algorithm", "concat", "--shard-rows", "50"]),
    ]
    for source, texts, extra in cases:
        out = tmp_path / f"out-{Path(source).stem}"
        result = invoke("pack", source, out, "--max-tokens", 1024, "--tokenizer", tok_file, *extra)
        assert result.exit_code == 0, result.output
        stats = read_shards(out)["manifest"]["stats"]
        assert re.search(rf"│ input rows +│ +{len(texts):,} │", result.output), result.output
        assert f"{100 * stats['padding_after']:.2f}%" in result.output
        algorithm = extra[1] if extra[0] == "--algorithm" else "window_bfd"
        expected = encode(tokenizer, texts)
        if algorithm == "concat":  # documents end with EOS by default, and the summary says so
            assert re.search(r"│ documents marked with +│ +EOS \(default for concat\) │", result.output), result.output
            expected = [ids + [0] for ids in expected]  # <|endoftext|> is id 0 of the trained BPE
        check_round_trip(out, expected, 1024, "split", algorithm)


def test_pack_train_tokenizer_saves_it_and_rerun_is_up_to_date(tmp_path, shared_data):
    out = tmp_path / "o"
    first = invoke("pack", shared_data / "c4_demo.jsonl", out, "--max-tokens", 2048, "--train-tokenizer", "--oversize", "truncate")
    assert first.exit_code == 0, first.output
    from packwise.pipeline.tokenizer import load_tokenizer

    check_round_trip(out, encode(load_tokenizer(out / "tokenizer.json"), load_texts("c4")), 2048, "truncate", "window_bfd")
    again = invoke("pack", shared_data / "c4_demo.jsonl", out, "--max-tokens", 2048, "--train-tokenizer", "--oversize", "truncate")
    assert again.exit_code == 0 and "is up to date" in again.output


def test_report_table_json_histogram_and_plots(tmp_path, shared_data, tokenizer, tok_file):
    lengths = np.array([len(x) for x in encode(tokenizer, load_texts("c4"))])
    result = invoke(
        "report", shared_data / "c4_demo.jsonl", "--max-tokens", 1024, "--batch-size", 4, "--tokenizer", tok_file,
        "--json", tmp_path / "r.json", "--plot", tmp_path / "r.png",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("pad_to_max", "random_batches", "bucketed_batches") + ALGORITHMS:
        assert f"│ {name}" in result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["num_sequences"] == 300 and data["total_tokens"] == int(lengths.sum())
    assert data["max_length"] == int(lengths.max()) and data["batch_size"] == 4
    hist = data["length_histogram"]
    assert sum(hist["counts"]) == 300 and hist["over_capacity"] == int((lengths > 1024).sum())
    assert hist["edges"][0] == 1 and hist["edges"][-1] == int(lengths.max()) + 1
    by_name = {s["name"]: s for s in data["strategies"]}
    assert by_name["pad_to_max"]["rows"] == 300 and by_name["bfd"]["rows"] < by_name["next_fit"]["rows"]
    assert f"{100 * by_name['bfd']['padding_fraction']:.2f}%" in result.output

    import matplotlib.image

    png = matplotlib.image.imread(tmp_path / "r.png")
    assert png.shape[0] > 400 and png.shape[1] > 1000 and png[..., :3].std() > 0.05  # a real picture, not blank
    html_run = invoke("report", shared_data / "c4_demo.jsonl", "--max-tokens", 1024, "--tokenizer", tok_file, "--plot", tmp_path / "r.html")
    assert html_run.exit_code == 0
    page = (tmp_path / "r.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and page.count("<tr><td>") == 3 + len(ALGORITHMS)


def test_report_on_a_token_column_of_a_saved_hf_dataset(tmp_path, tokenizer):
    import datasets

    ids = encode(tokenizer, load_texts("alpaca"))
    datasets.Dataset.from_dict({"input_ids": ids}).save_to_disk(tmp_path / "saved")
    result = invoke("report", tmp_path / "saved", "--max-tokens", 512, "--tokens-column", "input_ids", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["total_tokens"] == sum(map(len, ids))


def test_bad_input_exit_code_2_with_named_file_column_row_and_fix(tmp_path, shared_data, tok_file):
    c4 = shared_data / "c4_demo.jsonl"
    (tmp_path / "empty.jsonl").write_text("")
    pq.write_table(pa.table({"text": load_texts("alpaca")}), tmp_path / "good.parquet")
    data = (tmp_path / "good.parquet").read_bytes()
    (tmp_path / "corrupt.parquet").write_bytes(data[:1000] + b"\0" * 5000 + data[-100:])
    nulls = tmp_path / "nulls.jsonl"
    nulls.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": null}\n')
    cases = [
        (["pack", c4, tmp_path / "o1", "--max-tokens", 512, "--tokenizer", tok_file, "--text-column", "body"],
         r"c4_demo\.jsonl: column 'body' not found \(columns: \['text'\]\)"),
        (["report", tmp_path / "empty.jsonl", "--max-tokens", 512, "--tokenizer", tok_file], r"empty\.jsonl has no rows: empty input"),
        (["pack", tmp_path / "empty.jsonl", tmp_path / "o2", "--max-tokens", 512, "--tokenizer", tok_file], r"has no rows: empty input"),
        (["pack", tmp_path / "corrupt.parquet", tmp_path / "o3", "--max-tokens", 512, "--tokenizer", tok_file],
         r"corrupt\.parquet: cannot read it as parquet"),
        (["report", c4, "--max-tokens", 512, "--tokenizer", tmp_path / "no_tok.json"], r"tokenizer: nothing at .*no_tok\.json"),
        (["pack", c4, tmp_path / "o4", "--max-tokens", 0, "--tokenizer", tok_file], r"max_tokens must be >= 1 token, got 0"),
        (["report", c4, "--max-tokens", 0, "--tokenizer", tok_file], r"--max-tokens must be >= 1 token, got 0"),
        (["pack", c4, tmp_path / "o5", "--max-tokens", 512, "--tokenizer", tok_file], r"c4_demo\.jsonl row \d+ has \d+ tokens, more than --max-tokens 512"),
        (["pack", nulls, tmp_path / "o6", "--max-tokens", 512, "--tokenizer", tok_file], r"nulls\.jsonl row 2: column 'text' is null"),
        (["report", c4, "--max-tokens", 512, "--tokenizer", tok_file, "--plot", tmp_path / "r.svg"], r"must end in \.png or \.html"),
        (["pack", c4, tmp_path / "o7", "--max-tokens", 512], r"pass exactly one of --tokenizer PATH, --train-tokenizer"),
        (["pack", c4, tmp_path / "o8", "--max-tokens", 512, "--train-tokenizer", "--template", "nowhere:fn"],
         r"--template nowhere:fn: cannot import nowhere \(No module named 'nowhere'\); pass FILE\.py:function"),
    ]  # fmt: skip
    for args, message in cases:
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 2, (args, result.output)
        assert re.search(message, result.output.replace("\n", "")), (message, result.output)


def test_an_output_under_a_file_exits_2_naming_it(tmp_path, shared_data, tok_file):
    (tmp_path / "a_file").write_text("not a folder")
    result = runner.invoke(app, ["pack", str(shared_data / "c4_demo.jsonl"), str(tmp_path / "a_file" / "out"),
                                 "--max-tokens", "512", "--tokenizer", str(tok_file)])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert f"error: {tmp_path / 'a_file' / 'out'}: cannot write it: a parent of it is a file, not a folder" in result.output


def test_other_settings_refused_then_overwritten(tmp_path, shared_data, tok_file):
    c4 = shared_data / "c4_demo.jsonl"
    args = ["pack", c4, tmp_path / "o", "--tokenizer", tok_file, "--oversize", "split"]
    assert invoke(*args, "--max-tokens", 1024).exit_code == 0
    refused = runner.invoke(app, [str(a) for a in args + ["--max-tokens", 2048]])
    assert refused.exit_code == 2 and "max_tokens: 1024 -> 2048" in refused.output and "--overwrite" in refused.output
    assert invoke(*args, "--max-tokens", 2048, "--overwrite").exit_code == 0
    assert read_shards(tmp_path / "o")["manifest"]["settings"]["max_tokens"] == 2048


def test_sigkilled_pack_resumes_to_the_same_bytes(tmp_path, tokenizer, tok_file):
    """Kill ``packwise pack`` (SIGKILL) after a few shards; the rerun resumes and matches a clean run."""
    texts = load_texts("alpaca") + load_texts("ag_news")
    rng = np.random.default_rng(5)
    texts = [texts[i] for i in rng.permutation(len(texts))]
    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    args = [src, "--max-tokens", 1024, "--tokenizer", tok_file, "--oversize", "split", "--shard-rows", 4, "--window", 500]
    cmd = [sys.executable, "-m", "packwise.cli.app", "pack", str(src), str(tmp_path / "killed")] + [str(a) for a in args[1:]]
    killed_at, proc = kill_after_shards(cmd, tmp_path / "killed", 3)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (tmp_path / "killed" / "manifest.json").exists() and (tmp_path / "killed" / ".packwise-run.json").exists()
    partial = sorted(p.name for p in (tmp_path / "killed").glob("shard-*.parquet"))

    resumed = invoke("pack", src, tmp_path / "killed", *args[1:])
    assert resumed.exit_code == 0, resumed.output
    assert f"resumed after {len(partial)} complete shards" in resumed.output
    clean = invoke("pack", src, tmp_path / "clean", *args[1:])
    assert clean.exit_code == 0
    names = sorted(p.name for p in (tmp_path / "clean").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "killed").iterdir())
    assert len(names) > len(partial) + 1 and "manifest.json" in names
    for name in names:
        assert (tmp_path / "clean" / name).read_bytes() == (tmp_path / "killed" / name).read_bytes(), name
    check_round_trip(tmp_path / "clean", encode(tokenizer, texts), 1024, "split", "window_bfd")


def test_help_lists_pack_and_report_without_importing_heavy_modules():
    result = invoke("--help")
    assert result.exit_code == 0 and "pack" in result.output and "report" in result.output
    code = "import sys, packwise.cli.app; print(sorted(m for m in ('torch', 'pyarrow', 'numba', 'datasets') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
