"""``packwise.check_packing`` and ``packwise check-model``: the probe passes on a model that keeps packed
documents apart and fails, naming what leaks, on one that does not."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import packwise
from conftest import Payload
from packwise.packing import PackedCollator, PackingCheckFailed

transformers = pytest.importorskip("transformers", reason="transformers is a test extra (pip install packwise[dev])")


def _llama(attn="sdpa"):
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM._from_config(cfg, attn_implementation=attn, dtype=torch.float32)


def test_default_collator_passes_and_names_the_keys(capsys):
    model = _llama().train()
    report = packwise.check_packing(model, PackedCollator())
    assert report.ok and report.documents == 6 and report.max_leak == 0.0 and report.max_diff_vs_alone < 1e-5
    assert {"use_cache", "position_ids"} <= set(report.keys_used)
    assert {"cu_seq_lens_q", "seq_idx"} <= set(report.keys_ignored)  # sdpa reads neither
    assert model.training  # the probe restores the mode
    out = capsys.readouterr().out
    assert out.startswith("OK: packed documents stay apart") and "keys used:" in out


def test_a_batch_without_use_cache_false_fails():
    batch = PackedCollator(use_cache=None)([{"input_ids": list(range(1, 9))}, {"input_ids": list(range(3, 10))}])
    with pytest.raises(PackingCheckFailed, match=r"FAIL: the model mixes packed documents") as err:
        packwise.check_packing(_llama(), batch, verbose=False)
    assert "one document changed, others moved by" in str(err.value)


def test_sdpa_layout_mask_on_the_eager_backend_fails():
    """eager adds the boolean mask to the scores: the probe catches it (use position_ids/flash there)."""
    report = packwise.check_packing(
        _llama("eager"), PackedCollator(layout=("sdpa", "seq_idx"), shape="rows", capacity=32), raise_on_failure=False, verbose=False
    )
    assert not report.ok and report.max_diff_vs_alone > 1e-3 and "attention_mask" in report.keys_used


def test_a_mamba_style_model_refusing_packed_input_is_reported():
    cfg = transformers.BambaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, attn_layer_indices=[1], mamba_n_heads=4, mamba_d_head=16,
                                   mamba_n_groups=1, mamba_d_state=8, mamba_chunk_size=16)  # fmt: skip
    model = transformers.BambaForCausalLM(cfg)
    report = packwise.check_packing(model, PackedCollator(), raise_on_failure=False, verbose=False)
    assert not report.ok and "can't keep packed sequences apart" in report.error
    # without seq_idx it would run and silently mix the documents: the leak check sees it
    leak = packwise.check_packing(model, PackedCollator(layout="flash"), raise_on_failure=False, verbose=False)
    assert not leak.ok and leak.max_leak > 1e-3


def test_cli_check_model(tmp_path):
    _llama().save_pretrained(tmp_path / "m")
    cmd = [sys.executable, "-m", "packwise.cli.app", "check-model"]
    ok = subprocess.run(cmd + [str(tmp_path / "m")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "LlamaForCausalLM (sdpa attention)" in ok.stdout and "OK: packed documents stay apart" in ok.stdout
    bad = subprocess.run(cmd + [str(tmp_path / "m"), "--attn", "eager", "--layout", "sdpa", "--shape", "rows", "--capacity", "32"],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 1 and "FAIL" in bad.stdout
    missing = subprocess.run(cmd + [str(tmp_path / "nothing")], capture_output=True, text=True)
    assert missing.returncode == 2 and "has no config.json" in missing.stderr


def test_cli_check_model_refuses_a_pickle_bomb(tmp_path):
    """A model folder whose ``pytorch_model.bin`` is a malicious pickle: exit 2, a message, the payload never runs."""
    _llama().config.save_pretrained(tmp_path / "m")
    marker = tmp_path / "ran"
    torch.save({"w": Payload(marker)}, tmp_path / "m" / "pytorch_model.bin")
    cmd = [sys.executable, "-m", "packwise.cli.app", "check-model", str(tmp_path / "m")]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "holds more than plain tensors and was not loaded (packwise never unpickles model files)" in out.stderr
    assert "Traceback" not in out.stderr and not marker.exists()
