"""Train a tiny Llama on the shared alpaca sample with the HF Trainer on packwise batches (CPU, offline).

    python examples/train_hf_llama.py                 # 1 epoch
    python examples/train_hf_llama.py --max-steps 5   # a smoke run

What packwise adds to a plain Trainer script: a token-budget sampler (``PackedBatchSampler``: every
example once per epoch, re-packed per epoch, balanced across DDP ranks), the padding-free collator
(exact ``model(**batch)``: positions restart per example, ``use_cache=False``) and
``PackwiseTrainer`` (set_epoch, loss over supervised tokens across accumulation and ranks, sampler
state in checkpoints).  Works unchanged under ``torchrun --nproc-per-node N``.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import transformers

from packwise.integrations.hf import PackwiseTrainer
from packwise.pipeline.tokenizer import train_byte_bpe
from packwise.samplers import PackedBatchSampler

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_en_demo.json"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-steps", type=int, default=-1)
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--output", default="demo/hf_llama")
    opts = ap.parse_args(argv)
    rows = json.loads(DATA.read_text(encoding="utf-8"))
    prompts = ["\n".join(x for x in (r["instruction"], r["input"]) if x) + "\n" for r in rows]
    tok = train_byte_bpe(prompts + [r["output"] for r in rows], vocab_size=4096)
    data = []
    for prompt, r in zip(prompts, rows):  # train on the answer only: the prompt's labels are -100
        p, a = tok.encode(prompt).ids, tok.encode(r["output"]).ids
        data.append({"input_ids": (p + a)[:512], "labels": ([-100] * len(p) + a)[:512]})
    cfg = transformers.LlamaConfig(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    args = transformers.TrainingArguments(opts.output, num_train_epochs=1, max_steps=opts.max_steps, learning_rate=3e-3,
                                          logging_steps=10, save_steps=50, report_to=[], use_cpu=not torch.cuda.is_available())
    sampler = PackedBatchSampler(np.array([len(d["input_ids"]) for d in data]), max_tokens=opts.max_tokens, seed=0)
    result = PackwiseTrainer(model, args, train_dataset=data, sampler=sampler).train()
    print(f"steps={result.global_step} train_loss={result.training_loss:.3f} batches/epoch={len(sampler)} "
          f"packing efficiency={sampler.stats().efficiency:.3f}")


if __name__ == "__main__":
    main()
