"""Sampler and policy state on disk without pickle: a ``.npz`` of plain arrays plus one JSON tree.

``save_state(path, state)`` writes ``state`` (dicts, lists, tuples, str/int/float/bool/None, NumPy
arrays and scalars) atomically; ``load_state(path)`` reads it back equal, types included, with
``np.load(allow_pickle=False)``: a checkpoint file can never run code when it is loaded.

Example:
    >>> import numpy as np, tempfile, os
    >>> from packwise.samplers import load_state, save_state
    >>> path = os.path.join(tempfile.mkdtemp(), "state.npz")
    >>> save_state(path, {"epoch": 2, "kept": np.arange(3), "settings": (0.5, None)})
    >>> load_state(path)["settings"]
    (0.5, None)
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import numpy as np

_TREE = "__tree__"
_TAG = "__packwise__"  # marks a dict that stands for a non-JSON value


def _encode(value: Any, arrays: dict[str, np.ndarray], where: str) -> Any:
    """``value`` as JSON, with arrays moved into ``arrays`` and the Python types tagged."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)) and type(value) in (int, float):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise ValueError(f"state{where} is an object array; store numbers or strings, not Python objects")
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {_TAG: "array", "key": key}
    if isinstance(value, np.generic):
        return {_TAG: "scalar", "dtype": value.dtype.str, "value": value.item()}
    if isinstance(value, tuple):
        return {_TAG: "tuple", "items": [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        pairs = [[_encode(k, arrays, f"{where} key"), _encode(v, arrays, f"{where}[{k!r}]")] for k, v in value.items()]
        return {_TAG: "dict", "items": pairs}
    raise ValueError(
        f"state{where} is a {type(value).__name__}; a state file holds dicts, lists, tuples, numbers, "
        f"strings and NumPy arrays only"
    )


def _decode(value: Any, arrays: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    if not isinstance(value, dict):
        return value
    tag = value.get(_TAG)
    if tag == "array":
        return arrays[value["key"]]
    if tag == "scalar":
        return np.array(value["value"], dtype=np.dtype(value["dtype"]))[()]
    if tag == "tuple":
        return tuple(_decode(v, arrays) for v in value["items"])
    if tag == "dict":
        return {_hashable(_decode(k, arrays)): _decode(v, arrays) for k, v in value["items"]}
    raise ValueError(f"unknown entry {value!r}")


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def save_state(path: str | os.PathLike, state: Any) -> None:
    """Write ``state`` to ``path`` (a ``.npz``) through a temporary file and a rename."""
    arrays: dict[str, np.ndarray] = {}
    tree = json.dumps(_encode(state, arrays, ""))
    arrays[_TREE] = np.frombuffer(tree.encode(), np.uint8)
    path = os.fspath(path)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def load_state(path: str | os.PathLike) -> Any:
    """Read a state written by :func:`save_state`; anything else is a ``ValueError`` (never unpickled)."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files") or _TREE not in data.files:
                raise ValueError("no state tree")
            arrays = {k: data[k] for k in data.files}
        return _decode(json.loads(arrays.pop(_TREE).tobytes().decode()), arrays)
    except (ValueError, OSError, zipfile.BadZipFile, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path} is not a packwise state file ({err}); packwise never unpickles state: "
            f"re-save it with packwise.samplers.save_state, or restart the epoch without it"
        ) from None
