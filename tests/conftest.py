"""Shared fixtures: the real datasets in ../shared/data and a real tokenizer trained on them."""

from __future__ import annotations

import csv
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

# Property tests draw the same examples on every run: a CI failure reproduces locally.
settings.register_profile("packwise", derandomize=True, deadline=None)
settings.load_profile("packwise")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data_dir() -> Path:
    """``../shared/data``; skip (or fail under CI=true) when it is absent."""
    if SHARED_DATA.is_dir():
        return SHARED_DATA
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but the shared datasets are missing at {SHARED_DATA}")
    pytest.skip(f"real datasets not found at {SHARED_DATA} (clone the project with ../shared beside it)")


def load_texts(name: str) -> list[str]:
    """Texts of one shared dataset: c4, alpaca, glaive, ag_news or wiki."""
    root = shared_data_dir()
    if name == "c4":
        return [json.loads(line)["text"] for line in open(root / "c4_demo.jsonl", encoding="utf-8")]
    if name == "alpaca":
        rows = json.load(open(root / "alpaca_en_demo.json", encoding="utf-8"))
        return ["\n".join(x for x in (r["instruction"], r["input"], r["output"]) if x) for r in rows]
    if name == "glaive":
        return [json.dumps(r) for r in json.load(open(root / "glaive_toolcall_en_demo.json", encoding="utf-8"))]
    if name == "ag_news":
        with open(root / "ag_news_test.csv", encoding="utf-8", newline="") as f:
            return [f"{title} {desc}" for _, title, desc in csv.reader(f)]
    if name == "wiki":
        return [line.strip() for line in open(root / "wiki_demo.txt", encoding="utf-8") if line.strip()]
    raise KeyError(name)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_data_dir()


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """A real byte-level BPE trained on the shared corpora (seconds, offline, deterministic)."""
    from packwise.pipeline.tokenizer import train_byte_bpe

    texts = load_texts("c4") + load_texts("alpaca") + load_texts("wiki")
    return train_byte_bpe(texts, vocab_size=4096)


@pytest.fixture(scope="session")
def tok_file(tmp_path_factory, tokenizer) -> Path:
    """The fixture tokenizer saved as a ``tokenizer.json`` (what ``--tokenizer`` takes)."""
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


@pytest.fixture(scope="session")
def real_lengths(tokenizer) -> dict[str, np.ndarray]:
    """Real token lengths of every shared dataset under the fixture tokenizer."""
    from packwise.pipeline.tokenizer import token_lengths

    return {name: token_lengths(tokenizer, load_texts(name)) for name in ("c4", "alpaca", "glaive", "ag_news")}


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1, for a gloo rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def end_ddp_worker() -> None:
    """End a spawned gloo worker once its results are on disk: a barrier, then ``os._exit(0)``.

    Why not ``destroy_process_group`` and a normal exit: when one rank tears its gloo threads
    down while the other is still in its own teardown, torch 2.13 can abort the slower one
    ("terminate called without an active exception", SIGABRT), seen once in CI under load after
    every collective had finished. Nothing is left to check by then, so the process just ends.
    """
    import sys

    import torch.distributed as dist

    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class Payload:
    """Pickles to a call that writes a marker file: the proof that a load ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


PEAK_RSS_CODE = "print('peak_rss_kb', [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')][0])"


def run_capped(code: str, cap_bytes: int = 3 << 30):
    """Run ``code`` in a child Python under an address-space cap (a runaway allocation fails there,
    never on the machine); return the process and its peak RSS in KiB (VmHWM: this program's own
    peak, not the forked parent's, which ``ru_maxrss`` would include)."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))

    out = subprocess.run([sys.executable, "-c", f"{code}\n{PEAK_RSS_CODE}"], capture_output=True, text=True, preexec_fn=cap)
    rss = [int(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("peak_rss_kb ")]
    assert out.returncode == 0 and rss, out.stderr[-2000:]
    return out, rss[0]


def kill_after_shards(cmd: list[str], out: Path, shards: int, env: dict | None = None) -> tuple[int | None, object]:
    """Run ``cmd`` and SIGKILL it once ``out`` holds ``shards`` published shards (or 240 s pass);
    ``(shards seen at the kill or None, the finished Popen)`` for the caller's asserts."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        done = sorted(out.glob("shard-*.parquet")) if out.is_dir() else []
        if len(done) >= shards:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return len(done), proc
        time.sleep(0.005)
    proc.wait()
    return None, proc
