"""Scoring throughput: ``packed_logprobs`` against HF padded batching, on real lengths, CPU.

What HF evaluation does by default is padded batches in input order (``DataCollatorWithPadding``,
batch 16); the strong baseline sorts by length first (then restores the order).  Both compute the
per-example loss from the logits exactly as ``packed_logprobs`` does, on the same random small
Llama (fp32, sdpa), on token sequences with the real lengths of ../shared/data (alpaca: every row;
c4: every row, cut at ``--cap`` 2048 tokens, the same cut for every method).

The padding bound: a padded method computes ``slots`` token positions for ``tokens`` real ones, so
no layout can beat it by more than ``slots / tokens`` (attention aside).  The floor is the forward
FLOPs of the real tokens only (linear layers + causal attention within each sequence), reported with
the time it takes at the FLOP rate of one dense 1024-token forward on this machine.

Run (project venv, from the repository root)::

    OMP_NUM_THREADS=2 PYTHONPATH=<worktree link> python benchmarks/bench_score.py [--rows N] [--repeats 3]

Timings are the minimum over ``--repeats`` interleaved runs (the machine is shared).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _lengths import real_lengths  # noqa: E402

BATCH = 16


def small_model(vocab: int):
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                                   attn_implementation="sdpa")  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()


def padded_losses(model, seqs: list[np.ndarray], order: np.ndarray) -> np.ndarray:
    """HF padded batching (right padding + attention_mask) over ``order``; losses in input order."""
    import torch

    out = np.zeros(len(seqs), np.float64)
    with torch.inference_mode():
        for b in range(0, len(order), BATCH):
            idx = order[b : b + BATCH]
            width = max(len(seqs[i]) for i in idx)
            ids = torch.zeros((len(idx), width), dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, : len(seqs[i])] = torch.from_numpy(seqs[i])
                mask[r, : len(seqs[i])] = 1
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
            lp = logits.gather(2, ids[:, 1:, None])[..., 0] - torch.logsumexp(logits, -1)
            keep = mask[:, 1:].bool()
            sums = torch.where(keep, lp, torch.zeros_like(lp)).sum(1).double()
            out[idx] = (-sums / keep.sum(1).clamp_min(1)).numpy()
    return out


def slots(lengths: np.ndarray, order: np.ndarray) -> int:
    x = lengths[order]
    return int(sum(len(x[i : i + BATCH]) * x[i : i + BATCH].max() for i in range(0, len(x), BATCH)))


def real_flops(model, lengths: np.ndarray) -> float:
    """Forward FLOPs of the real tokens: 2 x linear parameters per token + causal attention per sequence."""
    cfg = model.config
    linear = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 2 and "embed_tokens" not in n)
    attention = 2 * 2 * cfg.num_hidden_layers * cfg.hidden_size * float((lengths * (lengths + 1) / 2).sum())
    return 2.0 * linear * float(lengths.sum()) + attention


def dense_rate(model, vocab: int) -> float:
    """FLOP/s of one dense 1024-token forward (one sequence): the rate the floor is timed at."""
    import torch

    ids = torch.randint(0, vocab, (1, 1024))
    times = []
    with torch.inference_mode():
        model(input_ids=ids, use_cache=False)
        for _ in range(5):  # the fastest of 5: the machine is shared
            t = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            times.append(time.perf_counter() - t)
    return real_flops(model, np.array([1024])) / min(times)


def bench(name: str, rows: int | None, cap: int, max_tokens: int, repeats: int, vocab: int) -> dict:
    from packwise.packing import packed_logprobs

    lengths = np.minimum(real_lengths(name), cap)[:rows]
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, vocab, int(n)) for n in lengths]
    model = small_model(vocab)
    input_order = np.arange(len(seqs))
    by_length = np.argsort(lengths, kind="stable")
    runs = {
        "HF padded, input order": lambda: padded_losses(model, seqs, input_order),
        "HF padded, sorted by length": lambda: padded_losses(model, seqs, by_length),
        f"packed_logprobs (bfd, {max_tokens})": lambda: packed_logprobs(model, seqs, max_tokens, device="cpu").loss,
    }
    packed_logprobs(model, seqs[:32], max_tokens, device="cpu")  # warm-up (attention registration, allocator)
    padded_losses(model, seqs[:32], np.arange(32))
    best = {k: float("inf") for k in runs}
    results = {}
    for _ in range(repeats):
        for k, fn in runs.items():
            t = time.perf_counter()
            results[k] = np.asarray(fn(), np.float64)
            best[k] = min(best[k], time.perf_counter() - t)
    ref = results["HF padded, input order"]
    tokens = int(lengths.sum())
    floor = real_flops(model, lengths)
    return {
        "name": name,
        "rows": len(seqs),
        "tokens": tokens,
        "pad_input": 1 - tokens / slots(lengths, input_order),
        "pad_sorted": 1 - tokens / slots(lengths, by_length),
        "times": best,
        "max_loss_diff": {k: float(np.abs(v - ref).max()) for k, v in results.items()},
        "floor_gflop": floor / 1e9,
        "floor_s": floor / dense_rate(model, vocab),
    }


def render(r: dict) -> str:
    keys = list(r["times"])
    base_in, base_sorted = r["times"][keys[0]], r["times"][keys[1]]
    bound_in, bound_sorted = 1 / (1 - r["pad_input"]), 1 / (1 - r["pad_sorted"])
    lines = [
        f"### {r['name']}: {r['rows']} rows, {r['tokens']:,} tokens; batch {BATCH} padding: input order "
        f"{100 * r['pad_input']:.1f}% (bound {bound_in:.2f}x), sorted {100 * r['pad_sorted']:.1f}% (bound {bound_sorted:.2f}x)",
        "",
        "| method | seconds | tokens/s | vs input order | vs sorted | max |loss diff| vs input order |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k in keys:
        t = r["times"][k]
        lines.append(f"| {k} | {t:.2f} | {r['tokens'] / t:,.0f} | {base_in / t:.2f}x | {base_sorted / t:.2f}x | {r['max_loss_diff'][k]:.1e} |")
    lines.append(f"| floor: {r['floor_gflop']:.1f} GFLOP of real tokens at the dense 1024-token rate | {r['floor_s']:.2f} | "
                 f"{r['tokens'] / r['floor_s']:,.0f} | {base_in / r['floor_s']:.2f}x | {base_sorted / r['floor_s']:.2f}x | |")  # fmt: skip
    packed = r["times"][keys[2]]
    lines += ["", f"packed vs input order: {base_in / packed:.2f}x = {100 * base_in / packed / bound_in:.0f}% of the padding bound; "
              f"vs sorted: {base_sorted / packed:.2f}x"]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="alpaca,c4")
    ap.add_argument("--rows", type=int, default=None, help="Only the first N rows of each dataset (default: all).")
    ap.add_argument("--cap", type=int, default=2048, help="Cut sequences at this many tokens (every method alike).")
    ap.add_argument("--max-tokens", type=int, default=4096, help="packed_logprobs row size.")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=4096)
    args = ap.parse_args()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; small Llama: hidden 128, 2 layers, vocab {args.vocab}, fp32, sdpa\n")
    for name in args.datasets.split(","):
        print(render(bench(name, args.rows, args.cap, args.max_tokens, args.repeats, args.vocab)), "\n", flush=True)


if __name__ == "__main__":
    main()
