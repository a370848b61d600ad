"""Training on a mixture of the five real sources of ../shared/data: natural proportions, uniform
(stratified), temperature 0.3 and online ODM, on a tiny causal LM (CPU); plus the mixture's overhead.

Data: c4, alpaca, glaive, wiki and ag_news, tokenized with a byte-level BPE (vocab ``--vocab``)
trained on them, cut into pieces of at most ``--seq`` tokens; 5% of each source's pieces (at most
40) are held out for validation.  Every arm trains the same random 2-layer Llama (hidden 64) for the
same number of steps of ``--rows`` packed rows of ``--seq`` tokens (``MixtureSampler`` with
``rows_per_batch``, ``PackedCollator(shape="rows")``, token-mean loss, AdamW), so all arms see
(nearly) equal tokens; only the proportions differ:

* ``natural``: proportions of the sources' token counts (``weights=None``);
* ``uniform``: 1/5 each (stratified);
* ``temp0.3``: ``size ** 0.3`` (``temperature=0.3``);
* ``odm``: ``ODM(5)`` (EXP3, the paper's exploration schedule), updated every ``--update-every``
  steps from the per-source training loss that a ``SourceLossTracker`` reduces once per interval.

Reported (medians of ``--seeds`` seeds): each source's validation loss after the last step, their
unweighted mean, and the first evaluation step at which an arm's mean validation loss reaches the
natural arm's final mean ("steps to natural").  Overhead: the time spent getting the next batch
from the sampler plus the tracker's work, per step, as a share of the step time, for
``MixtureSampler`` + ODM + tracker against ``PackedBatchSampler`` on the same pieces; and the
collectives per update interval of a 2-process gloo run (sampler + tracker, no model).

Run (project venv, from the repository root; a few minutes on 2 cores)::

    OMP_NUM_THREADS=1 PYTHONPATH=<worktree link> python benchmarks/bench_mixture.py [--steps 120] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _lengths import shared_data_dir, texts  # noqa: E402

SOURCES = ("c4", "alpaca", "glaive", "wiki", "ag_news")
NOT_FOR_MODEL = ("labels", "loss_weight", "example_index", "example_ids")
ARMS = ("natural", "uniform", "temp0.3", "odm")
CLOCKS = ("wall", "cpu")


def source_texts(name: str) -> list[str]:
    """The texts of one shared source (wiki: one article per line)."""
    if name == "wiki":
        with open(shared_data_dir() / "wiki_demo.txt", encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    return texts(name)


def pieces(seq: int, vocab: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Token pieces of every source (``<= seq`` tokens, >= 8), their source ids and a held-out mask."""
    from packwise.pipeline.tokenizer import train_byte_bpe

    corpus = {name: source_texts(name) for name in SOURCES}
    tok = train_byte_bpe([t for name in SOURCES for t in corpus[name]], vocab_size=vocab)
    ids, groups, held = [], [], []
    for s, name in enumerate(SOURCES):
        mine = []
        for enc in tok.encode_batch(corpus[name], add_special_tokens=False):
            arr = np.asarray(enc.ids, np.int64)
            mine += [arr[i : i + seq] for i in range(0, arr.shape[0], seq) if arr[i : i + seq].shape[0] >= 8]
        order = np.random.default_rng(s).permutation(len(mine))
        val = set(order[: min(40, len(mine) // 20)].tolist())
        ids += mine
        groups += [s] * len(mine)
        held += [i in val for i in range(len(mine))]
    return ids, np.asarray(groups, np.int64), np.asarray(held, bool)


def tiny_model(vocab: int, seq: int, seed: int):
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=seq)  # fmt: skip
    return transformers.LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)


def forward_losses(model, batch):
    """Per-token losses of a packed batch (the model sees no labels)."""
    from packwise.packing import token_losses

    out = model(**{k: v for k, v in batch.items() if k not in NOT_FOR_MODEL})
    return token_losses(out.logits, batch["labels"])


def collator(seq: int):
    from packwise.packing import PackedCollator

    return PackedCollator(shape="rows", capacity=seq)


def validate(model, val: list[np.ndarray], val_groups: np.ndarray, seq: int, rows: int) -> np.ndarray:
    """Token-mean validation loss of every source."""
    import torch

    from packwise.packing import example_losses, pack

    collate = collator(seq)
    p = pack(np.array([len(x) for x in val]), seq)
    loss_sum, tokens = np.zeros(len(SOURCES)), np.zeros(len(SOURCES))
    model.eval()
    with torch.inference_mode():
        for first in range(0, p.num_bins, rows):
            idx = np.concatenate([p.bin(b) for b in range(first, min(first + rows, p.num_bins))])
            batch = collate([{"input_ids": val[i]} for i in idx])
            loss, n = example_losses(forward_losses(model, batch), batch)
            np.add.at(loss_sum, val_groups[idx], (loss * n).double().numpy())
            np.add.at(tokens, val_groups[idx], n.double().numpy())
    model.train()
    return loss_sum / tokens


def make_sampler(arm: str, lengths, groups, args, seed: int):
    from packwise.samplers import PackedBatchSampler
    from packwise.samplers import MixtureSampler
    from packwise.selection import ODM

    common = dict(max_tokens=args.seq, rows_per_batch=args.rows, names=list(SOURCES), window=args.update_every,
                  seed=seed, num_replicas=1, rank=0, tokens_per_epoch=args.steps * args.rows * args.seq)  # fmt: skip
    if arm == "packed":
        return PackedBatchSampler(lengths, max_tokens=args.seq, rows_per_batch=args.rows, seed=seed, num_replicas=1, rank=0)
    if arm == "natural":
        return MixtureSampler(lengths, groups, None, **common)
    if arm == "uniform":
        return MixtureSampler(lengths, groups, {n: 1.0 for n in SOURCES}, **common)
    if arm == "temp0.3":
        return MixtureSampler(lengths, groups, None, temperature=0.3, **common)
    return MixtureSampler(lengths, groups, None, policy=ODM(len(SOURCES)), update_every=args.update_every, **common)


def train(arm: str, data, args, seed: int) -> dict:
    """One run: the validation curve every ``--eval-every`` steps and the tokens trained."""
    ids, groups, held = data
    train_idx = np.flatnonzero(~held)
    lengths = np.array([len(ids[i]) for i in train_idx])
    val = [ids[i] for i in np.flatnonzero(held)]
    st = _arm_state(arm, lengths, groups[train_idx], args, seed)
    collate = collator(args.seq)
    curve, tokens = [], 0
    for step in range(args.steps):
        tokens += _timed_step(st, ids, train_idx, collate)
        if (step + 1) % args.eval_every == 0:
            curve.append(validate(st["model"], val, groups[held], args.seq, args.rows).tolist())
    return {"curve": curve, "tokens": tokens}


def _arm_state(arm: str, lengths, groups, args, seed: int) -> dict:
    """One overhead arm: its sampler, tracker (mixture only), and its own copy of the same model."""
    import torch

    from packwise.selection import SourceLossTracker

    sampler = make_sampler(arm, lengths, groups, args, seed)
    torch.manual_seed(seed)
    model = tiny_model(args.vocab, args.seq, seed)
    tracker = SourceLossTracker(sampler.policy, len(SOURCES), sampler.update_every) if hasattr(sampler, "sources_of") else None
    return {"sampler": sampler, "tracker": tracker, "model": model, "batches": iter(sampler),
            "opt": torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0),
            "times": {clock: {"feed": [], "track": [], "step": []} for clock in CLOCKS}}  # fmt: skip


def _timed_step(st: dict, ids, train_idx, collate) -> int:
    """One training step of an arm; records the sampler + tracker time and the whole step's time,
    returns the supervised tokens trained."""
    from packwise.packing import packed_loss

    sampler, tracker = st["sampler"], st["tracker"]
    t0 = _now()
    batch_ids = next(st["batches"], None)
    if batch_ids is None:
        sampler.set_epoch(sampler.epoch + 1)
        st["batches"] = iter(sampler)
        batch_ids = next(st["batches"])
    t1 = _now()
    batch = collate([{"input_ids": ids[train_idx[i]]} for i in batch_ids])
    tok = forward_losses(st["model"], batch)
    st["opt"].zero_grad()
    packed_loss(tok, batch).backward()
    st["opt"].step()
    t2 = _now()
    if tracker is not None:
        tracker.add_packed(tok, batch, sampler.sources_of(batch_ids))
        tracker.step()
    t3 = _now()
    for c, clock in enumerate(CLOCKS):
        times = st["times"][clock]
        times["feed"].append((t1[c] - t0[c]) + (t3[c] - t2[c]))
        times["track"].append(t3[c] - t2[c])
        times["step"].append(t3[c] - t0[c])
    return int((batch["labels"] != -100).sum())


def overhead(data, args, runs: int) -> dict:
    """PackedBatchSampler against MixtureSampler + ODM + tracker, same model and step, the arms
    interleaved step by step (who goes first alternates) so machine load hits both alike.  Per run:
    the mean sampler + tracker time per step over the steps after the first window (a window is
    planned every ``--update-every`` steps, so a per-step median would miss it) and the median step
    time; reported as medians over ``runs`` runs."""
    ids, groups, held = data
    train_idx = np.flatnonzero(~held)
    lengths = np.array([len(ids[i]) for i in train_idx])
    collate = collator(args.seq)
    out = {clock: {"packed": [], "odm": [], "track": [], "step": []} for clock in CLOCKS}
    for run in range(runs):
        arms = {arm: _arm_state(arm, lengths, groups[train_idx], args, run) for arm in ("packed", "odm")}
        for step in range(args.overhead_steps):
            for arm in (("packed", "odm") if step % 2 == 0 else ("odm", "packed")):
                _timed_step(arms[arm], ids, train_idx, collate)
        skip = max(2, args.update_every)
        for clock, o in out.items():
            times = {arm: st["times"][clock] for arm, st in arms.items()}
            for arm in arms:
                o[arm].append(float(np.mean(times[arm]["feed"][skip:])))
            o["track"].append(float(np.mean(times["odm"]["track"][skip:])))
            o["step"].append(float(np.median(times["packed"]["step"][skip:] + times["odm"]["step"][skip:])))
    return {clock: _medians(o, runs) for clock, o in out.items()}


def _medians(out: dict, runs: int) -> dict:
    """One clock's medians over the runs, with the mixture's extra time and its share of the step."""
    med = {k: float(np.median(v)) for k, v in out.items()}
    med["extra"] = float(np.median(np.subtract(out["odm"], out["packed"])))
    med["share"] = float(np.median(np.subtract(out["odm"], out["packed"]) / np.asarray(out["step"])))
    med["runs"] = runs
    return med


def _now() -> tuple[float, float]:
    """Wall time, and this thread's CPU time (torch runs on this one thread: the load-robust clock)."""
    return time.perf_counter(), time.thread_time()


def _collective_worker(rank: int, port: int, out: str, data_path: str, args_json: str) -> None:
    import torch
    import torch.distributed as dist

    from packwise.samplers import MixtureSampler
    from packwise.selection import ODM, SourceLossTracker, count_all_reduce

    a = json.loads(args_json)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    d = np.load(data_path)
    sampler = MixtureSampler(d["lengths"], d["groups"], None, a["seq"], rows_per_batch=a["rows"], policy=ODM(len(SOURCES)),
                             update_every=a["update_every"], window=a["update_every"], num_replicas=2, rank=rank,
                             tokens_per_epoch=a["steps"] * a["rows"] * a["seq"] * 2)  # fmt: skip
    tracker = SourceLossTracker(sampler.policy, len(SOURCES), sampler.update_every)
    rng = np.random.default_rng(rank)
    steps = 0
    with count_all_reduce() as calls:
        for batch_ids in sampler:
            n = len(batch_ids)
            tracker.add(torch.from_numpy(rng.random(n) + 2.0), sampler.sources_of(batch_ids), torch.full((n,), 50))
            tracker.step()
            steps += 1
    Path(out, f"rank{rank}.json").write_text(json.dumps({"calls": len(calls), "steps": steps, "intervals": tracker.intervals_observed}))
    dist.barrier()
    os._exit(0)


def collectives(data, args, tmp: Path) -> dict:
    """All-reduce calls per update interval of a 2-process gloo run (sampler + tracker only)."""
    import torch.multiprocessing as mp

    ids, groups, held = data
    lengths = np.array([len(x) for x in ids])
    np.savez(tmp / "lengths.npz", lengths=lengths, groups=groups)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    a = json.dumps({"seq": args.seq, "rows": args.rows, "update_every": args.update_every, "steps": args.steps})
    mp.spawn(_collective_worker, args=(port, str(tmp), str(tmp / "lengths.npz"), a), nprocs=2, join=True)
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(2)]


def steps_to(curve: list[list[float]], target: float, every: int) -> int | None:
    means = [float(np.mean(c)) for c in curve]
    hit = [i for i, m in enumerate(means) if m <= target]
    return (hit[0] + 1) * every if hit else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--update-every", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--overhead-steps", type=int, default=100)
    ap.add_argument("--overhead-runs", type=int, default=3)
    ap.add_argument("--overhead-seq", default="64,256", help="row lengths of the overhead runs (comma-separated)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_mixture.md"))
    args = ap.parse_args()
    import tempfile

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t_start = time.perf_counter()
    data = pieces(args.seq, args.vocab)
    ids, groups, held = data
    tok_per_source = np.bincount(groups[~held], weights=[len(ids[i]) for i in np.flatnonzero(~held)], minlength=len(SOURCES))
    runs = {arm: [train(arm, data, args, seed) for seed in range(args.seeds)] for arm in ARMS}
    over = {}
    for seq in [int(x) for x in args.overhead_seq.split(",")]:
        cfg = argparse.Namespace(**{**vars(args), "seq": seq})
        over[seq] = overhead(data if seq == args.seq else pieces(seq, args.vocab), cfg, args.overhead_runs)
    with tempfile.TemporaryDirectory() as tmp:
        coll = collectives(data, args, Path(tmp))
    total = time.perf_counter() - t_start

    natural_final = float(np.median([np.mean(r["curve"][-1]) for r in runs["natural"]]))
    lines = [
        "# bench_mixture: training on a mixture of the five shared sources",
        "",
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')} python benchmarks/bench_mixture.py "
        f"--steps {args.steps} --seeds {args.seeds} --seq {args.seq} --rows {args.rows} --vocab {args.vocab} "
        f"--update-every {args.update_every} --overhead-steps {args.overhead_steps} --overhead-runs {args.overhead_runs} "
        f"--overhead-seq {args.overhead_seq}` ({total:.0f} s in all; CPU, torch {torch.__version__}; "
        f"taken on a shared, loaded machine: timings are noisy).",
        "",
        f"Training pieces per source (tokens): "
        + ", ".join(f"{n} {int(t):,} ({t / tok_per_source.sum():.1%})" for n, t in zip(SOURCES, tok_per_source)),
        f"; {int(held.sum())} held-out pieces. Tiny Llama (2 layers, hidden 64, vocab {args.vocab}), AdamW lr {args.lr}, "
        f"{args.steps} steps of {args.rows} packed rows of {args.seq} tokens, validation every {args.eval_every} steps.",
        "",
        "## Validation loss after the last step (median of seeds) and steps to the natural mixture's final mean",
        "",
        "| arm | tokens trained | " + " | ".join(SOURCES) + " | mean | steps to natural's final mean |",
        "| --- | ---: | " + " | ".join("---:" for _ in SOURCES) + " | ---: | ---: |",
    ]
    for arm in ARMS:
        finals = np.array([r["curve"][-1] for r in runs[arm]])
        med = np.median(finals, axis=0)
        hits = [steps_to(r["curve"], natural_final, args.eval_every) for r in runs[arm]]
        reached = [h for h in hits if h is not None]
        hit = f"{int(np.median(reached))}" if len(reached) == len(hits) else f"{len(reached)}/{len(hits)} seeds reach it"
        tokens = int(np.median([r["tokens"] for r in runs[arm]]))
        lines.append(f"| {arm} | {tokens:,} | " + " | ".join(f"{v:.3f}" for v in med) + f" | {float(np.median(finals.mean(axis=1))):.3f} | {hit} |")
    lines += [
        "",
        "(natural: the target is its own median final mean, so a seed above that median does not reach it.)",
        "",
        "## Overhead: getting the batch from the sampler + the tracker, per step",
        "",
        "`PackedBatchSampler` against `MixtureSampler` + ODM + `SourceLossTracker` (`add_packed`), each arm",
        "training its own copy of the same model on the same pieces, the two arms interleaved step by step",
        f"(who goes first alternates) for {args.overhead_steps} steps per run; per run the mean sampler + tracker",
        f"time per step after the first window (windows are planned every {args.update_every} steps, so a",
        f"per-step median would hide them) and the median step time; medians over {args.overhead_runs} runs.",
        "",
        "Two clocks: wall time, and the training thread's CPU time (`time.thread_time`; torch runs on that one",
        "thread), which other processes on a loaded machine inflate far less.",
        "",
        "| rows x tokens | clock | step (median) | PackedBatchSampler | MixtureSampler + ODM + tracker | of which the tracker | mixture overhead | share of the step (target <= 0.5%) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for seq, clock, o in ((seq, clock, o) for seq, by in over.items() for clock, o in by.items()):
        lines.append(f"| {args.rows} x {seq} | {clock} | {o['step'] * 1e3:.1f} ms | {o['packed'] * 1e6:.0f} µs | {o['odm'] * 1e6:.0f} µs | {o['track'] * 1e6:.0f} µs "
                     f"| {o['extra'] * 1e6:.0f} µs | {o['share']:.2%} |")  # fmt: skip
    per = [c["calls"] / max(c["intervals"], 1) for c in coll]
    lines += [
        "",
        f"Collectives (2 gloo processes, MixtureSampler + ODM + SourceLossTracker, update every {args.update_every} steps): "
        + "; ".join(f"rank {r}: {c['calls']} all_reduce calls over {c['steps']} steps = {c['intervals']} intervals" for r, c in enumerate(coll))
        + f" -> {max(per):.2f} per interval.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp_out = f"{args.out}.tmp"
    Path(tmp_out).write_text(text)
    os.replace(tmp_out, args.out)


if __name__ == "__main__":
    main()
