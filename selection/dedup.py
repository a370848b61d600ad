"""Exact and semantic (SemDeDup-style) deduplication inside k-means clusters, with an audit trail.

Why: near-duplicates (a changed word, extra whitespace) survive hash dedup but sit within a
tiny cosine distance of each other, and therefore in the same cluster. Inside each cluster the
items are ordered (farthest from the centroid first by default) and an item is dropped when its
cosine similarity to an earlier *kept* item exceeds ``1 - eps``. Similarities are computed in
column blocks, so memory is O(cluster_size x block); several ``eps`` values share one pass. BLAS
only proposes the most similar earlier items; a fixed-order kernel decides between the near-ties,
so similarities, ranks and decisions are the same bits for any block size, BLAS or thread count. Every
row records its cluster, its most similar earlier item and that similarity, so any decision can be
checked.

Example:
    >>> import numpy as np
    >>> from packwise.selection import semantic_dedup
    >>> x = np.array([[1, 0], [0.999, 0.04], [0, 1]], np.float32)
    >>> r = semantic_dedup(x, labels=np.zeros(3, np.int64), eps=0.01, order="index")
    >>> r.kept_rows(0.01).tolist(), int(r.duplicate_of[1, 0])
    ([0, 2], 0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

import numpy as np

from . import _cluster_kernels as _k
from .cluster import check_finite, check_vectors, iter_blocks

Order = Literal["hard", "easy", "random", "index"]
ORDERS: tuple[str, ...] = ("hard", "easy", "random", "index")
REASONS: list[str] = ["kept", "near", "exact"]  # the audit's reason column, by code


def hash_rows(rows: Iterable[Sequence[int]] | Iterable[str] | Iterable[bytes]) -> np.ndarray:
    """uint64 hash per row of token ids (or per text / bytes): the key for exact dedup."""
    rows = list(rows)
    if not rows:
        return np.zeros(0, np.uint64)
    first = rows[0]
    if isinstance(first, str):
        rows = [r.encode("utf-8") for r in rows]
        first = rows[0]
    if isinstance(first, (bytes, bytearray)):
        parts = [np.frombuffer(r, np.uint8).astype(np.int64) for r in rows]
    else:
        parts = []
        for i, r in enumerate(rows):
            a = np.asarray(r)
            if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
                raise ValueError(f"tokens: row {i} is not a flat list of integer token ids; pass token ids or texts")
            parts.append(a.astype(np.int64, copy=False))
    lengths = np.fromiter((p.shape[0] for p in parts), np.int64, len(parts))
    offsets = np.zeros(len(parts) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(parts) if offsets[-1] else np.zeros(0, np.int64)
    return _k.hash_csr(values, offsets)


def exact_duplicates(hashes: np.ndarray) -> np.ndarray:
    """For each row, the first row with the same hash (itself when it is the first): int64."""
    hashes = np.asarray(hashes)
    if hashes.ndim != 1:
        raise ValueError(f"hashes: expected one hash per row (1-D), got shape {hashes.shape}")
    if hashes.size == 0:
        return np.zeros(0, np.int64)
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    return first.astype(np.int64)[inverse.reshape(-1)]


@dataclass(frozen=True, eq=False)
class DedupResult:
    """Per-row decisions of ``semantic_dedup`` for each ``eps`` (column ``e`` of 2-D arrays).

    ``nearest``/``similarity``: the most similar earlier row in the same cluster (-1 / NaN for
    a cluster's first row). ``duplicate_of``/``duplicate_similarity``: the most similar earlier
    *kept* row at that eps; the row is kept iff that similarity is <= ``1 - eps`` and it is not an
    exact duplicate. ``exact_of``: first row with the same token hash (itself when unique).
    ``rank``: position inside the cluster's processing order.
    """

    eps: tuple[float, ...]
    cluster: np.ndarray
    rank: np.ndarray
    nearest: np.ndarray
    similarity: np.ndarray
    kept: np.ndarray
    duplicate_of: np.ndarray
    duplicate_similarity: np.ndarray
    exact_of: np.ndarray
    order: str

    @property
    def num_rows(self) -> int:
        return int(self.cluster.shape[0])

    def _col(self, eps: float | None) -> int:
        if eps is None:
            return 0
        for e, v in enumerate(self.eps):
            if np.isclose(v, eps, rtol=0, atol=1e-12):
                return e
        raise ValueError(f"eps={eps}: not computed; this result has eps {list(self.eps)}")

    def keep_mask(self, eps: float | None = None) -> np.ndarray:
        return self.kept[:, self._col(eps)]

    def kept_rows(self, eps: float | None = None) -> np.ndarray:
        """Row ids kept at ``eps`` (default: the first eps), ascending int64."""
        return np.flatnonzero(self.keep_mask(eps)).astype(np.int64)

    def reasons(self, eps: float | None = None) -> np.ndarray:
        """'kept', 'exact' (same tokens as ``exact_of``) or 'near' (cosine > 1 - eps to ``duplicate_of``)."""
        return np.array(REASONS, dtype=object)[self._reason_codes(eps)]

    def _reason_codes(self, eps: float | None) -> np.ndarray:
        """Index into ``REASONS`` per row (int8): the audit's reasons without a Python string per row."""
        codes = np.where(self.kept[:, self._col(eps)], np.int8(0), np.int8(1))
        codes[self.exact_of != np.arange(self.num_rows)] = 2
        return codes

    def per_cluster(self, eps: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cluster ids, rows in, rows kept) for every non-empty cluster."""
        ids, size = np.unique(self.cluster, return_counts=True)
        kept = np.bincount(self.cluster, weights=self.keep_mask(eps), minlength=int(ids.max()) + 1)[ids]
        return ids, size.astype(np.int64), kept.astype(np.int64)

    def to_arrow(self, eps: float | None = None, row_ids: np.ndarray | None = None):
        """The audit table: row_id, cluster, rank, kept, reason, duplicate_of, similarity, nearest, nearest_similarity."""
        import pyarrow as pa

        e = self._col(eps)
        ids = np.arange(self.num_rows, dtype=np.int64) if row_ids is None else np.asarray(row_ids, np.int64)
        dup = np.where(self.exact_of != np.arange(self.num_rows), self.exact_of, self.duplicate_of[:, e])
        dup_sim = np.where(self.exact_of != np.arange(self.num_rows), np.float32(1.0), self.duplicate_similarity[:, e])

        def remap(a: np.ndarray) -> np.ndarray:
            return np.where(a >= 0, ids[np.maximum(a, 0)], -1)

        return pa.table(
            {
                "row_id": ids,
                "cluster": self.cluster,
                "rank": self.rank,
                "kept": self.kept[:, e],
                "reason": pa.DictionaryArray.from_arrays(self._reason_codes(eps), REASONS).cast(pa.string()),
                "duplicate_of": remap(dup),
                "similarity": dup_sim.astype(np.float32),
                "nearest": remap(self.nearest),
                "nearest_similarity": self.similarity,
            }
        )


def _eps_tuple(eps: float | Sequence[float]) -> tuple[float, ...]:
    values = (eps,) if np.isscalar(eps) else tuple(eps)
    if not values:
        raise ValueError("eps: pass at least one threshold, e.g. eps=0.05")
    for v in values:
        if not (0.0 <= float(v) < 2.0) or not np.isfinite(v):
            raise ValueError(f"eps={v}: must be in [0, 2); an item is a duplicate when cosine > 1 - eps")
    return tuple(float(v) for v in values)


def _check_labels(labels: np.ndarray, n: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels: expected one cluster id per row ({n},), got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: cluster ids must be integers, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        r = int(np.flatnonzero(labels < 0)[0])
        raise ValueError(f"labels: row {r} has cluster {labels[r]}; cluster ids must be >= 0")
    return labels.astype(np.int64, copy=False)


def semantic_dedup(
    embeddings: np.ndarray,
    *,
    labels: np.ndarray,
    eps: float | Sequence[float] = 0.05,
    distances: np.ndarray | None = None,
    order: Order = "hard",
    hashes: np.ndarray | None = None,
    seed: int = 0,
    block: int = 128,
    exact_of: np.ndarray | None = None,
) -> DedupResult:
    """Greedy in-cluster near-duplicate removal for one or several ``eps`` in one pass.

    ``labels``/``distances`` come from ``KMeans.assign``. ``order``: 'hard' processes the rows
    farthest from their centroid first (they are the ones kept), 'easy' closest first, 'random' a
    seeded shuffle, 'index' row order. ``hashes`` (from ``hash_rows``) also drops exact duplicates.
    ``exact_of`` instead of ``hashes``: the exact-duplicate map computed over a larger dataset that
    ``embeddings`` is part of (a row is dropped as exact where ``exact_of[i] != i``), so one cluster
    can be deduplicated on its own (the Ray engine) with the whole dataset's exact duplicates.
    ``block``: cluster rows whose similarities are computed at once (any value gives the same bits;
    128 keeps the block in cache while the kernel reads it).
    """
    check_vectors(embeddings)
    n = embeddings.shape[0]
    for lo, hi in iter_blocks(n, 65_536):
        check_finite(embeddings[lo:hi], lo)
    labels = _check_labels(labels, n)
    eps_t = _eps_tuple(eps)
    if order not in ORDERS:
        raise ValueError(f"order={order!r}: use one of {', '.join(ORDERS)}")
    if block < 1:
        raise ValueError(f"block={block}: must be >= 1")
    if order in ("hard", "easy"):
        if distances is None:
            raise ValueError(f"order={order!r} needs distances to the centroid; pass distances= from KMeans.assign or order='random'")
        distances = np.asarray(distances, np.float64)
        if distances.shape != (n,):
            raise ValueError(f"distances: expected one distance per row ({n},), got shape {distances.shape}")
        key = -distances if order == "hard" else distances
    elif order == "random":
        key = np.random.default_rng(seed).random(n)
    else:
        key = np.arange(n, dtype=np.float64)
    if hashes is not None:
        hashes = np.asarray(hashes)
        if hashes.shape != (n,):
            raise ValueError(f"hashes: expected one hash per row ({n},), got shape {hashes.shape}")
        exact_of = exact_duplicates(hashes)
    elif exact_of is not None:
        exact_of = np.asarray(exact_of, np.int64)
        if exact_of.shape != (n,):
            raise ValueError(f"exact_of: expected one entry per row ({n},), got shape {exact_of.shape}")
    else:
        exact_of = np.arange(n, dtype=np.int64)

    k = int(labels.max()) + 1
    order_idx, offsets = _k.cluster_csr(labels, k, np.ascontiguousarray(key, np.float64))
    thresholds = np.array([1.0 - e for e in eps_t], np.float64)
    ne = len(eps_t)
    rank = np.empty(n, np.int64)
    nearest = np.full(n, -1, np.int64)
    similarity = np.full(n, np.nan, np.float32)
    kept = np.zeros((n, ne), np.bool_)
    dup_of = np.full((n, ne), -1, np.int64)
    dup_sim = np.full((n, ne), np.nan, np.float32)
    is_exact = exact_of != np.arange(n)
    margin = _k.blas_margin(embeddings.shape[1])
    mask = np.full((1 + ne, int(np.diff(offsets).max())), _k.KEPT, np.int32)  # kept state, reused per cluster
    for c in np.flatnonzero(np.diff(offsets)):
        rows = order_idx[offsets[c] : offsets[c + 1]]
        v = _unit_rows(embeddings, rows)
        for b0 in range(0, rows.shape[0], block):
            earlier = v[: b0 + block]
            sims = earlier[b0:] @ earlier.T  # one contiguous row per position, still in cache when the kernel reads it
            _k.greedy_dedup_block(sims, b0, rows, v, is_exact, thresholds, margin, mask, rank, nearest, similarity, kept, dup_of, dup_sim)
    return DedupResult(eps_t, labels, rank, nearest, similarity, kept, dup_of, dup_sim, exact_of, order)


def _unit_rows(embeddings: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """float32 unit rows ``embeddings[rows]`` of one cluster (a fixed-order kernel: the same bits on
    any machine; one cluster's rows are copied, a memmap is read only there); errors name the dataset
    row, not the cluster position."""
    v, norms = _k.unit_rows(embeddings[rows])  # numpy gathers the rows far faster than a kernel loop
    if ((norms > 0) & (norms < np.inf)).all():
        return v
    bad = ~np.isfinite(norms)
    if bad.any():
        r = int(rows[bad].min())
        raise ValueError(f"embeddings: row {r} has a NaN or infinite value; re-embed it or drop the row")
    if (norms == 0).any():
        r = int(rows[norms == 0].min())
        raise ValueError(f"embeddings: row {r} is the zero vector and has no direction; drop it before dedup")
    return v


def exact_dedup(hashes: np.ndarray) -> np.ndarray:
    """Boolean keep mask: the first row of every distinct hash."""
    first = exact_duplicates(hashes)
    return first == np.arange(first.shape[0])
