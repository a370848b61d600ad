"""``packwise pack`` on the local engine vs Ray Data on 1 and 2 workers of this machine (the workers
write the shards, the driver only commits), plus a paper estimate for 1T tokens on N nodes from
measured per-block costs.

The input is the bootstrapped real token column of ``bench_pipeline.build_input`` (real token
sequences of c4, alpaca, glaive and ag_news, rows drawn with replacement), packed with
``window_bfd``, ``--oversize split`` into 2048-token rows. Every run is a fresh process; the time is
the ``pack_to_parquet`` call after imports and, for Ray, after ``ray.init`` (Ray's start-up is
reported on its own). Each run's output is checked: every input token is in it exactly once
(``tokens_out == tokens_in``, no truncation or drop), and its padding is printed beside the local one.

    nice -n 10 .venv/bin/python benchmarks/bench_engines.py                      # 100M tokens
    nice -n 10 .venv/bin/python benchmarks/bench_engines.py --tokens 20000000    # quicker

The estimate: a worker reads, packs and writes one block of ``--block-rows`` rows in ``t_block``
seconds, and the driver spends ``t_commit`` seconds per block (checking its record; with the tail
pass also repacking and writing its open rows), both measured here on real blocks of the input
with the functions the run uses. For ``T`` tokens on ``N`` nodes of ``C`` cores:
``blocks(T) * t_block / (N * C - 1) + blocks(T) * t_commit``; only the second term is serial, and
it is two to three orders of magnitude smaller, so the hours fall with N until storage bandwidth
(not modelled) or the commit term is reached.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

_RUN = r"""
import json, os, sys, time, logging
engine, src, out, max_tokens, window, block_rows, cpus, tokenizer, tail = sys.argv[1:10]
column = {"tokens_column": "input_ids"} if tokenizer == "-" else {"tokenizer": tokenizer}
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
from packwise.pipeline import pack_to_parquet
startup = 0.0
if engine == "ray":
    import ray
    t = time.perf_counter()
    ray.init(num_cpus=int(cpus), include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
             object_store_memory=1 << 30)
    ray.data.DataContext.get_current().enable_progress_bars = False
    startup = time.perf_counter() - t
t = time.perf_counter()
r = pack_to_parquet(src, out, max_tokens=int(max_tokens), **column, oversize="split",
                    window=int(window), overwrite=True, engine=engine, block_rows=int(block_rows),
                    **({"tail_pass": tail == "1"} if engine == "ray" else {}))
s = r.manifest["stats"]
print(json.dumps({"seconds": time.perf_counter() - t, "startup": startup, "tokens_in": s["tokens_in"],
                  "tokens_out": s["tokens_out"], "truncated": s["truncated_tokens"], "dropped": s["dropped_tokens"],
                  "rows_out": s["rows_out"], "padding": s["padding_after"], "windows": s["windows"]}))
"""


def build_text_input(path: Path, target_tokens: int, seed: int = 0) -> dict:
    """Real texts of the four corpora drawn with replacement (each corpus equally likely) until
    ``target_tokens`` under the tokenizer saved beside ``path``: the tokenize-bound variant."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from conftest import load_texts

    from packwise.pipeline.tokenizer import token_lengths, train_byte_bpe

    pools = [load_texts(n) for n in ("c4", "alpaca", "glaive", "ag_news")]
    tok = train_byte_bpe(pools[0] + pools[1] + load_texts("wiki"), vocab_size=8192)
    tok.save(str(path.with_name("tokenizer.json")))
    lens = [np.asarray(token_lengths(tok, p)) for p in pools]
    rng = np.random.default_rng(seed)
    picks, total = [], 0
    while total < target_tokens:
        d = int(rng.integers(0, len(pools)))
        i = rng.integers(0, len(pools[d]), 1024)
        picks.append((d, i))
        total += int(lens[d][i].sum())
    texts = [pools[d][j] for d, i in picks for j in i]
    pq.write_table(pa.table({"text": texts}), path, row_group_size=8192, compression="zstd")
    return {"tokens": total, "rows": len(texts)}


def run(engine: str, src: Path, out: Path, args, cpus: int, tail: bool) -> dict:
    tok = str(src.with_name("tokenizer.json")) if args.text else "-"
    cmd = [sys.executable, "-c", _RUN, engine, str(src), str(out), str(args.max_tokens), str(args.window), str(args.block_rows), str(cpus), tok,
           "1" if tail else "0"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{engine} x{cpus} failed: {p.stderr[-3000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["tokens_out"] == r["tokens_in"] and r["truncated"] == r["dropped"] == 0, r  # every token, once
    return r


def per_block_costs(src: Path, args, blocks: int = 3) -> dict:
    """Seconds per block on one worker core (read, pack, write its shards: the Ray task's function)
    and on the driver (commit; with the tail pass also repacking and writing the block's open rows)."""
    import tempfile
    from types import SimpleNamespace

    import pyarrow.parquet as pq

    from packwise.pipeline.ray_engine import RayPackRun, RayShards, _pack_write_block, _tokenize_batch

    t = time.perf_counter()  # reading is part of a worker's block: Parquet decode of the token column, per row
    full = pq.read_table(src, columns=["input_ids"], pre_buffer=False)
    read_per_row = (time.perf_counter() - t) / full.num_rows
    tok = dict(tokenizer=None, tokens_column="input_ids", labels_column=None, source="bench")
    out = {"t_block": 0.0, "t_commit": 0.0, "t_commit_tail": 0.0, "tokens_per_block": 0.0, "tail_tokens": 0.0}
    out["t_task"] = _task_round_trip()
    for k in range(blocks):
        table = full.slice(k * args.block_rows, args.block_rows)
        for tail in (False, True):
            with tempfile.TemporaryDirectory() as d:
                shards = RayShards(d, settings={}, fingerprint="bench", shard_rows=8192)
                run = RayPackRun(SimpleNamespace(name="bench"), **{k_: v for k_, v in tok.items() if k_ != "source"}, max_tokens=args.max_tokens,
                                 algorithm="window_bfd", oversize="split", window=args.window, seed=None, block_rows=args.block_rows,
                                 tail_pass=tail)  # fmt: skip
                cfg = {**run.block_kwargs, "output": d, "shard_rows": 8192}
                t = time.perf_counter()
                rec = _pack_write_block(_tokenize_batch(table, **tok), k, k * args.block_rows, cfg)
                work = time.perf_counter() - t + read_per_row * table.num_rows
                t = time.perf_counter()  # the driver's work for one block: its record into the manifest's shard list
                shards.commit_blocks([rec])
                json.dumps(rec["shards"])
                if tail:  # the block's open rows repacked and written here (the encoder finishing included)
                    run._tail(shards, [rec])
                    shards.wait()
                commit = time.perf_counter() - t + out.get("t_task", 0.0)
                shards.close({})
            if tail:
                out["t_commit_tail"] += commit / blocks
                out["tail_tokens"] += (rec["tail"] or {}).get("tokens", 0) / blocks
            else:
                out["t_block"] += work / blocks
                out["t_commit"] += commit / blocks
                out["tokens_per_block"] += rec["stats"]["tokens_in"] / blocks
    return out


def _task_round_trip(n: int = 300) -> float:
    """Driver seconds per Ray task that returns a block record (submit, wait, get), on a local Ray."""
    import logging

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        record = ray.remote(lambda k: {"block": k, "shards": [{"file": f"shard-{k:06d}-0000.parquet", "rows": 8192}] * 2})
        ray.get([record.remote(k) for k in range(20)])  # workers started
        t = time.perf_counter()
        pending = [record.remote(k) for k in range(n)]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done[0])
        return (time.perf_counter() - t) / n
    finally:
        ray.shutdown()


def estimate(costs: dict, total_tokens: float, nodes: int, cores: int, commit: float) -> tuple[float, float]:
    """Wall seconds for ``total_tokens`` on ``nodes`` nodes, and the serial (driver) part of it."""
    blocks = total_tokens / costs["tokens_per_block"]
    parallel = blocks * costs["t_block"] / max(nodes * cores - 1, 1)  # one core per cluster runs the driver
    serial = blocks * commit
    return parallel + serial, serial


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=100_000_000)
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--window", type=int, default=10_000)
    ap.add_argument("--block-rows", type=int, default=25_000, help="rows per Ray pack block (~12 blocks at 100M tokens)")
    ap.add_argument("--workdir", default="/tmp/packwise-bench-engines")
    ap.add_argument("--text", action="store_true", help="pack a text column with a BPE tokenizer (tokenize-bound) instead of token ids")
    ap.add_argument("--cores-per-node", type=int, default=16, help="estimate: cores of one node")
    ap.add_argument("--node-hour-usd", type=float, default=0.68, help="estimate: price of one node-hour (assumption: "
                    "AWS c6i.4xlarge, 16 vCPU, on-demand us-east-1)")  # fmt: skip
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"input-{'text-' if args.text else ''}{args.tokens}.parquet"
    if not src.exists():
        from bench_pipeline import build_input

        t0 = time.perf_counter()
        info = (build_text_input if args.text else build_input)(src, args.tokens)
        print(f"built {src}: {info['rows']:,} rows, {info['tokens']:,} tokens in {time.perf_counter() - t0:.1f}s", flush=True)
    results = []
    runs = (("local engine", "local", 0, False), ("ray, 1 worker", "ray", 1, False), ("ray, 2 workers", "ray", 2, False),
            ("ray, 2, tail pass", "ray", 2, True))  # fmt: skip
    for name, engine, cpus, tail in runs:
        r = run(engine, src, work / f"out-{engine}-{cpus}-{int(tail)}", args, cpus, tail)
        r["name"] = name
        results.append(r)
        print(json.dumps(r), flush=True)
    local, one = results[0], results[1]
    print()
    print(f"{'engine':<18} {'seconds':>8} {'Mtok/s':>7} {'vs 1 worker':>11} {'ray start s':>11} {'padding':>8} {'rows':>9} {'windows':>8}")
    for r in results:
        ratio = f"{one['seconds'] / r['seconds']:.2f}x" if r["name"].startswith("ray") else "-"
        print(f"{r['name']:<18} {r['seconds']:>8.2f} {r['tokens_in'] / r['seconds'] / 1e6:>7.2f} {ratio:>11} "
              f"{r['startup']:>11.1f} {100 * r['padding']:>7.3f}% {r['rows_out']:>9,} {r['windows']:>8,}")  # fmt: skip
    print(f"input: {local['tokens_in']:,} tokens; --block-rows {args.block_rows}, window {args.window}, {args.max_tokens} tokens per row;"
          f" this machine has {os.cpu_count()} cores (the driver shares them with the workers); load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    if args.text:
        return  # the per-block estimate below is for the token-column input
    costs = per_block_costs(src, args)
    print()
    print(f"measured per block ({args.block_rows:,} rows, {costs['tokens_per_block'] / 1e6:.2f}M tokens): "
          f"{costs['t_block']:.3f}s on one worker core (read, pack, write shards); driver {1000 * costs['t_commit']:.2f} ms "
          f"(Ray task round trip {1000 * costs['t_task']:.2f} ms + record), "
          f"with the tail pass {1000 * costs['t_commit_tail']:.1f} ms ({costs['tail_tokens'] / 1e3:.0f}k tail tokens)")  # fmt: skip
    print(f"paper estimate, 1T tokens, {args.cores_per_node}-core nodes at ${args.node_hour_usd}/node-hour:")
    print(f"{'nodes':>6} {'hours':>8} {'USD':>9} {'serial h':>9} {'hours, tail':>12} {'serial h, tail':>15}")
    for nodes in (1, 4, 16, 64, 256):
        wall, serial = estimate(costs, 1e12, nodes, args.cores_per_node, costs["t_commit"])
        wall_t, serial_t = estimate(costs, 1e12, nodes, args.cores_per_node, costs["t_commit_tail"])
        print(f"{nodes:>6} {wall / 3600:>8.2f} {wall / 3600 * nodes * args.node_hour_usd:>9.2f} {serial / 3600:>9.3f} "
              f"{wall_t / 3600:>12.2f} {serial_t / 3600:>15.3f}")  # fmt: skip
    print("serial: the driver's commit (and tail pass); the rest is spread over N * C - 1 worker cores. Storage bandwidth is not modelled.")


if __name__ == "__main__":
    main()
