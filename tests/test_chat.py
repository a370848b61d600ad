"""Chat SFT data in: ``--chat-template`` over the real glaive ShareGPT file, ``--train-on assistant``
labels checked token by token on decoded text, through packing, the shards and ``PackedDataset``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from test_pipeline_pack import read_shards
from typer.testing import CliRunner

from packwise.cli.app import app
from packwise.pipeline import PackedDataset, pack_to_parquet
from packwise.pipeline.chat import chatml, messages_of
from packwise.pipeline.tokenizer import train_byte_bpe

runner = CliRunner()
ROLE = {"human": "user", "gpt": "assistant", "function_call": "assistant", "observation": "tool"}
ZEPHYR = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CHATML_JINJA = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def glaive(shared_data) -> Path:
    return shared_data / "glaive_toolcall_en_demo.json"


@pytest.fixture(scope="module")
def rows(glaive) -> list[dict]:
    return json.load(open(glaive, encoding="utf-8"))


@pytest.fixture(scope="module")
def chat_tok(rows):
    texts = [m["value"] for r in rows for m in r["conversations"]] + [r["tools"] for r in rows]
    return train_byte_bpe(texts, vocab_size=2048, special_tokens=("<|im_start|>", "<|im_end|>", "</s>"))


def _tool_system(tools: str) -> str:
    listed = json.loads(tools) if tools else []
    return "# Tools\n<tools>\n" + "\n".join(json.dumps(t) for t in listed) + "\n</tools>" if listed else ""


def sequences(out: Path) -> dict[int, tuple[list[int], list[int]]]:
    """Input row -> (input_ids, labels) from the shards (the glaive rows fit a row each: no pieces)."""
    got = read_shards(out)
    seqs = {}
    for r, ids in enumerate(got["input_ids"]):
        pos = 0
        for src, n in zip(got["source_index"][r], got["seq_lens"][r]):
            seqs[src] = (ids[pos : pos + n], got["labels"][r][pos : pos + n])
            pos += n
    return seqs


def runs(tok, ids, labels) -> list[tuple[bool, str]]:
    """Decoded maximal runs of trained / untrained tokens, in order."""
    out, start = [], 0
    for k in range(1, len(ids) + 1):
        if k == len(ids) or (labels[k] != -100) != (labels[start] != -100):
            out.append((labels[start] != -100, tok.decode(ids[start:k], skip_special_tokens=False)))
            start = k
    return out


def test_chatml_hand_checked_example():
    msgs = messages_of(
        [{"from": "human", "value": "2+2?"}, {"from": "function_call", "value": '{"name": "add"}'},
         {"from": "observation", "value": "4"}, {"from": "gpt", "value": "It is 4."}],
        "row 0",
    )  # fmt: skip
    assert chatml(msgs, tools='[{"name": "add"}]') == [
        ('<|im_start|>system\n# Tools\n<tools>\n{"name": "add"}\n</tools><|im_end|>\n'
         "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n", False),
        ('{"name": "add"}<|im_end|>', True),
        ("\n<|im_start|>tool\n4<|im_end|>\n<|im_start|>assistant\n", False),
        ("It is 4.<|im_end|>", True),
        ("\n", False),
    ]  # fmt: skip


def test_glaive_assistant_labels_token_by_token(tmp_path, glaive, rows, chat_tok):
    """Every token outside an assistant turn is -100, every token inside carries its own id, and the
    decoded trained runs are exactly the gpt / function_call values (plus their end-of-turn marker)."""
    tok_file = tmp_path / "tokenizer.json"
    chat_tok.save(str(tok_file))
    out = tmp_path / "sft"
    result = runner.invoke(app, ["pack", str(glaive), str(out), "--max-tokens", "4096", "--tokenizer", str(tok_file),
                                 "--chat-template", "chatml", "--train-on", "assistant"])  # fmt: skip
    assert result.exit_code == 0, result.output
    seqs = sequences(out)
    assert sorted(seqs) == list(range(len(rows)))
    for i, row in enumerate(rows):
        ids, labels = seqs[i]
        assert all(lab in (-100, t) for t, lab in zip(ids, labels))
        system = _tool_system(row["tools"])
        expected, text = [], f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
        for m in row["conversations"]:
            role = ROLE[m["from"]]
            if role == "assistant":
                text += "<|im_start|>assistant\n"
                expected.append((False, text))
                expected.append((True, m["value"] + "<|im_end|>"))
                text = "\n"
            else:
                text += f"<|im_start|>{role}\n{m['value']}<|im_end|>\n"
        expected.append((False, text))
        assert runs(chat_tok, ids, labels) == expected, f"row {i}"
    # the same labels reach training: PackedDataset rows and the collated batch (-100 also at each boundary)
    ds = PackedDataset(out)
    row0 = ds[0]
    first = int(row0["source_index"][0])
    n = int(row0["seq_lens"][0])
    assert row0["labels"][:n].tolist() == seqs[first][1]
    batch = ds.collate([row0])
    want = np.array(row0["labels"], np.int64)
    want[np.concatenate(([0], np.cumsum(row0["seq_lens"])[:-1]))] = -100
    assert batch["labels"][0, : want.shape[0]].tolist() == want.tolist()


def test_tokenizer_chat_template_matches_chatml_and_finds_turns_of_another(tmp_path, glaive, rows, chat_tok):
    from transformers import PreTrainedTokenizerFast

    folders = {}
    for name, template in (("chatml", CHATML_JINJA), ("zephyr", ZEPHYR)):
        hf = PreTrainedTokenizerFast(tokenizer_object=chat_tok, eos_token="</s>")
        hf.chat_template = template
        hf.save_pretrained(tmp_path / name)
        folders[name] = tmp_path / name
    subset = tmp_path / "glaive40.json"
    subset.write_text(json.dumps([{"conversations": r["conversations"]} for r in rows[:40]]))
    pack_to_parquet(subset, tmp_path / "own", max_tokens=4096, tokenizer=folders["chatml"], chat_template="tokenizer")
    pack_to_parquet(subset, tmp_path / "builtin", max_tokens=4096, tokenizer=chat_tok, chat_template="chatml")
    own, builtin = read_shards(tmp_path / "own"), read_shards(tmp_path / "builtin")
    assert own["input_ids"] == builtin["input_ids"] and own["labels"] == builtin["labels"]
    pack_to_parquet(subset, tmp_path / "z", max_tokens=4096, tokenizer=folders["zephyr"], chat_template="tokenizer")
    seqs = sequences(tmp_path / "z")
    for i, row in enumerate(rows[:40]):
        trained = [text for train, text in runs(chat_tok, *seqs[i]) if train]
        assert trained == [m["value"] + "</s>" for m in row["conversations"] if ROLE[m["from"]] == "assistant"], f"row {i}"
    with pytest.raises(ValueError, match=r"--chat-template tokenizer: this tokenizer has no chat template.*--chat-template chatml"):
        pack_to_parquet(subset, tmp_path / "x", max_tokens=4096, tokenizer=chat_tok, chat_template="tokenizer")


def test_train_on_all_keeps_every_token_and_writes_no_labels(tmp_path, glaive, chat_tok):
    pack_to_parquet(glaive, tmp_path / "all", max_tokens=4096, tokenizer=chat_tok, chat_template="chatml", train_on="all")
    got = read_shards(tmp_path / "all")
    assert "labels" not in got and got["manifest"]["settings"]["train_on"] == "all"
    with pytest.raises(ValueError, match=r"--train-on assistant needs --chat-template"):
        pack_to_parquet(glaive, tmp_path / "bad", max_tokens=4096, tokenizer=chat_tok, text_column="tools", train_on="assistant")


def test_wrong_shape_messages_exit_2_naming_row_and_fix(tmp_path, chat_tok):
    tok_file = tmp_path / "tok.json"
    chat_tok.save(str(tok_file))
    good = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    cases = [
        ([{"messages": "just text"}], r"bad\.json row 0: column 'messages': the chat column holds text that is not JSON"),
        ([{"messages": good}, {"messages": []}], r"bad\.json row 1: column 'messages': the chat column holds no messages \(an empty list\); drop that row"),
        ([{"messages": good}, {"messages": good}, {"messages": [{"speaker": "a", "text": "b"}]}],
         r"bad\.json row 2: column 'messages': message 0 has keys \['speaker', 'text'\]; each row must be a list of"),
        ([{"messages": [{"role": "narrator", "content": "x"}]}], r"row 0: column 'messages': message 0 has role 'narrator'; use one of"),
        ([{"messages": [{"role": "user", "content": 3}]}], r"row 0: column 'messages': message 0 has a int content; message content must be text"),
        ([{"text": "no chat column"}], r"bad\.json: no chat column 'messages' or 'conversations' \(columns: \['text'\]\); pass --text-column"),
    ]  # fmt: skip
    for k, (data, message) in enumerate(cases):
        (tmp_path / "bad.json").write_text(json.dumps(data))
        out = tmp_path / f"o{k}"
        result = runner.invoke(app, ["pack", str(tmp_path / "bad.json"), str(out), "--max-tokens", "512",
                                     "--tokenizer", str(tok_file), "--chat-template", "chatml"])  # fmt: skip
        assert result.exit_code == 2, result.output
        assert re.search(message, result.output.replace("\n", "")), (message, result.output)
        assert not (out / "manifest.json").exists() and not list(out.glob("shard-*.parquet"))
