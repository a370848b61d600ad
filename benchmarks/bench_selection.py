"""Dynamic data pruning on real data, honestly compared: AG News (../shared/data), a small
bag-of-tokens classifier trained on CPU through examples/train_agnews.py, several seeds.

Rows: full data (its normal cosine schedule); InfoBatch with default settings (prune_ratio=0.5,
delta=0.875); full data with the schedule compressed to the steps InfoBatch used (a fully decayed
schedule at equal compute); RS2 without replacement at InfoBatch's example budget (the random
baseline at equal compute); InfoBatch with target_keep=0.5 (the budget stated up front).
Columns: examples forwarded+backpropagated, steps, wall time, "plan+reduce %" (epoch planning
plus the loss reduction, i.e. policy.update() or plain loss.mean() for full data, as a share of
step time: the selection overhead is the difference to the full-data row), eval accuracy mean and
spread (std over seeds).

Then the per-step cost of the score update at 1M examples against an InfoBatch-style update
written the obvious way in PyTorch (score and weight tensors, index assignment, weighted mean),
and the per-epoch planning cost, medians of several runs.  (The official InfoBatch is not on
PyPI; its update is the obvious torch code measured here.)

    .venv/bin/python benchmarks/bench_selection.py            # 3 seeds, 10 epochs (~10 min on 2 cores)
    .venv/bin/python benchmarks/bench_selection.py --seeds 5
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _example():
    spec = importlib.util.spec_from_file_location("train_agnews", ROOT / "examples" / "train_agnews.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_agnews"] = module
    spec.loader.exec_module(module)
    return module


def training_table(seeds: int, epochs: int) -> None:
    ex = _example()
    t = time.perf_counter()
    data = ex.load_agnews()
    print(
        f"AG News: {len(data.train_ids)} train / {len(data.eval_ids)} eval examples, BPE vocab {data.vocab_size} "
        f"(trained on the train split in {time.perf_counter() - t:.1f}s); {epochs} epochs, {seeds} seeds\n"
    )
    rows: dict[str, list] = {}
    for seed in range(seeds):
        full = ex.train(ex.RunConfig("full", epochs=epochs, seed=seed), data)
        ib = ex.train(ex.RunConfig("infobatch", epochs=epochs, seed=seed), data)
        compressed = ex.train(ex.RunConfig("full", epochs=epochs, seed=seed, steps=ib.steps), data)
        rs2 = ex.train(ex.RunConfig("rs2", epochs=epochs, seed=seed, fraction=ib.examples / full.examples), data)
        target = ex.train(ex.RunConfig("infobatch", epochs=epochs, seed=seed, target_keep=0.5), data)
        for name, res in (
            ("full data", full),
            ("InfoBatch (defaults)", ib),
            ("full, schedule compressed to IB steps", compressed),
            ("RS2 at IB's example budget", rs2),
            ("InfoBatch target_keep=0.5", target),
        ):
            rows.setdefault(name, []).append(res)
        print(
            f"  seed {seed}: full {100 * full.eval_accuracy:.2f}%  IB {100 * ib.eval_accuracy:.2f}%  "
            f"compressed {100 * compressed.eval_accuracy:.2f}%  RS2 {100 * rs2.eval_accuracy:.2f}%  "
            f"IB-target {100 * target.eval_accuracy:.2f}%",
            flush=True,
        )
    base = statistics.mean(r.examples for r in rows["full data"])
    base_acc = statistics.mean(r.eval_accuracy for r in rows["full data"])
    print()
    header = (
        f"{'run':40} {'examples':>9} {'vs full':>8} {'steps':>6} {'wall s':>7} {'plan+reduce %':>13} "
        f"{'eval acc %':>16} {'vs full':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, results in rows.items():
        examples = statistics.mean(r.examples for r in results)
        accs = [100 * r.eval_accuracy for r in results]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        overhead = statistics.median(100 * r.selection_s / r.step_s for r in results)
        print(
            f"{name:40} {examples:9.0f} {examples / base - 1:+8.1%} {statistics.mean(r.steps for r in results):6.0f} "
            f"{statistics.median(r.wall_s for r in results):7.1f} {overhead:13.2f} "
            f"{statistics.mean(accs):8.2f} ± {spread:5.2f} {statistics.mean(accs) - 100 * base_acc:+8.2f}"
        )
    kept = np.mean([r.kept_fractions for r in rows["InfoBatch (defaults)"]], axis=0)
    print("\nInfoBatch (defaults) kept fraction per epoch (mean over seeds):", " ".join(f"{k:.2f}" for k in kept))


def update_cost(num_examples: int, batch: int, steps: int, repeats: int) -> None:
    from packwise.selection import InfoBatch

    rng = np.random.default_rng(0)
    batches = [torch.from_numpy(rng.choice(num_examples, batch, replace=False)) for _ in range(steps)]
    loss = torch.rand(batch, requires_grad=True)
    ib = InfoBatch(num_examples, 10, seed=0)
    ib.indices_for_epoch(0)
    scores = torch.full((num_examples,), 3.0)
    weights = torch.ones(num_examples)

    def obvious(idx, values):  # InfoBatch-style, the obvious torch way
        scores[idx] = values.detach()
        return (values * weights[idx]).mean()

    def timed(fn):
        out = []
        for _ in range(repeats):
            t = time.perf_counter()
            for b in batches:
                fn(b, loss)
            out.append((time.perf_counter() - t) / steps * 1e6)
        return statistics.median(out)

    for fn in (ib.update, obvious):  # warm up (numba dispatch, allocator)
        for b in batches[:20]:
            fn(b, loss)
    plain = timed(lambda b, values: values.mean())
    ours = timed(ib.update)
    naive = timed(obvious)

    def plan_ours():
        ib._plan = None
        ib.indices_for_epoch(1)

    def plan_obvious():
        g = torch.Generator().manual_seed(1)
        well = torch.nonzero(scores < scores.mean()).squeeze(1)
        pruned = well[torch.randperm(well.shape[0], generator=g)[: well.shape[0] // 2]]
        keep = torch.ones(num_examples, dtype=torch.bool)
        keep[pruned] = False
        weights.fill_(1.0)
        weights[well] = 2.0
        return torch.nonzero(keep).squeeze(1)

    ib.update(torch.arange(num_examples), torch.rand(num_examples))
    scores.copy_(torch.from_numpy(ib.store.scores))
    plan_times = {}
    for name, fn in (("packwise InfoBatch.indices_for_epoch", plan_ours), ("obvious torch plan", plan_obvious)):
        fn()
        runs = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t)
        plan_times[name] = statistics.median(runs) * 1e3
    print(f"\nScore update per step at N={num_examples:,}, batch {batch} (median of {repeats} x {steps} steps):")
    print(f"{'update':44} {'us/step':>8} {'vs obvious torch':>17}")
    for name, value in (
        ("plain loss.mean() (no selection)", plain),
        ("packwise InfoBatch.update", ours),
        ("obvious torch InfoBatch-style update", naive),
    ):
        print(f"{name:44} {value:8.1f} {value / naive:16.2f}x")
    print(f"\nEpoch plan at N={num_examples:,} (median of {repeats}):")
    for name, ms in plan_times.items():
        print(f"{name:44} {ms:8.1f} ms")
    print(f"score store: {ib.store.nbytes / num_examples:.0f} bytes/example (+4 for the epoch's weight table)")


def main() -> None:
    parser = argparse.ArgumentParser(description="InfoBatch / RS2 / full data on AG News, and score-update cost")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    if not args.skip_training:
        training_table(args.seeds, args.epochs)
    update_cost(1_000_000, 64, 2000, 5)
    print(f"\ntotal benchmark time {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
