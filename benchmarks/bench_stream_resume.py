"""What an elastic resume of ``PackedIterable`` costs: re-reading and re-packing to the saved point.

A resumed canonical substream re-reads its examples from the start of the epoch and packs them
again (packing is deterministic), dropping the batches already consumed, so the first batch after
``load_state_dict`` costs about what an uninterrupted run spent to reach that point, never more
than one pass; the state is a few hundred bytes.  Also: a full epoch and its packing density per
``canonical`` (1 = one packer for the whole stream, as before canonical substreams).

Lengths: ``--examples`` bootstrapped (with replacement, seeded) from the real token lengths of the
shared datasets (alpaca + glaive + c4 under a byte-level BPE trained on them), capped at
``--max-tokens``; each example is ``{"index": i, "n": length}`` read as a stream.

    PYTHONPATH=<checkout parent link> python benchmarks/bench_stream_resume.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def real_lengths() -> np.ndarray:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import load_texts

    from packwise.pipeline.tokenizer import token_lengths, train_byte_bpe

    tok = train_byte_bpe(load_texts("c4") + load_texts("alpaca") + load_texts("wiki"), vocab_size=4096)
    return np.concatenate([token_lengths(tok, load_texts(n)) for n in ("alpaca", "glaive", "c4")])


class Rows:
    """A re-readable stream of ``{"index", "n"}`` rows."""

    def __init__(self, lengths: np.ndarray):
        self.lengths = lengths.tolist()

    def __iter__(self):
        for i, n in enumerate(self.lengths):
            yield {"index": i, "n": n}


def stream(rows: Rows, args, canonical: int):
    from packwise.samplers import PackedIterable

    return PackedIterable(rows, max_tokens=args.max_tokens, length="n", window=args.window, canonical=canonical, num_replicas=1, rank=0)


def epoch(rows: Rows, args, canonical: int) -> tuple[float, int, float]:
    """(seconds, batches, density) of one uninterrupted epoch."""
    t = time.perf_counter()
    batches, tokens = 0, 0
    for batch in stream(rows, args, canonical):
        batches += 1
        tokens += sum(e["n"] for e in batch)
    return time.perf_counter() - t, batches, tokens / (batches * args.max_tokens)


def resume(rows: Rows, args, canonical: int, fraction: float, batches: int) -> tuple[float, float, int]:
    """(seconds to reach the point uninterrupted, seconds from load_state_dict to the first batch, state bytes)."""
    first = stream(rows, args, canonical)
    it = iter(first)
    t = time.perf_counter()
    for _ in range(int(batches * fraction)):
        next(it)
    reach = time.perf_counter() - t
    state = first.state_dict()
    t = time.perf_counter()
    again = stream(rows, args, canonical)
    again.load_state_dict(state)
    next(iter(again))
    return reach, time.perf_counter() - t, len(json.dumps(state))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1_000_000)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    real = np.minimum(real_lengths(), args.max_tokens)
    lengths = np.random.default_rng(args.seed).choice(real, args.examples, replace=True)
    rows = Rows(lengths)
    epoch(Rows(lengths[:20_000]), args, 16)  # numba compiles once, outside the figures
    print(f"{args.examples:,} examples bootstrapped from {real.shape[0]} real lengths, max_tokens={args.max_tokens}, window={args.window}\n")
    print("| canonical | epoch (s) | batches | density | resume at 50%: reach / restore (s) | at 90%: reach / restore (s) | state (bytes) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for canonical in (1, 16, 64):
        seconds, batches, density = epoch(rows, args, canonical)
        half = resume(rows, args, canonical, 0.5, batches)
        most = resume(rows, args, canonical, 0.9, batches)
        print(
            f"| {canonical} | {seconds:.2f} | {batches:,} | {density:.4f} | {half[0]:.2f} / {half[1]:.2f} "
            f"| {most[0]:.2f} / {most[1]:.2f} | {max(half[2], most[2])} |"
        )


if __name__ == "__main__":
    main()
