"""The whole-file input fingerprint (xxh3-128, every byte) against ``packwise pack`` on a ~1 GB input.

The input is ``bench_pipeline.build_input``'s Parquet token column: real token sequences of c4,
alpaca, glaive and ag_news in ../shared/data, rows bootstrapped with replacement until the file
holds ``--gb`` GB.  ``pack`` reads a token column there (no tokenizer), so the pack time is reading,
packing and writing.  Timed: the fingerprint alone (``open_input(...).fingerprint()``, a warm page cache, as
it is when pack reads the file right after), and the whole ``packwise pack`` command in a fresh
process; the row prints both and their ratio (target: under 10%).

    .venv/bin/python benchmarks/bench_fingerprint.py            # ~1 GB, medians of 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_pipeline import build_input, measured

_BYTES_PER_TOKEN = 1.33  # zstd Parquet of int32 token ids of this input (measured on 10M tokens)


def fingerprint_seconds(src: Path) -> float:
    """Seconds of the fingerprint ``pack`` computes before it writes anything."""
    from packwise.pipeline.readers import open_input

    inp = open_input(str(src), ["input_ids"])
    t0 = time.perf_counter()
    inp.fingerprint()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None, help="folder for the input and output (default: a temp folder)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-fp-"))
    src = work / "input.parquet"
    if not src.is_file():
        build_input(src, int(args.gb * 1e9 / _BYTES_PER_TOKEN))
    size = src.stat().st_size
    pack = [sys.executable, "-m", "packwise.cli.app", "pack", str(src), str(work / "out"), "--max-tokens", "4096"]
    pack += ["--tokens-column", "input_ids", "--oversize", "split", "--overwrite"]
    fp = statistics.median(fingerprint_seconds(src) for _ in range(args.repeats))
    wall = statistics.median(measured(pack)[0] for _ in range(args.repeats))
    print(f"input {size / 1e9:.2f} GB | fingerprint {fp:.2f} s ({size / fp / 1e9:.1f} GB/s) | pack {wall:.1f} s | ratio {fp / wall:.1%}")


if __name__ == "__main__":
    main()
