"""Preference (DPO) and KTO files through ``packwise pack`` (issue 23 item 2): each pair stored whole
as one sequence, read back by ``PackedDataset`` for ``PairCollator``; the DPO loss of the packed
batches equals the unpacked loss on a tiny Llama; KTO keeps its boolean label per sequence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from conftest import shared_data_dir
from packwise.cli.app import app
from packwise.packing import pair_lengths, pair_logps
from packwise.pipeline import PackedDataset
from packwise.pipeline.preference import pair_of
from packwise.pipeline.tokenizer import train_byte_bpe

runner = CliRunner()
transformers = pytest.importorskip("transformers", reason="transformers is a test extra (pip install packwise[dev])")


@pytest.fixture(scope="module")
def alpaca() -> list[dict]:
    return json.loads((shared_data_dir() / "alpaca_en_demo.json").read_text(encoding="utf-8"))[:41]


@pytest.fixture(scope="module")
def chat_tok(alpaca, tmp_path_factory):
    tok = train_byte_bpe([r["instruction"] + r["output"] for r in alpaca], vocab_size=1024, special_tokens=("<|im_start|>", "<|im_end|>"))
    path = tmp_path_factory.mktemp("chat") / "tokenizer.json"
    tok.save(str(path))
    return tok, path


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _dpo_rows(alpaca) -> list[dict]:
    """40 real pairs: an instruction, its own output (chosen) and the next row's (rejected)."""
    return [{"prompt": r["instruction"] + "\n", "chosen": r["output"], "rejected": alpaca[i + 1]["output"]} for i, r in enumerate(alpaca[:40])]


def _pack(src, out, tok_file, *extra, max_tokens="2048"):
    return runner.invoke(app, ["pack", str(src), str(out), "--max-tokens", max_tokens, "--tokenizer", str(tok_file), *extra])


def _stored_pairs(out: Path) -> dict[int, dict]:
    """Input row -> the pair ``PackedDataset`` rebuilds from the shards."""
    ds = PackedDataset(out)
    got = {}
    for i in range(len(ds)):
        row = ds[i]
        for src, pair in zip(row["source_index"], ds.collate.pairs([row])):
            got[int(src)] = pair
    return got


@pytest.mark.parametrize("share", [False, True])
def test_dpo_file_packs_each_pair_whole_and_reads_back_exactly(tmp_path, alpaca, tokenizer, tok_file, share):
    rows = _dpo_rows(alpaca)
    result = _pack(_write(tmp_path / "dpo.jsonl", rows), tmp_path / "out", tok_file, *(["--share-prompt"] if share else []))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "layout: dpo (prompt, chosen, rejected) -> preference pairs, labels on chosen and rejected responses"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["settings"]["layout"] == "dpo" and manifest["settings"]["share_prompt"] is share
    assert manifest["stats"]["pairs"] == 40 and manifest["stats"]["unlabeled_sequences"] == 0
    enc = lambda t: tokenizer.encode(t, add_special_tokens=False).ids  # noqa: E731
    expected = [{"prompt_ids": enc(r["prompt"]), "chosen_ids": enc(r["chosen"]), "rejected_ids": enc(r["rejected"])} for r in rows]
    got = _stored_pairs(tmp_path / "out")
    assert [got[i] for i in range(40)] == expected
    # the packer's cost of a pair is exactly what PairCollator lays out
    ds = PackedDataset(tmp_path / "out")
    seq_lens = {int(s): int(n) for i in range(len(ds)) for s, n in zip(ds[i]["source_index"], ds[i]["seq_lens"])}
    assert [seq_lens[i] for i in range(40)] == pair_lengths(expected, share_prompt=share).tolist()
    assert manifest["stats"]["tokens_out"] == int(pair_lengths(expected, share_prompt=share).sum())


def test_shared_prompt_rows_fill_as_full_as_unshared(tmp_path, alpaca, tok_file):
    src = _write(tmp_path / "dpo.jsonl", _dpo_rows(alpaca))
    stats = {}
    for share in (False, True):
        out = tmp_path / f"out{share}"
        assert _pack(src, out, tok_file, *(["--share-prompt"] if share else []), "--algorithm", "bfd", max_tokens="1024").exit_code == 0
        stats[share] = json.loads((out / "manifest.json").read_text())["stats"]
    for share in (False, True):  # within one row of the lower bound: the packer's cost is the laid-out length
        assert stats[share]["rows_out"] - stats[share]["lower_bound_l1"] <= 1, stats[share]
    assert stats[True]["rows_out"] < stats[False]["rows_out"]


def test_llama_factory_conversations_and_question_prompts(tmp_path, alpaca, chat_tok):
    tok, path = chat_tok
    r0, r1 = alpaca[0], alpaca[1]
    lf = [{"conversations": [{"from": "human", "value": r0["instruction"]}],
           "chosen": {"from": "gpt", "value": r0["output"]}, "rejected": {"from": "gpt", "value": r1["output"]}}]  # fmt: skip
    (tmp_path / "lf.json").write_text(json.dumps(lf), encoding="utf-8")
    result = _pack(tmp_path / "lf.json", tmp_path / "lf", path)
    assert result.exit_code == 0, result.output
    pair = _stored_pairs(tmp_path / "lf")[0]
    dec = lambda ids: tok.decode(ids, skip_special_tokens=False)  # noqa: E731
    assert dec(pair["prompt_ids"]) == f"<|im_start|>user\n{r0['instruction']}<|im_end|>\n<|im_start|>assistant\n"
    assert (dec(pair["chosen_ids"]), dec(pair["rejected_ids"])) == (r0["output"] + "<|im_end|>", r1["output"] + "<|im_end|>")
    q = _write(tmp_path / "q.jsonl", [{"question": r0["instruction"], "chosen": r0["output"], "rejected": r1["output"]}])
    assert _pack(q, tmp_path / "q", path).exit_code == 0
    assert dec(_stored_pairs(tmp_path / "q")[0]["prompt_ids"]) == r0["instruction"] + "\n\n"


def test_pair_settings_that_would_cut_a_pair_exit_2(tmp_path, alpaca, tok_file):
    src = _write(tmp_path / "dpo.jsonl", _dpo_rows(alpaca))
    cut = _pack(src, tmp_path / "a", tok_file, "--oversize", "truncate")
    assert cut.exit_code == 2 and "a preference pair is packed whole" in cut.output
    text = _write(tmp_path / "t.jsonl", [{"text": "the cat"}])
    shared = _pack(text, tmp_path / "b", tok_file, "--share-prompt")
    assert shared.exit_code == 2 and "--share-prompt applies to preference pairs" in shared.output
    assert pair_of(np.array([1, 2, 3, 1, 2, 4]), np.array([-100, -100, 3, -100, -100, 4]), False)["rejected_ids"] == [4]


def _llama(seed: int):
    cfg = transformers.LlamaConfig(vocab_size=4096, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)  # fmt: skip
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32).eval()


def _alone(model, pair) -> tuple[torch.Tensor, torch.Tensor]:
    out = []
    for resp in (pair["chosen_ids"], pair["rejected_ids"]):
        ids = torch.tensor([pair["prompt_ids"] + resp])
        logp = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0, :-1].float(), -1)
        p = len(pair["prompt_ids"])
        out.append(logp[p - 1 :].gather(1, ids[0, p:, None])[:, 0].sum())
    return out[0], out[1]


def _dpo(pc, pr, rc, rr, beta=0.1):
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()


@pytest.mark.parametrize("share", [False, True])
def test_readme_dpo_loop_packed_loss_equals_unpacked(tmp_path, alpaca, tokenizer, tok_file, share):
    """The README's DPO example: PackedDataset batches -> PairCollator -> pair_logps -> DPO loss."""
    rows = [{"prompt": r["instruction"][:60], "chosen": r["output"][:80], "rejected": alpaca[i + 1]["output"][:70]}
            for i, r in enumerate(alpaca[:12])]  # fmt: skip
    assert _pack(_write(tmp_path / "dpo.jsonl", rows), tmp_path / "out", tok_file, *(["--share-prompt"] if share else []),
                 max_tokens="256").exit_code == 0  # fmt: skip
    ds = PackedDataset(tmp_path / "out")
    policy, ref = _llama(0), _llama(1)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=ds.collate)
    got = {"pc": [], "pr": [], "rc": [], "rr": [], "order": []}
    with torch.no_grad():
        for k, batch in enumerate(loader):
            rows_k = [ds[i] for i in range(2 * k, min(2 * k + 2, len(ds)))]
            got["order"] += [int(s) for row in rows_k for s in row["source_index"]]
            scored = torch.bincount(batch["logp_sequence"])
            assert scored.shape[0] == 2 * sum(len(r["seq_lens"]) for r in rows_k) and (scored > 0).all()  # no sequence trains on nothing
            inputs = {k2: v for k2, v in batch.items() if not k2.startswith("logp_") and k2 not in ("labels", "example_index")}
            for model, (c_key, r_key) in ((policy, ("pc", "pr")), (ref, ("rc", "rr"))):
                c, r = pair_logps(model(**inputs).logits, batch)
                got[c_key].append(c)
                got[r_key].append(r)
        assert sorted(got["order"]) == list(range(12))
        packed = {key: torch.cat(got[key]) for key in ("pc", "pr", "rc", "rr")}
        pairs = _stored_pairs(tmp_path / "out")
        alone = {key: torch.zeros(12) for key in ("pc", "pr", "rc", "rr")}
        for pos, src in enumerate(got["order"]):
            alone["pc"][pos], alone["pr"][pos] = _alone(policy, pairs[src])
            alone["rc"][pos], alone["rr"][pos] = _alone(ref, pairs[src])
    assert (packed["pc"] - alone["pc"]).abs().max() < 1e-4 and (packed["pr"] - alone["pr"]).abs().max() < 1e-4
    loss_packed = _dpo(packed["pc"], packed["pr"], packed["rc"], packed["rr"])
    loss_alone = _dpo(alone["pc"], alone["pr"], alone["rc"], alone["rr"])
    assert abs(float(loss_packed) - float(loss_alone)) < 1e-5


@pytest.mark.parametrize("kind", ["completion", "messages"])
def test_kto_keeps_its_label_per_sequence(tmp_path, alpaca, chat_tok, kind):
    tok, path = chat_tok
    if kind == "completion":
        rows = [{"prompt": r["instruction"] + "\n", "completion": alpaca[i + i % 2]["output"], "label": i % 3 == 0}
                for i, r in enumerate(alpaca[:30])]  # fmt: skip
        line = "layout: kto (prompt, completion + label) -> KTO, per-sequence boolean label"
    else:
        rows = [{"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": alpaca[i + i % 2]["output"]}],
                 "label": i % 3 == 0} for i, r in enumerate(alpaca[:30])]  # fmt: skip
        line = "layout: kto (messages + label) -> KTO, per-sequence boolean label (ChatML)"
    result = _pack(_write(tmp_path / "kto.jsonl", rows), tmp_path / "out", path, max_tokens="1024")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == line
    ds = PackedDataset(tmp_path / "out")
    seen = []
    for i in range(len(ds)):
        row = ds[i]
        assert row["label"].tolist() == [rows[int(s)]["label"] for s in row["source_index"]]
        seen += row["source_index"].tolist()
    assert sorted(seen) == list(range(30))
    batch = ds.collate([ds[0], ds[1]])
    assert batch["label"].tolist() == ds[0]["label"].tolist() + ds[1]["label"].tolist()
    assert batch["label"].dtype == torch.bool and batch["label"].shape[0] == len(ds[0]["seq_lens"]) + len(ds[1]["seq_lens"])
