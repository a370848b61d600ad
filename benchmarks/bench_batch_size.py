"""Batch size that grows with the gradient noise scale, on real data: steps and examples to a
target validation loss for a fixed small token budget, a fixed large one, a ramp, and the adaptive
schedule (budget = k * B_noise), 3 seeds, and the plot of S/S_min against E/E_min.

The model is the AG News bag-of-tokens classifier of ``examples/train_agnews.py`` (BPE trained on
the train split of ``../shared/data/ag_news_test.csv``), batches from ``PackedBatchSampler`` with
``budget=`` (the sampler re-plans the epoch's tail at each budget change), Adam with the
square-root learning-rate rule against a 1024-token base (``BudgetScaledLR``).  Every run,
whatever its schedule, splits each batch into two micro-steps and measures the noise scale from
them (``AccumulationNoiseSource``), so all runs pay the same compute per example.

    python benchmarks/bench_batch_size.py --out benchmarks/results/bench_batch_size.md

S_min and E_min are the fewest steps and examples any run needed (the paper's are limits over all
batch sizes); (S/S_min - 1)(E/E_min - 1) = 1 is the paper's trade-off curve, drawn for reference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_selection import _example  # noqa: E402  (the AG News example module, loaded by path)

from packwise.samplers import PackedBatchSampler  # noqa: E402
from packwise.selection import (  # noqa: E402
    AccumulationNoiseSource,
    AdaptiveBudget,
    BudgetScaledLR,
    GradientNoiseScale,
    RampBudget,
)

BASE_BUDGET, BASE_LR = 1024, 0.02  # the example's tuned setting: Adam at 1024 tokens per step
SMALL, LARGE = 512, 16384
MULTIPLE = 128
EVAL_EVERY = 256  # examples between validation checks (steps to target are counted to the check)


@dataclass
class Run:
    schedule: str
    seed: int
    steps: int = 0  # to the target (0: not reached)
    examples: int = 0
    tokens: int = 0
    final_budget: int = 0
    final_noise: float = float("nan")
    wall_s: float = 0.0


def make_schedule(name: str, ramp_tokens: int, k: float):
    common = dict(multiple=MULTIPLE, lag_batches=0)  # no DataLoader workers: nothing runs ahead
    if name == "small":
        return RampBudget(SMALL, SMALL, over_tokens=1, **common)
    if name == "large":
        return RampBudget(LARGE, LARGE, over_tokens=1, **common)
    if name == "ramp":
        return RampBudget(SMALL, LARGE, over_tokens=ramp_tokens, **common)
    if name == "adaptive":
        return AdaptiveBudget(SMALL, maximum=LARGE, k=k, warmup_steps=10, **common)
    raise ValueError(f"schedule must be small, large, ramp or adaptive, got {name!r}")


@torch.no_grad()
def eval_loss(model, batch) -> float:
    _, flat, offsets, labels = batch
    return float(torch.nn.functional.cross_entropy(model(flat, offsets), labels))


def train(ex, data, name: str, seed: int, target: float, max_epochs: int, ramp_tokens: int, k: float) -> Run:
    torch.manual_seed(seed)
    lengths = data.train_lengths
    schedule = make_schedule(name, ramp_tokens, k)
    sampler = PackedBatchSampler(lengths, seed=seed, num_replicas=1, rank=0, budget=schedule)
    dataset = ex.WithIndex(ex._Examples(data.train_ids, data.train_labels))
    model = ex.Classifier(data.vocab_size)
    opt = torch.optim.Adam(model.parameters(), lr=BASE_LR)
    lr = BudgetScaledLR(torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0), schedule, rule="sqrt", base_budget=BASE_BUDGET)
    gns, source = GradientNoiseScale(beta=0.9), AccumulationNoiseSource(model)
    held = ex.collate([(i, (data.eval_ids[i], data.eval_labels[i])) for i in range(len(data.eval_ids))])
    run = Run(name, seed)
    since = 0
    start = time.perf_counter()
    for epoch in range(max_epochs):
        sampler.set_epoch(epoch)
        for ids in sampler:
            halves = (ids[: len(ids) // 2], ids[len(ids) // 2 :]) if len(ids) > 1 else (ids,)
            opt.zero_grad(set_to_none=True)
            for half in halves:
                _, flat, offsets, labels = ex.collate([dataset[i] for i in half])
                loss = torch.nn.functional.cross_entropy(model(flat, offsets), labels)
                (loss / len(halves)).backward()
                source.micro_step(len(half))  # examples: the loss is a mean over examples
            measured = source.measure()
            if measured is not None:
                gns.update(*measured)
            opt.step()
            run.steps += 1
            run.examples += len(ids)
            tokens = int(lengths[ids].sum())
            run.tokens += tokens
            # the noise scale is in examples; the budget is in tokens: convert with this batch's mean length
            noise_tokens = gns.value * tokens / len(ids) if gns.updates else None
            schedule.step(tokens, noise=noise_tokens)
            lr.step()
            since += len(ids)
            due = since >= EVAL_EVERY
            since = 0 if due else since
            if due and eval_loss(model, held) <= target:
                run.final_budget, run.final_noise = schedule.budget, gns.value
                run.wall_s = time.perf_counter() - start
                source.close()
                return run
    run.steps = run.examples = 0  # not reached
    run.final_budget, run.final_noise = schedule.budget, gns.value
    run.wall_s = time.perf_counter() - start
    source.close()
    return run


def plot(runs: list[Run], s_min: float, e_min: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    e = np.linspace(1.02, 8, 200)
    ax.plot(e, 1 + 1 / (e - 1), color="0.6", lw=1, label="(S/Smin-1)(E/Emin-1)=1")
    for name, marker in (("small", "o"), ("large", "s"), ("ramp", "^"), ("adaptive", "D")):
        pts = [(r.examples / e_min, r.steps / s_min) for r in runs if r.schedule == name and r.steps]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, label=name, s=36)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("E / E_min (examples to target)")
    ax.set_ylabel("S / S_min (steps to target)")
    ax.set_title("AG News, steps vs examples to the target loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.50, help="validation cross-entropy to reach")
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--ramp-tokens", type=int, default=300_000, help="the ramp reaches LARGE after these tokens")
    parser.add_argument("--k", type=float, default=1.0, help="adaptive: budget = k * B_noise")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here (and the PNG beside it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ex = _example()
    t = time.perf_counter()
    data = ex.load_agnews()
    lines = [
        f"AG News: {len(data.train_ids)} train / {len(data.eval_ids)} eval examples, BPE vocab {data.vocab_size} "
        f"({time.perf_counter() - t:.1f}s); target validation loss {args.target}; budgets in tokens per step: "
        f"small {SMALL}, large {LARGE}, ramp {SMALL}->{LARGE} over {args.ramp_tokens:,} tokens, adaptive "
        f"{args.k} x B_noise in [{SMALL}, {LARGE}]; Adam, lr {BASE_LR} x sqrt(budget / {BASE_BUDGET})",
        "",
    ]
    runs = []
    for name in ("small", "large", "ramp", "adaptive"):
        for seed in range(args.seeds):
            runs.append(train(ex, data, name, seed, args.target, args.max_epochs, args.ramp_tokens, args.k))
            print(runs[-1], flush=True)
    reached = [r for r in runs if r.steps]
    s_min, e_min = min(r.steps for r in reached), min(r.examples for r in reached)
    lines += [
        "| schedule | seeds reaching target | steps (mean, per seed) | examples (mean) | S/S_min | E/E_min | budget at target | B_noise at target (examples) | wall s (mean) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("small", "large", "ramp", "adaptive"):
        mine = [r for r in runs if r.schedule == name]
        ok = [r for r in mine if r.steps]
        if not ok:
            lines.append(f"| {name} | 0/{len(mine)} | - | - | - | - | - | - | - |")
            continue
        steps = statistics.mean(r.steps for r in ok)
        examples = statistics.mean(r.examples for r in ok)
        lines.append(
            f"| {name} | {len(ok)}/{len(mine)} | {steps:.0f} ({', '.join(str(r.steps) for r in ok)}) | {examples:,.0f} | "
            f"{steps / s_min:.2f} | {examples / e_min:.2f} | {statistics.mean(r.final_budget for r in ok):,.0f} | "
            f"{statistics.mean(r.final_noise for r in ok):.1f} | {statistics.mean(r.wall_s for r in ok):.1f} |"
        )
    lines += ["", f"S_min = {s_min} steps, E_min = {e_min:,} examples (the fewest of any single run)."]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        png = args.out.with_suffix(".png")
        plot(runs, s_min, e_min, png)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(text + f"\n\n![S/S_min against E/E_min]({png.name})\n")
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
