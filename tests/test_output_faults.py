"""Faults of the output under ``packwise pack`` / ``select``: a full disk (a small tmpfs) publishes
no partial shard and the rerun after freeing space is byte-identical to a clean run; a second run
into a busy folder is refused by its lock and the first completes intact; a killed run's lock
does not block the next one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import load_texts
from test_cli_pack import invoke
from test_pipeline_pack import check_round_trip

from packwise.pipeline.lock import LOCK, output_lock
from packwise.pipeline.tokens import encode


@pytest.fixture
def small_tmpfs(tmp_path):
    """``mount(size)`` -> a fresh tmpfs of ``size`` (e.g. "160k"); ``resize(size)`` frees space."""
    where = tmp_path / "tmpfs"
    where.mkdir()
    mounted = []

    def mount(size: str):
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root (run as root to test a full disk)")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"mount -t tmpfs is not permitted here ({done.stderr.strip()}); a full disk cannot be simulated")
        mounted.append(where)
        return where

    def resize(size: str):
        subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)

    yield mount, resize
    for m in mounted:  # lazily when a failed run still holds a file open there
        if subprocess.run(["umount", str(m)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(m)], check=True)


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_full_disk_publishes_no_partial_shard_and_the_rerun_matches_a_clean_run(tmp_path, shared_data, tok_file, small_tmpfs):  # noqa: F811
    mount, resize = small_tmpfs
    args = ["--max-tokens", 1024, "--tokenizer", tok_file, "--shard-rows", 16, "--oversize", "split"]
    clean = tmp_path / "clean"
    assert invoke("pack", shared_data / "c4_demo.jsonl", clean, *args).exit_code == 0
    out = mount("160k") / "out"  # the clean output is ~350 KiB: the disk fills a few shards in
    full = invoke("pack", shared_data / "c4_demo.jsonl", out, *args)
    assert full.exit_code == 2, full.output
    assert "shard-000" in full.output and "cannot write it: the disk is full" in full.output and "free space and rerun" in full.output
    published = sorted(out.glob("shard-*.parquet"))
    assert 0 < len(published) < len(list(clean.glob("shard-*.parquet")))
    for shard in published:  # every shard under its final name is complete and is the clean run's shard
        assert pq.read_table(shard).num_rows == 16
        assert shard.read_bytes() == (clean / shard.name).read_bytes()
    assert not list(out.glob(".shard-*.tmp")) and not (out / "manifest.json").exists()
    resize("4m")
    rerun = invoke("pack", shared_data / "c4_demo.jsonl", out, *args)
    assert rerun.exit_code == 0, rerun.output
    assert f"resumed after {len(published)} complete shards" in rerun.output
    assert _files(out) == _files(clean)


def test_select_on_a_full_disk_exits_2_naming_the_embeddings_file_and_leaves_no_temp(tmp_path, small_tmpfs):
    from _embedded_corpus import corpus

    c = corpus()  # 256 real MiniLM vectors: embeddings.npy needs ~390 KiB
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"emb": pa.array(list(c.embeddings), pa.list_(pa.float32()))}), source)
    mount, _ = small_tmpfs
    out = mount("200k") / "sel"
    cmd = [sys.executable, "-m", "packwise.cli.app", "select", str(source), str(out), "--method", "balance", "--embeddings-column", "emb", "--k", "4", "--keep", "0.5"]
    done = subprocess.run(cmd, capture_output=True, text=True)  # a subprocess: SIGBUS would kill pytest
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert f"error: {out}/embeddings.npy: cannot write it: the disk is full" in done.stderr and "free space and rerun" in done.stderr
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 60.0) -> None:
    end = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.02)


def test_a_second_run_into_a_busy_folder_exits_2_naming_the_lock_and_the_first_completes(tmp_path, shared_data, tokenizer, tok_file):  # noqa: F811
    out, gate = tmp_path / "out", tmp_path / "go"
    args = ["--max-tokens", 1024, "--tokenizer", tok_file, "--oversize", "split"]
    env = {**os.environ, "PACKWISE_TEST_GATE": str(gate), "PYTHONPATH": str(Path(__file__).parent)}
    cmd = [sys.executable, "-m", "packwise.cli.app", "pack", str(shared_data / "c4_demo.jsonl"), str(out), *map(str, args), "--template", "_gate_template:gated"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(tmp_path / "started", first)  # the first run is reading rows: it holds the lock
        for extra in ([], ["--overwrite"], ["--max-tokens", 512, "--overwrite"]):
            second = invoke("pack", shared_data / "c4_demo.jsonl", out, *args, *extra)
            assert second.exit_code == 2, second.output
            assert f"error: output: {out} is in use by another packwise run (pid {first.pid}); it holds the lock {out / LOCK}" in second.output
            assert "Wait for that run to finish, or choose another output folder" in second.output
        selected = invoke("select", shared_data / "c4_demo.jsonl", out, "--method", "score", "--score-column", "x", "--keep", 0.5)
        assert selected.exit_code == 2 and f"is in use by another packwise run (pid {first.pid})" in selected.output
        gate.touch()
        assert first.wait(120) == 0, first.stderr.read()[-2000:]
    finally:
        gate.touch()
        if first.poll() is None:
            first.kill()
    check_round_trip(out, encode(tokenizer, load_texts("c4")), 1024, "split", "window_bfd")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("shard-")) == ["manifest.json"]


def test_a_killed_runs_lock_does_not_block_the_next_run(tmp_path):
    out = tmp_path / "out"
    code = f"from packwise.pipeline.lock import output_lock\nwith output_lock({str(out)!r}):\n    print('locked', flush=True)\n    import time; time.sleep(600)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=rf"in use by another packwise run \(pid {holder.pid}\)"):
            with output_lock(out):
                pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert (out / LOCK).exists()  # left behind by kill -9 ...
    with output_lock(out) as lock:  # ... and no obstacle: the kernel released the flock
        assert lock.read_text() == str(os.getpid())
    assert not (out / LOCK).exists()


def _embedded_parquet(path: Path) -> Path:
    """256 real MiniLM rows: text, vector, and a numeric score column."""
    from _embedded_corpus import corpus

    c = corpus()
    emb = pa.array(list(c.embeddings), pa.list_(pa.float32()))
    pq.write_table(pa.table({"text": c.texts, "emb": emb, "score": [float(len(t)) for t in c.texts]}), path)
    return path


def test_select_score_on_a_full_disk_exits_2_naming_the_shard_and_leaves_no_temp(tmp_path, small_tmpfs):
    source = _embedded_parquet(tmp_path / "in.parquet")
    mount, _ = small_tmpfs
    out = mount("200k") / "sel"  # decisions fit; the kept rows (~420 KiB of vectors) do not
    cmd = [sys.executable, "-m", "packwise.cli.app", "select", str(source), str(out), "--method", "score", "--score-column", "score",
           "--keep", "1.0", "--shard-rows", "50"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)  # was rc 1 and an OSError traceback
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    line = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    assert len(line) == 1 and line[0].startswith(f"error: {out}/shard-0000") and ".parquet: cannot write it: the disk is full" in line[0]
    assert line[0].endswith("; free space and rerun")
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")] and not (out / "manifest.json").exists()


SELECT_FILES = ["embeddings.npy", "clusters/centroids.npy", "clusters/index.faiss", "clusters/timings.json", "clusters/kmeans.json",
                "decisions.parquet", "shard-00000.parquet", "shard-00002.parquet", "timings.json", "manifest.json"]  # fmt: skip


@pytest.mark.parametrize("name", SELECT_FILES)
def test_select_exits_2_naming_each_file_it_cannot_write(tmp_path, monkeypatch, name):
    """Every file ``select`` writes, in turn, meets a full disk when it is put in place."""
    source = _embedded_parquet(tmp_path / "in.parquet")
    out = tmp_path / "sel"
    rename = os.replace

    def full(src, dst, *a, **kw):
        if Path(dst) == out / name:
            raise OSError(28, "No space left on device")
        return rename(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", full)
    r = invoke("select", source, out, "--method", "dedup", "--embeddings-column", "emb", "--k", 4, "--shard-rows", 100)
    assert r.exit_code == 2, r.output
    assert f"error: {out / name}: cannot write it: the disk is full (No space left on device); free space and rerun" in r.output
    assert "Traceback" not in r.output and not (out / "manifest.json").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
