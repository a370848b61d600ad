"""Preference pairs: packed chosen/rejected (prompt twice or shared once) give the same per-sequence
log-prob sums and DPO loss as every sequence run alone, on a random tiny HF Llama and real alpaca text."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import shared_data_dir
from packwise.packing import PairCollator, pair_lengths, pair_logps
from packwise.samplers import PackedBatchSampler

transformers = pytest.importorskip("transformers", reason="transformers is a test extra (pip install packwise[dev])")
VOCAB = 4096


@pytest.fixture(scope="module")
def pairs(tokenizer):
    """12 real pairs: alpaca instruction as prompt, its output as chosen, the next row's output as rejected."""
    rows = json.loads((shared_data_dir() / "alpaca_en_demo.json").read_text(encoding="utf-8"))[:13]
    enc = lambda t: tokenizer.encode(t, add_special_tokens=False).ids  # noqa: E731
    out = []
    for i in range(12):
        out.append({
            "prompt_ids": enc(rows[i]["instruction"])[: 4 + i % 9],
            "chosen_ids": enc(rows[i]["output"])[: 1 + (7 * i) % 23],
            "rejected_ids": enc(rows[i + 1]["output"])[: 2 + (5 * i) % 19],
        })  # fmt: skip
    return out


def _llama(seed):
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32).eval()


def _alone_logps(model, pairs):
    chosen, rejected = [], []
    for pair in pairs:
        for resp, out in ((pair["chosen_ids"], chosen), (pair["rejected_ids"], rejected)):
            ids = torch.tensor([pair["prompt_ids"] + resp])
            logp = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0, :-1].float(), -1)
            p = len(pair["prompt_ids"])
            out.append(logp[p - 1 :].gather(1, ids[0, p:, None])[:, 0].sum())
    return torch.stack(chosen), torch.stack(rejected)


def _dpo(pc, pr, rc, rr, beta=0.1):
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()


CASES = {
    "twice_padding_free_flash": dict(),
    "twice_rows_sdpa": dict(layout=("sdpa", "seq_idx"), shape="rows", capacity=96),
    "shared_rows_sdpa": dict(share_prompt=True, layout="sdpa", shape="rows", capacity=96),
    "shared_padding_free_sdpa": dict(share_prompt=True, layout="sdpa"),
}


@pytest.fixture(scope="module")
def reference(pairs):
    policy, ref = _llama(0), _llama(1)
    with torch.no_grad():
        pc, pr = _alone_logps(policy, pairs)
        rc, rr = _alone_logps(ref, pairs)
    return policy, ref, (pc, pr), _dpo(pc, pr, rc, rr)


@pytest.mark.parametrize("case", list(CASES))
def test_packed_dpo_loss_equals_unpacked(pairs, reference, case):
    policy, ref, (pc, pr), loss = reference
    collator = PairCollator(**CASES[case])
    sampler = PackedBatchSampler(pair_lengths(pairs, CASES[case].get("share_prompt", False)), max_tokens=96, seed=0)
    got_c, got_r, ref_c, ref_r = (torch.zeros(len(pairs)) for _ in range(4))
    batches = list(sampler)
    assert len(batches) >= 3 and sorted(i for b in batches for i in b) == list(range(len(pairs)))
    with torch.no_grad():
        for b in batches:  # every pair sits whole in one batch
            batch = collator([pairs[i] for i in b])
            if CASES[case].get("shape") == "rows":
                assert batch["input_ids"].shape == (1, 96)  # the sampler's budget is one row
            inputs = {k: v for k, v in batch.items() if not k.startswith("logp_") and k not in ("labels", "example_index")}
            c, r = pair_logps(policy(**inputs).logits, batch)
            got_c[b], got_r[b] = c, r
            c, r = pair_logps(ref(**inputs).logits, batch)
            ref_c[b], ref_r[b] = c, r
    assert (got_c - pc).abs().max() < 1e-4 and (got_r - pr).abs().max() < 1e-4
    assert abs(float(_dpo(got_c, got_r, ref_c, ref_r)) - float(loss)) < 1e-5


def test_shared_prompt_stores_the_prompt_once(pairs):
    twice = PairCollator()(pairs[:4])
    shared = PairCollator(share_prompt=True, layout="sdpa")(pairs[:4])
    saved = sum(len(p["prompt_ids"]) for p in pairs[:4])
    assert twice["input_ids"].shape[1] - shared["input_ids"].shape[1] == saved
    assert shared["labels"].ne(-100).sum() == twice["labels"].ne(-100).sum() - 4  # rejected's first token: logp only


def test_shared_prompt_needs_a_mask_layout():
    with pytest.raises(ValueError, match=r"share_prompt=True needs layout 'sdpa' or 'flex'"):
        PairCollator(share_prompt=True)
    with pytest.raises(ValueError, match=r"pairs\[0\] has no 'rejected_ids'"):
        PairCollator()([{"prompt_ids": [1], "chosen_ids": [2]}])


def test_flex_mask_mod_equals_the_sdpa_mask(pairs):
    sdpa = PairCollator(share_prompt=True, layout=("sdpa", "seq_idx"), shape="rows", capacity=96)(pairs[:3])
    flex = PairCollator(share_prompt=True, layout=("flex", "seq_idx"), shape="rows", capacity=96, flex_block_size=32)(pairs[:3])
    mod = flex["attention_mask"].mask_mod
    q, k = torch.meshgrid(torch.arange(96), torch.arange(96), indexing="ij")
    assert torch.equal(mod(0, 0, q, k), sdpa["attention_mask"][0, 0])
    assert type(flex["attention_mask"]).__name__ == "BlockMask"
