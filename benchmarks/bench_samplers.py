"""Samplers side by side: epoch planning time, per-batch overhead, padding and batches per epoch.

Lengths: 1M examples bootstrapped (with replacement, seeded) from the real token lengths of the
shared datasets (alpaca + glaive + c4 under a byte-level BPE trained on them), capped at
``--max-len``.  Every sampler gets the same padded-token budget per batch (``--max-tokens``).

Competitors live in the benchmark venv, never in the project's (``scripts/bench_env.sh`` installs
transformers, lhotse, pytest and hypothesis there)::

    scripts/bench_env.sh
    nice -n 10 /tmp/bench-packing/bin/python benchmarks/bench_samplers.py

* HF transformers ``LengthGroupedSampler`` (``group_by_length=True``): fixed batch size, chosen as
  ``max_tokens // mean length`` so a batch holds the same real tokens on average.
* lhotse ``DynamicBucketingSampler`` on a CutSet of the same durations (its ``max_duration`` is
  the same padded budget: ``num_cuts * longest``), default 10 buckets and 64 buckets.
* multipack-style packing: no multipack sampler installs from the registry (axolotl is a whole
  trainer; lightbinpack and seqpacker need a compiler here), so the packed rows are compared with
  the L1 lower bound ``ceil(tokens / max_tokens)`` instead, which no packer can beat.

Planning = building one epoch's batches (packwise: ``set_epoch`` + ``len``; HF: ``iter`` makes the
index list; lhotse: time to the first batch).  Per-batch overhead = the rest of the epoch's
iteration divided by its batches (batches are consumed, not kept; lhotse's are kept, as its ids
are read back for the padding figure).  Medians of ``--repeats`` runs (lhotse: one run, it takes
minutes at 1M).
"""

from __future__ import annotations

import argparse
import statistics
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


def padded_stats(lengths: np.ndarray, batches: list) -> tuple[float, int, int]:
    """(padding fraction, batches, largest padded batch) of index batches."""
    slots = 0
    worst = 0
    for b in batches:
        if len(b):
            s = len(b) * int(lengths[b].max())
            slots += s
            worst = max(worst, s)
    return 1.0 - lengths.sum() / slots, len(batches), worst


def time_packwise(make, repeats: int):
    plans, per_batch = [], []
    s = make()
    s.set_epoch(0)
    len(s)  # warm the numba cache
    for epoch in range(1, repeats + 1):
        t = time.perf_counter()
        s.set_epoch(epoch)
        n = len(s)
        plans.append(time.perf_counter() - t)
        t = time.perf_counter()
        for _ in s:  # what a DataLoader's main loop does: take a batch, hand it on
            pass
        per_batch.append((time.perf_counter() - t) / n)
    return statistics.median(plans), statistics.median(per_batch), list(s), s


def time_hf(lengths: np.ndarray, batch_size: int, repeats: int):
    import torch
    from torch.utils.data import BatchSampler
    from transformers.trainer_pt_utils import LengthGroupedSampler

    plans, per_batch = [], []
    for epoch in range(repeats):
        torch.manual_seed(epoch)
        sampler = LengthGroupedSampler(batch_size, lengths=lengths.tolist())
        t = time.perf_counter()
        indices = list(iter(sampler))
        plans.append(time.perf_counter() - t)
        t = time.perf_counter()
        n = 0
        for _ in BatchSampler(indices, batch_size, drop_last=False):
            n += 1
        per_batch.append((time.perf_counter() - t) / n)
    return statistics.median(plans), statistics.median(per_batch), list(BatchSampler(indices, batch_size, drop_last=False))


def time_lhotse(lengths: np.ndarray, max_tokens: int, num_buckets: int):
    from lhotse import CutSet
    from lhotse.cut import MonoCut
    from lhotse.dataset import DynamicBucketingSampler

    cuts = CutSet.from_cuts(MonoCut(id=str(i), start=0.0, duration=float(d), channel=0) for i, d in enumerate(lengths.tolist()))
    sampler = DynamicBucketingSampler(cuts, max_duration=float(max_tokens), num_buckets=num_buckets, shuffle=True, seed=0)
    sampler.set_epoch(1)
    t = time.perf_counter()
    it = iter(sampler)
    first = next(it)
    plan = time.perf_counter() - t
    t = time.perf_counter()
    rest = list(it)
    per_batch = (time.perf_counter() - t) / max(len(rest), 1)
    batches = [np.fromiter((int(c.id) for c in b), np.int64) for b in [first, *rest]]
    return plan, per_batch, batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--max-tokens", type=int, default=16384)
    parser.add_argument("--max-len", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=8, help="world size for the DDP rows")
    parser.add_argument("--skip-lhotse", action="store_true")
    args = parser.parse_args()

    from packwise.samplers import BucketBatchSampler, PackedBatchSampler

    base = real_lengths()
    lengths = np.minimum(np.random.default_rng(0).choice(base, args.n, replace=True), args.max_len).astype(np.int64)
    budget = args.max_tokens
    print(
        f"{args.n:,} lengths bootstrapped from {base.shape[0]} real examples (alpaca+glaive+c4), "
        f"mean {lengths.mean():.0f}, p99 {np.percentile(lengths, 99):.0f}, max {lengths.max()}; "
        f"budget {budget} padded tokens per batch; medians of {args.repeats}"
    )
    rows = []

    def row(name, plan, per_batch, pad, nb, worst, note=""):
        rows.append((name, plan, per_batch, pad, nb, worst, note))

    for k in (16, 64, 128):
        plan, pb, batches, s = time_packwise(
            lambda k=k: BucketBatchSampler(lengths, max_tokens=budget, buckets=k, num_replicas=1, rank=0), args.repeats
        )
        pad, nb, worst = padded_stats(lengths, batches)
        assert abs(pad - s.stats().padding_fraction) < 1e-9
        row(f"packwise BucketBatchSampler ({k} buckets)", plan, pb, pad, nb, worst, "default" if k == 64 else "")

    batch_size = max(1, int(budget // lengths.mean()))
    plan, pb, batches = time_hf(lengths, batch_size, args.repeats)
    pad, nb, worst = padded_stats(lengths, batches)
    row(f"HF LengthGroupedSampler (bs={batch_size})", plan, pb, pad, nb, worst, "fixed batch size")

    if not args.skip_lhotse:
        for k in (10, 64):
            plan, pb, batches = time_lhotse(lengths, budget, k)
            pad, nb, worst = padded_stats(lengths, batches)
            row(f"lhotse DynamicBucketingSampler ({k} buckets)", plan, pb, pad, nb, worst, "1 run")

    plan, pb, batches, s = time_packwise(
        lambda: PackedBatchSampler(lengths, max_tokens=budget, num_replicas=1, rank=0), args.repeats
    )
    st = s.stats()
    l1 = -(-int(lengths.sum()) // budget)
    row("packwise PackedBatchSampler (bfd)", plan, pb, st.padding_fraction, st.batches, budget, f"L1 bound {l1} rows")
    plan, pb, batches, s = time_packwise(
        lambda: PackedBatchSampler(lengths, max_tokens=budget, algorithm="first_fit", num_replicas=1, rank=0), args.repeats
    )
    st = s.stats()
    row("packwise PackedBatchSampler (first_fit)", plan, pb, st.padding_fraction, st.batches, budget, "order-preserving")

    header = f"{'sampler':46} {'plan s':>8} {'us/batch':>9} {'padding':>8} {'batches':>8} {'max padded':>10}  note"
    print(header)
    print("-" * len(header))
    for name, plan, pb, pad, nb, worst, note in rows:
        print(f"{name:46} {plan:8.3f} {pb * 1e6:9.2f} {pad:8.2%} {nb:8d} {worst:10d}  {note}")

    bucket_best = min(r[3] for r in rows if not r[0].startswith("packwise"))
    ours = next(r for r in rows if r[0] == "packwise BucketBatchSampler (64 buckets)")
    print(f"\npadding vs best alternative: packwise (64 buckets) {ours[3]:.2%} vs {bucket_best:.2%} "
          f"(ratio {ours[3] / bucket_best:.2f})")

    print(f"\nDDP dealing, {args.replicas} ranks (plan for all ranks at once; every rank computes the same plan):")
    print(f"{'sampler':46} {'plan s':>8} {'batches/rank':>12} {'empty':>6} {'imbalance':>9} {'step imb.':>9}")
    for name, make in (
        ("BucketBatchSampler (tokens)", lambda: BucketBatchSampler(lengths, max_tokens=budget, num_replicas=args.replicas, rank=0)),
        ("PackedBatchSampler (tokens)", lambda: PackedBatchSampler(lengths, max_tokens=budget, num_replicas=args.replicas, rank=0)),
        (
            "PackedBatchSampler (tokens + sum l^2 / 4096)",
            lambda: PackedBatchSampler(lengths, max_tokens=budget, num_replicas=args.replicas, rank=0, attention_weight=1 / 4096),
        ),
    ):
        plan, _, _, s = time_packwise(make, args.repeats)
        st = s.stats()
        print(f"{name:46} {plan:8.3f} {st.batches_per_rank:12d} {st.empty_batches:6d} {st.imbalance:9.4f} {st.step_imbalance:9.4f}")


if __name__ == "__main__":
    main()
