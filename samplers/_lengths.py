"""Turn what users hold (a NumPy array, an Arrow array, a ``datasets.Dataset`` column) into lengths.

Token lists are never materialised in Python: a list column's lengths come from Arrow's offsets.
"""

from __future__ import annotations

import numpy as np

from ..packing.core import validate_lengths


def _arrow_lengths(column, name: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or pa.types.is_fixed_size_list(column.type):
        column = pc.list_value_length(column)
    elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        raise ValueError(
            f"{name} is a text column; lengths must be token counts: tokenize first "
            f"(a list column of token ids, or an integer length column)"
        )
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{name}[{row}] is null ({column.null_count} nulls); fill or filter those rows first")
    if not pa.types.is_integer(column.type):
        raise ValueError(f"{name} must hold integer token counts or token lists, got Arrow type {column.type}")
    return column.to_numpy(zero_copy_only=False)


def resolve_lengths(lengths, dataset=None, *, two_dims: bool = False, name: str = "lengths") -> np.ndarray:
    """Lengths as int64: shape ``(n,)``, or ``(n, 2)`` when ``two_dims`` allows it.

    ``lengths`` may be a NumPy array, a pyarrow (Chunked)Array of integers or of token lists, or the
    name of such a column in ``dataset`` (a ``datasets.Dataset``).  When ``dataset`` is given its
    size must match.

    Example:
        >>> import datasets
        >>> ds = datasets.Dataset.from_dict({"input_ids": [[1, 2], [3], [4, 5, 6]]})
        >>> resolve_lengths("input_ids", ds).tolist()
        [2, 1, 3]
    """
    if isinstance(lengths, str):
        if dataset is None:
            raise ValueError(f"{name}={lengths!r} names a column: pass dataset=<the datasets.Dataset> as well")
        if lengths not in dataset.column_names:
            raise ValueError(f"{name}={lengths!r} is not a column of the dataset; columns are {dataset.column_names}")
        arr = _arrow_lengths(dataset.with_format("arrow")[lengths], f"{name} column {lengths!r}")
    elif type(lengths).__module__.startswith("pyarrow"):
        arr = _arrow_lengths(lengths, name)
    elif isinstance(lengths, np.ndarray):
        arr = lengths
    else:
        raise ValueError(
            f"{name} must be a NumPy array, a pyarrow array or a dataset column name, got "
            f"{type(lengths).__name__}; wrap lists with np.asarray(..., dtype=np.int64)"
        )
    if arr.ndim == 2 and two_dims:
        if arr.shape[1] != 2:
            raise ValueError(f"{name} has shape {arr.shape}; two-dimensional lengths must be (n, 2): input, output")
        if arr.shape[0] == 0:
            raise ValueError(f"{name} is empty: nothing to sample")
        if arr.dtype.kind not in "iu":
            raise ValueError(f"{name} must have an integer dtype, got {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
        bad = np.flatnonzero((arr < 1).any(axis=1))
        if bad.shape[0]:
            i = int(bad[0])
            raise ValueError(
                f"{name}[{i}] = {arr[i].tolist()}: every length must be >= 1 token "
                f"({bad.shape[0]} bad rows); filter out empty examples first"
            )
    else:
        if arr.ndim != 1:
            allowed = "(n,) or (n, 2)" if two_dims else "(n,)"
            raise ValueError(f"{name} must have shape {allowed}, got {arr.shape}")
        arr = validate_lengths(arr, name)
    if dataset is not None and len(dataset) != arr.shape[0]:
        raise ValueError(
            f"{name} has {arr.shape[0]} entries but the dataset has {len(dataset)} rows; "
            f"compute lengths from the same dataset (after any filter or select)"
        )
    return arr
