"""``model(**batch)`` on the default packwise batch is exact for random tiny HF models, in eval and in
train mode, for both shapes: each sequence's logits equal the sequence run alone."""

from __future__ import annotations

import pytest
import torch

from conftest import load_texts
from packwise.packing import PackedCollator

transformers = pytest.importorskip("transformers", reason="transformers is a test extra (pip install packwise[dev])")

VOCAB = 4096
TOL = 1e-5


@pytest.fixture(scope="module")
def examples(tokenizer):
    texts = load_texts("alpaca")[:5] + load_texts("c4")[:3]
    return [{"input_ids": e.ids[: 2 + (29 * i) % 70]} for i, e in enumerate(tokenizer.encode_batch(texts, add_special_tokens=False))]


def _tiny(kind: str, attn: str):
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512)  # fmt: skip
    if kind == "llama":
        cfg, cls = transformers.LlamaConfig(**common), transformers.LlamaForCausalLM
    elif kind == "qwen2":
        cfg, cls = transformers.Qwen2Config(**common), transformers.Qwen2ForCausalLM
    else:
        cfg = transformers.BambaConfig(**common, attn_layer_indices=[1], mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1,
                                       mamba_d_state=8, mamba_chunk_size=16)  # fmt: skip
        cls = transformers.BambaForCausalLM
    torch.manual_seed(0)
    return cls._from_config(cfg, attn_implementation=attn, dtype=torch.float32)


def _worst_vs_alone(model, batch, examples) -> float:
    """Largest |packed - alone| logit over every real token of every example."""
    with torch.no_grad():
        flat = model(**batch).logits.reshape(-1, VOCAB)
        worst = 0.0
        for e, ex in enumerate(examples):
            ref = model(input_ids=torch.tensor([ex["input_ids"]], device=flat.device), use_cache=False).logits[0]
            seg = int(torch.nonzero(batch["example_index"] == e)[0, 0])
            where = torch.nonzero(batch["seq_idx"].reshape(-1) == seg)[:, 0][: len(ex["input_ids"])]
            worst = max(worst, (flat[where] - ref).abs().max().item())
    return worst


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_default_batch_is_exact(examples, kind, attn, mode):
    model = getattr(_tiny(kind, attn), mode)()
    assert model.config.use_cache  # the trap: HF would build a cache and skip packed-sequence detection
    padding_free = PackedCollator()(examples)
    rows = PackedCollator(shape="rows", capacity=128)(examples)
    assert padding_free["use_cache"] is False and rows["input_ids"].shape[0] >= 3
    assert _worst_vs_alone(model, padding_free, examples) <= TOL
    assert _worst_vs_alone(model, rows, examples) <= TOL
    # and without the flag the same batch is wrong: what the flag protects against
    unsafe = {k: v for k, v in padding_free.items() if k != "use_cache"}
    assert _worst_vs_alone(model, unsafe, examples) > 1e-2


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_sdpa_layout_mask_on_the_sdpa_backend(examples, mode):
    model = getattr(_tiny("llama", "sdpa"), mode)()
    batch = PackedCollator(layout=("sdpa", "seq_idx"), shape="rows", capacity=128)(examples)
    assert _worst_vs_alone(model, batch, examples) <= TOL


def _has_mamba_kernels() -> bool:
    import importlib.util

    return torch.cuda.is_available() and all(importlib.util.find_spec(m) for m in ("mamba_ssm", "causal_conv1d"))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_mamba_style_model_refuses_packed_input_without_its_kernels(examples, mode):
    """Bamba (Mamba2 + attention) reads ``seq_idx``; on CPU HF's fallback cannot honour it and says so."""
    model = getattr(_tiny("bamba", "sdpa"), mode)()
    batch = PackedCollator()(examples)
    with pytest.raises(ValueError, match=r"can't keep packed sequences apart without"):
        with torch.no_grad():
            model(**batch)


@pytest.mark.gpu
@pytest.mark.skipif(not _has_mamba_kernels(), reason="needs CUDA with mamba_ssm and causal_conv1d")
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_mamba_style_model_is_exact_with_kernels(examples, mode):  # pragma: no cover - GPU only
    model = getattr(_tiny("bamba", "sdpa"), mode)().cuda()
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in PackedCollator()(examples).items()}
    assert _worst_vs_alone(model, batch, examples) <= 1e-4
