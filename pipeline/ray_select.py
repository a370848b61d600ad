"""``select`` on Ray Data: the local engine's k-means, dedup and per-cluster picks, spread over a cluster.

The vectors are read, cut into blocks of ``ASSIGN_ROWS`` rows (the local ``KMeans.assign``
block; the exact assignment and dedup kernels give the same bits for any block or thread count)
and given row ids; the k-means
sample (the same rows the local engine draws) is pulled to the driver and trained there; the
index is broadcast with ``ray.put`` and rows are assigned in ``map_batches``; semantic dedup runs
per cluster in ``groupby("cluster").map_groups`` with the local ``semantic_dedup`` on each
cluster's rows in the local processing order, and prototype / balance picks run there too with
the local ``select_per_cluster`` and quotas computed on the driver.  The kept rows and
``decisions.parquet`` are written by the workers, one input block of ``WRITE_ROWS`` rows per task
(``write_selection``): the driver sends only the decisions table (a few bytes a row) and commits
the shard list in its manifest.

Example (needs ``pip install 'packwise[ray]'``)::

    packwise select emb.parquet sel/ --method dedup --embeddings-column emb --engine ray --ray-address auto
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .ray_engine import _task_errors, read_dataset, require_ray

ASSIGN_ROWS = 65_536  # rows per KMeans.assign block (its default batch_size)
WRITE_ROWS = ASSIGN_ROWS  # input rows per write task of the kept rows and decisions
DECISIONS = "decisions.parquet"  # a folder of per-block parts on Ray: pyarrow reads it as one table


def _add_row_ids(block, row0: int, column: str):
    """One block of the vector column -> ``row_id`` (global) and ``emb`` (fixed-size float32 lists, validated)."""
    import pyarrow as pa
    from ray.data.block import BlockAccessor

    from ..selection.embed import _vector_block

    table = BlockAccessor.for_block(block).to_arrow()
    x = _vector_block(table.column(column).combine_chunks(), column, row0, None)
    x = np.ascontiguousarray(x, np.float32)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    return pa.table({"row_id": np.arange(row0, row0 + x.shape[0], dtype=np.int64), "emb": emb})


def _matrix(table) -> np.ndarray:
    col = table.column("emb").combine_chunks()
    return np.asarray(col.values, np.float32).reshape(len(col), col.type.list_size)


_KM_CACHE: dict = {}


def _assign_block(table, *, km):
    """Nearest centroid of every row of one ``ASSIGN_ROWS`` block (the broadcast index, cached per worker)."""
    import ray

    from ..selection.cluster import KMeans

    key = km[0].hex()
    if key not in _KM_CACHE:
        centroids, spherical, factory, nprobe = ray.get(km[0])
        _KM_CACHE.clear()
        _KM_CACHE[key] = KMeans(centroids, spherical, factory, nprobe)
    labels, dist = _KM_CACHE[key].assign(_matrix(table), batch_size=ASSIGN_ROWS)
    return table.append_column("cluster", [labels]).append_column("distance", [dist])


def _take_rows(table, *, rows):
    import ray

    wanted = ray.get(rows[0])
    ids = np.asarray(table.column("row_id"))
    return table.filter(np.isin(ids, wanted))


def _dedup_group(table, *, eps, order, key, exact):
    """Semantic dedup of one cluster, in the local engine's processing order (key, then row id)."""
    import pyarrow as pa
    import ray

    from ..selection.dedup import semantic_dedup

    rid = np.asarray(table.column("row_id"))
    dist = np.asarray(table.column("distance"), np.float64)
    if order == "hard":
        k = -dist
    elif order == "easy":
        k = dist
    elif order == "random":
        k = ray.get(key[0])[rid]
    else:
        k = rid.astype(np.float64)
    pos = np.lexsort((rid, k))
    rid = rid[pos]
    m = rid.shape[0]
    is_exact = ray.get(exact[0])[rid] if exact[0] is not None else np.zeros(m, bool)
    res = semantic_dedup(_matrix(table.take(pa.array(pos))), labels=np.zeros(m, np.int64), eps=eps, order="index",
                         exact_of=np.where(is_exact, -1, np.arange(m)))  # fmt: skip

    def glob(a):
        return np.where(a >= 0, rid[np.maximum(a, 0)], -1)

    return pa.table({"row_id": rid, "rank": res.rank, "kept": res.kept[:, 0], "nearest": glob(res.nearest),
                     "similarity": res.similarity, "duplicate_of": glob(res.duplicate_of[:, 0]),
                     "duplicate_similarity": res.duplicate_similarity[:, 0]})  # fmt: skip


def _quota_group(table, *, quotas, within, key):
    """The first ``quotas[cluster]`` rows of one cluster in the local ``select_per_cluster`` order."""
    import pyarrow as pa
    import ray

    from ..selection.prototypes import select_per_cluster

    order = np.argsort(np.asarray(table.column("row_id")), kind="stable")
    rid = np.asarray(table.column("row_id"))[order]
    if key[0] is not None:  # 'random': the whole input's seeded draw, so the order is the local engine's
        within, d = "closest", ray.get(key[0])[rid]
    else:
        d = np.asarray(table.column("distance"), np.float64)[order]
    quota = ray.get(quotas[0])[int(table.column("cluster")[0].as_py())]
    picked = select_per_cluster(np.zeros(rid.shape[0], np.int64), np.array([quota], np.int64), within=within, distances=d)
    return pa.table({"row_id": rid[picked]})


class RaySelect:
    """Vectors of ``source`` on Ray, with global row ids, for k-means, assignment and per-cluster dedup."""

    def __init__(self, inp, column: str):
        ray = require_ray()
        with _task_errors():
            base = read_dataset(inp, [column]).repartition(target_num_rows_per_block=ASSIGN_ROWS, strict=True).materialize()
            add = ray.remote(_add_row_ids)
            refs, row = [], 0
            for bundle in base.iter_internal_ref_bundles():
                for ref, meta in zip(bundle.block_refs, bundle.metadata):
                    refs.append(add.remote(ref, row, column))
                    row += meta.num_rows
            if row == 0:
                raise ValueError(f"{inp.name}: the input has no rows")
            self.ds = ray.data.from_arrow_refs(refs)
        self.n = row
        self.assigned = None

    def cluster(self, k: int, *, seed: int, niter: int, max_points_per_centroid: int):
        """Train on the local engine's sample (pulled to the driver), assign every row on the workers."""
        import dataclasses

        import ray

        from ..selection.cluster import kmeans, sample_rows

        rows = sample_rows(self.n, k, max_points_per_centroid, seed) if k >= 1 and max_points_per_centroid >= 1 else None
        part = self.ds if rows is None else self.ds.map_batches(_take_rows, batch_format="pyarrow", fn_kwargs={"rows": [ray.put(rows)]})
        with _task_errors():
            got = part.to_arrow_refs()
            import pyarrow as pa

            table = pa.concat_tables(ray.get(got)).sort_by("row_id")
        sample = _matrix(table)
        km = kmeans(sample, k, spherical=True, seed=seed, niter=niter, max_points_per_centroid=max_points_per_centroid)
        km.report = dataclasses.replace(km.report, rows=self.n, sampled=rows is not None)
        ref = ray.put((km.centroids, km.spherical, km.index_factory, km.nprobe))
        with _task_errors():
            self.assigned = self.ds.map_batches(_assign_block, batch_format="pyarrow", batch_size=None, fn_kwargs={"km": [ref]}).materialize()
        labels = np.empty(self.n, np.int64)
        dist = np.empty(self.n, np.float32)
        for b in self.assigned.select_columns(["row_id", "cluster", "distance"]).iter_batches(batch_size=None, batch_format="numpy"):
            labels[b["row_id"]] = b["cluster"]
            dist[b["row_id"]] = b["distance"]
        return km, labels, dist

    def dedup(self, labels, dist, *, eps: float, order: str, hashes=None, seed: int = 0):
        """``semantic_dedup`` of the whole input, computed per cluster in ``groupby("cluster").map_groups``."""
        import ray

        from ..selection.dedup import ORDERS, DedupResult, _eps_tuple, exact_duplicates

        eps_t = _eps_tuple(eps)
        if order not in ORDERS:
            raise ValueError(f"order={order!r}: use one of {', '.join(ORDERS)}")
        n = self.n
        exact_of = exact_duplicates(hashes) if hashes is not None else np.arange(n, dtype=np.int64)
        is_exact = exact_of != np.arange(n)
        key = ray.put(np.random.default_rng(seed).random(n)) if order == "random" else None
        kwargs = {"eps": eps_t[0], "order": order, "key": [key], "exact": [ray.put(is_exact) if hashes is not None else None]}
        rank = np.empty(n, np.int64)
        nearest = np.full(n, -1, np.int64)
        similarity = np.full(n, np.nan, np.float32)
        kept = np.zeros((n, 1), np.bool_)
        dup_of = np.full((n, 1), -1, np.int64)
        dup_sim = np.full((n, 1), np.nan, np.float32)
        for b in self._per_cluster(_dedup_group, kwargs, int(labels.max()) + 1):
            r = b["row_id"]
            rank[r], nearest[r], similarity[r] = b["rank"], b["nearest"], b["similarity"]
            kept[r, 0], dup_of[r, 0], dup_sim[r, 0] = b["kept"], b["duplicate_of"], b["duplicate_similarity"]
        return DedupResult(eps_t, labels, rank, nearest, similarity, kept, dup_of, dup_sim, exact_of, order)

    def select_per_cluster(self, quotas: np.ndarray, *, within: str, seed: int = 0) -> np.ndarray:
        """``selection.select_per_cluster`` of the whole input (ascending row ids), one cluster per group.

        ``quotas`` come from the driver (``proportional_quotas`` / ``balanced_caps`` of the cluster
        sizes); each group keeps its first ``quotas[c]`` rows in the local order."""
        import ray

        key = ray.put(np.random.default_rng(seed).random(self.n)) if within == "random" else None
        kwargs = {"quotas": [ray.put(np.asarray(quotas, np.int64))], "within": within, "key": [key]}
        parts = [b["row_id"] for b in self._per_cluster(_quota_group, kwargs, int(np.asarray(quotas).shape[0]))]
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def _per_cluster(self, fn, kwargs: dict, k: int):
        """``groupby("cluster").map_groups(fn)`` over the assigned rows; yields numpy batches."""
        with _task_errors():
            parts = max(1, min(k, 200))  # one shuffle partition per cluster, at most Ray's default
            groups = self.assigned.groupby("cluster", num_partitions=parts).map_groups(fn, batch_format="pyarrow", fn_kwargs=kwargs)
            yield from groups.iter_batches(batch_size=None, batch_format="numpy")


def _write_selected_block(block, b: int, row0: int, decisions, output: str, shard_rows: int) -> dict:
    """On a worker: block ``b`` of the input (all columns, rows from ``row0``) -> its decisions part
    and its kept rows as shards of at most ``shard_rows`` rows, each written to a temporary name
    and renamed."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from ray.data.block import BlockAccessor

    from .atomic import atomic_path

    table = BlockAccessor.for_block(block).to_arrow()
    part = decisions.slice(row0, table.num_rows)
    if part.num_rows != table.num_rows:
        raise ValueError(f"input: rows {row0}.. of the input have no decisions (the input changed between the two passes); rerun")
    out = Path(output)
    name = f"{DECISIONS}/part-{b:06d}.parquet"
    with atomic_path(out / name) as tmp:
        pq.write_table(part, tmp)
    kept = table.filter(pa.array(np.asarray(part.column("kept"))))
    shards = []
    for k, first in enumerate(range(0, kept.num_rows, shard_rows)):
        shard = {"name": f"shard-{b:06d}-{k:04d}.parquet", "rows": min(shard_rows, kept.num_rows - first)}
        with atomic_path(out / shard["name"]) as tmp:
            pq.write_table(kept.slice(first, shard_rows), tmp)
        shards.append(shard)
    return {"decisions": name, "shards": shards}


def write_selection(inp, output: Path, decisions, shard_rows: int) -> tuple[list[dict], list[str]]:
    """Write the kept rows of ``inp`` (every column) and ``decisions`` from the workers, one task per
    block of ``WRITE_ROWS`` input rows, at most two per CPU in flight; returns the shards and the
    decisions parts in input order (the caller's manifest names them)."""
    ray = require_ray()
    output = Path(output)
    old = output / DECISIONS
    if old.is_dir():
        shutil.rmtree(old)
    elif old.exists():
        old.unlink()
    task = ray.remote(num_cpus=1)(_write_selected_block)
    ref = ray.put(decisions)
    limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    results: dict[int, dict] = {}
    pending: dict = {}
    b = row = 0
    with _task_errors():
        ds = read_dataset(inp, None).repartition(target_num_rows_per_block=WRITE_ROWS, strict=True)
        for bundle in ds.iter_internal_ref_bundles():
            for block, meta in zip(bundle.block_refs, bundle.metadata):
                pending[task.remote(block, b, row, ref, str(output), int(shard_rows))] = b
                b, row = b + 1, row + meta.num_rows
                while len(pending) >= limit:
                    done, _ = ray.wait(list(pending), num_returns=1)
                    results[pending.pop(done[0])] = ray.get(done[0])
        for done in list(pending):
            results[pending.pop(done)] = ray.get(done)
    if row != decisions.num_rows:
        raise ValueError(f"input: {inp.name} has {row} rows now, {decisions.num_rows} in the first pass (it changed); rerun")
    ordered = [results[k] for k in range(b)]
    return [s for r in ordered for s in r["shards"]], [r["decisions"] for r in ordered]
