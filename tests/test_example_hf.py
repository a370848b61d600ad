"""The HF Trainer example runs as shipped (a short smoke run on the shared alpaca sample)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from conftest import shared_data_dir

pytest.importorskip("transformers", reason="transformers is a test extra (pip install packwise[dev])")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_hf_llama.py"


def test_train_hf_llama_example(tmp_path, capsys):
    shared_data_dir()
    spec = importlib.util.spec_from_file_location("train_hf_llama", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--max-steps", "2", "--max-tokens", "1024", "--output", str(tmp_path)])
    out = capsys.readouterr().out
    assert "steps=2 " in out and "batches/epoch=" in out
    assert float(out.split("packing efficiency=")[1].split()[0]) > 0.95
