"""Batches over cluster ids: one cluster per batch, or every batch spread across clusters by quota.

Why: topic-aware sampling for dense retrieval wants in-batch negatives from the same cluster
(``mode="homogeneous"``); balanced training wants each batch to mirror the cluster mix
(``mode="quota"``). With ``epoch_size`` each epoch first draws a cluster-balanced subset
(water-filling caps, a fresh random subset per epoch). The epoch's batch order is a pure function
of ``(labels, seed, epoch)``, the same for any world size, dealt to ranks with equal batch counts
and resumable from ``state_dict()`` under any world size, exactly like the other samplers.

Example:
    >>> import numpy as np
    >>> from packwise.samplers import ClusterBatchSampler
    >>> labels = np.array([0, 0, 0, 1, 1, 2])
    >>> s = ClusterBatchSampler(labels, batch_size=2, mode="homogeneous", num_replicas=1, rank=0)
    >>> sorted(sorted(labels[b].tolist()) for b in s)
    [[0], [0, 0], [1, 1], [2]]
"""

from __future__ import annotations

import numpy as np

from ._planned import _Batches, _PlannedBatchSampler, epoch_rng

MODES: tuple[str, ...] = ("homogeneous", "quota")


class ClusterBatchSampler(_PlannedBatchSampler):
    """Batch sampler over ``labels`` (cluster id per example, from ``KMeans.assign``).

    ``mode="homogeneous"``: every batch holds one cluster (a cluster's last batch may be short).
    ``mode="quota"``: every batch draws from each cluster in proportion to its (epoch) size,
    within one example. ``epoch_size``: examples per epoch, capped per cluster by water-filling.
    ``lengths`` (optional) feed the DDP cost model; without them every example costs 1.
    """

    _FIXED = ("labels", "seed", "batch_size", "mode", "epoch_size", "shuffle", "drop_last")

    def __init__(
        self,
        labels,
        batch_size: int,
        *,
        mode: str = "homogeneous",
        epoch_size: int | None = None,
        lengths=None,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels: expected a non-empty 1-D array of integer cluster ids, got shape {labels.shape} dtype {labels.dtype}")
        if labels.min() < 0:
            r = int(np.flatnonzero(labels < 0)[0])
            raise ValueError(f"labels: example {r} has cluster {labels[r]}; cluster ids must be >= 0")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: use 'homogeneous' (one cluster per batch) or 'quota' (clusters mixed by size)")
        if epoch_size is not None and (not isinstance(epoch_size, (int, np.integer)) or epoch_size < 1):
            raise ValueError(f"epoch_size must be a positive integer (examples per epoch), got {epoch_size!r}")
        if lengths is None:
            lengths = np.ones(labels.shape[0], np.int64)
        lengths = np.asarray(lengths)
        if lengths.shape != labels.shape or not np.issubdtype(lengths.dtype, np.integer) or (lengths < 0).any():
            raise ValueError(f"lengths: expected one non-negative integer per example {labels.shape}, got shape {lengths.shape}")
        super().__init__(labels.shape[0], seed=seed, shuffle=shuffle, drop_last=drop_last, num_replicas=num_replicas, rank=rank, attention_weight=0.0)
        self.labels = labels.astype(np.int64)
        self.lengths = lengths.astype(np.int64)
        self.batch_size = int(batch_size)
        self.mode = mode
        self.epoch_size = None if epoch_size is None else int(epoch_size)
        self.sizes = np.bincount(self.labels)

    def _settings(self) -> tuple:
        return ("cluster", self.batch_size, self.mode, self.epoch_size, self.shuffle, self.drop_last)

    def _lengths_bytes(self) -> bytes:
        return self.labels.tobytes() + self.lengths.tobytes()

    def epoch_examples(self, epoch: int) -> np.ndarray:
        """Sorted example ids used in ``epoch`` (all, or the epoch's cluster-balanced subset)."""
        from ..selection.balance import balanced_caps
        from ..selection.prototypes import select_per_cluster

        if self.epoch_size is None:
            return np.arange(self.labels.shape[0], dtype=np.int64)
        stream_seed = int(epoch_rng(self.seed, epoch, 2).integers(2**31))
        quotas = balanced_caps(self.sizes, self.epoch_size, seed=stream_seed)
        return select_per_cluster(self.labels, quotas, within="random", seed=stream_seed)

    def _batches(self, epoch: int) -> _Batches:
        rng = epoch_rng(self.seed, epoch, 0)
        ids = self.epoch_examples(epoch)
        lab = self.labels[ids]
        noise = rng.random(ids.shape[0]) if self.shuffle else (np.arange(ids.shape[0]) + 0.5) / max(ids.shape[0], 1)
        if self.mode == "homogeneous":
            order = ids[np.lexsort((noise, lab))]
            counts = np.bincount(self.labels[order], minlength=self.sizes.shape[0])
            counts = counts[counts > 0]
            per_cluster = -(-counts // self.batch_size)
            starts = np.repeat(np.cumsum(counts) - counts, per_cluster)
            within = np.arange(per_cluster.sum()) - np.repeat(np.cumsum(per_cluster) - per_cluster, per_cluster)
            lo = starts + within * self.batch_size
            hi = np.minimum(lo + self.batch_size, np.repeat(np.cumsum(counts), per_cluster))
            perm = rng.permutation(lo.shape[0]) if self.shuffle else np.arange(lo.shape[0])
            lo, hi = lo[perm], hi[perm]
            order = np.concatenate([order[a:b] for a, b in zip(lo.tolist(), hi.tolist())]) if lo.size else order
            offsets = np.concatenate([[0], np.cumsum(hi - lo)]).astype(np.int64)
        else:
            # stratified interleave: the r-th of n_c examples of cluster c sits at (r + u) / n_c
            pos_order = np.lexsort((noise, lab))
            sorted_lab = lab[pos_order]
            counts = np.bincount(sorted_lab, minlength=self.sizes.shape[0])
            first = np.cumsum(counts) - counts
            rank_in = np.arange(ids.shape[0]) - first[sorted_lab]
            u = rng.random(counts.shape[0]) if self.shuffle else np.full(counts.shape[0], 0.5)
            key = (rank_in + u[sorted_lab]) / counts[sorted_lab]
            order = ids[pos_order][np.lexsort((sorted_lab, key))]
            n = order.shape[0]
            offsets = np.append(np.arange(0, n, self.batch_size), n).astype(np.int64)
        order = order.astype(np.int64)
        lens = self.lengths[order]
        csum = np.concatenate([[0], np.cumsum(lens)])
        tokens = csum[offsets[1:]] - csum[offsets[:-1]]
        sq = np.concatenate([[0.0], np.cumsum(lens.astype(np.float64) ** 2)])
        squares = sq[offsets[1:]] - sq[offsets[:-1]]
        sizes = np.diff(offsets)
        maxlen = np.maximum.reduceat(lens, offsets[:-1]) if sizes.size and lens.size else np.zeros(0, np.int64)
        slots = (maxlen * sizes).astype(np.int64)
        return _Batches(order, offsets, tokens.astype(np.int64), slots, tokens.astype(np.int64), squares)
