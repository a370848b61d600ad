"""Issue 22 items 5 and 13a: stale output never passes as up to date (whole-file input fingerprint,
shard sizes), ``packwise verify``, named shard errors in ``PackedDataset``, tokenizers compared by
content, and a seeded sweep of SIGKILLs during ``packwise pack`` that still ends byte-identical."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import load_texts
from typer.testing import CliRunner

from packwise.cli.app import app
from packwise.pipeline.dataset import PackedDataset

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def packed(tmp_path_factory, shared_data, tok_file) -> tuple[list, Path]:
    """A finished pack of the real c4 documents in 8-row shards, and its argument list."""
    out = tmp_path_factory.mktemp("packed") / "out"
    args = ["pack", shared_data / "c4_demo.jsonl", out, "--tokenizer", tok_file, "--max-tokens", 1024, "--oversize", "split", "--shard-rows", 8]
    assert invoke(*args).exit_code == 0
    return args, out


def _copy(out: Path, to: Path) -> Path:
    to.mkdir()
    for p in out.iterdir():
        (to / p.name).write_bytes(p.read_bytes())
    return to


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_same_size_edit_in_the_middle_of_a_3mb_input_is_not_up_to_date(tmp_path, tok_file):
    """The old fingerprint hashed only the first and last MiB: an edit between them passed."""
    src = tmp_path / "c4x4.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in load_texts("c4") * 4))
    args = ["pack", src, tmp_path / "o", "--tokenizer", tok_file, "--max-tokens", 1024, "--oversize", "split"]
    assert invoke(*args).exit_code == 0
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    mid += next(i for i, b in enumerate(data[mid:]) if chr(b).isalpha() and chr(b).islower())
    data[mid] = ord("z") if data[mid] != ord("z") else ord("y")
    src.write_bytes(bytes(data))
    assert len(data) > 2 << 20  # more than the first and last MiB
    rerun = invoke(*args)
    assert rerun.exit_code == 2 and "the input files changed" in rerun.output, rerun.output


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_deleted_or_resized_output_shard_is_rewritten_by_the_rerun(tmp_path, packed, damage):
    args, out = packed
    before = _bytes(out)
    mine = _copy(out, tmp_path / "out")
    shard = mine / "shard-00002.parquet"
    if damage == "delete":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[:-100])
    rerun = invoke(*args[:2], mine, *args[3:])
    assert rerun.exit_code == 0 and "up to date" not in rerun.output, rerun.output
    assert "resumed after 2 complete shards" in rerun.output
    assert _bytes(mine) == before


def test_verify_exit_codes_and_the_named_bad_shards(tmp_path, packed):
    args, out = packed
    mine = _copy(out, tmp_path / "out")
    shards = json.loads((mine / "manifest.json").read_text())["shards"]
    good = invoke("verify", mine)
    assert good.exit_code == 0 and good.output == f"{mine}: all {len(shards)} shards match manifest.json\n"
    _flip(mine / "shard-00001.parquet", 200)
    (mine / "shard-00003.parquet").unlink()
    bad = invoke("verify", mine)
    assert bad.exit_code == 1
    assert bad.output.splitlines() == [
        f"bad shard: {mine / 'shard-00001.parquet'}: content differs from the sha256 in manifest.json",
        f"bad shard: {mine / 'shard-00003.parquet'}: missing",
        "2 bad shard(s): delete them and rerun packwise pack with the same arguments (it rewrites them)",
    ]
    (tmp_path / "empty").mkdir()
    usage = invoke("verify", tmp_path / "empty")
    assert usage.exit_code == 2
    assert f"{tmp_path / 'empty'}: no manifest.json; not a finished packwise pack output" in usage.output
    (mine / "manifest.json").write_text('{"format": "other"}')
    foreign = invoke("verify", mine)
    assert foreign.exit_code == 2 and "not a packwise manifest" in foreign.output


def test_packed_dataset_names_a_missing_or_corrupt_shard(tmp_path, packed):
    args, out = packed
    mine = _copy(out, tmp_path / "out")
    rows = json.loads((mine / "manifest.json").read_text())["shards"][0]["rows"]
    (mine / "shard-00000.parquet").unlink()
    with pytest.raises(ValueError) as err:
        PackedDataset(mine)[0]
    assert str(err.value) == (
        f"packed dataset: shard {mine / 'shard-00000.parquet'} is missing; run packwise verify {mine} to list "
        "every bad shard, then delete them and rerun packwise pack with the same arguments"
    )
    shard = mine / "shard-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[8 : len(data) // 2] = bytes(len(data) // 2 - 8)  # zero the column chunks, keep the footer
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"packed dataset: shard {shard} is corrupt \\(.*\\); run packwise verify"):
        PackedDataset(mine)[rows]
    with pytest.raises(ValueError, match=f"packed dataset: shard {mine / 'shard-00000.parquet'} is missing"):
        list(PackedDataset(mine).iterable())


@pytest.mark.parametrize("spelling", ["relative", "dot", "symlink", "absolute"])
def test_the_same_tokenizer_by_another_path_spelling_is_the_same(tmp_path, packed, tok_file, spelling, monkeypatch):
    args, out = packed
    mine = _copy(out, tmp_path / "out")
    (tmp_path / "tok.json").symlink_to(tok_file)
    monkeypatch.chdir(tok_file.parent)
    named = {"relative": "tokenizer.json", "dot": "./tokenizer.json", "symlink": tmp_path / "tok.json", "absolute": tok_file}
    rerun = invoke(*args[:2], mine, "--tokenizer", named[spelling], *args[5:])
    assert rerun.exit_code == 0 and "is up to date" in rerun.output, rerun.output


def _kill_at(cmd: list[str], out: Path, shards: int, after: float) -> int:
    """Run ``cmd``; SIGKILL it once ``out`` holds ``shards`` published shards and ``after`` seconds
    have passed (whichever is later); its return code."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.monotonic()
    while proc.poll() is None:
        if len(list(out.glob("shard-*.parquet"))) >= shards and time.monotonic() - start >= after:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    return proc.wait()


def test_seeded_sigkill_sweep_ends_byte_identical_to_a_clean_run(tmp_path, tok_file):
    """Kill ``packwise pack`` at 8 seeded-random moments (a random number of new shards reached, a
    random delay passed), each kill on the folder the previous one left, so every rerun resumes a
    killed run; the last rerun finishes, and the folder equals an uninterrupted run's byte for
    byte, manifest included. A run that finishes before its moment (a fast machine) is started
    over from an empty folder with an earlier moment: no timing decides the outcome."""
    texts = load_texts("alpaca") + load_texts("ag_news")
    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    opts = ["--max-tokens", "1024", "--tokenizer", str(tok_file), "--oversize", "split", "--shard-rows", "16", "--window", "500"]
    base = [sys.executable, "-m", "packwise.cli.app", "pack", str(src)]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert subprocess.run(base + [str(clean)] + opts, capture_output=True).returncode == 0
    total = len(list(clean.glob("shard-*.parquet")))
    rng = np.random.default_rng(22)
    for new, delay in zip(rng.integers(0, total // 2, 8), rng.uniform(0.0, 1.5, 8)):
        new, delay = int(new), float(delay)
        while True:
            before = len(list(killed.glob("shard-*.parquet")))
            code = _kill_at(base + [str(killed)] + opts, killed, before + new, delay)
            if code == -signal.SIGKILL:
                break
            assert code == 0  # it finished before the moment: again from nothing, earlier
            shutil.rmtree(killed)
            new, delay = new // 2, delay / 2
    assert subprocess.run(base + [str(killed)] + opts, capture_output=True).returncode == 0
    want, got = _bytes(clean), _bytes(killed)
    assert "manifest.json" in want and total > 5
    assert sorted(got) == sorted(want)
    assert all(got[name] == want[name] for name in want)


def test_a_tampered_manifest_never_makes_the_rerun_delete_outside_the_output(tmp_path, packed):
    """The stale-shard rerun deletes listed shards; a listed name that leaves the folder is skipped."""
    args, out = packed
    mine = _copy(out, tmp_path / "out")
    victim = tmp_path / "shard-00000.parquet"
    victim.write_bytes(b"the user's file")
    manifest = json.loads((mine / "manifest.json").read_text())
    manifest["shards"].insert(0, {"file": "../shard-00000.parquet", "bytes": 1})
    (mine / "manifest.json").write_text(json.dumps(manifest))
    rerun = invoke(*args[:2], mine, *args[3:])
    assert rerun.exit_code == 0, rerun.output
    assert victim.read_bytes() == b"the user's file"
    assert _bytes(mine) == _bytes(out)
