"""``select`` gives the same bytes whatever the machine does underneath: the similarities and ranks
of dedup and the k-means distances do not depend on block sizes, batch splits or BLAS threads
(issue 22 item 1: the Ray engine differed from the local one in the last bits)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from _embedded_corpus import corpus
from packwise.selection import kmeans, semantic_dedup

_DIGEST = """
import hashlib, sys
import numpy as np
from packwise.selection import kmeans, semantic_dedup
x = np.load(sys.argv[1])
batch, block = int(sys.argv[2]), int(sys.argv[3])
km = kmeans(x, 4, spherical=True, seed=3)
labels, dist = km.assign(x, batch_size=batch)
r = semantic_dedup(x, labels=labels, distances=dist, eps=[0.05, 0.2], block=block)
h = hashlib.sha256()
for a in (km.centroids, labels, dist, r.rank, r.nearest, r.similarity, r.kept, r.duplicate_of, r.duplicate_similarity):
    h.update(np.ascontiguousarray(a).tobytes())
print(h.hexdigest())
"""


@pytest.fixture(scope="module")
def vectors():
    return corpus().embeddings


def _outputs(x, batch: int, block: int) -> list[np.ndarray]:
    km = kmeans(x, 4, spherical=True, seed=3)
    labels, dist = km.assign(x, batch_size=batch)
    r = semantic_dedup(x, labels=labels, distances=dist, eps=[0.05, 0.2], block=block)
    return [labels, dist, r.rank, r.nearest, r.similarity, r.kept, r.duplicate_of, r.duplicate_similarity]


@pytest.mark.parametrize(("batch", "block"), [(7, 5), (100, 64), (33, 1)])
def test_similarity_and_rank_are_the_same_bits_for_any_block_or_batch(vectors, batch, block):
    ref = _outputs(vectors, 65_536, 1024)
    got = _outputs(vectors, batch, block)
    names = ["labels", "distance", "rank", "nearest", "similarity", "kept", "duplicate_of", "duplicate_similarity"]
    for name, a, b in zip(names, ref, got):
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name
    assert np.isfinite(ref[4]).sum() == len(vectors) - 4  # every row but each cluster's first has a nearest


def test_similarity_and_rank_are_the_same_bits_for_any_blas_thread_count(tmp_path, vectors):
    """Real processes, each with its own BLAS/OpenMP thread count and blocking."""
    path = tmp_path / "x.npy"
    np.save(path, vectors)
    digests = set()
    for threads, batch, block in (("1", 65_536, 1024), ("2", 65_536, 1024), ("2", 13, 17), ("1", 100, 3)):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        done = subprocess.run([sys.executable, "-c", _DIGEST, str(path), str(batch), str(block)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        digests.add(done.stdout.strip())
    assert len(digests) == 1, digests


def test_exact_similarity_is_the_fixed_order_float64_dot_product(vectors):
    """The recorded similarity is the kernel's own sum, not whichever BLAS proposed the candidate."""
    x = vectors[:40]
    r = semantic_dedup(x, labels=np.zeros(40, np.int64), eps=0.05, order="index")
    v = x.astype(np.float64) / np.sqrt((x.astype(np.float64) ** 2).sum(axis=1, keepdims=True))
    for j in range(1, 40):
        i = int(r.nearest[j])
        expect = max(range(j), key=lambda t: float(v[t] @ v[j]))
        assert i == expect
        assert abs(float(r.similarity[j]) - float(v[i] @ v[j])) < 1e-6


@pytest.fixture(scope="module")
def source(tmp_path_factory, vectors):
    """4096 rows: the real MiniLM rows tiled 16 times with seeded noise (every vector distinct)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(22)
    x = np.tile(vectors, (16, 1)) + rng.normal(0, 0.01, (16 * len(vectors), vectors.shape[1])).astype(np.float32)
    texts = [f"row {i}" for i in range(len(x))]
    path = tmp_path_factory.mktemp("repro") / "in.parquet"
    pq.write_table(pa.table({"text": texts, "score": rng.random(len(x)), "emb": pa.array(list(x), pa.list_(pa.float32()))}), path, row_group_size=512)
    return path


def _select(source, out, *args) -> list[str]:
    return [sys.executable, "-m", "packwise.cli.app", "select", str(source), str(out), *map(str, args)]


def _files(folder) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, but the two ``timings.json`` (seconds)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "timings.json"}


DEDUP = ["--method", "dedup", "--embeddings-column", "emb", "--k", 8, "--eps", 0.02, "--exact-column", "text", "--shard-rows", 500, "--seed", 5]
BALANCE = ["--method", "balance", "--embeddings-column", "emb", "--k", 8, "--keep", 0.5, "--shard-rows", 128, "--seed", 5]


@pytest.mark.parametrize("args", [DEDUP, ["--method", "score", "--score-column", "score", "--policy", "softmax", "--keep", 0.3, "--shard-rows", 300]],
                         ids=["dedup", "score"])  # fmt: skip
def test_two_runs_with_one_seed_write_the_same_bytes(tmp_path, source, args):
    """manifest.json and clusters/kmeans.json hold no timing (they did): a rerun is byte-identical."""
    for name in ("a", "b"):
        done = subprocess.run(_select(source, tmp_path / name, *args), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a == b
    assert "manifest.json" in a and sum(n.startswith("shard-") for n in a) > 1
    assert ("clusters/kmeans.json" in a) == (args[1] == "dedup")
    for name in ("a", "b"):  # the seconds live beside them
        timings = json.loads((tmp_path / name / "timings.json").read_text())
        assert sorted(timings) == (["kmeans_train_seconds", "seconds"] if args[1] == "dedup" else ["seconds"])
        if args[1] == "dedup":
            assert list(json.loads((tmp_path / name / "clusters" / "timings.json").read_text())) == ["train_seconds"]


def _start(source, out) -> tuple[subprocess.Popen, float]:
    """A select run into ``out``, returned once it holds the output lock (its work starts), with that moment."""
    proc = subprocess.Popen(_select(source, out, *BALANCE, "--overwrite"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (out / ".packwise.lock").exists() and proc.poll() is None:
        time.sleep(0.002)
    return proc, time.monotonic()


def test_select_killed_at_seeded_random_moments_then_rerun_matches_a_clean_run(tmp_path, source):
    """``kill -9`` at 6 seeded moments of the work (after the start-up), a rerun each time: the
    folder is the clean run's, bytes and names (no temp file, no lock left)."""
    clean = tmp_path / "clean"
    proc, t0 = _start(source, clean)
    assert proc.wait() == 0
    span = time.monotonic() - t0  # only to spread the kill moments over the work; nothing asserts on it
    want = _files(clean)
    assert sum(n.startswith("shard-") for n in want) == 16 and "embeddings.npy" in want and "clusters/kmeans.json" in want
    rng = np.random.default_rng(2022)
    for i in range(6):
        out = tmp_path / f"killed-{i}"
        delay = rng.uniform(0.0, 1.0) * span
        while True:  # a run that finished before the moment is run again with an earlier moment
            proc, started = _start(source, out)
            try:
                proc.wait(timeout=max(0.0, started + delay - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
            if proc.wait() == -signal.SIGKILL:
                break
            delay *= 0.5
        rerun = subprocess.run(_select(source, out, *BALANCE, "--overwrite"), capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert _files(out) == want, i
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in clean.iterdir())


def test_decontamination_similarity_is_the_same_bits_for_any_batch(vectors):
    from packwise.selection import decontaminate

    rng = np.random.default_rng(22)
    train = np.tile(vectors, (4, 1)) + rng.normal(0, 0.01, (4 * len(vectors), vectors.shape[1])).astype(np.float32)
    ref = decontaminate(train, vectors, threshold=0.8)
    for batch in (7, 100):
        got = decontaminate(train, vectors, threshold=0.8, batch_size=batch)
        assert np.array_equal(got.eval_index, ref.eval_index) and np.array_equal(got.similarity, ref.similarity), batch
        assert np.array_equal(got.flagged, ref.flagged)
    assert ref.flagged.sum() > 0
