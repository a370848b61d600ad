"""Embedding-based decontamination: flag training rows too similar to any evaluation item.

Why: n-gram overlap filters miss paraphrases of benchmark items; a cosine nearest-neighbour
search over the (small) evaluation set catches them. The training rows are streamed in batches
against the evaluation rows with ``exact_nearest`` (BLAS proposes, a fixed-order kernel decides),
so the similarity and the flag are the same bits for any batch size or BLAS thread count.

Example:
    >>> import numpy as np
    >>> from packwise.selection import decontaminate
    >>> train = np.array([[1, 0], [0, 1], [0.7, 0.7]], np.float32)
    >>> r = decontaminate(train, np.array([[0, 1]], np.float32), threshold=0.95)
    >>> r.flagged.tolist(), r.matches()
    ([False, True, False], [(1, 0, 1.0)])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cluster import check_finite, check_vectors, exact_nearest, iter_blocks, normalize_rows


@dataclass(frozen=True, eq=False)
class Contamination:
    """Per training row: the most similar evaluation item, its cosine similarity, and the flag."""

    threshold: float
    eval_index: np.ndarray
    similarity: np.ndarray
    flagged: np.ndarray

    def matches(self) -> list[tuple[int, int, float]]:
        """(train row, eval item, similarity) of every flagged row, most similar first."""
        rows = np.flatnonzero(self.flagged)
        rows = rows[np.lexsort((rows, -self.similarity[rows]))]
        return [(int(r), int(self.eval_index[r]), round(float(self.similarity[r]), 6)) for r in rows]

    def keep_rows(self) -> np.ndarray:
        return np.flatnonzero(~self.flagged).astype(np.int64)


def decontaminate(train: np.ndarray, eval_set: np.ndarray, threshold: float = 0.9, batch_size: int = 65_536) -> Contamination:
    """Flag every training row whose cosine similarity to some evaluation row exceeds ``threshold``."""
    check_vectors(train, "train embeddings")
    check_vectors(eval_set, "eval embeddings", dim=train.shape[1])
    if not (-1.0 <= threshold <= 1.0):
        raise ValueError(f"threshold={threshold}: a cosine similarity in [-1, 1], e.g. 0.9")
    check_finite(np.asarray(eval_set), 0, "eval embeddings")
    targets = normalize_rows(eval_set, 0, "eval embeddings")
    n = train.shape[0]
    best = np.empty(n, np.int64)
    sim = np.empty(n, np.float32)
    for lo, hi in iter_blocks(n, batch_size):
        block = np.asarray(train[lo:hi])
        check_finite(block, lo, "train embeddings")
        best[lo:hi], sim[lo:hi] = exact_nearest(normalize_rows(block, lo, "train embeddings"), targets, l2=False)
    return Contamination(float(threshold), best, sim, sim > threshold)
