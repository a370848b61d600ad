"""faiss k-means: train on an explicit, reported sample; assign every row in streamed batches.

Why: faiss silently trains on at most ``256 * k`` points; here the sample is drawn by us with a
seed, its size is reported, and faiss never subsamples again. Centroids and the assignment index
are saved so new shards can be assigned later with the same clusters.

Example:
    >>> import numpy as np
    >>> from packwise.selection import kmeans
    >>> x = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
    >>> km = kmeans(x, 4, seed=0)
    >>> labels, dist = km.assign(x)
    >>> km.k, labels.shape, int(labels.max()) < 4
    (4, (500,), True)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

_TRAIN_CAP_OFF = 2**31 - 1  # handed to faiss so it never subsamples on its own
TIMINGS = "timings.json"  # seconds, beside files that hold none (a rerun rewrites those byte for byte)
_INITS = {"random": 0, "kmeans++": 1, "afkmc2": 2}  # faiss ClusteringInitMethod values


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a hard dependency
        raise ImportError("packwise.selection clustering needs faiss: pip install faiss-cpu (or faiss-gpu)") from exc
    return faiss


def num_gpus() -> int:
    """GPUs faiss can use (0 with faiss-cpu)."""
    faiss = _faiss()
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def check_vectors(x: np.ndarray, name: str = "embeddings", dim: int | None = None) -> np.ndarray:
    """Validate a 2-D float matrix (memmaps stay memmaps); bad shape or dims -> ValueError."""
    if not hasattr(x, "ndim") or x.ndim != 2:
        shape = getattr(x, "shape", None)
        raise ValueError(f"{name}: expected a 2-D array (rows, dim), got shape {shape}; stack the vectors row by row")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: no rows; pass at least one vector")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name}: expected float vectors, got dtype {x.dtype}; cast with .astype(np.float32)")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name}: vectors have {x.shape[1]} dims but the clusters have {dim}; embed with the same model")
    return x


def check_finite(block: np.ndarray, row0: int, name: str = "embeddings") -> None:
    """Raise naming the first row with a NaN or infinite value."""
    finite = np.isfinite(block)
    if finite.all():  # the common case: one flat pass, no per-row reduction
        return
    bad = ~finite.all(axis=1)
    if bad.any():
        r = row0 + int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}: row {r} has a NaN or infinite value; re-embed it or drop the row")


def normalize_rows(block: np.ndarray, row0: int = 0, name: str = "embeddings") -> np.ndarray:
    """float32 copy with unit-norm rows (a fixed-order kernel: the same bits on any machine); a zero
    row -> ValueError naming it."""
    from ._cluster_kernels import unit_rows

    out, norms = unit_rows(np.ascontiguousarray(block, dtype=np.float32))
    zero = norms == 0
    if zero.any():
        r = row0 + int(np.flatnonzero(zero)[0])
        raise ValueError(f"{name}: row {r} is the zero vector and has no direction; drop it before cosine clustering")
    return out


_TILE_SCORES = 1 << 22  # BLAS scores per tile of exact_nearest (16 MiB of float32)


def exact_nearest(x: np.ndarray, targets: np.ndarray, *, l2: bool) -> tuple[np.ndarray, np.ndarray]:
    """Nearest of ``targets`` to every row of ``x`` (largest inner product, or smallest squared L2
    with ``l2``): ``(index int64, inner product float64 | squared distance float32)``.

    Why: BLAS (and faiss) sum in an order that depends on block shapes and threads, so near-ties
    and last bits moved between the local and the Ray engine. BLAS scores here only propose the
    targets within its worst-case error of the best; a fixed-order kernel decides between them.
    """
    from . import _cluster_kernels as _k

    x = np.ascontiguousarray(x, np.float32)
    targets = np.ascontiguousarray(targets, np.float32)
    offset = np.zeros(targets.shape[0], np.float64)
    if l2:  # argmax of x.t - |t|^2 / 2 is the nearest in L2
        offset = np.array([_k.exact_dot(t, t) / 2 for t in targets], np.float64)
    arg = np.empty(x.shape[0], np.int64)
    best = np.empty(x.shape[0], np.float64)
    tile = max(1, _TILE_SCORES // max(1, targets.shape[0]))
    for lo, hi in iter_blocks(x.shape[0], tile):
        arg[lo:hi], best[lo:hi] = _k.refine_nearest(x[lo:hi], targets, x[lo:hi] @ targets.T, offset, _k.blas_margin(x.shape[1]))
    if l2:
        return arg, _k.squared_l2(x, targets, arg)
    return arg, best


def iter_blocks(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    for lo in range(0, n, batch_size):
        yield lo, min(n, lo + batch_size)


@dataclass(frozen=True)
class TrainReport:
    """How the centroids were trained: rows available, rows sampled, and the k-means objective."""

    rows: int
    train_rows: int
    max_points_per_centroid: int
    sampled: bool
    niter: int
    objective: tuple[float, ...]
    seconds: float
    gpu: bool
    init: str = "random"


@dataclass(eq=False)
class KMeans:
    """Trained centroids plus the faiss index that assigns rows to them.

    ``assign`` returns ``(labels, distances)``: int64 cluster ids and, per row, the squared L2
    distance to its centroid, or ``1 - cosine`` when ``spherical``. With the 'Flat' index both are
    exact (``exact_nearest``): the same bits for any batch size, engine or BLAS thread count.
    """

    centroids: np.ndarray
    spherical: bool
    index_factory: str = "Flat"
    nprobe: int = 1
    report: TrainReport | None = None
    _index: object = field(default=None, repr=False)

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def index(self):
        """The faiss index over the centroids (built on first use, moved to GPU when there is one)."""
        if self._index is None:
            self._index = _centroid_index(self.centroids, self.spherical, self.index_factory, self.nprobe)
        return self._index

    def assign(self, x: np.ndarray, batch_size: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centroid of every row, streamed in ``batch_size`` blocks (memmaps welcome)."""
        check_vectors(x, dim=self.dim)
        n = x.shape[0]
        labels = np.empty(n, np.int64)
        dist = np.empty(n, np.float32)
        for lo, hi in iter_blocks(n, batch_size):
            block = self._prepare(x[lo:hi], lo)
            if self.index_factory == "Flat":  # exact: the same bits for any batch size, BLAS or thread count
                labels[lo:hi], d = exact_nearest(block, self.centroids, l2=not self.spherical)
                dist[lo:hi] = (1.0 - d) if self.spherical else d
                continue
            d, i = self.index.search(block, 1)
            labels[lo:hi] = i[:, 0]
            dist[lo:hi] = (1.0 - d[:, 0]) if self.spherical else d[:, 0]
        if (labels < 0).any():
            r = int(np.flatnonzero(labels < 0)[0])
            raise ValueError(f"index_factory={self.index_factory!r}: row {r} found no centroid; raise nprobe")
        return labels, dist

    def _prepare(self, block: np.ndarray, row0: int) -> np.ndarray:
        check_finite(block, row0)
        if self.spherical:
            return normalize_rows(block, row0)
        return np.ascontiguousarray(block, dtype=np.float32)

    def save(self, folder: str | Path) -> Path:
        """Write ``centroids.npy``, ``index.faiss``, ``kmeans.json`` and ``timings.json`` into ``folder``,
        each through a temporary name. ``kmeans.json`` holds no timing (a rerun writes the same
        bytes); the training seconds go to ``timings.json``."""
        from ..pipeline.atomic import atomic_path, naming_os_errors, write_text_atomic

        faiss = _faiss()
        folder = Path(folder)
        with naming_os_errors(folder):
            folder.mkdir(parents=True, exist_ok=True)
        with naming_os_errors(folder / "centroids.npy"), atomic_path(folder / "centroids.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, self.centroids)
        index = self.index
        if num_gpus() > 0 and hasattr(faiss, "index_gpu_to_cpu"):
            try:
                index = faiss.index_gpu_to_cpu(index)
            except (RuntimeError, TypeError):
                pass
        with naming_os_errors(folder / "index.faiss"), atomic_path(folder / "index.faiss") as tmp:
            try:
                faiss.write_index(index, str(tmp))
            except RuntimeError as err:  # faiss reports a failed write as a RuntimeError
                raise OSError(f"faiss could not write the index ({str(err).splitlines()[0]})") from None
        meta = {"k": self.k, "dim": self.dim, "spherical": self.spherical, "index_factory": self.index_factory, "nprobe": self.nprobe}
        if self.report is not None:
            report = {key: v for key, v in self.report.__dict__.items() if key != "seconds"}
            meta["report"] = {**report, "objective": list(self.report.objective)}
            write_text_atomic(folder / TIMINGS, json.dumps({"train_seconds": round(self.report.seconds, 3)}, indent=2))
        write_text_atomic(folder / "kmeans.json", json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "KMeans":
        """Read what ``save`` wrote; assignment then gives the same labels as before."""
        folder = Path(folder)
        missing = [n for n in ("centroids.npy", "kmeans.json") if not (folder / n).is_file()]
        if missing:
            raise ValueError(f"{folder}: missing {', '.join(missing)}; point at a folder written by KMeans.save")
        meta = json.loads((folder / "kmeans.json").read_text())
        report = None
        if "report" in meta:
            r = meta["report"]
            timings = folder / TIMINGS
            seconds = json.loads(timings.read_text()).get("train_seconds", 0.0) if timings.is_file() else r.get("seconds", 0.0)
            report = TrainReport(**{**r, "seconds": seconds, "objective": tuple(r["objective"])})
        km = cls(np.load(folder / "centroids.npy"), bool(meta["spherical"]), meta["index_factory"], int(meta["nprobe"]), report)
        if (folder / "index.faiss").is_file():
            km._index = _to_gpu(_faiss().read_index(str(folder / "index.faiss")), km.index_factory)
        return km


def _to_gpu(index, factory: str):
    faiss = _faiss()
    if num_gpus() > 0 and factory == "Flat":
        return faiss.index_cpu_to_all_gpus(index)
    return index


def _centroid_index(centroids: np.ndarray, spherical: bool, factory: str, nprobe: int):
    faiss = _faiss()
    metric = faiss.METRIC_INNER_PRODUCT if spherical else faiss.METRIC_L2
    try:
        index = faiss.index_factory(centroids.shape[1], factory, metric)
    except RuntimeError as exc:
        raise ValueError(f"index_factory={factory!r}: faiss cannot build it ({exc}); try 'Flat', 'HNSW32' or 'IVF64,Flat'") from exc
    if not index.is_trained:
        index.train(centroids)
    index.add(centroids)
    if hasattr(index, "nprobe"):
        index.nprobe = nprobe
    return _to_gpu(index, factory)


def sample_rows(n: int, k: int, max_points_per_centroid: int, seed: int) -> np.ndarray | None:
    """The rows ``kmeans`` trains on: ``None`` (all) when ``n <= k * max_points_per_centroid``, else a
    sorted seeded draw. Public so another engine (Ray) can fetch exactly these rows and train alike."""
    cap = int(k) * int(max_points_per_centroid)
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False)) if n > cap else None


def kmeans(
    x: np.ndarray,
    k: int,
    *,
    niter: int = 20,
    spherical: bool = False,
    seed: int = 0,
    max_points_per_centroid: int = 256,
    index_factory: str = "Flat",
    nprobe: int = 8,
    gpu: bool | None = None,
    init: str = "afkmc2",
    verbose: bool = False,
) -> KMeans:
    """Train ``k`` centroids with faiss on at most ``k * max_points_per_centroid`` seeded sample rows.

    ``spherical=True`` clusters directions (cosine): rows are L2-normalised and centroids kept on
    the unit sphere. ``index_factory`` builds the assignment index over the centroids ('Flat' is
    exact; 'HNSW32' or 'IVF{n},Flat' with ``nprobe`` for very large k). ``gpu=None`` uses a GPU
    when faiss sees one. ``x`` may be an ``np.memmap``: only the sample is read into memory.
    ``init``: 'afkmc2' (k-means++ quality at a fraction of its cost; on bootstrapped MiniLM data
    it reached ~10% lower inertia than 'random'), 'kmeans++' or 'random'. A faiss too old for
    seeded initialisers falls back to 'random', and ``report.init`` says which one ran.
    """
    import time

    faiss = _faiss()
    check_vectors(x)
    n, d = x.shape
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k={k!r}: need a positive integer number of clusters")
    if k > n:
        raise ValueError(f"k={k} is larger than the {n} rows; pass k <= {n}")
    if max_points_per_centroid < 1:
        raise ValueError(f"max_points_per_centroid={max_points_per_centroid}: must be >= 1")
    if niter < 1:
        raise ValueError(f"niter={niter}: must be >= 1")
    if init not in _INITS:
        raise ValueError(f"init={init!r}: use one of {', '.join(_INITS)}")
    init_used = init if hasattr(faiss.ClusteringParameters(), "init_method") else "random"
    use_gpu = num_gpus() > 0 if gpu is None else bool(gpu)
    if use_gpu and num_gpus() == 0:
        raise ValueError("gpu=True but faiss sees no GPU; install faiss-gpu on a CUDA machine or pass gpu=None")
    rows = sample_rows(n, k, max_points_per_centroid, seed)
    sampled = rows is not None
    sample = np.asarray(x[rows] if sampled else x[:], dtype=np.float32)
    bad = ~np.isfinite(sample).all(axis=1)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        check_finite(sample[r : r + 1], int(rows[r]) if sampled else r)
    sample = normalize_rows(sample) if spherical else np.ascontiguousarray(sample)
    km = faiss.Kmeans(
        d,
        int(k),
        niter=int(niter),
        spherical=spherical,
        seed=int(seed) & 0x7FFFFFFF,
        gpu=use_gpu,
        max_points_per_centroid=_TRAIN_CAP_OFF,
        min_points_per_centroid=1,
        verbose=verbose,
        **({"init_method": _INITS[init_used]} if init_used != "random" else {}),
    )
    t0 = time.perf_counter()
    km.train(sample)
    seconds = time.perf_counter() - t0
    report = TrainReport(
        rows=int(n),
        train_rows=int(sample.shape[0]),
        max_points_per_centroid=int(max_points_per_centroid),
        sampled=bool(sampled),
        niter=int(niter),
        objective=tuple(float(v) for v in np.asarray(km.obj)),
        seconds=seconds,
        gpu=use_gpu,
        init=init_used,
    )
    return KMeans(np.asarray(km.centroids, dtype=np.float32).copy(), spherical, index_factory, nprobe, report)
