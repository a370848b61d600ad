"""Reference (irreducible) losses by example id: computed once by a reference model, stored as a
Parquet score column ``(row_id, score)``, looked up at train time.

RHO-LOSS trains its irreducible-loss model on a small holdout set and scores every training
example once; the score column is also what ``packwise select --method score --score-column score``
reads.  The table is a :class:`ScoreStore`, so an id the reference pass never scored has no score
(looking it up is an error, never a silent zero).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ._batch import check_ids, check_losses
from ._checks import as_int
from .scores import ScoreStore


class ReferenceScores:
    """Reference loss of every example id (float32), with a ``seen`` mask.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> from packwise.selection import ReferenceScores
        >>> ref = ReferenceScores.from_array(np.array([0.5, 1.0, 2.0], np.float32))
        >>> ref[np.array([2, 0])].tolist()
        [2.0, 0.5]
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "ref.parquet"
        >>> ref.to_parquet(path)
        >>> ReferenceScores.from_parquet(path)[[1]].tolist()
        [1.0]
    """

    def __init__(self, num_examples: int):
        self.store = ScoreStore(as_int(num_examples, "num_examples", 1))

    def __len__(self) -> int:
        return self.store.num_examples

    @property
    def num_scored(self) -> int:
        return int(self.store.seen.sum())

    @classmethod
    def from_array(cls, scores) -> "ReferenceScores":
        """Every example scored: ``scores[i]`` is the reference loss of id ``i``."""
        values = np.asarray(scores)
        if values.ndim != 1 or values.shape[0] == 0:
            raise ValueError(f"scores must be a non-empty 1-D array (one per example id), got shape {values.shape}")
        ref = cls(values.shape[0])
        ref.update(np.arange(values.shape[0], dtype=np.int64), values)
        return ref

    @classmethod
    def from_parquet(
        cls, path, id_column: str = "row_id", score_column: str = "score", num_examples: int | None = None
    ) -> "ReferenceScores":
        """Read a ``(row_id, score)`` table (e.g. from :func:`reference_scores`); ``num_examples``
        defaults to ``max(row_id) + 1``."""
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=[id_column, score_column])
        ids_col, scores_col = table.column(id_column), table.column(score_column)
        if ids_col.null_count or scores_col.null_count:
            field = id_column if ids_col.null_count else score_column
            raise ValueError(f"{path}: column {field!r} has nulls; write one score per row id")
        ids = check_ids(ids_col.to_numpy(), f"{path}:{id_column}")
        values = check_losses(scores_col.to_numpy().astype(np.float32), ids.shape[0], f"{path}:{score_column}")
        n = num_examples if num_examples is not None else (int(ids.max()) + 1 if ids.shape[0] else 0)
        if n < 1:
            raise ValueError(f"{path} holds no rows; run the reference pass over the dataset first")
        ref = cls(n)
        ref.update(ids, values)
        return ref

    def update(self, ids, losses) -> None:
        """Record the reference loss of ``ids`` (later rows win on repeats)."""
        ids = check_ids(ids)
        values = check_losses(losses, ids.shape[0], "losses")
        if ids.shape[0] and ids.max() >= len(self):
            j = int(np.argmax(ids >= len(self)))
            raise ValueError(
                f"ids[{j}] = {int(ids[j])} is outside [0, {len(self)}); build ReferenceScores with num_examples "
                f"= the dataset size"
            )
        self.store._scatter(ids, values, 0)

    def __getitem__(self, ids) -> np.ndarray:
        """float32 reference losses of ``ids``; an id outside the table or never scored is an error."""
        ids = check_ids(ids)
        n = len(self)
        if ids.shape[0] and ids.max() >= n:
            j = int(np.argmax(ids >= n))
            raise ValueError(
                f"ids[{j}] = {int(ids[j])} is outside the reference table [0, {n}); score the whole dataset with the "
                f"reference model"
            )
        seen = self.store.seen[ids]
        if not seen.all():
            j = int(np.argmin(seen))
            raise ValueError(
                f"ids[{j}] = {int(ids[j])} has no reference score; run reference_scores over every example the "
                f"learner trains on (or pass reference losses online)"
            )
        return self.store.scores[ids]

    def to_parquet(self, path) -> None:
        """Write the scored ids as ``(row_id int64, score float32)``, atomically (temp name, then rename)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ..pipeline.atomic import atomic_path

        ids = np.flatnonzero(self.store.seen).astype(np.int64)
        table = pa.table({"row_id": ids, "score": self.store.scores[ids]})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)


def reference_scores(
    loss_fn: Callable,
    batches: Iterable,
    num_examples: int,
    path: str | Path | None = None,
) -> ReferenceScores:
    """Run a reference model once over a dataset: ``loss_fn(batch) -> (ids, per_example_loss)``
    for every batch (under ``torch.no_grad``), gathered across DDP ranks, written to ``path``
    as Parquet ``(row_id, score)`` by rank 0 (atomically) when given.

    Example:
        >>> import torch
        >>> from packwise.selection import reference_scores
        >>> batches = [(torch.tensor([0, 1]), torch.tensor([0.3, 0.1])), (torch.tensor([2]), torch.tensor([0.7]))]
        >>> ref = reference_scores(lambda b: b, batches, num_examples=3)
        >>> [round(float(x), 3) for x in ref[[0, 1, 2]]]
        [0.3, 0.1, 0.7]
    """
    import torch
    import torch.distributed as dist

    from . import _torch

    ref = ReferenceScores(num_examples)
    ids_parts, loss_parts = [], []
    with torch.no_grad():
        for batch in batches:
            out = loss_fn(batch)
            if not isinstance(out, tuple) or len(out) != 2:
                raise ValueError("loss_fn must return (ids, per_example_loss) for each batch")
            ids = check_ids(out[0])
            ids_parts.append(ids)
            loss_parts.append(check_losses(out[1], ids.shape[0], "per_example_loss"))
    ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int64)
    losses = np.concatenate(loss_parts) if loss_parts else np.zeros(0, np.float32)
    ids, losses = _torch.gather(ids, losses)
    ref.update(ids, losses)
    rank0 = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    if path is not None and rank0:
        ref.to_parquet(path)
    if path is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()  # the file is complete before any rank reads it
    return ref
