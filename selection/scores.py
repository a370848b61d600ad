"""Per-example score store: the one table every loss-driven policy reads and ``update`` writes.

9 bytes per example (float32 score, bool seen, int32 last-seen epoch), so 100M examples take
0.9 GB.  Ids are int64 global example indices; values are float32.  An unseen example has no
score at all (``seen`` False), which is not the same as a low score.
"""

from __future__ import annotations

import numpy as np

from . import _kernels
from ._checks import as_ids, as_values


class ScoreStore:
    """Last (or EMA-smoothed) score of every example, with a ``seen`` mask and last-seen epoch.

    Example:
        >>> import numpy as np
        >>> from packwise.selection import ScoreStore
        >>> store = ScoreStore(4, momentum=0.5)
        >>> store.update([1, 3], [2.0, 4.0], epoch=0)
        >>> store.update([1], [1.0], epoch=1)
        >>> store.scores.tolist(), store.seen.tolist(), store.last_epoch.tolist()
        ([0.0, 1.5, 0.0, 4.0], [False, True, False, True], [-1, 1, -1, 0])
    """

    def __init__(self, num_examples: int, momentum: float | None = None):
        if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
            raise ValueError(f"num_examples must be a positive integer, got {num_examples!r}")
        if momentum is not None and not (0.0 < float(momentum) <= 1.0):
            raise ValueError(
                f"momentum must be None (keep the last score) or in (0, 1] (EMA weight of the new value), "
                f"got {momentum!r}"
            )
        self.num_examples = int(num_examples)
        self.momentum = None if momentum is None else float(momentum)
        self.scores = np.zeros(self.num_examples, np.float32)
        self.seen = np.zeros(self.num_examples, np.bool_)
        self.last_epoch = np.full(self.num_examples, -1, np.int32)

    def __len__(self) -> int:
        return self.num_examples

    @property
    def nbytes(self) -> int:
        """Bytes held by the table (9 per example)."""
        return int(self.scores.nbytes + self.seen.nbytes + self.last_epoch.nbytes)

    def update(self, ids, values, epoch: int) -> None:
        """Record ``values[j]`` as the score of ``ids[j]`` seen in ``epoch`` (later rows win on repeats)."""
        ids = as_ids(ids, self.num_examples, "ids")
        values = as_values(values, ids.shape[0], "values")
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or not 0 <= epoch < 2**31 - 1:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self._scatter(ids, values, int(epoch))

    def _scatter(self, ids: np.ndarray, values: np.ndarray, epoch: int) -> None:
        """Unchecked write for callers that validated ``ids`` (int64, in range) and ``values`` (float32)."""
        _kernels.scatter_scores(self.scores, self.seen, self.last_epoch, ids, values, epoch, self.momentum or 0.0)

    def seen_mean(self) -> tuple[float, int]:
        """``(mean score over seen examples, number seen)``; ``(0.0, 0)`` before any update."""
        mean, count = _kernels.seen_mean(self.scores, self.seen)
        return float(mean), int(count)

    def state_dict(self) -> dict:
        """Plain NumPy arrays (copies) and settings; what :meth:`load_state_dict` needs."""
        return {
            "num_examples": self.num_examples,
            "momentum": self.momentum,
            "scores": self.scores.copy(),
            "seen": self.seen.copy(),
            "last_epoch": self.last_epoch.copy(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a table saved by :meth:`state_dict` (same ``num_examples`` and ``momentum``)."""
        missing = {"num_examples", "momentum", "scores", "seen", "last_epoch"} - set(state)
        if missing:
            raise ValueError(f"score state_dict is missing {sorted(missing)}; pass a dict saved by state_dict()")
        for field in ("num_examples", "momentum"):
            if state[field] != getattr(self, field):
                raise ValueError(
                    f"score state_dict was saved with {field}={state[field]!r} but this store has "
                    f"{field}={getattr(self, field)!r}; rebuild it with the saved {field}"
                )
        for field, dtype in (("scores", np.float32), ("seen", np.bool_), ("last_epoch", np.int32)):
            array = np.asarray(state[field])
            if array.shape != (self.num_examples,):
                raise ValueError(f"score state_dict[{field!r}] has shape {array.shape}, expected ({self.num_examples},)")
            getattr(self, field)[:] = array.astype(dtype, copy=False)
