"""Train a small AG News topic classifier on CPU through the packwise stack, on full data or with
dynamic data pruning (InfoBatch) or random subsets (RS2).

The stack: a byte-level BPE trained on the train split (``packwise.pipeline.tokenizer``), the
policy's kept ids each epoch (``packwise.selection``), packed batches of those ids under a token
budget (``packwise.samplers.PackedBatchSampler``: prune first, then pack what is kept), a
``WithIndex`` dataset so each batch carries its ids, and ``policy.update(ids, per_example_loss)``
for the loss to backpropagate.  The model is a bag-of-tokens classifier (``EmbeddingBag`` + linear
layer): packed token streams need no padding and no attention mask.

    python examples/train_agnews.py --policy infobatch --epochs 10 --seed 0
    python examples/train_agnews.py --policy rs2 --fraction 0.6
    python examples/train_agnews.py --policy full --steps 1500   # full data, schedule fit to 1500 steps

Data: ``../shared/data/ag_news_test.csv`` (7,600 rows), split 80/20 into train/eval with a fixed seed.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from packwise.pipeline.tokenizer import train_byte_bpe
from packwise.samplers import PackedBatchSampler, WithIndex
from packwise.selection import RS2, InfoBatch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ag_news_test.csv"
SPLIT_SEED = 1234


@dataclass
class AgNews:
    """Tokenized train/eval split (token ids per example, labels 0-3) and the vocabulary size."""

    train_ids: list
    train_labels: np.ndarray
    eval_ids: list
    eval_labels: np.ndarray
    vocab_size: int

    @property
    def train_lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.train_ids], np.int64)


def load_agnews(path: Path = DATA, eval_fraction: float = 0.2, vocab_size: int = 8192) -> AgNews:
    """Read the CSV, split with a fixed seed, train the tokenizer on the train split only."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    texts = [f"{title} {desc}" for _, title, desc in rows]
    labels = np.array([int(label) - 1 for label, _, _ in rows], np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(rows))
    cut = len(rows) - int(round(eval_fraction * len(rows)))
    train, held = order[:cut], order[cut:]
    tokenizer = train_byte_bpe([texts[i] for i in train], vocab_size=vocab_size)

    def encode(idx):
        return [e.ids or [0] for e in tokenizer.encode_batch([texts[i] for i in idx], add_special_tokens=False)]

    return AgNews(encode(train), labels[train], encode(held), labels[held], tokenizer.get_vocab_size())


class _Examples(Dataset):
    def __init__(self, ids, labels):
        self.ids, self.labels = ids, labels

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return self.ids[i], int(self.labels[i])


def collate(batch):
    """``(index, flat tokens, offsets, labels)`` from ``WithIndex`` items: a packed bag-of-tokens batch."""
    index = torch.tensor([i for i, _ in batch], dtype=torch.int64)
    lengths = [len(ids) for _, (ids, _) in batch]
    flat = torch.tensor([t for _, (ids, _) in batch for t in ids], dtype=torch.int64)
    offsets = torch.tensor(np.concatenate(([0], np.cumsum(lengths[:-1]))), dtype=torch.int64)
    return index, flat, offsets, torch.tensor([label for _, (_, label) in batch])


class Classifier(torch.nn.Module):
    def __init__(self, vocab_size: int, dim: int = 64, classes: int = 4):
        super().__init__()
        self.embed = torch.nn.EmbeddingBag(vocab_size, dim, mode="mean")
        self.head = torch.nn.Linear(dim, classes)

    def forward(self, flat, offsets):
        return self.head(self.embed(flat, offsets))


@dataclass
class RunConfig:
    policy: str = "infobatch"  # full | infobatch | rs2
    epochs: int = 10
    seed: int = 0
    lr: float = 0.02
    max_tokens: int = 1024
    prune_ratio: float = 0.5
    delta: float = 0.875
    target_keep: float | None = None  # infobatch: keep exactly this share in pruning epochs
    fraction: float = 0.6  # rs2: share of the train split per epoch
    steps: int | None = None  # full: stop after this many steps, cosine schedule fit to them


@dataclass
class RunResult:
    config: dict
    examples: int = 0  # examples forwarded and backpropagated
    steps: int = 0
    wall_s: float = 0.0  # the whole training loop, data loading included
    step_s: float = 0.0  # forward + loss + backward + optimizer + selection
    selection_s: float = 0.0  # epoch planning + loss reduction (update(), or loss.mean() on full data)
    eval_accuracy: float = 0.0
    kept_fractions: list = field(default_factory=list)


def _cosine(lr: float, progress: float) -> float:
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@torch.no_grad()
def evaluate(model, data: AgNews) -> float:
    index = list(range(len(data.eval_ids)))
    batch = collate([(i, (data.eval_ids[i], data.eval_labels[i])) for i in index])
    logits = model(batch[1], batch[2])
    return float((logits.argmax(dim=1) == batch[3]).float().mean())


def train(cfg: RunConfig, data: AgNews) -> RunResult:
    """One training run; everything random is seeded by ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    n = len(data.train_ids)
    lengths = data.train_lengths
    model = Classifier(data.vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    if cfg.policy == "infobatch":
        policy = InfoBatch(
            n, cfg.epochs, prune_ratio=cfg.prune_ratio, delta=cfg.delta, seed=cfg.seed, target_keep=cfg.target_keep
        )
    elif cfg.policy == "rs2":
        policy = RS2(n, cfg.fraction, seed=cfg.seed)
    elif cfg.policy == "full":
        policy = None
    else:
        raise ValueError(f"policy must be full, infobatch or rs2, got {cfg.policy!r}")
    dataset = WithIndex(_Examples(data.train_ids, data.train_labels))
    result = RunResult(asdict(cfg))

    def packed(kept: np.ndarray, epoch: int) -> list[list[int]]:
        sampler = PackedBatchSampler(lengths[kept], max_tokens=cfg.max_tokens, seed=cfg.seed, num_replicas=1, rank=0)
        sampler.set_epoch(epoch)
        return [kept[b].tolist() for b in sampler]  # positions in the kept subset -> dataset ids

    everything = np.arange(n, dtype=np.int64)
    if cfg.steps is not None:
        total_steps = cfg.steps
    elif policy is None or cfg.policy == "rs2":  # epoch sizes known ahead: schedule over real steps
        total_steps = sum(len(packed(everything if policy is None else policy.indices_for_epoch(e), e)) for e in range(cfg.epochs))
    else:
        total_steps = None  # InfoBatch: schedule by epoch progress (epoch sizes follow the losses)
    start = time.perf_counter()
    done = False
    for epoch in range(cfg.epochs):
        t = time.perf_counter()
        kept = everything if policy is None else policy.indices_for_epoch(epoch)
        result.selection_s += time.perf_counter() - t
        result.kept_fractions.append(kept.shape[0] / n)
        batches = packed(kept, epoch)
        loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate)
        for i, (index, flat, offsets, labels) in enumerate(loader):
            t0 = time.perf_counter()
            progress = result.steps / total_steps if total_steps else (epoch + i / len(batches)) / cfg.epochs
            for group in opt.param_groups:
                group["lr"] = _cosine(cfg.lr, progress)
            per_example = torch.nn.functional.cross_entropy(model(flat, offsets), labels, reduction="none")
            t1 = time.perf_counter()
            loss = per_example.mean() if policy is None else policy.update(index, per_example)
            result.selection_s += time.perf_counter() - t1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            result.step_s += time.perf_counter() - t0
            result.steps += 1
            result.examples += int(index.shape[0])
            if cfg.steps is not None and result.steps >= cfg.steps:
                done = True
                break
        if done:
            break
    result.wall_s = time.perf_counter() - start
    result.eval_accuracy = evaluate(model, data)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, value in asdict(RunConfig()).items():
        kind = int if name in ("epochs", "seed", "max_tokens", "steps") else (str if name == "policy" else float)
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=value)
    args = vars(parser.parse_args(argv))
    torch.set_num_threads(1)
    data = load_agnews()
    res = train(RunConfig(**args), data)
    print(
        f"policy={res.config['policy']} seed={res.config['seed']} examples={res.examples} steps={res.steps} "
        f"wall={res.wall_s:.1f}s planning+reduction={100 * res.selection_s / max(res.step_s, 1e-9):.2f}% of step time "
        f"eval_accuracy={100 * res.eval_accuracy:.2f}%"
    )
    print("kept fraction per epoch:", " ".join(f"{f:.2f}" for f in res.kept_fractions))


if __name__ == "__main__":
    main()
