"""Elastic resume: what restoring a sampler from its state costs, against planning the epoch.

Lengths: ``--sizes`` examples bootstrapped (seeded) from the real alpaca token lengths
(``benchmarks/_lengths.py``).  A ``PackedBatchSampler`` with its default plan (BFD into
``--max-tokens`` bins, 8 ranks) consumes half of epoch 1 and saves its state; a fresh sampler on 6
ranks (another world size) restores it.

* plan: a fresh sampler plans an epoch (``set_epoch`` + ``len``: every plan window's packing and
  canonical order, then the epoch's batch count);
* restore: a fresh sampler on 6 ranks is built, runs ``load_state_dict`` and yields its first batch
  (the lengths fingerprint, the plan of the cursor's window, the dealing of the rest of it);
* fingerprint: the xxh3-128 of the lengths and settings inside restore (once per sampler);
* the state's size as JSON, in bytes.

Restoring never replays consumed batches: the first batch after the restore is checked to be a
canonical batch at the cursor, and restore time does not grow with the cursor (``--cursors``).
Medians of ``--repeats`` runs (one at the largest size unless asked).  ``--windowing`` prints the
cost of planning in windows: padding efficiency and batch count of the default plan (windows of
2**20 examples) against the whole-epoch plan (``plan_window`` = the dataset) at 10M examples.  ``--balance`` prints instead
``stats().imbalance`` and ``step_imbalance`` of the packed, bucketed and cluster samplers at 2/4/8
ranks on 200k bootstrapped alpaca and c4 lengths (only public API: it runs on older checkouts too,
for a before/after comparison).  Usage::

    PYTHONPATH=<checkout's parent with packwise> python benchmarks/bench_resume.py --sizes 1e6 1e7 1e8
    PYTHONPATH=<...> python benchmarks/bench_resume.py --balance
    PYTHONPATH=<...> python benchmarks/bench_resume.py --windowing --sizes 1e7
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _lengths import bootstrap  # noqa: E402

from packwise.samplers import BucketBatchSampler, ClusterBatchSampler, PackedBatchSampler  # noqa: E402

SAVED_WORLD, RESUMED_WORLD, EPOCH = 8, 6, 1


def _sampler(lengths: np.ndarray, max_tokens: int, world: int, rank: int, **kw) -> PackedBatchSampler:
    return PackedBatchSampler(lengths, max_tokens=max_tokens, num_replicas=world, rank=rank, seed=0, **kw)


def saved_states(lengths: np.ndarray, max_tokens: int, fractions: list[float]) -> list[dict]:
    """The states of 8 ranks that consumed each of ``fractions`` of epoch 1 (a Trainer's count of steps)."""
    s = _sampler(lengths, max_tokens, SAVED_WORLD, 0)
    s.set_epoch(EPOCH)
    return [s.state_at(int(len(s) * fraction)) for fraction in fractions]


def time_plan(lengths: np.ndarray, max_tokens: int) -> float:
    s = _sampler(lengths, max_tokens, SAVED_WORLD, 0)
    t = time.perf_counter()
    s.set_epoch(EPOCH)
    len(s)
    return time.perf_counter() - t


def canonical_batch(s: PackedBatchSampler, position: int) -> list[int]:
    """The batch at canonical ``position`` of the sampler's epoch, from its plan window alone."""
    window, first = s._locate(position)
    w = s._window(s.epoch, window)
    b = int(w.sequence[position - first])
    return w.batches.order[w.batches.offsets[b] : w.batches.offsets[b + 1]].tolist()


def time_restore(lengths: np.ndarray, max_tokens: int, state: dict) -> tuple[float, float]:
    """(restore seconds, of which fingerprint seconds); checks the first batch is the cursor's."""
    t = time.perf_counter()
    s = _sampler(lengths, max_tokens, RESUMED_WORLD, 0)
    f = time.perf_counter()
    s._fingerprint_of()
    fingerprint = time.perf_counter() - f
    s.load_state_dict(state)
    first = next(iter(s))
    total = time.perf_counter() - t
    group = [canonical_batch(s, p) for p in range(state["cursor"], min(state["cursor"] + RESUMED_WORLD, state["total"]))]
    assert first in group, "replayed or skipped"
    return total, fingerprint


def windowing(n: int, max_tokens: int) -> None:
    """Padding efficiency and batch count of the windowed plan against the whole-epoch plan."""
    lengths = bootstrap("alpaca", n, seed=0)
    print("examples     plan               windows  batches     efficiency  plan s")
    for name, kw in (("windows of 2**20", {}), ("whole epoch", {"plan_window": n})):
        s = _sampler(lengths, max_tokens, SAVED_WORLD, 0, **kw)
        t = time.perf_counter()
        s.set_epoch(EPOCH)
        st = s.stats()
        took = time.perf_counter() - t
        print(f"{n:>11,}  {name:17s}  {s.num_windows():>7}  {st.batches:>10,}  {st.efficiency:>10.5f}  {took:>6.2f}", flush=True)


def run(n: int, max_tokens: int, repeats: int, cursors: list[float], plan_repeats: int) -> list[str]:
    lengths = bootstrap("alpaca", n, seed=0)
    lines = []
    plans = [time_plan(lengths, max_tokens) for _ in range(plan_repeats)]
    for fraction, state in zip(cursors, saved_states(lengths, max_tokens, cursors)):
        runs = [time_restore(lengths, max_tokens, state) for _ in range(repeats)]
        restore = statistics.median(r[0] for r in runs)
        fingerprint = statistics.median(r[1] for r in runs)
        lines.append(
            f"{n:>11,}  {fraction:>6.0%}  {statistics.median(plans):>8.3f}  {restore:>9.3f}  {fingerprint:>11.3f}  "
            f"{len(json.dumps(state)):>11}  {state['cursor']:>10,}"
        )
        print(lines[-1], flush=True)
    return lines


def balance() -> None:
    """Per-rank and per-step imbalance of the dealing on real length distributions."""
    print("lengths  ranks  sampler   imbalance  step_imbalance")
    for name in ("alpaca", "c4"):
        x = bootstrap(name, 200_000, seed=0)
        for world in (2, 4, 8):
            common = dict(num_replicas=world, rank=0)
            samplers = {
                "packed": PackedBatchSampler(x, max_tokens=8192, oversize="drop", attention_weight=1 / 1024, **common),
                "bucket": BucketBatchSampler(x, max_tokens=8192, oversize="drop", **common),
                "cluster": ClusterBatchSampler(np.arange(x.shape[0]) % 50, 32, lengths=x, **common),
            }
            for kind, s in samplers.items():
                st = s.stats()
                print(f"{name:7s}  {world:>5}  {kind:8s}  {st.imbalance:>9.4f}  {st.step_imbalance:>14.4f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7, 1e8])
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cursors", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    p.add_argument("--balance", action="store_true", help="print the dealing's imbalance instead")
    p.add_argument("--windowing", action="store_true", help="print the windowed plan's efficiency against the whole epoch's")
    args = p.parse_args()
    if args.balance:
        return balance()
    if args.windowing:
        for size in args.sizes:
            windowing(int(size), args.max_tokens)
        return None
    print("examples     cursor   plan s  restore s  fingerprint  state bytes  cursor (batches)")
    for size in args.sizes:
        n = int(size)
        run(n, args.max_tokens, args.repeats, args.cursors, args.repeats if n < 10**8 else 1)


if __name__ == "__main__":
    main()
