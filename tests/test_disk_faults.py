"""Faults of the disk under ``packwise pack``: a full disk (a small tmpfs) publishes no partial
shard and the rerun after freeing space is byte-identical to a clean run."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_cli_pack import invoke, tok_file  # noqa: F401  (tok_file is a fixture)


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
