"""Target proportions of a mixture: static vectors, temperature, two levels, step schedules.

Everything resolves to one flat vector per schedule point (one weight per source, summing to 1);
:class:`WeightSchedule` interpolates those vectors piecewise linearly in global steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def resolve_groups(groups, dataset=None, names=None) -> tuple[np.ndarray, list[str] | None]:
    """Source id per example as int64 (and names, when the ids were strings).

    ``groups`` may be an int array, a pyarrow (Chunked)Array, a list, a ``datasets`` column, or
    the name of a column of ``dataset``; a column of strings is factorised into sorted names.
    """
    if isinstance(groups, str):
        if dataset is None or groups not in dataset.column_names:
            raise ValueError(f"groups={groups!r} names a column: pass dataset=<a datasets.Dataset holding it>")
        groups = dataset.with_format("arrow")[groups]
    if type(groups).__module__.startswith("pyarrow"):
        if groups.null_count:
            raise ValueError(f"groups has {groups.null_count} null entries; give every example a source")
        groups = groups.to_numpy(zero_copy_only=False)
    arr = np.asarray(groups)
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"groups must be a non-empty 1-D array of source ids, got shape {arr.shape}")
    if arr.dtype.kind in "UO":
        if names is not None:
            raise ValueError("groups holds source names already; drop names= (or pass integer ids with names=)")
        found, codes = np.unique(arr.astype(str), return_inverse=True)
        return codes.astype(np.int64), [str(x) for x in found]
    if arr.dtype.kind not in "iu":
        raise ValueError(f"groups must hold integer source ids (or names), got dtype {arr.dtype}")
    if int(arr.min()) < 0:
        i = int(np.flatnonzero(arr < 0)[0])
        raise ValueError(f"groups[{i}] = {int(arr[i])}: source ids must be >= 0")
    return arr.astype(np.int64, copy=False), None


def vector(spec, names: list[str], field: str) -> np.ndarray:
    """A dict keyed by name or id, or an array, as one finite non-negative float per entry of ``names``."""
    count = len(names)
    if isinstance(spec, dict):
        out = np.full(count, np.nan)
        for key, value in spec.items():
            if isinstance(key, (int, np.integer)) and not isinstance(key, bool) and 0 <= key < count:
                out[int(key)] = value
            elif isinstance(key, str) and key in names:
                out[names.index(key)] = value
            else:
                raise ValueError(f"{field} has key {key!r}, which is not a source; sources are {names}")
        missing = [names[i] for i in np.flatnonzero(np.isnan(out))]
        if missing:
            raise ValueError(f"{field} has no entry for {missing}; give every source a weight (0 leaves it out)")
    else:
        out = np.asarray(spec, dtype=np.float64)
        if out.shape != (count,):
            raise ValueError(f"{field} must have one weight per source ({count}: {names}), got shape {out.shape}")
    if not np.isfinite(out).all() or (out < 0).any():
        raise ValueError(f"{field} must be finite and >= 0, got {out.tolist()}")
    return out


def level(spec, temperature, sizes: np.ndarray, names: list[str], field: str) -> np.ndarray:
    """One level's weights: ``spec`` as given, or ``sizes ** temperature`` (natural sizes by default)."""
    if spec is not None and temperature is not None:
        raise ValueError(f"give {field} or its temperature, not both")
    if spec is None:
        alpha = 1.0 if temperature is None else temperature
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not np.isfinite(alpha) or alpha < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (weights = size ** temperature), got {alpha!r}")
        out = np.where(sizes > 0, sizes.astype(np.float64) ** float(alpha), 0.0)
    else:
        out = vector(spec, names, field)
    if out.sum() <= 0:
        raise ValueError(f"{field} are all zero; give at least one source a positive weight")
    return out


@dataclass(frozen=True)
class Levels:
    """A second grouping level: ``parent[s]`` per source, the parents' names and their weights."""

    parent: np.ndarray
    names: list[str]
    weights: np.ndarray  # normalised over parents


def parent_level(parents, parent_weights, parent_temperature, sizes: np.ndarray, names: list[str]) -> Levels | None:
    """Resolve ``parents=`` (array of parent ids per source, or dict source -> parent name)."""
    if parents is None:
        if parent_weights is not None or parent_temperature is not None:
            raise ValueError("parent_weights / parent_temperature need parents=<the parent of each source>")
        return None
    if isinstance(parents, dict):
        keys = [names[k] if isinstance(k, (int, np.integer)) and 0 <= k < len(names) else k for k in parents]
        missing = sorted(set(names) - set(keys))
        if missing or len(keys) != len(names):
            raise ValueError(f"parents must name a parent for every source; missing {missing}")
        by_name = dict(zip(keys, parents.values()))
        pnames = sorted({str(v) for v in by_name.values()})
        parent = np.array([pnames.index(str(by_name[n])) for n in names], np.int64)
    else:
        parent = np.asarray(parents)
        if parent.shape != (len(names),) or parent.dtype.kind not in "iu" or (parent < 0).any():
            raise ValueError(f"parents must hold one parent id >= 0 per source ({len(names)}), got {parents!r}")
        parent = parent.astype(np.int64)
        pnames = [str(p) for p in range(int(parent.max()) + 1)]
    psizes = np.bincount(parent, weights=sizes, minlength=len(pnames))
    pw = level(parent_weights, parent_temperature, psizes, pnames, "parent_weights")
    return Levels(parent, pnames, pw / pw.sum())


def combine(within: np.ndarray, levels: Levels | None, field: str) -> np.ndarray:
    """Flat source weights: normalised, or the parent's weight split by ``within`` inside each parent."""
    if levels is None:
        return within / within.sum()
    sums = np.bincount(levels.parent, weights=within, minlength=len(levels.names))
    empty = np.flatnonzero((sums <= 0) & (levels.weights > 0))
    if empty.shape[0]:
        raise ValueError(
            f"{field}: parent {levels.names[int(empty[0])]!r} has weight > 0 but all its sources have weight 0; "
            f"give one of them a weight or set the parent's weight to 0"
        )
    share = np.divide(within, sums[levels.parent], out=np.zeros_like(within), where=sums[levels.parent] > 0)
    return levels.weights[levels.parent] * share


def is_schedule(weights) -> bool:
    """``[(step, weights), ...]``: a list of 2-tuples whose first items are integers."""
    return (
        isinstance(weights, (list, tuple))
        and len(weights) > 0
        and all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], (int, np.integer)) for p in weights)
    )


@dataclass(frozen=True)
class WeightSchedule:
    """Flat weight vectors at global steps, linear in between, held before the first and after the last.

    Two points at the same step make a jump: the later one applies from that step on.
    """

    steps: np.ndarray  # (points,) int64, non-decreasing
    points: np.ndarray  # (points, sources) float64, rows sum to 1

    @property
    def static(self) -> bool:
        return self.steps.shape[0] == 1

    def at(self, step: int) -> np.ndarray:
        """The target weights at global ``step``."""
        if self.steps.shape[0] == 1:  # static: no search
            return self.points[0]
        i = int(np.searchsorted(self.steps, step, side="right")) - 1
        if i < 0:
            return self.points[0]
        if i >= self.steps.shape[0] - 1:
            return self.points[-1]
        t = (step - self.steps[i]) / (self.steps[i + 1] - self.steps[i])
        return (1.0 - t) * self.points[i] + t * self.points[i + 1]


def schedule(weights, temperature, sizes: np.ndarray, names: list[str], levels: Levels | None) -> WeightSchedule:
    """Resolve ``weights`` (static, temperature or a ``[(step, weights), ...]`` schedule)."""
    if not is_schedule(weights):
        flat = combine(level(weights, temperature, sizes, names, "weights"), levels, "weights")
        return WeightSchedule(np.zeros(1, np.int64), flat[None, :])
    if temperature is not None:
        raise ValueError("a weight schedule and temperature do not combine; give temperature weights as schedule points")
    steps = np.array([int(p[0]) for p in weights], np.int64)
    if steps[0] < 0 or (np.diff(steps) < 0).any():
        raise ValueError(f"schedule steps must be >= 0 and non-decreasing, got {steps.tolist()}")
    rows = [
        combine(level(w, None, sizes, names, f"weights at step {s}"), levels, f"weights at step {s}")
        for s, w in weights
    ]
    return WeightSchedule(steps, np.stack(rows))
