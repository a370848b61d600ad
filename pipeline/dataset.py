"""Read packed shards back for training: map-style ``PackedDataset`` and streaming ``PackedIterableDataset``.

Both yield one packed row at a time as NumPy arrays; ``collate`` hands a list of rows to the
packing core's ``PackedCollator`` (each row's sequences become examples sharing one ``bin``), so
``position_ids``, ``cu_seq_lens`` and boundary ``labels`` are rebuilt from ``seq_lens`` at load time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import torch.utils.data

from ._arrow import numpy_view
from ._paths import shown
from .writer import MANIFEST
from .writer import read_shard as _read_shard
from .writer import shard_files as _shard_files
from .writer import source_names

# label: KTO, per sequence; source: a mixed pack's source id per sequence (names: ``PackedDataset.sources``)
_LIST_COLUMNS = ("input_ids", "labels", "seq_lens", "source_index", "source_start", "label", "source")


def _read_manifest(path) -> tuple[Path, dict]:
    root = Path(path)
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise ValueError(
            f"packed dataset: no {MANIFEST} in {shown(root)}; the pack run is missing or unfinished: run packwise pack to the end"
        )
    return root, json.loads(manifest.read_text())


def _rows_of(table) -> list[dict]:
    """Rows of a shard table as dicts of NumPy arrays (CSR slices, no per-token Python)."""
    import pyarrow as pa

    cols = {}
    for name in _LIST_COLUMNS:
        if name in table.column_names:
            col = table.column(name).combine_chunks()
            offsets = numpy_view(col.offsets, np.int32).astype(np.int64)
            if col.values.type == pa.bool_():  # bit-packed: no zero-copy view
                values = col.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
            else:
                values = numpy_view(col.values, col.values.type.to_pandas_dtype())[offsets[0] : offsets[-1]]
            cols[name] = (offsets - offsets[0], values)
    n = table.num_rows
    return [{k: v[o[i] : o[i + 1]] for k, (o, v) in cols.items()} for i in range(n)]


class _Collate:
    """Rows -> ``PackedCollator`` examples: each sequence of row ``j`` is an example with ``bin=j``.

    A sequence whose stored labels are all -100 is refused, as ``PackedCollator`` refuses it,
    unless ``allow_unlabeled`` (a pack run with ``--allow-unlabeled`` sets it)."""

    def __init__(self, collator, allow_unlabeled: bool = False):
        self.collator, self.allow_unlabeled = collator, bool(allow_unlabeled)

    def __call__(self, rows: list[dict]) -> dict:
        examples, kto = [], [row["label"] for row in rows if "label" in row]
        sources = [row["source"] for row in rows if "source" in row]
        for j, row in enumerate(rows):
            ends = np.cumsum(row["seq_lens"])
            for k, (a, b) in enumerate(zip(np.concatenate(([0], ends[:-1])), ends)):
                ex = {"input_ids": row["input_ids"][a:b], "bin": j}
                if "labels" in row:
                    ex["labels"] = row["labels"][a:b]
                    self._check(ex["labels"], len(examples), row["source_index"][k])
                examples.append(ex)
        batch = self.collator(examples)
        if kto:  # KTO: desirable (True) / undesirable per example, in example order (batch["example_index"] maps them)
            batch["label"] = torch.from_numpy(np.concatenate(kto).astype(np.bool_))
        if sources:  # a mixed pack: each example's source id, in example order (per-source loss)
            batch["source"] = torch.from_numpy(np.concatenate(sources).astype(np.int64))
        return batch

    def _check(self, labels: np.ndarray, i: int, source: int) -> None:
        if not self.allow_unlabeled and not (labels != -100).any():
            raise ValueError(
                f"examples[{i}] (input row {int(source)}): every label is -100, so it would train on nothing; drop it, "
                f"or pass allow_unlabeled=True (packwise pack --allow-unlabeled kept it)"
            )


def _collate_of(manifest: dict, capacity: int, collator, allow_unlabeled: bool | None):
    """The ``collate`` of a packed folder (a DPO pack's: its pairs for ``PairCollator``);
    ``allow_unlabeled=None`` follows the pack run's setting."""
    settings = manifest["settings"]
    if "share_prompt" in settings:  # a preference pack (dpo, dpo_implicit): one stored sequence per pair, for PairCollator
        from .preference import PairCollate

        return PairCollate(settings["share_prompt"], collator)
    allow = settings.get("allow_unlabeled", False) if allow_unlabeled is None else allow_unlabeled
    return _Collate(_default_collator(capacity, collator), allow)


def _default_collator(capacity: int, collator):
    if collator is not None:
        return collator
    from ..packing import PackedCollator

    # packed rows legitimately hold 1-token sequences (short rows, split or concat pieces)
    return PackedCollator(layout="flash", shape="rows", capacity=capacity, allow_unlabeled=True)


class PackedDataset(torch.utils.data.Dataset):
    """Map-style view of a ``packwise pack`` output folder: ``ds[i]`` is packed row ``i``.

    Rows are dicts of NumPy arrays (``input_ids``, ``labels`` when packed with labels, ``seq_lens``,
    ``source_index``, ``source_start``; a mixed pack adds ``source``, each sequence's source id, whose
    names are ``sources``, and ``collate`` puts them per example in ``batch["source"]``).  Reads one Parquet row group at a time and keeps the last
    one, so sequential access reads each group once.  ``collate`` builds training batches.

    Example:
        >>> import tempfile, pyarrow as pa, pyarrow.parquet as pq
        >>> from torch.utils.data import DataLoader
        >>> from packwise.pipeline import PackedDataset, pack_to_parquet
        >>> d = tempfile.mkdtemp()
        >>> ids = pa.array([[1, 2, 3], [4, 5], [6, 7]], pa.list_(pa.int32()))
        >>> pq.write_table(pa.table({"input_ids": ids}), d + "/in.parquet")
        >>> _ = pack_to_parquet(d + "/in.parquet", d + "/out", max_tokens=5, tokens_column="input_ids")
        >>> ds = PackedDataset(d + "/out")
        >>> len(ds), ds[0]["seq_lens"].tolist()
        (2, [3, 2])
        >>> batch = next(iter(DataLoader(ds, batch_size=2, collate_fn=ds.collate)))
        >>> batch["input_ids"].tolist(), batch["position_ids"][0].tolist()
        ([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]], [0, 1, 2, 0, 1])
    """

    def __init__(self, path, collator=None, allow_unlabeled: bool | None = None):
        self.root, self.manifest = _read_manifest(path)
        self.capacity = int(self.manifest["settings"]["max_tokens"])
        self.files = _shard_files(self.root, self.manifest)
        self._ends = np.cumsum([s["rows"] for s in self.manifest["shards"]]).astype(np.int64)
        self.sources = source_names(self.manifest)
        self.collate = _collate_of(self.manifest, self.capacity, collator, allow_unlabeled)
        self._group_ends: dict[int, np.ndarray] = {}
        self._cached: tuple | None = None

    def __len__(self) -> int:
        return int(self._ends[-1]) if self._ends.shape[0] else 0

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cached"] = None
        return state

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"row {index} out of range for a packed dataset of {n} rows")
        shard = int(np.searchsorted(self._ends, index, side="right"))
        local = index - (int(self._ends[shard - 1]) if shard else 0)
        import pyarrow.parquet as pq

        if shard not in self._group_ends:
            meta = _read_shard(self.files[shard], pq.read_metadata)
            sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
            self._group_ends[shard] = np.cumsum(sizes).astype(np.int64)
        ends = self._group_ends[shard]
        group = int(np.searchsorted(ends, local, side="right"))
        if self._cached is None or self._cached[0] != (shard, group):
            table = _read_shard(self.files[shard], lambda p: pq.ParquetFile(p).read_row_group(group))
            self._cached = ((shard, group), _rows_of(table))
        return self._cached[1][local - (int(ends[group - 1]) if group else 0)]

    def iterable(self, *, shuffle_shards: bool = False, seed: int = 0) -> "PackedIterableDataset":
        """The same rows as a streaming ``IterableDataset`` (shards split across DataLoader workers)."""
        return PackedIterableDataset(self.root, collator=self.collate.collator, shuffle_shards=shuffle_shards, seed=seed,
                                     allow_unlabeled=self.collate.allow_unlabeled)  # fmt: skip


class PackedIterableDataset(torch.utils.data.IterableDataset):
    """Stream the packed rows shard by shard; DataLoader worker ``w`` of ``W`` reads shards ``w, w+W, ...``.

    With ``shuffle_shards`` the shard order is a permutation drawn from ``(seed, epoch)``; call
    ``set_epoch`` between epochs.  Every row is yielded exactly once per epoch across workers.
    """

    def __init__(self, path, collator=None, *, shuffle_shards: bool = False, seed: int = 0, allow_unlabeled: bool | None = None):
        self.root, self.manifest = _read_manifest(path)
        self.capacity = int(self.manifest["settings"]["max_tokens"])
        self.files = _shard_files(self.root, self.manifest)
        self.num_rows = int(sum(s["rows"] for s in self.manifest["shards"]))
        self.sources = source_names(self.manifest)
        self.collate = _collate_of(self.manifest, self.capacity, collator, allow_unlabeled)
        self.shuffle_shards, self.seed, self.epoch = shuffle_shards, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_rows

    def __iter__(self) -> Iterator[dict]:
        import pyarrow.parquet as pq

        order = np.arange(len(self.files))
        if self.shuffle_shards:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.files))
        info = torch.utils.data.get_worker_info()
        if info is not None:
            order = order[info.id :: info.num_workers]
        for k in order:
            f = _read_shard(self.files[int(k)], pq.ParquetFile)
            for g in range(f.num_row_groups):
                yield from _rows_of(_read_shard(self.files[int(k)], lambda p: f.read_row_group(g)))
