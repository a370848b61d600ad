"""The offline demo corpus and the offline tokenizer."""

from __future__ import annotations

import json
import re

import pytest

from packwise.pipeline.demo_data import stdlib_docstrings, write_demo_corpus
from packwise.pipeline.tokenizer import load_tokenizer, token_lengths, train_byte_bpe


def test_demo_corpus_is_real_deterministic_text(tmp_path):
    n = write_demo_corpus(tmp_path / "a.jsonl")
    assert n > 1000
    rows = [json.loads(line) for line in open(tmp_path / "a.jsonl", encoding="utf-8")]
    assert len(rows) == n and all(len(r["text"]) >= 20 for r in rows)
    lengths = sorted(len(r["text"]) for r in rows)
    assert lengths[-1] > 50 * lengths[len(lengths) // 2]  # widely varying lengths
    assert list(tmp_path.iterdir()) and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert [r["source"] for r in rows[:300]] == [r["source"] for _, r in zip(range(300), stdlib_docstrings(20))]
    json_doc = next(r for r in rows if r["source"] == "json")
    assert json_doc["text"].startswith("JSON (JavaScript Object Notation)")


def test_bpe_round_trips_and_saves(tmp_path):
    texts = [r["text"] for _, r in zip(range(500), stdlib_docstrings())]
    tok = train_byte_bpe(texts, vocab_size=1000)
    text = "Return the number of items packed into each bin, ünïcödé too."
    assert tok.decode(tok.encode(text).ids) == text
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path)
    assert loaded.encode(text).ids == tok.encode(text).ids
    lengths = token_lengths(loaded, texts[:10], batch_size=3)
    assert lengths.tolist() == [len(tok.encode(t, add_special_tokens=False).ids) for t in texts[:10]]


def test_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"tokenizer: no tokenizer.json at {tmp_path / 'tokenizer.json'}")):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="vocab_size must be >= 257"):
        train_byte_bpe(["a"], vocab_size=100)
