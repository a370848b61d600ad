"""What each process choice of the CLI (cli/_process.py) is worth, one undone at a time.

``packwise pack --tokenizer-backend fastokens`` on the raw-text input of ``bench_pipeline.py
--text`` (built here when absent), run as shipped and with one choice undone per variant: Arrow's
default mimalloc pool, the interpreter's teardown at exit, numba importing ``scipy.linalg``, the
cyclic collector on, an OpenBLAS thread per core, and all of them undone together.  Each run is a
fresh process; the variants run round robin (each round starting one later) and the table gives
medians of ``--repeats`` runs and each variant's wall time over the shipped one.

    .venv/bin/python benchmarks/bench_cli_process.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import build_text_input, measured  # noqa: E402

_UNDO_EXIT = "import sys\nfrom packwise.cli.app import app\nsys.argv[0] = 'packwise'\napp()\n"  # typer's SystemExit: a normal exit
_UNDO_SCIPY = "import numba.np.arraymath\n"  # numba first: import_numba_without_blas then does nothing
_UNDO_GC = "import gc\ngc.disable = lambda: None\n"
_SHIPPED = "import sys\nfrom packwise.cli.app import main\nsys.argv[0] = 'packwise'\nmain()\n"


def variants(cores: int) -> dict[str, tuple[str, dict]]:
    """name -> (driver code, extra environment)."""
    blas = {"OPENBLAS_NUM_THREADS": str(cores)}
    one_blas = {"OPENBLAS_NUM_THREADS": "1"}  # numba imported first loads NumPy first: keep that choice apart
    return {
        "as shipped": (_SHIPPED, {}),
        "mimalloc (Arrow's default pool)": (_SHIPPED, {"ARROW_DEFAULT_MEMORY_POOL": "mimalloc"}),
        "interpreter teardown at exit": (_UNDO_EXIT, {}),
        "numba imports scipy.linalg": (_UNDO_SCIPY + _SHIPPED, one_blas),
        "cyclic collector on": (_UNDO_GC + _SHIPPED, {}),
        f"OpenBLAS pool of {cores} threads": (_SHIPPED, blas),
        "all undone": (_UNDO_GC + _UNDO_SCIPY + _UNDO_EXIT, {"ARROW_DEFAULT_MEMORY_POOL": "mimalloc", **blas}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=20_000_000)
    ap.add_argument("--workdir", default="/tmp/packwise-bench")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    src, tok = work / "text-input.jsonl", work / "text-tokenizer.json"
    if not src.exists() or not tok.exists():
        build_text_input(work, args.tokens)
    pack = ["pack", str(src), str(work / "out-process"), "--max-tokens", "2048", "--tokenizer", str(tok), "--oversize", "split"]
    pack += ["--tokenizer-backend", "fastokens", "--overwrite"]
    cores = len(os.sched_getaffinity(0))
    table = variants(cores)
    base_env = {k: v for k, v in os.environ.items() if k not in ("ARROW_DEFAULT_MEMORY_POOL", "OPENBLAS_NUM_THREADS")}
    runs: dict[str, list] = {name: [] for name in table}
    names = list(table)
    started = time.perf_counter()
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            code, env = table[name]
            wall, rss, _, cpu = measured([sys.executable, "-c", code, *pack], {**base_env, **env})
            runs[name].append((wall, cpu, rss))
    shipped = statistics.median(w for w, _, _ in runs["as shipped"])
    print(f"packwise pack --tokenizer-backend fastokens, {src.name} ({src.stat().st_size / 2**20:.0f} MiB), medians of {args.repeats}")
    header = f"{'variant':<34} {'wall s':>7} {'/ shipped':>9} {'CPU s':>7} {'peak RSS MiB':>12}  walls"
    print(header)
    print("-" * len(header))
    for name, rs in runs.items():
        wall = statistics.median(w for w, _, _ in rs)
        cpu = statistics.median(c for _, c, _ in rs)
        rss = max(m for _, _, m in rs) / 2**20
        print(f"{name:<34} {wall:>7.2f} {wall / shipped:>8.2f}x {cpu:>7.2f} {rss:>12.0f}  {json.dumps([round(w, 2) for w, _, _ in rs])}")
    print(f"{cores} cores, load average at the end {os.getloadavg()[0]:.1f}, {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
