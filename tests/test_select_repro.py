"""``select`` gives the same bytes whatever the machine does underneath: the similarities and ranks
of dedup and the k-means distances do not depend on block sizes, batch splits or BLAS threads
(issue 22 item 1: the Ray engine differed from the local one in the last bits)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

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
