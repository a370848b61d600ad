"""Input validation and seeding shared by the selection policies (private)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


def check_state(state: dict, required, saver: str, *, kind: str | None = None, owner: str | None = None) -> None:
    """Refuse a state dict without the keys ``saver`` writes, or saved by another kind of object."""
    missing = set(required) - set(state)
    if missing:
        raise ValueError(f"state_dict is missing {sorted(missing)}; pass a dict saved by {saver}")
    if kind is not None and state["kind"] != kind:
        raise ValueError(f"state_dict is a {state['kind']} state; this {owner} is a {kind}")


def check_same_settings(saved: dict, current: dict, owner: str) -> None:
    """Refuse to resume an object built with other arguments than the state was saved with."""
    for name, value in saved.items():
        if current.get(name) != value:
            raise ValueError(
                f"state_dict was saved with {name}={value!r} but this {owner} has {name}={current.get(name)!r}; "
                f"rebuild it with the saved arguments"
            )


def as_int(value, field: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{field} must be an integer >= {low}, got {value!r}")
    return int(value)


def as_ids(ids, num_examples: int, field: str = "indices") -> np.ndarray:
    """int64 ids in ``[0, num_examples)``; never routed through float."""
    if hasattr(ids, "detach"):  # a torch tensor
        if ids.is_floating_point():
            raise ValueError(f"{field} must be integer example ids, got a {ids.dtype} tensor; pass a long tensor")
        ids = ids.detach().cpu().numpy()
    array = np.asarray(ids)
    if array.ndim != 1:
        array = array.reshape(-1) if array.size == 0 else array
        if array.ndim != 1:
            raise ValueError(f"{field} must be 1-D, got shape {array.shape}")
    if array.shape[0] and array.dtype.kind not in "iu":
        raise ValueError(f"{field} must be integer example ids, got dtype {array.dtype}; pass int64 ids")
    array = array.astype(np.int64, copy=False)
    if array.shape[0] == 0 or (array.min() >= 0 and array.max() < num_examples):
        return np.ascontiguousarray(array)
    bad = np.flatnonzero((array < 0) | (array >= num_examples))
    if bad.shape[0]:
        j = int(bad[0])
        raise ValueError(
            f"{field}[{j}] = {int(array[j])} is outside [0, {num_examples}); pass global example ids "
            f"(the dataset index, e.g. from WithIndex)"
        )
    return np.ascontiguousarray(array)


def as_values(values, count: int, field: str = "values") -> np.ndarray:
    """Finite float32 values, one per id."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    array = np.asarray(values, dtype=np.float32)
    if array.shape != (count,):
        raise ValueError(f"{field} must have shape ({count},) (one per index), got {array.shape}")
    if np.isfinite(array).all():
        return np.ascontiguousarray(array)
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.shape[0]:
        j = int(bad[0])
        raise ValueError(f"{field}[{j}] = {float(array[j])} is not finite; check the loss for NaN/inf before update")
    return np.ascontiguousarray(array)


def exact(value, field: str) -> Fraction:
    """A ratio as the decimal the user typed (0.7 -> 7/10), so counts never suffer float noise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{field} must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{field} must be finite, got {value!r}")
    return Fraction(repr(float(value)))


def round_half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


def rng(seed: int, *keys: int) -> np.random.Generator:
    """Independent, platform-stable random stream per (seed, epoch, purpose, ...); no global state."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *keys])))


def steps_for(size: int, batch_size: int, num_replicas: int, drop_last: bool) -> int:
    """Batches per rank for ``size`` examples dealt evenly (ranks padded to equal counts)."""
    per_rank = -(-size // num_replicas)
    return per_rank // batch_size if drop_last else -(-per_rank // batch_size)
