"""``packwise pack`` vs TRL ``pack_dataset`` on a Parquet token column bootstrapped from real data.

The input is already tokenized (real token sequences of c4, alpaca, glaive and ag_news in
../shared/data under a BPE trained on the corpora, rows drawn with replacement, each dataset
equally likely), so the figures are about packing
and I/O.  Both sides read the same Parquet file and write packed Parquet; both keep every token
(packwise ``--oversize split``, TRL ``strategy="bfd_split"``).  Each run is a fresh process; the
table gives medians of ``--repeats`` runs: the whole command in a fresh process and the library
call alone after imports, tokens/s of each, peak RSS, rows and padding.

    .venv/bin/python benchmarks/bench_pipeline.py                       # 20M tokens, TRL included
    .venv/bin/python benchmarks/bench_pipeline.py --tokens 100000000 --skip-trl   # peak RSS at 100M
    .venv/bin/python benchmarks/bench_pipeline.py --readers-only        # JSON array vs JSON Lines reader

The reader line streams the same real rows (alpaca and glaive records, bootstrapped to
``--reader-mb``) as JSON Lines and as one pretty-printed JSON array (the LLaMA-Factory layout)
through ``packwise.pipeline.read``; the target is the array within 1.5x of JSON Lines.  The
obvious alternative, ``json.load`` of the whole array, is timed beside them.

TRL lives in the benchmark venv (heavy, benchmark-only): ``scripts/bench_env.sh``, then
``--trl-python /tmp/bench-packing/bin/python``.

``--text``: the raw-text path, where tokenization is the whole cost.  Real texts (c4, wiki,
alpaca, stdlib docstrings; each corpus equally likely, rows drawn with replacement) to >= 20M
tokens of JSONL, a byte-level BPE ``tokenizer.json`` trained on them, and in one run: ``packwise
pack`` with each ``--tokenizer-backend``; HF ``datasets.load_dataset(json)`` + ``map(encode_batch,
num_proc=cores)`` + TRL ``pack_dataset(bfd_split)`` + ``to_parquet``; and the floor, read JSONL +
encode + write Parquet with no packing, one loop in one thread, on the allocator packwise's CLI uses (jemalloc), with each tokenizer (fastokens
twice: ``encode_batch_flat`` into Arrow buffers, the strict floor, and ``encode_batch`` with a
list per text, the floor as issue 15 measured it).  Every side must produce the same number of tokens.

    nice -n 5 .venv/bin/python benchmarks/bench_pipeline.py --text --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "tests"))

_PACKWISE_SCRIPT = r"""
import json, sys, time, tempfile
import pyarrow as pa, pyarrow.parquet as pq
from packwise.pipeline import pack_to_parquet
src, out, seq_length, window = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
warm = tempfile.mkdtemp()  # load the cached numba kernels before the clock starts (TRL has no JIT)
pq.write_table(pa.table({"input_ids": pa.array([[1, 2, 3]] * 4, pa.list_(pa.int32()))}), warm + "/w.parquet")
pack_to_parquet(warm + "/w.parquet", warm + "/o", max_tokens=seq_length, tokens_column="input_ids", oversize="split")
t0 = time.perf_counter()
r = pack_to_parquet(src, out, max_tokens=seq_length, tokens_column="input_ids", oversize="split", window=window, overwrite=True)
print(json.dumps({"rows": r.manifest["stats"]["rows_out"], "tokens": r.manifest["stats"]["tokens_out"], "inner_s": time.perf_counter() - t0}))
"""

_TRL_SCRIPT = r"""
import json, sys, time
import pyarrow.parquet as pq
from datasets import Dataset
from trl import pack_dataset
src, out, seq_length = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
ds = Dataset.from_parquet(src)
packed = pack_dataset(ds, seq_length=seq_length, strategy="bfd_split")
packed.to_parquet(out)
meta = pq.read_metadata(out)
tokens = sum(sum(x) for x in pq.read_table(out, columns=["seq_lengths"]).column("seq_lengths").to_pylist())
print(json.dumps({"rows": meta.num_rows, "tokens": tokens, "inner_s": time.perf_counter() - t0}))
"""


def build_input(path: Path, target_tokens: int, seed: int = 0) -> dict:
    """Bootstrap rows of real token sequences until ``target_tokens``; write them in 1M-token chunks."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from conftest import load_texts

    from packwise.pipeline.tokenizer import train_byte_bpe
    from packwise.pipeline.tokens import encode

    names = ("c4", "alpaca", "glaive", "ag_news")
    texts = {n: load_texts(n) for n in names}
    tok = train_byte_bpe([t for n in ("c4", "alpaca") for t in texts[n]] + load_texts("wiki"), vocab_size=8192)
    pools = [encode(tok, texts[n]) for n in names]
    arrays = [pa.array(p, pa.list_(pa.int32())) for p in pools]
    lens = [np.array([len(x) for x in p]) for p in pools]
    rng = np.random.default_rng(seed)
    schema = pa.schema([("input_ids", pa.list_(pa.int32()))])
    tmp = path.with_suffix(".tmp")
    total = rows = 0
    with pq.ParquetWriter(tmp, schema, compression="zstd") as w:
        while total < target_tokens:
            which = rng.integers(0, len(pools), 1024)
            parts = []
            for d in range(len(pools)):
                pick = rng.integers(0, len(pools[d]), int((which == d).sum()))
                parts.append(arrays[d].take(pa.array(pick)))
                total += int(lens[d][pick].sum())
                rows += pick.shape[0]
            w.write_table(pa.table({"input_ids": pa.concat_arrays(parts)}), row_group_size=8192)
    os.replace(tmp, path)
    return {"tokens": total, "rows": rows}


_TRL_TEXT_SCRIPT = r"""
import json, os, sys, time
import pyarrow.parquet as pq
from datasets import load_dataset
from tokenizers import Tokenizer
from trl import pack_dataset
src, tok_path, out, seq_length = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t0 = time.perf_counter()
tok = Tokenizer.from_file(tok_path)
enc = getattr(tok, "encode_batch_fast", tok.encode_batch)
def tokenize(batch):
    return {"input_ids": [e.ids for e in enc(batch["text"], add_special_tokens=False)]}
ds = load_dataset("json", data_files=src, split="train")
ds = ds.map(tokenize, batched=True, num_proc=len(os.sched_getaffinity(0)), remove_columns=ds.column_names)
packed = pack_dataset(ds, seq_length=seq_length, strategy="bfd_split")
packed.to_parquet(out)
meta = pq.read_metadata(out)
tokens = sum(sum(x) for x in pq.read_table(out, columns=["seq_lengths"]).column("seq_lengths").to_pylist())
print(json.dumps({"rows": meta.num_rows, "tokens": tokens, "inner_s": time.perf_counter() - t0}))
"""

_FLOOR_SCRIPT = r"""
import json, sys, time
import numpy as np, pyarrow as pa, pyarrow.json as pj, pyarrow.parquet as pq
src, tok_path, out, backend = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
pa.set_memory_pool(pa.jemalloc_memory_pool())  # packwise's CLI allocator (cli/_process.py): the floor pays no page faults it avoids
t0 = time.perf_counter()
if backend == "fastokens-lists":  # the issue's floor: encode_batch, an Encoding and a list per text
    import fastokens
    ft = fastokens.Tokenizer.from_file(tok_path)
    def encode(texts):
        return pa.array([e.ids for e in ft.encode_batch(texts, add_special_tokens=False)], pa.list_(pa.int32()))
elif backend == "fastokens":
    import fastokens
    ft = fastokens.Tokenizer.from_file(tok_path)
    def encode(texts):
        ids, offsets = ft.encode_batch_flat(texts, add_special_tokens=False)
        off = pa.py_buffer(np.frombuffer(offsets, np.uint64).astype(np.int32))  # buffers, not arrays: no pandas import
        values = pa.Array.from_buffers(pa.int32(), len(ids) // 4, [None, pa.py_buffer(ids)])
        return pa.ListArray.from_arrays(pa.Array.from_buffers(pa.int32(), len(texts) + 1, [None, off]), values)
else:
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(tok_path)
    def encode(texts):
        return pa.array([e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)], pa.list_(pa.int32()))
tokens = rows = 0
schema = pa.schema([("input_ids", pa.list_(pa.int32()))])
with pq.ParquetWriter(out, schema, compression="zstd", use_dictionary=False) as w:
    for b in pj.open_json(src, read_options=pj.ReadOptions(block_size=8 << 20)):
        ids = encode(b.column("text").to_pylist())
        w.write_table(pa.table({"input_ids": ids}))
        tokens += len(ids.values); rows += len(ids)
print(json.dumps({"rows": rows, "tokens": tokens, "inner_s": time.perf_counter() - t0}))
"""


def _stdout(cmd: list[str], env: dict | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return proc.stdout.decode()


def measured(cmd: list[str], env=None) -> tuple[float, int, str, float]:
    """Wall time, peak RSS (bytes, ``ru_maxrss`` of the child), stdout and CPU seconds (user + sys) of ``cmd`` in a fresh process."""
    wrapper = [
        sys.executable,
        "-c",
        "import os, resource, subprocess, sys, time; t = time.perf_counter(); "
        "p = subprocess.run(sys.argv[1:], capture_output=True); "
        "w = time.perf_counter() - t; u = resource.getrusage(resource.RUSAGE_CHILDREN); r = u.ru_maxrss; "
        "sys.stderr.write(p.stderr.decode()[-3000:]) if p.returncode else None; "
        "print(f'@@{w} {r} {p.returncode} {u.ru_utime + u.ru_stime}'); sys.stdout.write(p.stdout.decode())",
        *cmd,
    ]
    out = _stdout(wrapper, env)
    head, _, rest = out.partition("\n")
    wall, rss_kb, rc, cpu = head[2:].split()
    if rc != "0":
        raise RuntimeError(f"{cmd[:4]} exited {rc}")
    return float(wall), int(rss_kb) * 1024, rest, float(cpu)


def packwise_pack(src: Path, out: Path, max_tokens: int, window: int) -> dict:
    """The ``packwise pack`` command in a fresh process, then the library call timed after imports."""
    cmd = [sys.executable, "-m", "packwise.cli.app", "pack", str(src), str(out), "--max-tokens", str(max_tokens)]
    cmd += ["--tokens-column", "input_ids", "--oversize", "split", "--window", str(window), "--overwrite"]
    wall, rss, _, _ = measured(cmd)
    stats = json.loads((out / "manifest.json").read_text())["stats"]
    _, _, text, _ = measured([sys.executable, "-c", _PACKWISE_SCRIPT, str(src), str(out), str(max_tokens), str(window)])
    inner = json.loads(text.strip().splitlines()[-1])["inner_s"]
    return {"wall": wall, "inner": inner, "rss": rss, "rows": stats["rows_out"], "tokens": stats["tokens_out"]}


def trl_pack(python: str, src: Path, out: Path, max_tokens: int) -> dict:
    cache = Path(tempfile.mkdtemp(prefix="hf-cache-"))
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_HOME": str(cache), "HF_DATASETS_OFFLINE": "1"}
    try:
        wall, rss, text, _ = measured([python, "-c", _TRL_SCRIPT, str(src), str(out), str(max_tokens)], env)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    info = json.loads(text.strip().splitlines()[-1])
    return {"wall": wall, "inner": info["inner_s"], "rss": rss, "rows": info["rows"], "tokens": info["tokens"]}


def build_json_inputs(work: Path, megabytes: int, seed: int = 0) -> tuple[Path, Path, int]:
    """The same bootstrapped real rows as ``rows.jsonl`` and as a JSON array ``rows.json`` (indent 2)."""
    lines, array = work / f"rows-{megabytes}mb.jsonl", work / f"rows-{megabytes}mb.json"
    pool = json.load(open(SHARED / "alpaca_en_demo.json", encoding="utf-8"))
    pool += [{"instruction": json.dumps(r["conversations"]), "input": r["tools"], "output": ""}
             for r in json.load(open(SHARED / "glaive_toolcall_en_demo.json", encoding="utf-8"))]  # fmt: skip
    rng = np.random.default_rng(seed)
    if not (lines.exists() and array.exists()):
        rows, size = [], 0
        while size < megabytes << 20:
            row = pool[int(rng.integers(len(pool)))]
            rows.append(row)
            size += len(json.dumps(row)) + 1
        lines.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        array.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return lines, array, sum(1 for _ in open(lines, encoding="utf-8"))


def bench_readers(work: Path, megabytes: int, repeats: int) -> None:
    from packwise.pipeline import read

    lines, array, n = build_json_inputs(work, megabytes)
    for path in (lines, array):  # warm the page cache and the numba kernel
        sum(b.num_rows for b in read(path))

    def best(fn):
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            assert fn() == n
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    jsonl = best(lambda: sum(b.num_rows for b in read(lines)))
    arr = best(lambda: sum(b.num_rows for b in read(array)))
    whole = best(lambda: len(json.load(open(array, encoding="utf-8"))))
    print(f"\nreaders, {n:,} real rows ({lines.stat().st_size / 2**20:.0f} MiB JSONL, {array.stat().st_size / 2**20:.0f} MiB JSON array), "
          f"medians of {repeats}:")  # fmt: skip
    print(f"{'reader':<46} {'s':>7} {'rows/s':>12} {'vs JSONL':>9}")
    for name, t in (("packwise read, JSON Lines", jsonl), ("packwise read, JSON array (streamed)", arr),
                    ("json.load of the whole array (in memory)", whole)):  # fmt: skip
        print(f"{name:<46} {t:>7.3f} {n / t:>12,.0f} {t / jsonl:>8.2f}x")
    print(f"target: JSON array within 1.5x of JSON Lines: {'met' if arr <= 1.5 * jsonl else 'NOT met'} ({arr / jsonl:.2f}x)", flush=True)


def build_text_input(work: Path, target_tokens: int, seed: int = 0) -> dict:
    """Bootstrap real texts to ``target_tokens`` (under a byte-level BPE trained on them) into JSONL."""
    from conftest import load_texts

    from packwise.pipeline.demo_data import stdlib_docstrings
    from packwise.pipeline.tokenizer import train_byte_bpe, token_lengths

    pools = {n: load_texts(n) for n in ("c4", "wiki", "alpaca")}
    pools["stdlib"] = [r["text"] for r in stdlib_docstrings(min_chars=20)]
    tok = train_byte_bpe([t for p in pools.values() for t in p], vocab_size=8192)
    tok.save(str(work / "text-tokenizer.json"))
    names = list(pools)
    lens = [token_lengths(tok, pools[n]) for n in names]
    rng = np.random.default_rng(seed)
    total = rows = 0
    tmp = work / "text-input.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        while total < target_tokens:
            which = rng.integers(0, len(names), 256)
            for d, n in enumerate(names):
                pick = rng.integers(0, len(pools[n]), int((which == d).sum()))
                f.writelines(json.dumps({"text": pools[n][i]}, ensure_ascii=False) + "\n" for i in pick)
                total += int(lens[d][pick].sum())
                rows += pick.shape[0]
    os.replace(tmp, work / "text-input.jsonl")
    return {"tokens": total, "rows": rows, "corpora": {n: len(p) for n, p in pools.items()}}


def encode_threads(src: Path, tok_path: Path, batches: int = 4) -> list[str]:
    """Does each encoder release the GIL?  The same 8 MiB batches on 1 thread, then on one thread per core.

    Each timing gets a fresh encoder (checked on one text), so neither inherits the other's word cache.
    """
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.json as pj

    from packwise.pipeline.tokenizer import load_tokenizer
    from packwise.pipeline.tokenizer_backend import TextEncoder

    texts = []
    for b in pj.open_json(src, read_options=pj.ReadOptions(block_size=8 << 20)):
        texts.append(b.column("text").to_pylist())
        if len(texts) == batches:
            break
    cores = len(os.sched_getaffinity(0))
    lines = []
    for backend in ("hf", "fastokens"):
        times = []
        for threads in (1, cores):
            enc = TextEncoder(load_tokenizer(tok_path), backend)
            enc.encode(texts[0][:1])  # the backend check, off the clock
            t = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                tokens = sum(int(o[-1]) for o, _ in pool.map(enc.encode, texts))
            times.append(time.perf_counter() - t)
        lines.append(f"{backend:>9} encode of {tokens:,} tokens: 1 thread {times[0]:.2f}s, {cores} threads {times[1]:.2f}s "
                     f"({times[0] / times[1]:.2f}x)")  # fmt: skip
    return lines


def text_main(args) -> None:
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    src, tok = work / "text-input.jsonl", work / "text-tokenizer.json"
    target = args.tokens[0]
    if not src.exists() or not tok.exists():
        t0 = time.perf_counter()
        info = build_text_input(work, target)
        print(f"built {src}: {info['rows']:,} rows, {info['tokens']:,} tokens of {info['corpora']} in {time.perf_counter() - t0:.1f}s", flush=True)
    for line in encode_threads(src, tok):
        print(line, flush=True)
    py = sys.executable

    def pack_cmd(backend):
        out = work / f"out-text-{backend}"
        cmd = [py, "-m", "packwise.cli.app", "pack", str(src), str(out), "--max-tokens", str(args.max_tokens), "--tokenizer", str(tok)]
        cmd += ["--oversize", "split", "--tokenizer-backend", backend, "--overwrite"]
        warm = work / "warm.jsonl"  # fills numba's on-disk kernel cache before the clock starts (TRL has no JIT)
        warm.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["packing makes batches dense"] * 8))
        _stdout([py, "-m", "packwise.cli.app", "pack", str(warm), str(work / "warm-out"), "--max-tokens", "8", "--tokenizer",
                 str(tok), "--oversize", "split", "--overwrite"])  # fmt: skip

        def run():
            wall, rss, _, cpu = measured(cmd)
            m = json.loads((out / "manifest.json").read_text())
            assert m["stats"]["tokenizer_backend"]["used"] == backend, m["stats"]["tokenizer_backend"]
            return {"wall": wall, "cpu": cpu, "rss": rss, "rows": m["stats"]["rows_out"], "tokens": m["stats"]["tokens_out"]}

        return run

    def script(python, code, *argv, env=None):
        def run():
            wall, rss, text, cpu = measured([python, "-c", code, *map(str, argv)], env)
            info = json.loads(text.strip().splitlines()[-1])
            return {"wall": wall, "cpu": cpu, "rss": rss, "rows": info["rows"], "tokens": info["tokens"]}

        return run

    sides = [
        ("packwise pack --tokenizer-backend fastokens", pack_cmd("fastokens")),
        ("packwise pack --tokenizer-backend hf", pack_cmd("hf")),
        ("floor: read + fastokens encode + write", script(py, _FLOOR_SCRIPT, src, tok, work / "floor-fast.parquet", "fastokens")),
        ("floor: same, fastokens encode_batch (lists)", script(py, _FLOOR_SCRIPT, src, tok, work / "floor-fast-lists.parquet", "fastokens-lists")),
        ("floor: read + HF tokenizers encode + write", script(py, _FLOOR_SCRIPT, src, tok, work / "floor-hf.parquet", "hf")),
    ]
    if not args.skip_trl:
        if not Path(args.trl_python).exists():
            sys.exit(f"TRL venv not found at {args.trl_python}; create it (scripts/bench_env.sh) or pass --skip-trl")
        cache = Path(tempfile.mkdtemp(prefix="hf-cache-"))
        env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_HOME": str(cache), "HF_DATASETS_OFFLINE": "1"}
        trl = script(args.trl_python, _TRL_TEXT_SCRIPT, src, tok, work / "out-text-trl.parquet", args.max_tokens, env=env)

        def trl_fresh_cache():
            shutil.rmtree(cache, ignore_errors=True)  # no cached map results between repeats
            return trl()

        sides.append(("HF datasets.map + TRL pack_dataset + to_parquet", trl_fresh_cache))
    results, all_runs = [], {name: [] for name, _ in sides}
    for r in range(args.repeats):  # round robin, each round starting one side later: a slow spell of the
        for name, fn in sides[r % len(sides):] + sides[: r % len(sides)]:  # machine, or the memory a big side
            all_runs[name].append(fn())  # leaves the kernel to reclaim, falls on every side alike
    for name, _ in sides:
        runs = all_runs[name]
        r = {"tool": name, "wall_s": statistics.median(x["wall"] for x in runs), "walls": [round(x["wall"], 2) for x in runs],
             "cpu_s": statistics.median(x["cpu"] for x in runs), "load": os.getloadavg()[0],
             "peak_rss_mib": max(x["rss"] for x in runs) / 2**20, "tokens": runs[0]["tokens"], "rows_out": runs[0]["rows"]}  # fmt: skip
        results.append(r)
        print(json.dumps(r), flush=True)
    tokens = results[0]["tokens"]
    assert all(r["tokens"] == tokens for r in results), [(r["tool"], r["tokens"]) for r in results]
    by = {r["tool"]: r for r in results}
    floor = by["floor: read + fastokens encode + write"]
    print()
    header = (f"{'pipeline':<48} {'wall s':>7} {'Mtok/s':>7} {'vs HF+TRL':>9} {'/ fastokens floor':>17} | {'CPU s':>6} "
              f"{'vs HF+TRL':>9} {'/ floor':>7} | {'peak RSS MiB':>12} {'rows':>8}")  # fmt: skip
    print(f"{tokens:,} tokens of real text ({src.name}), {args.max_tokens} tokens per packed row, medians of {args.repeats}")
    print(header)
    print("-" * len(header))
    trl = next((r for r in results if r["tool"].startswith("HF datasets")), None)
    for r in results:
        vs = f"{trl['wall_s'] / r['wall_s']:.1f}x" if trl else "-"
        vs_cpu = f"{trl['cpu_s'] / r['cpu_s']:.1f}x" if trl else "-"
        print(f"{r['tool']:<48} {r['wall_s']:>7.2f} {tokens / r['wall_s'] / 1e6:>7.2f} {vs:>9} {r['wall_s'] / floor['wall_s']:>16.2f}x | "
              f"{r['cpu_s']:>6.2f} {vs_cpu:>9} {r['cpu_s'] / floor['cpu_s']:>6.2f}x | {r['peak_rss_mib']:>12.0f} {r['rows_out']:>8,}")  # fmt: skip
    print("wall s: the whole command in a fresh process (imports included); CPU s: its user + sys seconds (all threads")
    print("and worker processes). vs HF+TRL: HF+TRL's figure / this one; / floor: this one / the fastokens floor's.")
    print("Floor rows are input rows (no packing). The sides run round robin, each round starting one side later, so load hits them alike.")
    print(f"load average at the end: {os.getloadavg()} on {len(os.sched_getaffinity(0))} cores")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=[20_000_000], help="input sizes in tokens (>= 20M)")
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--window", type=int, default=10_000, help="packwise window (the CLI default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trl-python", default="/tmp/bench-packing/bin/python", help="a python with trl (scripts/bench_env.sh)")
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--workdir", default="/tmp/packwise-bench")
    ap.add_argument("--reader-mb", type=int, default=100, help="size of the JSON reader comparison input")
    ap.add_argument("--readers-only", action="store_true", help="only the JSON array vs JSON Lines reader line")
    ap.add_argument("--text", action="store_true", help="the raw-text path: tokenize + pack JSONL (see above)")
    args = ap.parse_args()
    if args.text:
        return text_main(args)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    bench_readers(work, args.reader_mb, args.repeats)
    if args.readers_only:
        return
    results = []
    for n in args.tokens:
        src = work / f"input-{n}.parquet"
        if not src.exists():
            t0 = time.perf_counter()
            info = build_input(src, n)
            print(f"built {src}: {info['rows']:,} rows, {info['tokens']:,} tokens in {time.perf_counter() - t0:.1f}s", flush=True)
        import pyarrow.parquet as pq

        rows_in = pq.read_metadata(src).num_rows
        tokens_in = int(sum(np.diff(np.asarray(b.column(0).offsets)).sum() for b in pq.ParquetFile(src).iter_batches(65536)))
        sides = [("packwise pack (window_bfd, split)", lambda: packwise_pack(src, work / "out-packwise", args.max_tokens, args.window))]
        if not args.skip_trl:
            if not Path(args.trl_python).exists():
                sys.exit(f"TRL venv not found at {args.trl_python}; create it (see --help) or pass --skip-trl")
            sides.append(("TRL pack_dataset(bfd_split) + to_parquet", lambda: trl_pack(args.trl_python, src, work / "out-trl.parquet", args.max_tokens)))
        for name, fn in sides:
            runs = [fn() for _ in range(args.repeats)]
            wall = statistics.median(r["wall"] for r in runs)
            inner = statistics.median(r["inner"] for r in runs)
            r0 = runs[0]
            assert r0["tokens"] == tokens_in, (name, r0["tokens"], tokens_in)
            results.append(
                {
                    "input_tokens": tokens_in,
                    "input_rows": rows_in,
                    "tool": name,
                    "wall_s": wall,
                    "walls": [round(r["wall"], 2) for r in runs],
                    "tokens_per_s": tokens_in / wall,
                    "inner_s": inner,
                    "inners": [round(r["inner"], 2) for r in runs],
                    "inner_tokens_per_s": tokens_in / inner,
                    "peak_rss_mib": max(r["rss"] for r in runs) / 2**20,
                    "rows_out": r0["rows"],
                    "padding": 1 - tokens_in / (r0["rows"] * args.max_tokens),
                }
            )
            print(json.dumps(results[-1]), flush=True)
    print()
    header = (
        f"{'input tokens':>13} {'tool':<42} {'process s':>9} {'Mtok/s':>7} {'speedup':>7} | {'work s':>7} {'Mtok/s':>7} "
        f"{'speedup':>7} | {'peak RSS MiB':>12} {'rows':>8} {'padding':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        base = next((x for x in results if x["input_tokens"] == r["input_tokens"] and x["tool"].startswith("TRL")), None)
        speed = f"{base['wall_s'] / r['wall_s']:.1f}x" if base else "-"
        inner = f"{base['inner_s'] / r['inner_s']:.1f}x" if base else "-"
        print(
            f"{r['input_tokens']:>13,} {r['tool']:<42} {r['wall_s']:>9.2f} {r['tokens_per_s'] / 1e6:>7.2f} {speed:>7} | "
            f"{r['inner_s']:>7.2f} {r['inner_tokens_per_s'] / 1e6:>7.2f} {inner:>7} | {r['peak_rss_mib']:>12.0f} "
            f"{r['rows_out']:>8,} {100 * r['padding']:>7.2f}%"
        )
    print("process s: the whole command in a fresh process (imports included); work s: the library call after")
    print("imports (TRL: Dataset.from_parquet + pack_dataset + to_parquet; packwise: pack_to_parquet). Medians;")
    print("peak RSS is the largest ru_maxrss of the command runs. Per-run times are in the JSON lines above.")


if __name__ == "__main__":
    main()
