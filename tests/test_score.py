"""Scoring at packing speed: ``packed_logprobs`` / ``prepack_prefill`` against each sequence alone on
tiny random Llama and Qwen2 models, and ``packwise score`` end to end (resume after SIGKILL, bad
model folders, then ``packwise select --method score``)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import transformers
from conftest import kill_after_shards, load_texts
from typer.testing import CliRunner

from packwise.cli.app import app
from packwise.packing import packed_logprobs, prepack_prefill
from packwise.pipeline.tokens import encode

runner = CliRunner()
ATOL = 1e-5


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def tiny_model(kind: str, attn: str = "sdpa", vocab: int = 4096, **extra):
    """A random 2-layer model of ``kind`` (llama or qwen2), fp32, seeded."""
    torch.manual_seed(0)
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=2048, attn_implementation=attn, **extra)  # fmt: skip
    if kind == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**common)).eval()
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common)).eval()


@pytest.fixture(scope="module")
def sequences(tokenizer) -> list[list[int]]:
    """Three dozen real alpaca documents (1..~300 tokens) in their file order."""
    ids = encode(tokenizer, load_texts("alpaca")[:36])
    return [s[:300] for s in ids] + [[7]]


def alone(model, seq, labels=None) -> np.ndarray:
    """Per-token log-probs of one sequence run alone (entry t scores token t; 0 where unscored)."""
    with torch.no_grad():
        logits = model(torch.tensor([seq]), use_cache=False).logits[0].float()
    target = torch.tensor(seq if labels is None else labels)
    out = np.zeros(len(seq), np.float32)
    if len(seq) > 1:
        lp = torch.log_softmax(logits[:-1], -1).gather(1, target[1:].clamp_min(0)[:, None])[:, 0]
        out[1:] = np.where(target[1:].numpy() != -100, lp.numpy(), 0.0)
    return out


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("attention", ["documents", "model"])
def test_packed_logprobs_equal_each_sequence_alone(kind, attn, attention, sequences):
    model = tiny_model(kind, attn)
    rng = np.random.default_rng(1)
    labels = []
    for s in sequences:  # every other row: its first third is a prompt (not scored)
        lab = list(s)
        if rng.random() < 0.5:
            lab[: len(s) // 3] = [-100] * (len(s) // 3)
        labels.append(lab)
    out = packed_logprobs(model, sequences, 512, labels=labels, device="cpu", attention=attention)
    assert model.config._attn_implementation == attn and not model.training  # restored
    assert out.offsets.tolist() == np.concatenate(([0], np.cumsum([len(s) for s in sequences]))).tolist()
    for i, (s, lab) in enumerate(zip(sequences, labels)):
        ref = alone(model, s, lab)
        n = int(sum(1 for t in lab[1:] if t != -100))
        got = out.token_logprobs[out.offsets[i] : out.offsets[i + 1]]
        assert out.tokens[i] == n
        assert out.supervised[out.offsets[i] : out.offsets[i + 1]].tolist() == [False] + [t != -100 for t in lab[1:]]
        np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
        np.testing.assert_allclose(out.logprob_sum[i], ref.astype(np.float64).sum(), atol=ATOL * max(n, 1), rtol=0)
        if n:
            assert abs(float(out.loss[i]) - float(-ref.astype(np.float64).sum() / n)) <= ATOL
        else:
            assert np.isnan(out.loss[i])


def test_documents_attention_runs_each_document_alone(sequences, monkeypatch):
    """The default path on an sdpa model calls SDPA once per document per layer, never on the whole row."""
    import torch.nn.functional as F

    model = tiny_model("llama", "sdpa")
    widths = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, *a, **k: widths.append(q.shape[2]) or real(q, *a, **k))
    packed_logprobs(model, sequences[:6], 2048, device="cpu")
    assert sorted(widths) == sorted([len(s) for s in sequences[:6]] * 2)


def test_prepack_prefill_equals_padded_prefill(sequences):
    model = tiny_model("qwen2", "sdpa")
    prompts = sequences[:12]
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):  # left padding, as generate() does
        ids[r, width - len(p) :] = torch.tensor(p)
        mask[r, width - len(p) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits[:, -1].float()
    packed = prepack_prefill(model, prompts, max_tokens=600, device="cpu")
    assert packed.shape == padded.shape
    assert (packed - padded).abs().max().item() <= ATOL


def test_oversize_and_bad_attention_are_value_errors(sequences):
    model = tiny_model("llama", "sdpa")
    with pytest.raises(ValueError, match=r"^sequence 1 has 5 tokens, more than max_tokens=4; raise max_tokens to at least 5 \(scoring never cuts a sequence\)$"):
        packed_logprobs(model, [[1, 2], [1, 2, 3, 4, 5]], 4, device="cpu")
    window = tiny_model("qwen2", "sdpa", use_sliding_window=True, sliding_window=16)
    with pytest.raises(ValueError, match="attention='documents' needs an eager/sdpa model without sliding windows"):
        packed_logprobs(window, [[1, 2]], 4, device="cpu", attention="documents")
    with pytest.raises(ValueError, match=r"labels\[0\] has 1 labels for 2 tokens; labels must be parallel"):
        packed_logprobs(model, [[1, 2]], 4, labels=[[1]], device="cpu")


# --- packwise score -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    """A saved tiny Llama (safetensors) with the conftest BPE as its tokenizer."""
    folder = tmp_path_factory.mktemp("model") / "tiny-llama"
    tiny_model("llama", "sdpa", vocab=tokenizer.get_vocab_size()).save_pretrained(folder)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def alpaca_jsonl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "alpaca.jsonl"
    texts = [t[:600] for t in load_texts("alpaca")[:40]]
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return path


def read_output(out: Path) -> pa.Table:
    manifest = json.loads((out / "manifest.json").read_text())
    return pa.concat_tables([pq.read_table(out / s["file"]) for s in manifest["shards"]])


def test_score_cli_writes_every_row_with_its_loss_then_select_keeps_by_it(tmp_path, model_dir, alpaca_jsonl, tokenizer):
    res = invoke("score", alpaca_jsonl, tmp_path / "scored", "--model", model_dir, "--max-tokens", 512, "--shard-rows", 16)
    assert res.exit_code == 0, res.output
    table = read_output(tmp_path / "scored")
    assert table.column_names == ["text", "id", "loss", "logprob_sum", "tokens"]
    assert table.column("id").to_pylist() == list(range(40))
    ids = encode(tokenizer, table.column("text").to_pylist())
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    ref = packed_logprobs(model, ids, 512, device="cpu")
    np.testing.assert_allclose(table.column("loss").to_numpy(), ref.loss, atol=ATOL, rtol=0)
    assert table.column("tokens").to_pylist() == [len(s) - 1 for s in ids]
    manifest = json.loads((tmp_path / "scored" / "manifest.json").read_text())
    assert [s["rows"] for s in manifest["shards"]] == [16, 16, 8]
    assert manifest["stats"] == {"rows_in": 40, "scored_rows": 40, "scored_tokens": sum(len(s) - 1 for s in ids)}
    assert "scored 40 of 40 rows" in res.output

    again = invoke("score", alpaca_jsonl, tmp_path / "scored", "--model", model_dir, "--max-tokens", 512, "--shard-rows", 16)
    assert again.exit_code == 0 and "is up to date" in again.output

    sel = invoke("select", f"{tmp_path / 'scored'}/shard-*.parquet", tmp_path / "kept", "--method", "score", "--score-column", "loss", "--target", 10)
    assert sel.exit_code == 0, sel.output
    kept = pa.concat_tables([pq.read_table(p) for p in sorted((tmp_path / "kept").glob("shard-*.parquet"))])
    losses = table.column("loss").to_numpy()
    assert sorted(kept.column("id").to_pylist()) == sorted(np.argsort(-losses, kind="stable")[:10].tolist())

    args = ["--method", "score", "--score-column", "loss"]  # perplexity filtering: the lowest losses
    sel = invoke("select", f"{tmp_path / 'scored'}/shard-*.parquet", tmp_path / "low", *args, "--target", 10, "--lowest")
    assert sel.exit_code == 0, sel.output
    kept = pa.concat_tables([pq.read_table(p) for p in sorted((tmp_path / "low").glob("shard-*.parquet"))])
    assert sorted(kept.column("id").to_pylist()) == sorted(np.argsort(losses, kind="stable")[:10].tolist())
    cut = float(np.median(losses))
    sel = invoke("select", f"{tmp_path / 'scored'}/shard-*.parquet", tmp_path / "cut", *args, "--policy", "threshold", "--threshold", cut, "--lowest")
    assert sel.exit_code == 0, sel.output
    kept = pa.concat_tables([pq.read_table(p) for p in sorted((tmp_path / "cut").glob("shard-*.parquet"))])
    assert kept.column("id").to_pylist() == np.flatnonzero(losses <= cut).tolist()
    wrong = invoke("select", f"{tmp_path / 'scored'}/shard-*.parquet", tmp_path / "w", "--method", "balance", "--k", 2, "--lowest")
    assert wrong.exit_code == 2 and "--lowest orders the scores of --method score; drop it for --method balance" in wrong.output


def test_score_cli_tokens_column_with_labels(tmp_path, model_dir):
    ids = [[5, 6, 7, 8], [9, 10], [11]]
    labels = [[-100, -100, 7, 8], [9, 10], [11]]
    src = tmp_path / "tok.parquet"
    pq.write_table(pa.table({"ids": pa.array(ids, pa.list_(pa.int32())), "lab": pa.array(labels, pa.list_(pa.int32()))}), src)
    res = invoke("score", src, tmp_path / "o", "--model", model_dir, "--max-tokens", 8, "--tokens-column", "ids", "--labels-column", "lab")
    assert res.exit_code == 0, res.output
    table = read_output(tmp_path / "o")
    assert table.column("tokens").to_pylist() == [2, 1, 0]
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    ref = alone(model, ids[0], labels[0])
    assert abs(table.column("logprob_sum")[0].as_py() - float(ref.astype(np.float64).sum())) <= ATOL
    assert table.column("loss")[2].as_py() != table.column("loss")[2].as_py()  # NaN: nothing scored


def test_bad_model_folders_exit_2(tmp_path, model_dir, alpaca_jsonl):
    def run(folder):
        res = runner.invoke(app, ["score", str(alpaca_jsonl), str(tmp_path / "o"), "--model", str(folder), "--max-tokens", "512"])
        assert res.exit_code == 2, res.output
        return res.output.strip().splitlines()[-1]  # after the progress bar, when loading fails

    assert run(tmp_path / "missing") == f"error: --model {tmp_path / 'missing'}: not a folder; pass a local Hugging Face model folder (config.json + *.safetensors)"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(empty) == f"error: --model {empty}: no config.json; pass the folder save_pretrained wrote"
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((model_dir / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    assert run(pickled) == (
        f"error: --model {pickled}: no *.safetensors weights (it has pytorch_model.bin, a pickle packwise never loads: "
        "convert it with save_pretrained(safe_serialization=True))"
    )
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in model_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"\x00" * 16)
    message = run(broken)
    assert message.startswith(f"error: --model {broken}: cannot load a causal LM from it (") and message.endswith("); fix or replace the folder")
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_score_refuses_a_column_it_would_overwrite(tmp_path, model_dir):
    src = tmp_path / "clash.jsonl"
    src.write_text(json.dumps({"text": "hello world", "loss": 1.0}) + "\n")
    res = runner.invoke(app, ["score", str(src), str(tmp_path / "o"), "--model", str(model_dir), "--max-tokens", "64"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1] == (
        f"error: input: {src} already has a column 'loss', which score writes; rename or drop it first (score adds loss, logprob_sum, tokens)"
    )


def test_score_names_the_row_longer_than_max_tokens(tmp_path, model_dir):
    src = tmp_path / "tok.parquet"
    pq.write_table(pa.table({"ids": pa.array([[1, 2], [3], [4, 5, 6, 7, 8, 9]], pa.list_(pa.int32()))}), src)
    res = runner.invoke(app, ["score", str(src), str(tmp_path / "o"), "--model", str(model_dir), "--max-tokens", "4",
                              "--tokens-column", "ids", "--shard-rows", "2"])  # fmt: skip
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1] == (
        f"error: input: {src} row 2 has 6 tokens, more than --max-tokens 4; raise --max-tokens to at least 6 (score never cuts a row)"
    )
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_sigkilled_score_resumes_to_the_same_bytes(tmp_path, model_dir):
    texts = [t[:400] for t in load_texts("alpaca")[:200]]
    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    args = ["--model", model_dir, "--max-tokens", 256, "--shard-rows", 4]
    cmd = [sys.executable, "-m", "packwise.cli.app", "score", str(src), str(tmp_path / "killed")] + [str(a) for a in args]
    killed_at, proc = kill_after_shards(cmd, tmp_path / "killed", 3, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (tmp_path / "killed" / "manifest.json").exists()
    partial = len(list((tmp_path / "killed").glob("shard-*.parquet")))

    resumed = invoke("score", src, tmp_path / "killed", *args)
    assert resumed.exit_code == 0, resumed.output
    assert f"resumed after {partial} complete shards" in resumed.output
    clean = invoke("score", src, tmp_path / "clean", *args)
    assert clean.exit_code == 0
    names = sorted(p.name for p in (tmp_path / "clean").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "killed").iterdir())
    assert sum(n.startswith("shard-") for n in names) == 50 and "manifest.json" in names
    for name in names:
        assert (tmp_path / "clean" / name).read_bytes() == (tmp_path / "killed" / name).read_bytes(), name
