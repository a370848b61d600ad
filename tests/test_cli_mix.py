"""``packwise pack A B ... OUT --mix``: the five real datasets of ../shared/data mixed with no layout
flags, real subprocess CLI runs; proportions, source ids, repetitions, determinism, reruns, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import kill_after_shards, load_texts
from packwise.pipeline.tokens import encode

FILES = ("c4_demo.jsonl", "alpaca_en_demo.json", "glaive_toolcall_en_demo.json", "wiki_demo.txt", "ag_news_test.csv")
NAMES = ["c4_demo", "alpaca_en_demo", "glaive_toolcall_en_demo", "wiki_demo", "ag_news_test"]
LAYOUTS = ["text", "alpaca", "conversations", "text", "headerless_csv"]
CAP = 2048
WEIGHTED = "c4_demo=1,alpaca_en_demo=1,glaive_toolcall_en_demo=1,wiki_demo=5,ag_news_test=2"


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "packwise.cli.app", *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def five(shared_data) -> list[Path]:
    return [shared_data / f for f in FILES]


def mix_pack(five, out, tok_file, *extra) -> subprocess.CompletedProcess:
    return cli("pack", *five, out, "--max-tokens", CAP, "--tokenizer", tok_file, "--oversize", "split", *extra)


@pytest.fixture(scope="module")
def natural(tmp_path_factory, five, tok_file):
    out = tmp_path_factory.mktemp("natural") / "out"
    run = mix_pack(five, out, tok_file, "--shard-rows", 100)
    assert run.returncode == 0, run.stderr
    return out, run


@pytest.fixture(scope="module")
def weighted(tmp_path_factory, five, tok_file):
    out = tmp_path_factory.mktemp("weighted") / "out"
    run = mix_pack(five, out, tok_file, "--mix", WEIGHTED, "--seed", 3)
    assert run.returncode == 0, run.stderr
    return out


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def shard_sequences(out: Path) -> dict[str, np.ndarray]:
    """Per sequence of every shard, in order: source id, input row, first token, length."""
    cols = {"source": [], "source_index": [], "source_start": [], "seq_lens": []}
    for s in manifest(out)["shards"]:
        table = pq.read_table(out / s["file"], columns=list(cols))
        for name in cols:
            cols[name].append(table.column(name).combine_chunks().flatten().to_numpy())
    return {k: np.concatenate(v) for k, v in cols.items()}


def check_proportions(m: dict, seqs: dict) -> None:
    """Realised = tokens / total from the shards, equal to the manifest's, within the guaranteed tolerance of the target."""
    tokens = np.bincount(seqs["source"], weights=seqs["seq_lens"], minlength=len(NAMES)).astype(np.int64)
    counts = np.bincount(seqs["source"], minlength=len(NAMES))
    tolerance = m["stats"]["proportion_tolerance"]
    assert tolerance <= 0.005
    for k, s in enumerate(m["sources"]):
        assert (s["tokens"], s["sequences"]) == (int(tokens[k]), int(counts[k]))
        assert s["realised"] == int(tokens[k]) / int(tokens.sum())
        assert abs(s["realised"] - s["target"]) <= tolerance


def test_natural_mix_of_all_five_layouts_keeps_every_token_with_its_source(natural, five, tokenizer):
    out, run = natural
    for name, layout in zip(NAMES, LAYOUTS):
        assert f"source {name}: layout: {layout} (" in run.stdout
    m = manifest(out)
    assert [s["name"] for s in m["sources"]] == NAMES and [s["layout"] for s in m["sources"]] == LAYOUTS
    assert [s["path"] for s in m["sources"]] == [str(p) for p in five]
    assert all(len(s["fingerprint"]) == 64 for s in m["sources"])
    seqs = shard_sequences(out)
    check_proportions(m, seqs)
    for s in m["sources"]:  # natural proportions: every unit once, nothing repeated or left out
        assert (s["tokens"], s["full_passes"], s["partial_units"], s["repetition"]) == (s["tokens_in"], 1, 0, 1.0)
        assert s["target"] == s["tokens_in"] / sum(x["tokens_in"] for x in m["sources"])
    assert m["stats"]["tokens_out"] == sum(s["tokens_in"] for s in m["sources"])
    assert (m["sources"][2]["rows_in"], m["sources"][4]["rows_in"]) == (300, 7600)
    # the c4 sequences hold exactly the tokens of their input rows (split pieces at source_start)
    c4 = encode(tokenizer, load_texts("c4"))
    is_c4 = seqs["source"] == 0
    rows = {}
    for s in m["shards"]:
        t = pq.read_table(out / s["file"])
        for ids, lens, src, idx, start in zip(*(t.column(c).to_pylist() for c in ("input_ids", "seq_lens", "source", "source_index", "source_start"))):
            at = 0
            for n, k, i, a in zip(lens, src, idx, start):
                if k == 0:
                    assert ids[at : at + n] == c4[i][a : a + n]
                    rows.setdefault(i, 0)
                    rows[i] += n
                at += n
    assert rows == {i: len(x) for i, x in enumerate(c4)} and int(is_c4.sum()) == m["sources"][0]["sequences"]


def test_every_shard_holds_about_the_target_mix(natural):
    """One window holds the whole stream here, yet rows are ordered by deficit: each 100-row shard is within a point."""
    out, _ = natural
    m = manifest(out)
    target = np.array([s["target"] for s in m["sources"]])
    assert len(m["shards"]) == 8
    for s in m["shards"]:
        t = pq.read_table(out / s["file"], columns=["source", "seq_lens"])
        src, lens = (t.column(c).combine_chunks().flatten().to_numpy() for c in ("source", "seq_lens"))
        share = np.bincount(src, weights=lens, minlength=len(NAMES)) / lens.sum()
        assert np.abs(share - target).max() <= 0.01, (s["file"], share - target)


def test_weighted_mix_repeats_in_whole_passes_and_subsamples(weighted):
    m = manifest(weighted)
    seqs = shard_sequences(weighted)
    check_proportions(m, seqs)
    assert [s["target"] for s in m["sources"]] == [0.1, 0.1, 0.1, 0.5, 0.2]
    for k, s in enumerate(m["sources"]):
        units = Counter(zip(seqs["source_index"][seqs["source"] == k].tolist(), seqs["source_start"][seqs["source"] == k].tolist()))
        if s["name"] == "wiki_demo":  # 2.69 passes: two whole ones and a prefix of a third
            assert (s["full_passes"], s["repetition"] > 2.6) == (2, True)
            assert Counter(units.values()) == {3: s["partial_units"], 2: s["units_in"] - s["partial_units"]}
        else:  # under one pass: a subsample, no unit twice
            assert s["full_passes"] == 0 and 0 < s["partial_units"] < s["units_in"]
            assert set(units.values()) == {1} and len(units) == s["partial_units"] == s["sequences"]


def test_same_seed_same_bytes_rerun_up_to_date_and_report_matches_manifest(weighted, five, tok_file, tmp_path):
    again = mix_pack(five, tmp_path / "again", tok_file, "--mix", WEIGHTED, "--seed", 3)
    assert again.returncode == 0, again.stderr
    m, m2 = manifest(weighted), manifest(tmp_path / "again")
    assert [s["sha256"] for s in m["shards"]] == [s["sha256"] for s in m2["shards"]]
    assert all((weighted / s["file"]).read_bytes() == (tmp_path / "again" / s["file"]).read_bytes() for s in m["shards"])
    assert m["sources"] == m2["sources"]
    assert not (weighted / ".packwise-stage").exists()
    rerun = mix_pack(five, weighted, tok_file, "--mix", WEIGHTED, "--seed", 3)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{weighted} is up to date (manifest.json with the same settings, inputs and mix); nothing to do" in rerun.stdout
    report = cli("report", weighted, "--json", tmp_path / "r.json")
    assert report.returncode == 0, report.stderr
    got = json.loads((tmp_path / "r.json").read_text())
    assert [(s["name"], s["tokens"], s["sequences"], s["target"], s["realised"]) for s in got["sources"]] == [
        (s["name"], s["tokens"], s["sequences"], s["target"], s["realised"]) for s in m["sources"]
    ]
    assert (got["rows"], got["tokens"]) == (m["stats"]["rows_out"], m["stats"]["tokens_out"])
    charged = sum(s["padding"] / (1 - s["padding"]) * s["tokens"] for s in got["sources"])
    assert abs(charged / (got["rows"] * CAP) - m["stats"]["padding_after"]) < 1e-9
    assert "wiki_demo" in report.stdout and "50.00%" in report.stdout
    plot = cli("report", weighted, "--plot", tmp_path / "r.png")
    assert plot.returncode == 2 and "--plot draws the report of an input; " in plot.stderr and not (tmp_path / "r.png").exists()


def test_report_on_the_inputs_predicts_the_mixed_pack(weighted, five, tok_file, tmp_path):
    """``report A B ... --mix`` gives the numbers of ``report OUT`` for the pack with the same options, without writing it."""
    assert cli("report", weighted, "--json", tmp_path / "out.json").returncode == 0
    run = cli("report", *five, "--max-tokens", CAP, "--tokenizer", tok_file, "--oversize", "split", "--mix", WEIGHTED, "--seed", 3,
              "--json", tmp_path / "in.json")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "source wiki_demo: layout: text (text) -> plain text" in run.stdout
    packed, predicted = (json.loads((tmp_path / f).read_text()) for f in ("out.json", "in.json"))
    assert (predicted["rows"], predicted["tokens"]) == (packed["rows"], packed["tokens"])
    for p, q in zip(packed["sources"], predicted["sources"]):
        assert {k: v for k, v in p.items() if k != "padding"} == {k: v for k, v in q.items() if k != "padding"}
        assert abs(p["padding"] - q["padding"]) < 1e-12
    bad = cli("report", *five, "--max-tokens", CAP, "--tokenizer", tok_file, "--mix", "c4_demo=1", "--json", tmp_path / "x.json")
    assert bad.returncode == 2 and "error: --mix: no weight for source 'alpaca_en_demo'" in bad.stderr


def test_packed_dataset_exposes_each_sequence_source(weighted):
    from torch.utils.data import DataLoader

    from packwise.pipeline import PackedDataset

    ds = PackedDataset(weighted)
    assert ds.sources == NAMES
    row = ds[0]
    assert row["source"].shape == row["seq_lens"].shape and row["source"].dtype == np.int32
    batch = next(iter(DataLoader(ds, batch_size=2, collate_fn=ds.collate)))
    assert batch["source"].tolist() == np.concatenate([ds[0]["source"], ds[1]["source"]]).tolist()


@pytest.fixture()
def two(tmp_path, shared_data) -> list[Path]:
    """Small copies (c4 and wiki) a test may change."""
    paths = [tmp_path / "c4.jsonl", tmp_path / "wiki.txt"]
    shutil.copy(shared_data / "c4_demo.jsonl", paths[0])
    shutil.copy(shared_data / "wiki_demo.txt", paths[1])
    return paths


def test_a_changed_mix_or_input_is_refused_then_rerun_with_overwrite(two, tmp_path, tok_file):
    out = tmp_path / "out"
    first = mix_pack(two, out, tok_file, "--mix", "c4=1,wiki=1")
    assert first.returncode == 0, first.stderr
    changed = mix_pack(two, out, tok_file, "--mix", "c4=3,wiki=1")
    assert changed.returncode == 2
    assert "holds packwise output made with other settings or inputs (mix_weights: {'c4': 1.0, 'wiki': 1.0} -> {'c4': 3.0, 'wiki': 1.0}); " in changed.stderr
    assert "pass --overwrite to replace it" in changed.stderr
    redone = mix_pack(two, out, tok_file, "--mix", "c4=3,wiki=1", "--overwrite")
    assert redone.returncode == 0, redone.stderr
    assert [s["target"] for s in manifest(out)["sources"]] == [0.75, 0.25]
    with open(two[1], "a") as f:
        f.write("A new article about packing.\n")
    edited = mix_pack(two, out, tok_file, "--mix", "c4=3,wiki=1")
    assert edited.returncode == 2 and "(the input files changed); pass --overwrite" in edited.stderr
    assert mix_pack(two, out, tok_file, "--mix", "c4=3,wiki=1", "--overwrite").returncode == 0
    assert manifest(out)["sources"][1]["rows_in"] == 31


def test_sigkilled_mix_resumes_to_the_same_bytes_and_leaves_no_staging(two, tmp_path, tok_file):
    import signal

    args = ["--max-tokens", CAP, "--tokenizer", tok_file, "--oversize", "split", "--mix", "c4=1,wiki=2", "--shard-rows", 4, "--window", 50]
    cmd = [sys.executable, "-m", "packwise.cli.app", "pack", *map(str, [*two, tmp_path / "killed", *args])]
    killed_at, proc = kill_after_shards(cmd, tmp_path / "killed", 3)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (tmp_path / "killed" / "manifest.json").exists()
    resumed = cli("pack", *two, tmp_path / "killed", *args)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed after " in resumed.stdout
    assert cli("pack", *two, tmp_path / "clean", *args).returncode == 0
    names = sorted(p.name for p in (tmp_path / "clean").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "killed").iterdir()) and ".packwise-stage" not in names
    for name in names:
        assert (tmp_path / "clean" / name).read_bytes() == (tmp_path / "killed" / name).read_bytes(), name


def test_report_on_a_single_input_pack_has_one_source(two, tmp_path, tok_file):
    one = cli("pack", two[0], tmp_path / "one", "--max-tokens", CAP, "--tokenizer", tok_file, "--oversize", "split")
    assert one.returncode == 0, one.stderr
    assert not pq.read_table(tmp_path / "one" / "shard-00000.parquet").schema.names.count("source")
    report = cli("report", tmp_path / "one", "--json", tmp_path / "r.json")
    assert report.returncode == 0, report.stderr
    got, m = json.loads((tmp_path / "r.json").read_text()), manifest(tmp_path / "one")
    assert [(s["name"], s["tokens"], s["sequences"], s["target"], s["realised"]) for s in got["sources"]] == [
        ("c4", m["stats"]["tokens_out"], m["stats"]["pieces_out"], 1.0, 1.0)
    ]


def test_examples_and_temperature_and_mix_tokens(two, tmp_path, tok_file):
    by_count = mix_pack(two, tmp_path / "n", tok_file, "--mix", "c4=1,wiki=1", "--mix-by", "examples", "--max-repetition", 10)
    assert by_count.returncode == 0, by_count.stderr
    c4, wiki = manifest(tmp_path / "n")["sources"]
    units = c4["units_in"] + wiki["units_in"]
    assert (c4["sequences"], wiki["sequences"]) == (units // 2, units // 2)  # half the units each
    hot = mix_pack(two, tmp_path / "t", tok_file, "--temperature", 0, "--mix-tokens", 100_000)
    assert hot.returncode == 0, hot.stderr
    m = manifest(tmp_path / "t")
    assert [s["target"] for s in m["sources"]] == [0.5, 0.5]
    assert abs(m["stats"]["tokens_out"] - 100_000) <= CAP


def test_bad_mixes_exit_2_naming_the_field(two, tmp_path, tok_file, shared_data):
    empty = tmp_path / "blank.jsonl"
    empty.write_text('{"text": ""}\n{"text": ""}\n')
    cases = [
        (["--mix", "c4=1,web=1"], "error: --mix: 'web' is not a source (sources: c4, wiki); use a source's name (its file stem, or NAME=PATH)"),
        (["--mix", "c4=1,wiki=-1"], "error: --mix wiki=-1: a weight must be a finite number >= 0 (0 leaves the source out)"),
        (["--mix", "c4=0,wiki=0"], "error: --mix: the weights sum to 0; give at least one source a weight > 0"),
        (["--mix", "c4=1"], "error: --mix: no weight for source 'wiki'; give every source a weight (0 leaves it out)"),
        (["--mix", "c4=1,wiki=1", "--temperature", "0.3"], "error: pass --mix or --temperature, not both"),
        (["--mix", "c4:1,wiki=1"], "error: --mix: 'c4:1' is not NAME=WEIGHT; write --mix a=0.7,b=0.3 with the sources' names"),
        (["--engine", "ray"], "error: --engine ray: several inputs and --mix run on the local engine; drop --engine ray"),
        (["--mix", "c4=1,wiki=4", "--mix-tokens", 2_000_000], "error: source wiki ("),
    ]
    for extra, message in cases:
        run = mix_pack(two, tmp_path / "o", tok_file, *extra)
        assert run.returncode == 2 and message in run.stderr, (extra, run.stderr)
    assert ("its target 0.8000 of 2,000,000 tokens needs 5.41 passes over its 295,810 tokens, over --max-repetition 4; raise "
            "--max-repetition to 5.41, lower its weight, or set a smaller --mix-tokens") in run.stderr
    blank = mix_pack([*two, empty], tmp_path / "o", tok_file)
    assert blank.returncode == 2
    assert f"error: source blank ({empty}): no tokens (2 rows, 2 empty, 0 dropped by --oversize drop); remove it" in blank.stderr
    clash = mix_pack([two[0], shared_data / "c4_demo.jsonl", tmp_path / "c4_demo.jsonl"], tmp_path / "o", tok_file)
    assert clash.returncode == 2 and "are both named 'c4_demo'; name one as NAME=PATH" in clash.stderr
    into = mix_pack([two[0], f"web={two[1]}"], two[1].parent / "sub" / "..", tok_file)
    assert into.returncode == 2 and "packwise never writes over what it reads" in into.stderr
    assert not list(tmp_path.glob("o/shard-*"))


def test_name_equals_path_names_a_source():
    from packwise.pipeline.mix import parse_sources

    assert [(s.name, s.path) for s in parse_sources(["a/x.jsonl", "web=a/x.jsonl", "b/y.csv"])] == [
        ("x", "a/x.jsonl"), ("web", "a/x.jsonl"), ("y", "b/y.csv")
    ]  # fmt: skip


def test_interleave_keeps_every_prefix_within_half_a_unit_of_its_share():
    from packwise.pipeline.mix import interleave

    rng = np.random.default_rng(0)
    weights = [rng.integers(1, 50, n).astype(np.float64) for n in (400, 37, 150)]
    src, at = interleave(weights)
    for k, w in enumerate(weights):  # each source's units in order, every unit once
        assert at[src == k].tolist() == list(range(w.shape[0]))
    emitted = np.zeros((src.shape[0], 3))
    emitted[np.arange(src.shape[0]), src] = np.concatenate(weights)[np.concatenate([[0], np.cumsum([w.shape[0] for w in weights])[:-1]])[src] + at]
    done = np.cumsum(emitted, axis=0) / np.array([w.sum() for w in weights])
    half = np.array([w.max() / w.sum() for w in weights])
    # after each unit, every source has covered the same fraction of its selection, give or take its largest unit
    spread = done - done[np.arange(src.shape[0]), src][:, None]
    assert (np.abs(spread) <= half[None, :] + half[src][:, None] + 1e-12).all()
