"""Loss-threshold filtering for streams (``IterableDataset``: no epochs, no random access).

An example whose predicted or last-known loss is below an adaptive threshold (the mean, or a
quantile, of the last ``window`` observed losses) is skipped with probability ``prune_ratio``;
kept ones of that kind get weight ``1 / (1 - prune_ratio)`` (InfoBatch's correction), the rest 1.
Examples with no known loss are always kept.  The filter's state lives in the process that calls
:meth:`update` (the training loop): call :meth:`select` on the batch ids there, before the forward
pass, or wrap an iterable with :meth:`filter` when it is consumed in that same process.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np

from ._checks import as_ids, as_int, as_values, exact
from .scores import ScoreStore


class LossThresholdFilter:
    """Skip likely-easy stream examples, reweighting the survivors to stay unbiased.

    Example:
        >>> import numpy as np
        >>> from packwise.selection import LossThresholdFilter
        >>> f = LossThresholdFilter(prune_ratio=0.5, window=4, seed=0)
        >>> keep, w = f.select([0, 1, 2])  # nothing known yet: all kept
        >>> keep.tolist(), w.tolist()
        ([True, True, True], [1.0, 1.0, 1.0])
        >>> f.update([0, 1, 2, 3], [0.5, 0.25, 3.0, 4.0])
        >>> f.threshold
        1.9375
        >>> keep, w = f.select([2, 3], predicted_loss=[5.0, 6.0])  # above the threshold: kept
        >>> keep.tolist(), w.tolist()
        ([True, True], [1.0, 1.0])
    """

    def __init__(
        self,
        prune_ratio: float = 0.5,
        *,
        quantile: float | None = None,
        window: int = 4096,
        seed: int = 0,
        num_examples: int = 1024,
        momentum: float | None = None,
    ):
        if not 0 <= exact(prune_ratio, "prune_ratio") < 1:
            raise ValueError(f"prune_ratio must be in [0, 1), got {prune_ratio!r}")
        if quantile is not None and not 0 < float(quantile) < 1:
            raise ValueError(f"quantile must be None (use the running mean) or in (0, 1), got {quantile!r}")
        self.prune_ratio = float(prune_ratio)
        self.quantile = None if quantile is None else float(quantile)
        self.window = as_int(window, "window", 1)
        self.seed = as_int(seed, "seed")
        self.store = ScoreStore(as_int(num_examples, "num_examples", 1), momentum)
        self._recent = np.zeros(self.window, np.float32)
        self._filled = 0
        self._cursor = 0
        self._rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, 3])))
        self.seen_examples = 0
        self.skipped_examples = 0

    @property
    def threshold(self) -> float | None:
        """The current adaptive threshold (``None`` before any loss was observed)."""
        if self._filled == 0:
            return None
        recent = self._recent[: self._filled].astype(np.float64)
        return float(recent.mean() if self.quantile is None else np.quantile(recent, self.quantile))

    def _grow(self, largest: int) -> None:
        size = self.store.num_examples
        if largest < size:
            return
        while size <= largest:
            size *= 2
        bigger = ScoreStore(size, self.store.momentum)
        old = self.store.num_examples
        bigger.scores[:old], bigger.seen[:old], bigger.last_epoch[:old] = (
            self.store.scores,
            self.store.seen,
            self.store.last_epoch,
        )
        self.store = bigger

    def select(self, ids, predicted_loss=None) -> tuple[np.ndarray, np.ndarray]:
        """``(keep mask, float32 weights)`` for a batch of example ids (int64, any non-negative)."""
        ids = as_ids(ids, 2**62, "ids")
        if ids.shape[0]:
            self._grow(int(ids.max()))
        if predicted_loss is not None:
            known_loss = as_values(predicted_loss, ids.shape[0], "predicted_loss")
            known = np.ones(ids.shape[0], np.bool_)
        else:
            known_loss = self.store.scores[ids]
            known = self.store.seen[ids]
        weights = np.ones(ids.shape[0], np.float32)
        keep = np.ones(ids.shape[0], np.bool_)
        threshold = self.threshold
        draws = self._rng.random(ids.shape[0])
        if threshold is not None and self.prune_ratio > 0:
            easy = known & (known_loss < threshold)
            skip = easy & (draws < self.prune_ratio)
            keep[skip] = False
            weights[easy & ~skip] = np.float32(1.0 / (1.0 - self.prune_ratio))
        self.seen_examples += int(ids.shape[0])
        self.skipped_examples += int((~keep).sum())
        return keep, np.where(keep, weights, np.float32(0))

    def update(self, ids, losses) -> None:
        """Record the losses of trained examples (last-known scores and the running threshold)."""
        ids = as_ids(ids, 2**62, "ids")
        values = as_values(losses, ids.shape[0], "losses")
        if ids.shape[0]:
            self._grow(int(ids.max()))
        self.store.update(ids, values, 0)
        for v in values[-self.window :]:
            self._recent[self._cursor] = v
            self._cursor = (self._cursor + 1) % self.window
        self._filled = min(self._filled + values.shape[0], self.window)

    def filter(self, examples: Iterable, id_of: Callable = lambda x: x[0]) -> Iterator[tuple[object, float]]:
        """Yield ``(example, weight)`` for the kept examples of ``examples`` (same process only)."""
        for example in examples:
            keep, weight = self.select([id_of(example)])
            if keep[0]:
                yield example, float(weight[0])

    def state_dict(self) -> dict:
        return {
            "store": self.store.state_dict(),
            "recent": self._recent.copy(),
            "filled": self._filled,
            "cursor": self._cursor,
            "rng": self._rng.bit_generator.state,
            "counts": (self.seen_examples, self.skipped_examples),
            "settings": (self.prune_ratio, self.quantile, self.window, self.seed),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("settings") != (self.prune_ratio, self.quantile, self.window, self.seed):
            raise ValueError(
                f"state_dict was saved with (prune_ratio, quantile, window, seed)={state.get('settings')!r}; "
                f"rebuild the filter with those arguments"
            )
        self.store = ScoreStore(state["store"]["num_examples"], state["store"]["momentum"])
        self.store.load_state_dict(state["store"])
        self._recent[:] = state["recent"]
        self._filled, self._cursor = int(state["filled"]), int(state["cursor"])
        self._rng.bit_generator.state = state["rng"]
        self.seen_examples, self.skipped_examples = state["counts"]
