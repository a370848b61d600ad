"""``--engine ray`` against the local engine on real data, on a real local Ray (2 CPUs): packing keeps
every token once at the local efficiency, one block is byte-identical to local, ``select`` keeps the
same rows with the same decisions, and a missing Ray names the extra."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import load_texts
from test_pipeline_pack import check_round_trip, read_shards
from typer.testing import CliRunner

from packwise.cli.app import app
from packwise.pipeline.tokens import encode

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'packwise[ray]')")
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One real local Ray for the module: 2 CPUs, no dashboard, a small object store; shut down after."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import logging

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=400 << 20, log_to_driver=False, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tokenizer):
    """Every shared corpus as one JSON Lines file (9.2k real rows), with the tokenizer saved beside it."""
    d = tmp_path_factory.mktemp("ray-pack")
    texts = load_texts("ag_news") + load_texts("alpaca") + load_texts("c4") + load_texts("glaive") + [""]
    (d / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tokenizer.save(str(d / "tokenizer.json"))
    return d, texts


def test_pack_ray_keeps_every_token_once_at_the_local_efficiency(tmp_path, corpus, tokenizer):
    d, texts = corpus
    args = [d / "corpus.jsonl", "--max-tokens", 2048, "--tokenizer", d / "tokenizer.json", "--oversize", "split", "--window", 1000]
    local = invoke("pack", args[0], tmp_path / "local", *args[1:])
    assert local.exit_code == 0, local.output
    far = invoke("pack", args[0], tmp_path / "ray", *args[1:], "--engine", "ray", "--block-rows", 2500)
    assert far.exit_code == 0, far.output
    ids = encode(tokenizer, texts)
    check_round_trip(tmp_path / "ray", ids, 2048, "split", "window_bfd")
    lo, hi = read_shards(tmp_path / "local")["manifest"], read_shards(tmp_path / "ray")["manifest"]
    assert hi["settings"] == {**lo["settings"], "engine": "ray", "block_rows": 2500}
    assert sorted(hi) == sorted(lo) and sorted(hi["stats"]) == sorted(lo["stats"])
    for key in ("rows_in", "empty_rows", "sequences", "tokens_in", "tokens_out", "max_length", "length_histogram"):
        assert hi["stats"][key] == lo["stats"][key], key
    assert abs(hi["stats"]["padding_after"] - lo["stats"]["padding_after"]) < 0.005
    assert hi["stats"]["windows"] > lo["stats"]["windows"]  # four blocks: windows were cut at block ends
    # the summary has the same lines, the numbers of the ray run
    strip = [line.split("│")[1].strip() for line in far.output.splitlines() if line.count("│") == 3]
    assert strip == [line.split("│")[1].strip() for line in local.output.splitlines() if line.count("│") == 3]
    assert f"{100 * hi['stats']['padding_after']:.2f}%" in far.output
    # a rerun is up to date; a local run into the ray output is refused (the packing differs)
    assert "is up to date" in invoke("pack", args[0], tmp_path / "ray", *args[1:], "--engine", "ray", "--block-rows", 2500).output
    refused = runner.invoke(app, [str(a) for a in ["pack", args[0], tmp_path / "ray", *args[1:]]])
    assert refused.exit_code == 2 and "engine: 'ray' -> 'local'" in refused.output


def test_one_block_with_a_seed_is_byte_identical_to_local(tmp_path, corpus):
    from packwise.pipeline import pack_to_parquet

    d, _ = corpus
    kw = dict(max_tokens=1024, tokenizer=d / "tokenizer.json", oversize="truncate", window=700, seed=7, shard_rows=64)
    a = pack_to_parquet(d / "corpus.jsonl", tmp_path / "a", **kw)
    b = pack_to_parquet(d / "corpus.jsonl", tmp_path / "b", engine="ray", block_rows=10**6, **kw)
    assert a.manifest["shards"] == b.manifest["shards"] and a.manifest["stats"] == b.manifest["stats"]
    for s in a.manifest["shards"]:
        assert (tmp_path / "a" / s["file"]).read_bytes() == (tmp_path / "b" / s["file"]).read_bytes()


def test_pack_ray_parquet_token_column_with_labels_resumes_like_local(tmp_path, tokenizer):
    """A token column + labels from Parquet; a killed run (shards, no manifest) resumes to the same bytes."""
    from packwise.pipeline import pack_to_parquet

    ids = encode(tokenizer, load_texts("alpaca") + load_texts("c4"))
    labels = [[-100] * (len(x) // 2) + x[len(x) // 2 :] for x in ids]
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32())), "labels": pa.array(labels, pa.list_(pa.int32()))}), src, row_group_size=200)
    kw = dict(max_tokens=1024, tokens_column="input_ids", labels_column="labels", oversize="split", window=300, shard_rows=40, engine="ray", block_rows=400)
    full = pack_to_parquet(src, tmp_path / "full", **kw)
    check_round_trip(tmp_path / "full", ids, 1024, "split", "window_bfd")
    got = read_shards(tmp_path / "full")
    flat_ids = [t for row in got["input_ids"] for t in row]
    flat_lab = [t for row in got["labels"] for t in row]
    for r, (src_rows, starts, lens) in enumerate(zip(got["source_index"], got["source_start"], got["seq_lens"])):
        pos = 0
        for s_, st, n in zip(src_rows, starts, lens):
            assert got["labels"][r][pos : pos + n] == labels[s_][st : st + n]
            pos += n
    assert len(flat_ids) == len(flat_lab) == sum(map(len, ids))
    # simulate a kill after 3 shards: drop the manifest and later shards, keep the run marker
    part = tmp_path / "part"
    pack_to_parquet(src, part, **kw)
    run = {"format": "packwise.packed/1", "fingerprint": full.manifest["fingerprint"], "settings": full.manifest["settings"]}
    (part / ".packwise-run.json").write_text(json.dumps(run))
    (part / "manifest.json").unlink()
    for s in full.manifest["shards"][3:]:
        (part / s["file"]).unlink()
    resumed = pack_to_parquet(src, part, **kw)
    assert resumed.state == "resume" and resumed.resumed_shards == 3
    for s in full.manifest["shards"]:
        assert (part / s["file"]).read_bytes() == (tmp_path / "full" / s["file"]).read_bytes()
    assert resumed.manifest["stats"] == full.manifest["stats"]


def test_pack_ray_bad_input_names_the_global_row(tmp_path, corpus):
    d, texts = corpus
    lengths = [len(x) for x in encode(__import__("tokenizers").Tokenizer.from_file(str(d / "tokenizer.json")), texts)]
    first_long = next(i for i, n in enumerate(lengths) if n > 512)
    r = runner.invoke(app, ["pack", str(d / "corpus.jsonl"), str(tmp_path / "o"), "--max-tokens", "512", "--tokenizer",
                            str(d / "tokenizer.json"), "--engine", "ray", "--block-rows", "3000"])  # fmt: skip
    assert r.exit_code == 2, r.output
    assert f"input row {first_long} has {lengths[first_long]} tokens, more than --max-tokens 512" in r.output
    r = runner.invoke(app, ["pack", str(d / "corpus.jsonl"), str(tmp_path / "o2"), "--max-tokens", "512", "--tokenizer",
                            str(d / "tokenizer.json"), "--engine", "spark"])  # fmt: skip
    assert r.exit_code == 2 and "--engine spark: use one of local, ray" in r.output
    nulls = tmp_path / "nulls.jsonl"
    nulls.write_text('{"text": "fine"}\n{"text": null}\n')
    r = runner.invoke(app, ["pack", str(nulls), str(tmp_path / "o3"), "--max-tokens", "512", "--tokenizer", str(d / "tokenizer.json"), "--engine", "ray"])
    assert r.exit_code == 2 and "column 'text' is null; drop or fill that row" in r.output and "Failed to apply UDF" not in r.output


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    from _embedded_corpus import corpus as embedded_corpus

    c = embedded_corpus()
    path = tmp_path_factory.mktemp("ray-sel") / "in.parquet"
    table = pa.table({"text": c.texts, "source": c.source.tolist(), "emb": pa.array(list(c.embeddings), pa.list_(pa.float32()))})
    pq.write_table(table, path, row_group_size=50)
    return path, c


@pytest.mark.parametrize(
    "extra",
    [
        ["--method", "dedup", "--k", 4, "--eps", 0.05, "--exact-column", "text"],
        ["--method", "dedup", "--k", 3, "--eps", 0.1, "--order", "random", "--max-points-per-centroid", 40],
        ["--method", "prototypes", "--k", 4, "--keep", 0.5],
        ["--method", "balance", "--k", 4, "--target", 90],
    ],
    ids=["dedup-exact", "dedup-random-sampled", "prototypes", "balance"],
)
def test_select_ray_equals_local(tmp_path, embedded, extra):
    path, c = embedded
    base = ["select", path, None, "--embeddings-column", "emb", "--shard-rows", 100, *extra]
    outs = {}
    for engine in ("local", "ray"):
        args = list(base)
        args[2] = tmp_path / engine
        r = invoke(*args, "--engine", engine)
        assert r.exit_code == 0, r.output
        outs[engine] = tmp_path / engine
    lo, hi = (pq.read_table(outs[e] / "decisions.parquet") for e in ("local", "ray"))
    assert hi.schema == lo.schema
    for name in lo.column_names:  # every column, bit for bit: kept, reason, cluster, rank, duplicate_of, similarities
        a, b = (t.column(name).to_numpy(zero_copy_only=False) for t in (lo, hi))
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name
    ml, mr = (json.loads((outs[e] / "manifest.json").read_text()) for e in ("local", "ray"))
    assert mr["rows_out"] == ml["rows_out"] and mr["shards"] == ml["shards"]
    assert mr["settings"] == {**ml["settings"], "engine": "ray"}
    for s in ml["shards"]:
        assert pq.read_table(outs["ray"] / s["name"]).equals(pq.read_table(outs["local"] / s["name"]))
    assert np.array_equal(np.load(outs["ray"] / "clusters" / "centroids.npy"), np.load(outs["local"] / "clusters" / "centroids.npy"))
    if extra[1] == "dedup":
        assert 0 < mr["rows_out"] < mr["rows_in"] == len(c.texts)


def test_select_ray_refuses_what_it_does_not_run(tmp_path, embedded):
    path, _ = embedded
    r = runner.invoke(app, ["select", str(path), str(tmp_path / "a"), "--method", "score", "--score-column", "x", "--engine", "ray"])
    assert r.exit_code == 2 and "--method score runs on --engine local only" in r.output
    r = runner.invoke(app, ["select", str(path), str(tmp_path / "b"), "--method", "dedup", "--model", "m", "--engine", "ray"])
    assert r.exit_code == 2 and "--engine ray reads vectors from --embeddings-column" in r.output
    r = runner.invoke(app, ["select", str(path), str(tmp_path / "c"), "--method", "dedup", "--embeddings-column", "text", "--engine", "ray"])
    assert r.exit_code == 2 and "column 'text': type string is not a list of floats" in r.output  # raised on a worker


def test_without_ray_the_message_names_the_extra(tmp_path, corpus):
    """A real failed import: a meta-path finder in sitecustomize refuses ``ray`` in a fresh process."""
    d, _ = corpus
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent('''
        import sys
        class _NoRay:
            def find_spec(self, name, path=None, target=None):
                if name == "ray" or name.startswith("ray."):
                    raise ModuleNotFoundError("No module named 'ray'", name="ray")
                return None
        sys.meta_path.insert(0, _NoRay())
    '''))
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for cmd in (["pack", str(d / "corpus.jsonl"), str(tmp_path / "o"), "--max-tokens", "2048", "--tokenizer", str(d / "tokenizer.json"), "--engine", "ray"],
                ["select", str(d / "corpus.jsonl"), str(tmp_path / "s"), "--method", "dedup", "--embeddings-column", "emb", "--engine", "ray"]):  # fmt: skip
        p = subprocess.run([sys.executable, "-m", "packwise.cli.app", *cmd], capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == 2, p.stderr
        assert "--engine ray needs Ray Data, which is not installed" in p.stderr and "pip install 'packwise[ray]'" in p.stderr
        assert "Traceback" not in p.stderr
        assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    code = "import packwise.pipeline.ray_engine as e\ntry:\n    e.require_ray()\nexcept ImportError as err:\n    print(type(err).__name__, isinstance(err, ValueError))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert p.stdout.strip() == "RayMissing True", p.stderr
