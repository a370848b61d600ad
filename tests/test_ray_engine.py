"""``--engine ray`` against the local engine on real data, on a real local Ray (2 CPUs): the workers
write the shards and the driver commits; packing keeps every token once within 0.1 points of the
local padding (tail pass), one block is byte-identical to local, an interrupted run and a killed
worker resume to the same bytes, ``PackedDataset`` reads it, ``select`` keeps the same rows with
the same decisions, and a missing Ray names the extra."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import load_texts, shared_data_dir
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


def test_pack_ray_tail_pass_every_token_once_within_a_tenth_of_a_point_and_packed_dataset_reads_it(tmp_path, corpus, tokenizer):
    """4 blocks written by the workers, the tail pass on the driver: every token once, padding within
    0.1 points of local, the local manifest keys and summary, and ``PackedDataset`` reads every row."""
    from packwise.pipeline import PackedDataset

    d, texts = corpus
    args = [d / "corpus.jsonl", "--max-tokens", 2048, "--tokenizer", d / "tokenizer.json", "--oversize", "split", "--window", 1000]
    local = invoke("pack", args[0], tmp_path / "local", *args[1:])
    assert local.exit_code == 0, local.output
    far = invoke("pack", args[0], tmp_path / "ray", *args[1:], "--engine", "ray", "--block-rows", 2500, "--tail-pass")
    assert far.exit_code == 0, far.output
    ids = encode(tokenizer, texts)
    check_round_trip(tmp_path / "ray", ids, 2048, "split", "window_bfd")
    lo, got = read_shards(tmp_path / "local")["manifest"], read_shards(tmp_path / "ray")
    hi = got["manifest"]
    assert hi["settings"] == {**lo["settings"], "engine": "ray", "block_rows": 2500, "tail_pass": True}
    assert sorted(hi) == sorted(lo) and sorted(hi["stats"]) == sorted(lo["stats"])
    for key in ("rows_in", "empty_rows", "sequences", "tokens_in", "tokens_out", "max_length", "length_histogram"):
        assert hi["stats"][key] == lo["stats"][key], key
    assert hi["stats"]["padding_after"] < lo["stats"]["padding_after"] + 0.001  # here 0.24% vs 0.39%: the tail is repacked once more
    assert hi["stats"]["rows_out"] == len(got["input_ids"]) == sum(s["rows"] for s in hi["shards"])
    files = [s["file"] for s in hi["shards"]]
    assert {f.rsplit("-", 1)[0] for f in files} == {"shard-000000", "shard-000001", "shard-000002", "shard-000003", "shard-tail"}
    assert files == sorted(files) and sorted(os.listdir(tmp_path / "ray")) == sorted(files + ["manifest.json"])
    ds = PackedDataset(tmp_path / "ray")
    assert len(ds) == len(got["input_ids"])
    for i in range(0, len(ds), 97):
        row = ds[i]
        assert row["input_ids"].tolist() == got["input_ids"][i] and row["source_index"].tolist() == got["source_index"][i]
    last = len(ds) - 1  # a tail-pass row
    batch = ds.collate([ds[0], ds[last]])
    assert batch["input_ids"].shape == (2, 2048) and batch["input_ids"][1, : len(got["input_ids"][last])].tolist() == got["input_ids"][last]
    assert batch["position_ids"][1, : len(got["input_ids"][last])].tolist() == [p for n in got["seq_lens"][last] for p in range(n)]
    # the summary has the local lines; a rerun is up to date; a local run into the ray output is refused
    strip = [line.split("│")[1].strip() for line in far.output.splitlines() if line.count("│") == 3]
    assert strip == [line.split("│")[1].strip() for line in local.output.splitlines() if line.count("│") == 3]
    assert f"{100 * hi['stats']['padding_after']:.2f}%" in far.output
    rerun = invoke("pack", args[0], tmp_path / "ray", *args[1:], "--engine", "ray", "--block-rows", 2500, "--tail-pass")
    assert "is up to date" in rerun.output
    refused = runner.invoke(app, [str(a) for a in ["pack", args[0], tmp_path / "ray", *args[1:]]])
    assert refused.exit_code == 2 and "engine: 'ray' -> 'local'" in refused.output


def test_one_block_with_a_seed_is_byte_identical_to_local(tmp_path, corpus):
    from packwise.pipeline import pack_to_parquet

    d, _ = corpus
    kw = dict(max_tokens=1024, tokenizer=d / "tokenizer.json", oversize="truncate", window=700, seed=7, shard_rows=64)
    a = pack_to_parquet(d / "corpus.jsonl", tmp_path / "a", **kw)
    b = pack_to_parquet(d / "corpus.jsonl", tmp_path / "b", engine="ray", block_rows=10**6, **kw)
    assert a.manifest["stats"] == b.manifest["stats"] and len(a.manifest["shards"]) == len(b.manifest["shards"]) > 1
    for k, (s, t) in enumerate(zip(a.manifest["shards"], b.manifest["shards"])):
        assert t["file"] == f"shard-000000-{k:04d}.parquet" and {**t, "file": s["file"]} == s
        assert (tmp_path / "a" / s["file"]).read_bytes() == (tmp_path / "b" / t["file"]).read_bytes()


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, tokenizer):
    """A Parquet token column with labels (the second half of each row trained on), 6 blocks of 250
    rows, and the uninterrupted Ray run every interrupted one must equal."""
    from packwise.pipeline import pack_to_parquet

    ids = encode(tokenizer, load_texts("alpaca") + load_texts("c4"))
    labels = [[-100] * (len(x) // 2) + x[len(x) // 2 :] for x in ids]
    d = tmp_path_factory.mktemp("ray-labels")
    src = d / "in.parquet"
    pq.write_table(pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32())), "labels": pa.array(labels, pa.list_(pa.int32()))}), src, row_group_size=200)
    kw = dict(max_tokens=1024, tokens_column="input_ids", labels_column="labels", oversize="split", window=300, shard_rows=40,
              seed=3, engine="ray", block_rows=250, tail_pass=True)  # fmt: skip
    full = pack_to_parquet(src, d / "full", **kw)
    return src, ids, labels, kw, full


def _same_output(out, full) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shards"] == full.manifest["shards"] and manifest["stats"] == full.manifest["stats"]
    for s in full.manifest["shards"]:
        assert (out / s["file"]).read_bytes() == (full.output / s["file"]).read_bytes(), s["file"]
    assert sorted(os.listdir(out)) == sorted([s["file"] for s in full.manifest["shards"]] + ["manifest.json"])  # no temp, no records


def test_labels_round_trip_and_an_interrupted_run_resumes_block_by_block_to_the_same_bytes(tmp_path, labelled):
    """The driver dies after 3 blocks (its in-flight tasks stop at their next file); one finished shard is then
    truncated. The rerun keeps the intact blocks' files untouched, redoes the rest, equals the whole run."""
    from packwise.pipeline import pack_to_parquet

    src, ids, labels, kw, full = labelled
    check_round_trip(full.output, ids, 1024, "split", "window_bfd")
    got = read_shards(full.output)
    for r, (src_rows, starts, lens) in enumerate(zip(got["source_index"], got["source_start"], got["seq_lens"])):
        pos = 0
        for s_, st, n in zip(src_rows, starts, lens):
            assert got["labels"][r][pos : pos + n] == labels[s_][st : st + n]
            pos += n
    assert len(full.manifest["shards"]) >= 10 and full.manifest["stats"]["rows_in"] == len(ids) > 5 * 250  # 6 blocks

    class Killed(Exception):
        pass

    blocks = []

    def die(rows, tokens):
        blocks.append(rows)
        if len(blocks) == 3:
            raise Killed

    part = tmp_path / "part"
    with pytest.raises(Killed):
        pack_to_parquet(src, part, progress=die, **kw)
    assert not (part / "manifest.json").exists() and (part / ".packwise-run.json").exists()
    assert _block_workers() == [] and not list(part.glob(".packwise-blocks/stop-*"))  # every task stopped first
    done = sorted(int(p.stem.split("-")[1]) for p in (part / ".packwise-blocks").glob("block-*.json"))
    assert len(done) >= 3
    kept = [p for p in sorted(part.glob("shard-*.parquet")) if int(p.name.split("-")[1]) in done[1:]]
    before = {p.name: p.stat().st_mtime_ns for p in kept}
    broken = next(p for p in sorted(part.glob("shard-*.parquet")) if int(p.name.split("-")[1]) == done[0])
    broken.write_bytes(broken.read_bytes()[:-100])  # a shard cut short: its block is redone
    seen = []
    resumed = pack_to_parquet(src, part, progress=lambda r, t: seen.append(r), **kw)
    assert resumed.state == "resume" and resumed.resumed_shards == len(before)
    assert sum(seen) == len(ids)  # skipped blocks are reported too
    assert {p.name: p.stat().st_mtime_ns for p in kept} == before  # intact blocks were not rewritten
    _same_output(part, full)


def _block_workers() -> list[int]:
    """PIDs of this Ray session's workers running a pack block now (Ray titles them ``ray::<task>``)."""
    session = ray._private.worker._global_node.session_name.encode()
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if not open(f"/proc/{pid}/cmdline", "rb").read().startswith(b"ray::_pack_write_block"):
                continue
            ppid = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1]
            if session in open(f"/proc/{ppid}/cmdline", "rb").read():
                pids.append(int(pid))
        except OSError:
            continue
    return pids


def test_a_worker_killed_mid_block_leaves_no_shard_the_manifest_names(tmp_path, labelled):
    """SIGKILL the Ray worker packing a block once it has published part of the block's shards and
    not its record: Ray reruns the task, and the output equals the uninterrupted run's."""
    import signal
    import threading

    from packwise.pipeline import pack_to_parquet

    src, _, _, kw, full = labelled
    out = tmp_path / "out"
    result, killed = {}, []
    kw = {**kw, "shard_rows": 4}  # many small shards: a block takes long enough to be caught halfway
    ref = pack_to_parquet(src, tmp_path / "ref", **kw)
    thread = threading.Thread(target=lambda: result.setdefault("r", pack_to_parquet(src, out, **kw)))
    thread.start()
    while thread.is_alive() and not killed:
        time.sleep(0.005)
        records = {p.stem.split("-")[1] for p in (out / ".packwise-blocks").glob("block-*.json")}
        halfway = {p.name.split("-")[1] for p in out.glob("shard-*-0003.parquet")} - records
        if halfway:
            for pid in _block_workers():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append((pid, sorted(halfway)))
    thread.join(timeout=300)
    assert killed and "r" in result, "no worker was caught mid-block"
    assert result["r"].manifest["stats"] == ref.manifest["stats"]
    _same_output(out, ref)
def test_pack_ray_bad_input_names_the_global_row(tmp_path, corpus):
    d, texts = corpus
    lengths = [len(x) for x in encode(__import__("tokenizers").Tokenizer.from_file(str(d / "tokenizer.json")), texts)]
    first_long = next(i for i, n in enumerate(lengths) if n > 512)
    r = runner.invoke(app, ["pack", str(d / "corpus.jsonl"), str(tmp_path / "o"), "--max-tokens", "512", "--tokenizer",
                            str(d / "tokenizer.json"), "--engine", "ray", "--block-rows", "3000"])  # fmt: skip
    assert r.exit_code == 2, r.output
    assert f"{d / 'corpus.jsonl'} row {first_long} has {lengths[first_long]} tokens, more than --max-tokens 512" in r.output
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
    assert mr["rows_out"] == ml["rows_out"] and [s["rows"] for s in mr["shards"]] == [s["rows"] for s in ml["shards"]]
    assert [s["name"] for s in mr["shards"]] == [f"shard-000000-{k:04d}.parquet" for k in range(len(ml["shards"]))]  # one block
    assert mr["settings"] == {**ml["settings"], "engine": "ray"}
    assert mr["decisions"] == "decisions.parquet" and mr["decisions_parts"] == ["decisions.parquet/part-000000.parquet"]
    for s, t in zip(ml["shards"], mr["shards"]):  # the kept rows, written by the workers
        assert pq.read_table(outs["ray"] / t["name"]).equals(pq.read_table(outs["local"] / s["name"]))
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


def test_all_masked_sequences_refused_and_counted_as_the_local_engine_does(tmp_path, tokenizer):
    """A chat file whose rows 2 and 4 have no assistant turn (all labels -100), in blocks of 2 rows:
    the same exit code and message on both engines, and with --allow-unlabeled the same count."""
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    texts = load_texts("alpaca")[:6]
    rows = [{"messages": [{"role": "user", "content": t}] + ([] if i in (2, 4) else [{"role": "assistant", "content": t[::-1]}])}
            for i, t in enumerate(texts)]  # fmt: skip
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["pack", tmp_path / "chat.jsonl", None, "--max-tokens", 4096, "--tokenizer", tmp_path / "tokenizer.json", "--chat-template", "chatml"]
    engines = {"local": [], "ray": ["--engine", "ray", "--block-rows", 2]}
    refused, kept = {}, {}
    for name, extra in engines.items():
        args = [str(a) for a in base[:2] + [tmp_path / f"{name}-refused"] + base[3:] + extra]
        refused[name] = runner.invoke(app, args)
        assert not (tmp_path / f"{name}-refused" / "manifest.json").exists()
        args = [str(a) for a in base[:2] + [tmp_path / name] + base[3:] + extra + ["--allow-unlabeled"]]
        kept[name] = runner.invoke(app, args)
        assert kept[name].exit_code == 0, kept[name].output
    error = [line for line in refused["local"].output.splitlines() if line.startswith("error:")]
    assert error == ["error: input row 2: every label is -100, so it would train on nothing (a chat with no assistant turn, or an "
                     "empty response); drop or fix the row, or pass --allow-unlabeled to keep such rows"]  # fmt: skip
    assert refused["ray"].exit_code == refused["local"].exit_code == 2
    assert [line for line in refused["ray"].output.splitlines() if line.startswith("error:")] == error
    stats = {name: json.loads((tmp_path / name / "manifest.json").read_text())["stats"] for name in engines}
    assert stats["ray"]["unlabeled_sequences"] == stats["local"]["unlabeled_sequences"] == 2
    assert stats["ray"]["sequences"] == stats["local"]["sequences"] == 6


@pytest.mark.parametrize("share", [False, True])
def test_dpo_pack_on_ray_equals_local_and_kto_is_refused(tmp_path, tokenizer, share):
    """A real DPO file (alpaca instructions; the next row's output rejected) in one Ray block: the
    same stats (pairs, no unlabeled sequence) and the same shard bytes as the local engine."""
    from packwise.pipeline import PackedDataset, pack_to_parquet

    tokenizer.save(str(tmp_path / "tokenizer.json"))
    rows = json.loads((shared_data_dir() / "alpaca_en_demo.json").read_text(encoding="utf-8"))[:31]
    pairs = [{"prompt": r["instruction"] + "\n", "chosen": r["output"], "rejected": rows[i + 1]["output"]} for i, r in enumerate(rows[:30])]
    (tmp_path / "dpo.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    kw = dict(max_tokens=2048, tokenizer=tmp_path / "tokenizer.json", seed=5, share_prompt=share)
    a = pack_to_parquet(tmp_path / "dpo.jsonl", tmp_path / "local", **kw)
    b = pack_to_parquet(tmp_path / "dpo.jsonl", tmp_path / "ray", engine="ray", block_rows=10**6, **kw)
    assert a.manifest["stats"] == b.manifest["stats"] and b.manifest["stats"]["pairs"] == 30
    assert b.manifest["stats"]["unlabeled_sequences"] == 0
    assert b.manifest["settings"] == {**a.manifest["settings"], "engine": "ray", "block_rows": 10**6, "tail_pass": False}
    for s, t in zip(a.manifest["shards"], b.manifest["shards"], strict=True):
        assert (tmp_path / "local" / s["file"]).read_bytes() == (tmp_path / "ray" / t["file"]).read_bytes()
    ds = PackedDataset(tmp_path / "ray")
    got = {int(src): pair for i in range(len(ds)) for src, pair in zip(ds[i]["source_index"], ds.collate.pairs([ds[i]]))}
    enc = lambda t: tokenizer.encode(t, add_special_tokens=False).ids  # noqa: E731
    assert [got[i] for i in range(30)] == [{"prompt_ids": enc(p["prompt"]), "chosen_ids": enc(p["chosen"]), "rejected_ids": enc(p["rejected"])}
                                         for p in pairs]  # fmt: skip
    kto = tmp_path / "kto.jsonl"
    kto.write_text("".join(json.dumps({"prompt": p["prompt"], "completion": p["chosen"], "label": i % 2 == 0}) + "\n" for i, p in enumerate(pairs)))
    r = runner.invoke(app, ["pack", str(kto), str(tmp_path / "kto"), "--max-tokens", "2048", "--tokenizer", str(tmp_path / "tokenizer.json"), "--engine", "ray"])
    assert r.exit_code == 2 and "layout kto: the Ray engine does not carry the per-sequence 'label' column; pack this input with --engine local" in r.output
