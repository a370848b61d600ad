"""Proof that packing changes nothing: packed batches of real tokenized text give the same per-token
logits and losses as running every sequence alone, for every layout, in both shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import load_texts
from packwise.packing import PackedCollator, example_losses, packed_loss, token_losses

TOL = 1e-5
VOCAB = 4096


# --- a small causal transformer whose attention reads each layout ---------------------------------


def _rope(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` [rows, heads, width, dim] at integer positions ``pos`` [rows, width]."""
    half = x.shape[-1] // 2
    freq = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float32) / half))
    angle = pos[:, None, :, None].float() * freq
    cos, sin = angle.cos(), angle.sin()
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


class TinyCausalLM(torch.nn.Module):
    def __init__(self, vocab: int = VOCAB, dim: int = 32, heads: int = 4, layers: int = 2):
        super().__init__()
        self.heads = heads
        self.embed = torch.nn.Embedding(vocab, dim)
        self.blocks = torch.nn.ModuleList(
            torch.nn.ModuleDict(
                {
                    "norm1": torch.nn.LayerNorm(dim),
                    "qkv": torch.nn.Linear(dim, 3 * dim),
                    "out": torch.nn.Linear(dim, dim),
                    "norm2": torch.nn.LayerNorm(dim),
                    "mlp": torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim)),
                }
            )
            for _ in range(layers)
        )
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, input_ids, position_ids, attend):
        x = self.embed(input_ids)
        rows, width, dim = x.shape
        for blk in self.blocks:
            q, k, v = blk["qkv"](blk["norm1"](x)).view(rows, width, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
            q, k = _rope(q, position_ids), _rope(k, position_ids)
            a = attend(q, k, v).transpose(1, 2).reshape(rows, width, dim)
            x = x + blk["out"](a)
            x = x + blk["mlp"](blk["norm2"](x))
        return self.head(self.norm(x))


def _mask_attend(mask):
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _causal_attend(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _varlen_attend(cu: torch.Tensor, max_length: int):
    """FlashAttention-varlen semantics: all rows flattened, cut at ``cu``, causal inside each piece."""
    bounds = cu.tolist()

    def attend(q, k, v):
        rows, heads, width, hd = q.shape
        flat = [t.transpose(1, 2).reshape(rows * width, heads, hd) for t in (q, k, v)]
        assert bounds[-1] == rows * width
        out = torch.empty_like(flat[0])
        for a, b in zip(bounds[:-1], bounds[1:]):
            if b == a:  # trailing entries of constant-shape cu_seq_lens
                continue
            assert b - a <= max_length
            qs, ks, vs = (t[a:b].transpose(0, 1)[None] for t in flat)
            out[a:b] = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)[0].transpose(0, 1)
        return out.view(rows, width, heads, hd).transpose(1, 2)

    return attend


def _segments_mask(seg: torch.Tensor) -> torch.Tensor:
    width = seg.shape[-1]
    return ((seg[:, :, None] == seg[:, None, :]) & torch.ones(width, width, dtype=torch.bool).tril())[:, None]


def attend_for(layout: str, batch: dict):
    """The attention a model would run for ``layout``, reading only that layout's keys."""
    if layout == "sdpa":
        return _mask_attend(batch["attention_mask"])
    if layout == "flex":
        from torch.nn.attention.flex_attention import flex_attention

        return lambda q, k, v: flex_attention(q, k, v, block_mask=batch["attention_mask"])
    if layout == "flash":
        assert batch["cu_seq_lens_q"].dtype == torch.int32 and type(batch["max_length_q"]) is int
        return _varlen_attend(batch["cu_seq_lens_q"], batch["max_length_q"])
    if layout == "seq_idx":
        return _mask_attend(_segments_mask(batch["seq_idx"]))
    if layout == "position_ids":  # what HF does with position_ids alone: a new sequence where pos - prev != 1
        pos = batch["position_ids"]
        diff = torch.diff(pos, prepend=pos[:, :1] - 1, dim=-1)
        return _mask_attend(_segments_mask((diff != 1).cumsum(-1)))
    raise AssertionError(layout)


# --- real data ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def examples(tokenizer):
    """16 real sequences (alpaca, c4, glaive, ag_news), 2..160 tokens, some with prompt-masked labels."""
    texts = load_texts("alpaca")[:6] + load_texts("c4")[:4] + load_texts("glaive")[:3] + load_texts("ag_news")[:3]
    out = []
    for i, enc in enumerate(tokenizer.encode_batch(texts, add_special_tokens=False)):
        ids = enc.ids[: 2 + (41 * i) % 159]
        assert len(ids) >= 2
        ex = {"input_ids": ids}
        if i % 3 == 0:  # prompt masking: the first third is context only
            labels = list(ids)
            labels[: len(ids) // 3] = [-100] * (len(ids) // 3)
            ex["labels"] = labels
        out.append(ex)
    assert max(len(e["input_ids"]) for e in out) > 128 and min(len(e["input_ids"]) for e in out) == 2
    return out


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TinyCausalLM().eval()


def _alone(model, ex, position_start=0):
    """Logits and per-token losses of one example run alone (its first label is ignored by the shift)."""
    ids = torch.tensor([ex["input_ids"]])
    pos = torch.arange(ids.shape[1])[None] + position_start
    labels = torch.tensor([ex.get("labels", ex["input_ids"])])
    with torch.no_grad():
        logits = model(ids, pos, _causal_attend)
    return logits[0], token_losses(logits, labels)[0], labels[0]


@pytest.fixture(scope="module")
def alone(model, examples):
    """Every example run alone, per position start (computed once for the module)."""
    return {start: [_alone(model, ex, start) for ex in examples] for start in (0, 2)}


def _tokens_of(batch, e):
    """Flat positions of example ``e``'s real tokens in the packed batch."""
    seg = int(torch.nonzero(batch["example_index"] == e)[0, 0])
    where = torch.nonzero(batch["seq_idx"].reshape(-1) == seg)[:, 0]
    return where


CONFIGS = {
    "plain": dict(),
    "cp8_constant_shape": dict(pad_to_multiple_of=8, position_start=2, max_sequences=40),
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("shape", ["padding_free", "rows"])
@pytest.mark.parametrize("layout", ["position_ids", "flash", "seq_idx", "sdpa", "flex"])
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_packed_equals_alone(model, examples, alone, layout, shape, config):
    kwargs = dict(CONFIGS[config])
    if shape == "rows":
        kwargs["capacity"] = 256
    elif config != "plain":
        kwargs["capacity"] = 1536  # fixed-length padding-free row
    # "seq_idx" rides along only so the test can find each example; the model reads `layout`'s keys
    collator = PackedCollator(layout=(layout, "seq_idx"), shape=shape, **kwargs)
    batch = collator(examples)
    if shape == "rows":
        assert batch["input_ids"].shape[0] >= 4 and batch["input_ids"].shape[1] == 256
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["position_ids"], attend_for(layout, batch))
    flat_logits = logits.reshape(-1, logits.shape[-1])
    start = kwargs.get("position_start", 0)
    sums, counts, worst = 0.0, 0, 0.0
    per_example = []
    for e, ex in enumerate(examples):
        ref_logits, ref_tok, ref_labels = alone[start][e]
        where = _tokens_of(batch, e)[: len(ex["input_ids"])]
        worst = max(worst, (flat_logits[where] - ref_logits).abs().max().item())
        supervised = ref_labels[1:] != -100
        sums += float(ref_tok.sum())
        counts += int(supervised.sum())
        per_example.append(float(ref_tok.sum()) / int(supervised.sum()))
    assert worst <= TOL, f"max |packed - alone| logit difference {worst:.2e}"
    tok = token_losses(logits, batch["labels"])
    assert abs(packed_loss(tok, batch).item() - sums / counts) <= TOL
    got, n = example_losses(tok, batch)
    assert n.sum().item() == counts
    assert np.abs(got.numpy() - np.array(per_example)).max() <= TOL
    assert abs(packed_loss(tok, batch, "sequence").item() - float(np.mean(per_example))) <= TOL


@pytest.mark.parametrize("shape", ["padding_free", "rows"])
def test_weighted_loss_equals_weighted_mean_alone(model, examples, alone, shape):
    """InfoBatch-style weights (kept examples rescaled by 1/(1-r)) survive packing."""
    r = 0.6
    weights = [1.0 / (1 - r) if i % 2 else 1.0 for i in range(len(examples))]
    weighted = [dict(ex, weight=w) for ex, w in zip(examples, weights)]
    batch = PackedCollator(layout="sdpa", shape=shape, capacity=256 if shape == "rows" else None)(weighted)
    assert "seq_idx" not in batch
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["position_ids"], attend_for("sdpa", batch))
    tok = token_losses(logits, batch["labels"])
    sums = np.array([float(t.sum()) for _, t, _ in alone[0]])
    counts = np.array([int((lab[1:] != -100).sum()) for _, _, lab in alone[0]])
    w = np.array(weights)
    assert abs(packed_loss(tok, batch).item() - (w * sums).sum() / counts.sum()) <= TOL
    # per sequence: the weighted mean of the per-example losses computed alone
    seq_batch = PackedCollator(layout=("sdpa", "seq_idx"), shape=shape, capacity=256 if shape == "rows" else None)(weighted)
    assert abs(packed_loss(tok, seq_batch, "sequence").item() - float(np.mean(w * sums / counts))) <= TOL


def test_gradients_equal_alone(examples):
    """One optimizer step on a packed batch is the step on the sequences one by one."""
    torch.manual_seed(1)
    packed_model = TinyCausalLM(dim=16, heads=2, layers=1)
    alone_model = TinyCausalLM(dim=16, heads=2, layers=1)
    alone_model.load_state_dict(packed_model.state_dict())
    few = examples[:8]
    batch = PackedCollator(layout="flash")(few)
    logits = packed_model(batch["input_ids"], batch["position_ids"], attend_for("flash", batch))
    packed_loss(token_losses(logits, batch["labels"]), batch).backward()
    total = 0
    losses = []
    for ex in few:
        ids = torch.tensor([ex["input_ids"]])
        lab = torch.tensor([ex.get("labels", ex["input_ids"])])
        tok = token_losses(alone_model(ids, torch.arange(ids.shape[1])[None], _causal_attend), lab)
        losses.append(tok.sum())
        total += int((lab[0, 1:] != -100).sum())
    (torch.stack(losses).sum() / total).backward()
    worst = max((a.grad - b.grad).abs().max().item() for a, b in zip(packed_model.parameters(), alone_model.parameters()))
    assert worst <= TOL


# --- Hugging Face transformers: a tiny random Llama -------------------------------------------------


@pytest.fixture(scope="module")
def llama():
    transformers = pytest.importorskip("transformers", reason="transformers is a test extra (pip install packwise[dev])")
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32).eval()


def _hf_alone(llama, examples):
    logits, sums, counts = [], 0.0, 0
    with torch.no_grad():
        for ex in examples:
            ids = torch.tensor([ex["input_ids"]])
            labels = torch.tensor([ex.get("labels", ex["input_ids"])])
            out = llama(input_ids=ids, labels=labels, use_cache=False)
            n = int((labels[0, 1:] != -100).sum())
            logits.append(out.logits[0])
            sums += out.loss.item() * n
            counts += n
    return logits, sums / counts


def test_hf_llama_padding_free_kwargs(llama, examples):
    """``model(**batch)`` with the padding-free position_ids / cu_seq_lens kwargs equals unpacked runs."""
    batch = PackedCollator(layout="flash")(examples)
    assert batch["use_cache"] is False  # with a cache HF skips packed-sequence detection
    with torch.no_grad():
        out = llama(**batch)
    ref_logits, ref_loss = _hf_alone(llama, examples)
    bounds = batch["cu_seq_lens_q"].tolist()
    worst = max((out.logits[0, a:b] - r).abs().max().item() for a, b, r in zip(bounds[:-1], bounds[1:], ref_logits))
    assert worst <= TOL
    assert abs(out.loss.item() - ref_loss) <= TOL
    assert math.isfinite(out.loss.item())


def test_hf_llama_rows_with_4d_mask(llama, examples):
    """The fixed-rows shape with the block-diagonal 4-D mask, straight into the HF SDPA model."""
    batch = PackedCollator(layout=("sdpa", "seq_idx"), shape="rows", capacity=256)(examples)
    seq_idx, example_index = batch.pop("seq_idx"), batch.pop("example_index")
    with torch.no_grad():
        out = llama(**batch)
    ref_logits, ref_loss = _hf_alone(llama, examples)
    flat = out.logits.reshape(-1, out.logits.shape[-1])
    worst = 0.0
    for e, r in enumerate(ref_logits):
        seg = int(torch.nonzero(example_index == e)[0, 0])
        where = torch.nonzero(seq_idx.reshape(-1) == seg)[:, 0]
        worst = max(worst, (flat[where] - r).abs().max().item())
    assert worst <= TOL
    assert abs(out.loss.item() - ref_loss) <= TOL
