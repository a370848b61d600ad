"""TRL's implicit-prompt preference files (issue 23 item 1): only ``chosen`` / ``rejected``, each a
whole conversation or text whose common prefix is the prompt. ``pack`` detects them with no flag,
takes the prompt by TRL's ``extract_prompt`` rule (leading messages; characters, a space before the
first difference going to the responses) and stores exactly what the explicit-prompt file stores."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from test_preference import _pack, _stored_pairs, _write, alpaca, chat_tok  # noqa: F401  (fixtures)
from packwise.pipeline import PackedDataset
from packwise.pipeline.layouts import Layout, detect_layout

LINE = "layout: dpo_implicit (chosen, rejected; prompt: their common prefix) -> preference pairs, labels on chosen and rejected responses"


def _split(chosen: str, rejected: str) -> tuple[str, str, str]:
    """TRL's rule on texts, spelled out independently: common prefix, minus a trailing space."""
    k = len(os.path.commonprefix([chosen, rejected]))
    if chosen[k - 1] == " ":
        k -= 1
    return chosen[:k], chosen[k:], rejected[k:]


def _rows(out: Path) -> list[tuple]:
    ds = PackedDataset(out)
    return [(ds[i]["input_ids"].tolist(), ds[i]["labels"].tolist(), ds[i]["seq_lens"].tolist()) for i in range(len(ds))]


def test_detected_from_the_schema():
    msgs = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    assert detect_layout(["chosen", "rejected"], [msgs, msgs]) == Layout("dpo_implicit", ("chosen",), chat=True, pair=(None, "chosen", "rejected"))
    assert detect_layout(["chosen", "rejected", "score"], [pa.string(), pa.string(), pa.float64()]) == Layout(
        "dpo_implicit", ("chosen",), pair=(None, "chosen", "rejected")
    )


def test_text_pairs_from_parquet_store_the_explicit_pairs(tmp_path, alpaca, tokenizer, tok_file):
    texts = [("The sky is blue.", "The sky is green.")]  # TRL's own example
    texts += [(f"{r['instruction']}\nAnswer: {r['output']}", f"{r['instruction']}\nAnswer: {alpaca[i + 1]['output']}") for i, r in enumerate(alpaca[:20])]
    src = tmp_path / "implicit.parquet"
    pq.write_table(pa.table({"chosen": [c for c, _ in texts], "rejected": [r for _, r in texts]}), src)
    result = _pack(src, tmp_path / "implicit", tok_file)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == LINE
    manifest = json.loads((tmp_path / "implicit" / "manifest.json").read_text())
    assert manifest["settings"]["layout"] == "dpo_implicit"
    assert manifest["stats"]["pairs"] == 21 and manifest["stats"]["unlabeled_sequences"] == 0
    enc = lambda t: tokenizer.encode(t, add_special_tokens=False).ids  # noqa: E731
    got = _stored_pairs(tmp_path / "implicit")
    assert got[0] == {"prompt_ids": enc("The sky is"), "chosen_ids": enc(" blue."), "rejected_ids": enc(" green.")}
    splits = [_split(c, r) for c, r in texts]
    assert all(p.startswith(r["instruction"] + "\nAnswer:") for (p, _, _), r in zip(splits[1:], alpaca))
    assert [got[i] for i in range(21)] == [{"prompt_ids": enc(p), "chosen_ids": enc(c), "rejected_ids": enc(r)} for p, c, r in splits]
    # the same pairs with the prompt spelled out (TRL's explicit form) pack to the same rows, labels included
    explicit = _write(tmp_path / "explicit.jsonl", [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in splits])
    assert _pack(explicit, tmp_path / "explicit", tok_file).exit_code == 0
    assert _rows(tmp_path / "implicit") == _rows(tmp_path / "explicit")


@pytest.mark.parametrize("share", [False, True])
def test_conversations_from_jsonl_store_the_explicit_pairs(tmp_path, alpaca, chat_tok, share):
    tok, path = chat_tok
    user = lambda t: {"role": "user", "content": t}  # noqa: E731
    bot = lambda t: {"role": "assistant", "content": t}  # noqa: E731
    rows = [{"chosen": [user(r["instruction"]), bot(r["output"])], "rejected": [user(r["instruction"]), bot(alpaca[i + 1]["output"])]}
            for i, r in enumerate(alpaca[:12])]  # fmt: skip
    a, b = alpaca[20], alpaca[21]  # a multi-turn pair (ShareGPT keys on one side): the first three turns are the prompt
    turns = [user(a["instruction"]), bot(a["output"]), user(b["instruction"])]
    rows.append({"chosen": turns + [bot(b["output"])],
                 "rejected": [{"from": m["role"].replace("user", "human").replace("assistant", "gpt"), "value": m["content"]} for m in turns]
                 + [{"from": "gpt", "value": a["output"]}]})  # fmt: skip
    share_flag = ["--share-prompt"] if share else []
    result = _pack(_write(tmp_path / "implicit.jsonl", rows), tmp_path / "implicit", path, *share_flag, max_tokens="4096")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == LINE + " (ChatML)"
    got = _stored_pairs(tmp_path / "implicit")
    dec = lambda ids: tok.decode(ids, skip_special_tokens=False)  # noqa: E731
    r0 = alpaca[0]
    assert dec(got[0]["prompt_ids"]) == f"<|im_start|>user\n{r0['instruction']}<|im_end|>\n<|im_start|>assistant\n"
    assert (dec(got[0]["chosen_ids"]), dec(got[0]["rejected_ids"])) == (r0["output"] + "<|im_end|>", alpaca[1]["output"] + "<|im_end|>")
    assert dec(got[12]["prompt_ids"]).count("<|im_start|>") == 4 and dec(got[12]["rejected_ids"]) == a["output"] + "<|im_end|>"
    explicit = [{"prompt": r["chosen"][:-1], "chosen": r["chosen"][-1:], "rejected": [bot(r["rejected"][-1].get("content", r["rejected"][-1].get("value")))]}
                for r in rows]  # fmt: skip
    assert _pack(_write(tmp_path / "explicit.jsonl", explicit), tmp_path / "explicit", path, *share_flag, max_tokens="4096").exit_code == 0
    assert _rows(tmp_path / "implicit") == _rows(tmp_path / "explicit")


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        (("The cat sat.", "The cat sat."), "row 1: chosen and rejected are the same, so nothing of the chosen is left"),
        (("The cat sat.", "The cat sat. Then ran."), "row 1: the chosen is a prefix of the rejected"),
        (("Yes.", "No."), "row 1: chosen and rejected have no common prefix"),
    ],
    ids=["same", "prefix", "nothing-shared"],
)
def test_a_pair_without_an_implicit_prompt_exits_2_naming_the_row(tmp_path, tok_file, pair, message):
    src = _write(tmp_path / "bad.jsonl", [{"chosen": "The sky is blue.", "rejected": "The sky is green."}, {"chosen": pair[0], "rejected": pair[1]}])
    result = _pack(src, tmp_path / "out", tok_file)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out" / "manifest.json").exists()
