"""Benchmark ``PackedCollator``: collation speed against HF ``DataCollatorWithFlattening``, and the
real-token training throughput that packing buys over padding.

Why: a packed batch must cost no more to build than HF's flattening collator for the same outputs,
and must make training faster where it counts (real tokens per second).  Two parts, one run:

1. Collation: real shared-data texts (alpaca, ag_news) tokenized with a byte-level BPE trained on
   the shared corpora, shuffled (seed 0) and cut into batches of at most ``--tokens`` tokens
   (16k), every example a Python list (what ``datasets`` yields).  Per layout, packwise and HF
   (with the flags that give the same keys) collate the same batches; HF has no 4-D mask or
   ``BlockMask``, so for ``sdpa``/``flex`` its row adds the mask the usual way from HF's
   ``seq_idx`` (a torch broadcast comparison; torch's ``create_block_mask`` with a document
   mask_mod, as torchtune does).  Median over ``--repeats`` runs of the mean time per batch.
2. Training: the test transformer of ``tests/test_collate_equivalence.py`` (reused, not copied),
   AdamW steps on CPU over batches of ``--batch`` alpaca examples, padded to the longest (causal +
   key-padding mask) versus the same examples packed: padding-free with varlen attention split by
   ``cu_seq_lens`` and fixed rows with the 4-D block mask.  Real (non-pad) tokens per second,
   median over repeats.

3. HF ``Trainer``: a random tiny Llama (hidden 128, 2 layers, SDPA) trained for one epoch (or
   ``--hf-steps`` steps) on the same ``--hf-examples`` alpaca examples (a seeded subset, 320) by (a) ``PackwiseTrainer`` with ``PackedBatchSampler`` batches of
   ``--batch`` x the mean length tokens, (b) ``Trainer`` + ``DataCollatorWithFlattening`` (random
   batches of ``--batch`` examples, one padding-free row) and (c) ``Trainer`` padded to the longest
   with ``train_sampling_strategy="group_by_length"`` (which sorts by length, so only a whole
   epoch compares like with like).  Real tokens per second over the whole ``train()`` call, median
   of ``--train-repeats`` runs, variants interleaved; the load average is printed (shared machine).

Run from the repository root (the project venv has transformers as a test extra)::

    nice -n 10 .venv/bin/python benchmarks/bench_collate.py --quick     # ~1 min
    nice -n 10 .venv/bin/python benchmarks/bench_collate.py             # full
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from importlib import metadata

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from _lengths import texts  # noqa: E402

from packwise.packing import PackedCollator, packed_loss, token_losses  # noqa: E402
from packwise.pipeline.tokenizer import train_byte_bpe  # noqa: E402

VOCAB = 4096


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer batches and steps (smoke run)")
    ap.add_argument("--tokens", type=int, default=16384, help="tokens per collation batch (default 16384)")
    ap.add_argument("--batches", type=int, default=20, help="collation batches per dataset")
    ap.add_argument("--repeats", type=int, default=5, help="runs per measurement; the median is reported")
    ap.add_argument("--batch", type=int, default=32, help="examples per training step")
    ap.add_argument("--steps", type=int, default=4, help="timed training steps per run")
    ap.add_argument("--train-repeats", type=int, default=3, help="training runs per variant; the median is reported")
    ap.add_argument("--hf-steps", type=int, default=None, help="HF Trainer steps per run (default: one epoch)")
    ap.add_argument("--hf-examples", type=int, default=320, help="alpaca examples (seeded subset) for the HF Trainer epoch")
    ap.add_argument("--only-infobatch", action="store_true", help="only the HF Trainer rows of packwise and InfoBatch (budgeted and not)")
    ap.add_argument("--rows-capacity", type=int, default=1024, help="row length of the packed-rows training variant")
    args = ap.parse_args(argv)
    if args.quick:
        args.batches, args.repeats, args.steps, args.train_repeats, args.hf_steps = 6, 3, 2, 2, 8
    return args


def _tokenize() -> tuple[object, dict[str, list[list[int]]]]:
    tok = train_byte_bpe(texts("c4") + texts("alpaca"), vocab_size=VOCAB)
    out = {}
    for name in ("alpaca", "ag_news"):
        out[name] = [e.ids for e in tok.encode_batch(texts(name), add_special_tokens=False) if len(e.ids) >= 2]
    return tok, out


def _token_batches(seqs: list[list[int]], budget: int, count: int, seed: int = 0) -> list[list[dict]]:
    order = np.random.default_rng(seed).permutation(len(seqs))
    batches, cur, used = [], [], 0
    for i in np.concatenate([order] * 20):  # cycle the (small) dataset until we have `count` batches
        s = seqs[i][:budget]
        if used + len(s) > budget:
            batches.append(cur)
            cur, used = [], 0
            if len(batches) == count:
                break
        cur.append({"input_ids": list(s)})
        used += len(s)
    return batches


def _time_per_batch(fn, batches, repeats: int) -> float:
    fn(batches[0])  # warm-up (JIT, imports)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            fn(b)
        runs.append((time.perf_counter() - t0) / len(batches))
    return statistics.median(runs)


def _hf_collators():
    from transformers import DataCollatorWithFlattening

    return {
        "position_ids": DataCollatorWithFlattening(return_tensors="pt"),
        "flash": DataCollatorWithFlattening(return_tensors="pt", return_flash_attn_kwargs=True),
        "seq_idx": DataCollatorWithFlattening(return_tensors="pt", return_seq_idx=True),
    }


def _hf_with_mask(kind: str):
    import torch
    from torch.nn.attention.flex_attention import create_block_mask

    from packwise.packing import DocumentCausalMask

    base = _hf_collators()["seq_idx"]

    def collate(examples):
        batch = base(examples)
        seq = batch["seq_idx"]
        if kind == "sdpa":  # the usual torch broadcast (HF's sdpa_mask does the same comparisons)
            width = seq.shape[1]
            same = seq[:, :, None] == seq[:, None, :]
            batch["attention_mask"] = (same & torch.ones(width, width, dtype=torch.bool).tril()).unsqueeze(1)
        else:
            width = seq.shape[1]
            batch["attention_mask"] = create_block_mask(DocumentCausalMask(seq), 1, None, width, width, device="cpu")
        return batch

    return collate


def bench_collation(args, data) -> list[str]:
    hf = _hf_collators()
    lines = [
        f"### Collation, batches of <= {args.tokens} tokens (ms per batch, median of {args.repeats} runs of {args.batches} batches)",
        "",
        "| data | items/batch | layout | packwise ms | HF ms | HF / packwise |",
        "|---|---|---|---|---|---|",
    ]
    worst = float("inf")
    for name, seqs in data.items():
        batches = _token_batches(seqs, args.tokens, args.batches)
        per_batch = statistics.mean(len(b) for b in batches)
        for layout in ("position_ids", "flash", "seq_idx", "sdpa", "flex"):
            ours = PackedCollator(layout=layout)
            # a dense [1, 1, T, T] mask is T**2 bytes (256 MB at 16k): fewer batches for the masks
            some = batches if layout in hf else batches[:3]
            reps = args.repeats if layout in hf else min(args.repeats, 3)
            t_ours = _time_per_batch(ours, some, reps)
            if layout in hf:
                t_hf = _time_per_batch(hf[layout], batches, args.repeats)
                label = "DataCollatorWithFlattening"
            elif layout == "sdpa":
                t_hf = _time_per_batch(_hf_with_mask("sdpa"), some, reps)
                label = "HF + dense mask"
            else:
                # torch's create_block_mask evaluates the mask_mod densely (seconds at 16k): 2 batches, 1 run
                t_hf = _time_per_batch(_hf_with_mask("flex"), batches[1:3], 1)
                label = "HF + create_block_mask"
            worst = min(worst, t_hf / t_ours)
            lines.append(
                f"| {name} | {per_batch:.0f} | {layout} (vs {label}) | {1e3 * t_ours:.3f} | {1e3 * t_hf:.3f} | {t_hf / t_ours:.1f}x |"
            )
        rows = PackedCollator(layout=("flash", "seq_idx"), shape="rows", capacity=2048)
        t_rows = _time_per_batch(rows, batches, args.repeats)
        lines.append(f"| {name} | {per_batch:.0f} | rows cap 2048, flash+seq_idx (no HF equivalent) | {1e3 * t_rows:.3f} | - | - |")
    lines += ["", f"Slowest packwise/HF ratio: HF takes {worst:.1f}x packwise's time (target >= 1.0x).", ""]
    return lines


def _padded(examples):
    """Pad to the longest example: the unpacked baseline."""
    import torch

    longest = max(len(e["input_ids"]) for e in examples)
    ids = torch.zeros(len(examples), longest, dtype=torch.int64)
    labels = torch.full((len(examples), longest), -100, dtype=torch.int64)
    valid = torch.zeros(len(examples), longest, dtype=torch.bool)
    for r, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[r, :n] = torch.tensor(e["input_ids"])
        labels[r, 1:n] = ids[r, 1:n]
        valid[r, :n] = True
    mask = (torch.ones(longest, longest, dtype=torch.bool).tril() & valid[:, None, :])[:, None]
    mask |= torch.eye(longest, dtype=torch.bool)  # a pad query attends to itself: no empty rows
    return {"input_ids": ids, "labels": labels, "position_ids": torch.arange(longest).expand(len(examples), -1), "attention_mask": mask}


def bench_training(args, seqs) -> list[str]:
    import torch
    from test_collate_equivalence import TinyCausalLM, attend_for

    torch.manual_seed(0)
    order = np.random.default_rng(1).permutation(len(seqs))
    steps_total = 2 + args.steps
    groups = [[{"input_ids": seqs[i]} for i in order[s * args.batch : (s + 1) * args.batch]] for s in range(steps_total)]
    variants = {
        "padded to longest (SDPA, causal + key padding mask)": (_padded, "sdpa"),
        "packed padding-free (varlen by cu_seq_lens)": (PackedCollator(layout="flash"), "flash"),
        f"packed rows of {args.rows_capacity} (SDPA, 4-D block mask)": (
            PackedCollator(layout="sdpa", shape="rows", capacity=args.rows_capacity),
            "sdpa",
        ),
    }
    real = sum(len(e["input_ids"]) for g in groups[2:] for e in g)
    prepared = {label: ([collate(g) for g in groups], layout) for label, (collate, layout) in variants.items()}
    runs: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(args.train_repeats):  # variants interleaved, so load drift hits them alike
        for label, (batches, layout) in prepared.items():
            torch.manual_seed(0)
            model = TinyCausalLM(dim=128, heads=4, layers=2)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            for k, b in enumerate(batches):
                if k == 2:
                    t0 = time.perf_counter()
                logits = model(b["input_ids"], b["position_ids"], attend_for(layout, b))
                loss = packed_loss(token_losses(logits, b["labels"]), b)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            runs[label].append(real / (time.perf_counter() - t0))
    results = {
        label: (statistics.median(runs[label]), sum(b["input_ids"].numel() for b in batches[2:]))
        for label, (batches, _) in prepared.items()
    }
    base = results[next(iter(variants))][0]
    lines = [
        f"### CPU training throughput, test transformer (dim 128, 2 layers, vocab {VOCAB}), {args.batch} alpaca examples/step, "
        f"{args.steps} timed steps, median of {args.train_repeats} runs",
        "",
        "| variant | real tokens/s | token slots | padding | vs padded |",
        "|---|---|---|---|---|",
    ]
    for label, (tps, slots) in results.items():
        lines.append(f"| {label} | {tps:,.0f} | {slots:,} | {1 - real / slots:.1%} | {tps / base:.2f}x |")
    best = max(tps for tps, _ in list(results.values())[1:])
    lines += ["", f"Best packed / padded real-token throughput: {best / base:.2f}x (target >= 1.5x).", ""]
    return lines


class _Counting:
    """Wrap a collator: record the real (example) tokens of every batch it builds."""

    def __init__(self, collate):
        self.collate, self.tokens = collate, []
        self.layout = getattr(collate, "layout", ())  # PackwiseTrainer checks a policy's collator for seq_idx

    def __call__(self, examples):
        self.tokens.append(sum(len(e["input_ids"]) for e in examples))
        return self.collate(examples)


def _pad_lm(examples):
    """Pad to the longest: 2-D attention_mask, labels -100 on padding (what a padded HF run feeds)."""
    import torch

    longest = max(len(e["input_ids"]) for e in examples)
    ids = torch.zeros(len(examples), longest, dtype=torch.int64)
    mask = torch.zeros(len(examples), longest, dtype=torch.int64)
    for r, e in enumerate(examples):
        ids[r, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
        mask[r, : len(e["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def bench_hf_trainer(args, seqs) -> list[str]:
    import tempfile

    import torch
    import transformers
    from transformers import DataCollatorWithFlattening, Trainer, TrainerCallback

    from packwise.integrations.hf import PackwiseTrainer
    from packwise.samplers import PackedBatchSampler, PruningSampler
    from packwise.selection import InfoBatch

    pick = np.random.default_rng(2).permutation(len(seqs))[: args.hf_examples]
    data = [{"input_ids": list(seqs[i][:512])} for i in np.sort(pick)]
    lengths = np.array([len(d["input_ids"]) for d in data], np.int64)
    budget = int(args.batch * lengths.mean())
    rows = max(round(budget / 512), 1)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)  # fmt: skip

    class Clock(TrainerCallback):
        def __init__(self):
            self.ends, self.start = [], None

        def on_train_begin(self, a, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            self.ends.append(time.perf_counter())

    def run(kind):
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
        clock = Clock()
        with tempfile.TemporaryDirectory() as out:
            targs = transformers.TrainingArguments(
                out, max_steps=args.hf_steps or -1, num_train_epochs=1, per_device_train_batch_size=args.batch, learning_rate=1e-3, report_to=[],
                use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0,
                train_sampling_strategy="group_by_length" if kind == "padded" else "random",
            )  # fmt: skip
            if kind.startswith("infobatch"):  # the same policy, unbudgeted (batch_size examples) or packed rows
                policy = InfoBatch(len(data), num_epochs=1, prune_ratio=0.5, seed=0)
                if kind == "infobatch":
                    collate = _Counting(PackedCollator())
                    sampler = PruningSampler(policy, seed=0)
                else:
                    collate = _Counting(PackedCollator(shape="rows", capacity=512))
                    sampler = PruningSampler(policy, lengths=lengths, max_tokens=512, rows_per_batch=rows, seed=0)
                PackwiseTrainer(model, targs, train_dataset=data, sampler=sampler, collator=collate, callbacks=[clock]).train()
            elif kind.startswith("packwise"):
                if kind == "packwise":  # rows of the longest length: attention cost per row, not per batch
                    collate = _Counting(PackedCollator(shape="rows", capacity=512))
                    sampler = PackedBatchSampler(lengths, max_tokens=512, rows_per_batch=rows, seed=0)
                else:
                    collate = _Counting(PackedCollator())
                    sampler = PackedBatchSampler(lengths, max_tokens=budget, seed=0)
                PackwiseTrainer(model, targs, train_dataset=data, sampler=sampler, collator=collate, callbacks=[clock]).train()
            else:
                collate = _Counting(DataCollatorWithFlattening(return_tensors="pt") if kind == "flatten" else _pad_lm)
                Trainer(model, targs, train_dataset=data, data_collator=collate, callbacks=[clock]).train()
        steps = len(clock.ends)
        seconds = clock.ends[-1] - clock.start
        return sum(collate.tokens[:steps]) / seconds, steps, seconds / steps

    labels = {
        "packwise": f"PackwiseTrainer, PackedBatchSampler, {rows} rows of 512 tokens/batch",
        "packwise_flat": f"PackwiseTrainer, PackedBatchSampler, one padding-free row of {budget} tokens",
        "flatten": f"Trainer + DataCollatorWithFlattening ({args.batch} examples/batch)",
        "padded": f"Trainer, padded, group_by_length ({args.batch} examples/batch)",
        "infobatch": f"PackwiseTrainer, InfoBatch PruningSampler, {args.batch} kept examples/step (one padding-free row)",
        "infobatch_budget": f"PackwiseTrainer, InfoBatch PruningSampler(max_tokens=512, rows_per_batch={rows})",
    }
    if args.only_infobatch:
        labels = {k: v for k, v in labels.items() if k in ("packwise", "infobatch", "infobatch_budget")}
    load0 = os.getloadavg()
    runs: dict[str, list[float]] = {k: [] for k in labels}
    per_step: dict[str, list[float]] = {k: [] for k in labels}
    steps: dict[str, int] = {}
    for _ in range(args.train_repeats):
        for kind in labels:
            value, steps[kind], sec = run(kind)
            runs[kind].append(value)
            per_step[kind].append(sec)
    load1 = os.getloadavg()
    tps = {k: statistics.median(v) for k, v in runs.items()}
    sps = {k: statistics.median(v) for k, v in per_step.items()}
    lines = [
        f"### HF Trainer, tiny Llama (hidden 128, 2 layers, SDPA, vocab {VOCAB}), "
        f"{f'{args.hf_steps} steps' if args.hf_steps else 'one epoch'} of {len(data)} alpaca examples, "
        f"whole train() timed, median of {args.train_repeats} runs",
        "",
        "| variant | steps | s/step | real tokens/s | vs packwise |",
        "|---|---|---|---|---|",
    ]
    for kind, label in labels.items():
        lines.append(f"| {label} | {steps[kind]} | {sps[kind]:.3f} | {tps[kind]:,.0f} | {tps[kind] / tps['packwise']:.2f}x |")
    lines.append("")
    if args.only_infobatch:
        return lines + [f"Load average (1, 5, 15 min) before {tuple(round(x, 2) for x in load0)}, after {tuple(round(x, 2) for x in load1)}.", ""]
    lines += [
        f"packwise rows / DataCollatorWithFlattening: {tps['packwise'] / tps['flatten']:.2f}x; "
        f"packwise rows / padded group_by_length: {tps['packwise'] / tps['padded']:.2f}x; "
        f"packwise padding-free / DataCollatorWithFlattening: {tps['packwise_flat'] / tps['flatten']:.2f}x.",
        "On CPU SDPA a padding-free row is one masked T x T attention (quadratic in the whole batch); varlen "
        "kernels (flash_attention_2) make it linear, rows of the longest length are the CPU/SDPA choice.",
        f"Load average (1, 5, 15 min) before {tuple(round(x, 2) for x in load0)}, after {tuple(round(x, 2) for x in load1)}.",
        "",
    ]
    return lines


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    _, data = _tokenize()
    versions = ", ".join(f"{p}=={metadata.version(p)}" for p in ("packwise", "torch", "transformers", "numba"))
    header = [
        "## bench_collate",
        "",
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, {versions}",
        "",
    ]
    if args.only_infobatch:  # the pruning rows alone (issue 23 item 4): budgeted vs unbudgeted seconds per step
        print("\n".join(header + bench_hf_trainer(args, data["alpaca"])), flush=True)
        return
    print("\n".join(header + bench_collation(args, data)), flush=True)
    print("\n".join(bench_training(args, data["alpaca"])), flush=True)
    print("\n".join(bench_hf_trainer(args, data["alpaca"])), flush=True)


if __name__ == "__main__":
    main()
