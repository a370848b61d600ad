"""Online mixture policies: the weights a ``MixtureSampler`` draws its sources with, updated from
each source's training loss.

A policy answers two calls (the ``MixturePolicy`` protocol of :mod:`packwise.samplers.mixture`):

* ``weights(interval, base) -> np.ndarray``: the source proportions for update interval
  ``interval`` (float64, sum 1), given the sampler's static or scheduled ``base`` proportions.  It
  may use only the observations of intervals ``<= interval - 2``: the losses of the interval just
  finished are still being reduced while the sampler plans ahead, and every rank must decide alike.
  Asked twice for the same interval it answers the same (a resumed sampler re-plans); asked before
  the losses of every interval ``<= interval - 2`` were observed, it raises ``RuntimeError`` naming
  the interval to observe.
* ``observe(interval, loss_sum, tokens)``: per-source summed loss and supervised-token counts of one
  interval, already reduced across ranks (see :class:`SourceLossTracker`).

plus ``state_dict()`` / ``load_state_dict()`` (JSON-able: lists of floats and ints, never a pickle).
Everything is float64 NumPy arithmetic on identical inputs, so every rank computes the same weights,
bit for bit.

Writing your own policy: any object with those four methods.  A toy that gives easy sources more
(proportions ``base / mean loss`` of the latest usable interval)::

    >>> import numpy as np
    >>> class InverseLoss:
    ...     def __init__(self):
    ...         self.means = {}                                   # interval -> token-mean loss per source
    ...     def weights(self, interval, base):
    ...         usable = [i for i in self.means if i <= interval - 2]
    ...         if not usable:
    ...             return base / base.sum()
    ...         w = base / self.means[max(usable)]
    ...         return w / w.sum()
    ...     def observe(self, interval, loss_sum, tokens):
    ...         self.means[interval] = np.maximum(loss_sum, 1e-9) / np.maximum(tokens, 1)
    ...     def state_dict(self):
    ...         return {"means": [[i, m.tolist()] for i, m in sorted(self.means.items())]}
    ...     def load_state_dict(self, state):
    ...         self.means = {int(i): np.array(m) for i, m in state["means"]}
    >>> p = InverseLoss()
    >>> p.observe(0, np.array([8.0, 6.0]), np.array([2, 2]))
    >>> p.weights(1, np.array([0.5, 0.5])).tolist(), p.weights(2, np.array([0.5, 0.5])).round(6).tolist()
    ([0.5, 0.5], [0.428571, 0.571429])
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from ._checks import as_int


def _as_vector(value, k: int, field: str, *, integral: bool = False) -> np.ndarray:
    """``value`` as a finite, non-negative float64 vector of ``k`` entries, or a ValueError naming ``field``."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().double().numpy()
    array = np.asarray(value, dtype=np.float64)
    if array.shape != (k,):
        raise ValueError(f"{field} must have one entry per source ({k}), got shape {array.shape}")
    if _plain_ok(array.tolist(), integral):  # K is small: plain floats beat NumPy's per-call overhead
        return array
    bad = np.flatnonzero(~np.isfinite(array) | (array < 0))
    if bad.shape[0]:
        i = int(bad[0])
        raise ValueError(f"{field}[{i}] = {float(array[i])!r}; every entry must be finite and >= 0")
    if integral and not np.array_equal(array, np.floor(array)):
        i = int(np.flatnonzero(array != np.floor(array))[0])
        raise ValueError(f"{field}[{i}] = {float(array[i])!r} is not a whole number of tokens")
    return array


def _plain_ok(values: list[float], integral: bool) -> bool:
    """Every value finite and >= 0 (and whole, with ``integral``): the common case, checked without NumPy."""
    for x in values:
        if not 0.0 <= x < math.inf or (integral and not x.is_integer()):
            return False
    return True


def _proportions(base, k: int) -> np.ndarray:
    """``base`` normalised to sum 1 (the sampler's static / scheduled weights)."""
    array = _as_vector(base, k, "base")
    total = float(array.sum())
    if not total > 0:
        raise ValueError("base weights sum to 0; give at least one source a positive weight")
    return array / total


def _fraction(value, field: str, *, high_open: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{field} must be a number in [0, 1), got {value!r}")
    value = float(value)
    if not (0.0 <= value < 1.0 if high_open else 0.0 <= value <= 1.0):
        raise ValueError(f"{field} must be in [0, 1{')' if high_open else ']'}, got {value!r}")
    return value


class _DelayedPolicy:
    """Shared bookkeeping: observations wait until the interval allowed to use them (``>= i + 2``),
    are folded in interval order, and the weights issued per interval are remembered (a re-plan asks
    again; ODM's importance weights need the proportions the interval was drawn with)."""

    kind = "policy"

    def __init__(self, num_sources: int):
        self.num_sources = as_int(num_sources, "num_sources", low=1)
        self._pending: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # interval -> (loss_sum, tokens)
        self._issued: dict[int, np.ndarray] = {}  # interval -> weights handed out
        self._folded = -1  # last interval folded into the estimate
        self._updates = 0  # observations folded so far

    # --- the protocol -----------------------------------------------------------------------------
    def weights(self, interval: int, base) -> np.ndarray:
        """Proportions for ``interval`` from the observations of intervals ``<= interval - 2``."""
        interval = as_int(interval, "interval")
        base = _proportions(base, self.num_sources)
        if interval in self._issued:
            return self._issued[interval].copy()
        if self._updates and self._folded > interval - 2:
            raise ValueError(
                f"weights for interval {interval} were never issued and the policy has already folded "
                f"interval {self._folded}; ask for intervals in order (a resumed sampler asks again only "
                f"for intervals it was given weights for)"
            )
        missing = [j for j in range(self._folded + 1, interval - 1) if j not in self._pending]
        if missing:
            raise RuntimeError(
                f"{self.kind}.weights({interval}) needs the losses of interval {missing[0]}: call "
                f"observe({missing[0]}, loss_sum, tokens) first (a SourceLossTracker stepped once per batch does)"
            )
        for i in sorted(j for j in self._pending if j <= interval - 2):
            loss_sum, tokens = self._pending.pop(i)
            self._fold(i, loss_sum, tokens)
            self._folded, self._updates = i, self._updates + 1
        out = self._compute(base)
        self._issued[interval] = out
        for old in [j for j in self._issued if j < self._folded - 1 and j < interval - 4]:
            del self._issued[old]
        return out.copy()

    def observe(self, interval: int, loss_sum, tokens) -> None:
        """Record one interval's per-source loss sums and token counts (reduced across ranks)."""
        interval = as_int(interval, "interval")
        if interval <= self._folded or interval in self._pending:
            raise ValueError(f"interval {interval} was already observed; observe each interval once")
        k = self.num_sources
        self._pending[interval] = (_as_vector(loss_sum, k, "loss_sum"), _as_vector(tokens, k, "tokens", integral=True))

    def _drawn_with(self, interval: int) -> np.ndarray:
        """The proportions ``interval`` was drawn with: the weights issued for it, else for the
        latest interval before it that was issued, else uniform (nothing issued yet)."""
        earlier = [j for j in self._issued if j <= interval]
        if earlier:
            return self._issued[max(earlier)]
        return np.full(self.num_sources, 1.0 / self.num_sources)

    # --- state ------------------------------------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        return {"num_sources": self.num_sources}

    def _estimate(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load_estimate(self, state: dict) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Settings, estimate, held-back observations and issued weights: JSON lists, no arrays."""
        return {
            "kind": self.kind,
            "settings": self._settings(),
            "estimate": self._estimate(),
            "folded": self._folded,
            "updates": self._updates,
            "pending": [[i, s.tolist(), t.tolist()] for i, (s, t) in sorted(self._pending.items())],
            "issued": [[i, w.tolist()] for i, w in sorted(self._issued.items())],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state saved by the same kind of policy with the same settings."""
        if not isinstance(state, dict):
            raise ValueError(f"state_dict must be a dict saved by {type(self).__name__}.state_dict(), got {type(state).__name__}")
        missing = {"kind", "settings", "estimate", "folded", "updates", "pending", "issued"} - set(state)
        if missing:
            raise ValueError(f"state_dict is missing {sorted(missing)}; pass a dict saved by {type(self).__name__}.state_dict()")
        if state["kind"] != self.kind:
            raise ValueError(f"state_dict is a {state['kind']} state; this policy is a {self.kind}")
        for name, value in dict(state["settings"]).items():
            if self._settings().get(name) != value:
                raise ValueError(
                    f"state_dict was saved with {name}={value!r} but this {self.kind} has "
                    f"{name}={self._settings().get(name)!r}; rebuild it with the saved arguments"
                )
        k = self.num_sources
        self._load_estimate(dict(state["estimate"]))
        self._folded, self._updates = int(state["folded"]), int(state["updates"])
        self._pending = {
            int(i): (_as_vector(s, k, "pending loss_sum"), _as_vector(t, k, "pending tokens", integral=True))
            for i, s, t in state["pending"]
        }
        self._issued = {int(i): np.asarray(w, dtype=np.float64) for i, w in state["issued"]}

    def _fold(self, interval: int, loss_sum: np.ndarray, tokens: np.ndarray) -> None:
        raise NotImplementedError

    def _compute(self, base: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _mean_loss(loss_sum: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token-mean loss per source and the mask of sources that had tokens."""
    seen = tokens > 0
    mean = np.zeros_like(loss_sum)
    np.divide(loss_sum, tokens, out=mean, where=seen)
    return mean, seen


class ODM(_DelayedPolicy):
    """Online Data Mixing (Albalak et al. 2023): EXP3 over sources, rewarded by their training loss.

    With ``K`` sources and ``u`` observations folded so far, the proportions are the paper's Gibbs
    policy with decaying exploration::

        eps_u = min(1/K, sqrt(ln K / (K u)))     (eps_0 = 1/K)
        pi_i  = (1 - K eps_u) * exp(eps_{u-1} R_i) / sum_j exp(eps_{u-1} R_j) + eps_u

    and after each interval, every source ``i`` that had tokens updates its estimated reward with
    its token-mean loss ``L_i``, importance-weighted by the probability it was drawn with::

        R_i <- smoothing * R_i + (1 - smoothing) * L_i / pi_i

    (the paper samples one group per step; a packed batch mixes sources, so every source seen in the
    interval is rewarded).  ``R`` starts at 0, and ``eps`` stays at ``1/K``, which makes ``pi``
    uniform, until ``u > K ln K`` observations (9 for five sources).  With
    ``prior="base"`` the sampler's base weights ``b`` replace the uniform distribution in both terms
    (``pi = (1 - K eps) * normalize(b exp(eps R)) + K eps b``), which is the paper's rule when ``b``
    is uniform.

    Example:
        >>> import numpy as np
        >>> odm = ODM(2)
        >>> base = np.array([0.5, 0.5])
        >>> odm.weights(0, base).tolist()
        [0.5, 0.5]
        >>> odm.observe(0, loss_sum=np.array([30.0, 10.0]), tokens=np.array([10, 10]))
        >>> odm.weights(1, base).tolist()                      # interval 0 is not usable before interval 2
        [0.5, 0.5]
        >>> odm.estimated_reward.tolist()                      # folded when interval 2 asks
        [0.0, 0.0]
        >>> w = odm.weights(2, base); odm.estimated_reward.round(6).tolist()
        [0.6, 0.2]
    """

    kind = "ODM"

    def __init__(self, num_sources: int, *, smoothing: float = 0.9, prior: Literal["uniform", "base"] = "uniform"):
        super().__init__(num_sources)
        self.smoothing = _fraction(smoothing, "smoothing")
        if prior not in ("uniform", "base"):
            raise ValueError(f"prior must be 'uniform' (the paper) or 'base' (start from the sampler's weights), got {prior!r}")
        self.prior = prior
        self._reward = np.zeros(self.num_sources, np.float64)
        uniform = np.full(self.num_sources, 1.0 / self.num_sources)
        self._uniform = (uniform, np.log(uniform))  # the paper's prior and its log, computed once

    @property
    def estimated_reward(self) -> np.ndarray:
        """The smoothed importance-weighted rewards ``R`` (a copy)."""
        return self._reward.copy()

    def exploration(self, updates: int) -> float:
        """``eps_u = min(1/K, sqrt(ln K / (K u)))``, ``eps_0 = 1/K``."""
        k = self.num_sources
        if updates == 0 or k == 1:
            return 1.0 / k
        return min(1.0 / k, math.sqrt(math.log(k) / (k * updates)))

    def _fold(self, interval: int, loss_sum: np.ndarray, tokens: np.ndarray) -> None:
        mean, seen = _mean_loss(loss_sum, tokens)
        drawn = self._drawn_with(interval)
        a = self.smoothing
        updated = a * self._reward + (1.0 - a) * mean / np.where(seen, drawn, 1.0)
        self._reward = np.where(seen & (drawn > 0), updated, self._reward)

    def _compute(self, base: np.ndarray) -> np.ndarray:
        k = self.num_sources
        eps, eps_prev = self.exploration(self._updates), self.exploration(max(self._updates - 1, 0))
        logits = eps_prev * self._reward
        if self.prior == "base":
            prior = base
            with np.errstate(divide="ignore"):
                logits = logits + np.log(prior)
        else:
            prior, log_prior = self._uniform
            logits = logits + log_prior
        gibbs = np.exp(logits - logits.max())
        gibbs /= gibbs.sum()
        return (1.0 - k * eps) * gibbs + k * eps * prior

    def _settings(self) -> dict[str, Any]:
        return {"num_sources": self.num_sources, "smoothing": self.smoothing, "prior": self.prior}

    def _estimate(self) -> dict[str, Any]:
        return {"reward": self._reward.tolist()}

    def _load_estimate(self, state: dict) -> None:
        reward = np.asarray(state["reward"], dtype=np.float64)
        if reward.shape != (self.num_sources,) or not np.isfinite(reward).all():
            raise ValueError(f"state_dict estimate 'reward' must be {self.num_sources} finite numbers, got {state['reward']!r}")
        self._reward = reward


class SoftmaxLoss(_DelayedPolicy):
    """Proportions ``softmax(L / temperature)`` of each source's latest token-mean loss ``L``
    (ms-swift's dynamic mix rule), optionally blended with the base weights:
    ``(1 - mix) * softmax(L / T) + mix * base``.

    Until every source has been observed once the base weights are returned unchanged (a source
    with no loss yet has nothing to compare).  Sources absent from an interval keep their last loss.

    Example:
        >>> import numpy as np
        >>> p = SoftmaxLoss(2, temperature=1.0)
        >>> p.observe(0, loss_sum=np.array([2.0, 1.0]), tokens=np.array([1, 1]))
        >>> w = p.weights(2, np.array([0.5, 0.5])); w.round(6).tolist()   # e / (e + 1)
        [0.731059, 0.268941]
    """

    kind = "SoftmaxLoss"

    def __init__(self, num_sources: int, *, temperature: float = 1.0, mix: float = 0.0):
        super().__init__(num_sources)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.integer, np.floating)) or not (
            math.isfinite(temperature) and temperature > 0
        ):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        self.temperature = float(temperature)
        self.mix = _fraction(mix, "mix", high_open=False)
        self._loss = np.zeros(self.num_sources, np.float64)
        self._seen = np.zeros(self.num_sources, np.bool_)

    @property
    def last_loss(self) -> np.ndarray:
        """The latest token-mean loss of each source folded in (0 where never observed)."""
        return self._loss.copy()

    def _fold(self, interval: int, loss_sum: np.ndarray, tokens: np.ndarray) -> None:
        mean, seen = _mean_loss(loss_sum, tokens)
        self._loss = np.where(seen, mean, self._loss)
        self._seen |= seen

    def _compute(self, base: np.ndarray) -> np.ndarray:
        if not self._seen.all():
            return base.copy()
        z = self._loss / self.temperature
        soft = np.exp(z - z.max())
        soft /= soft.sum()
        return (1.0 - self.mix) * soft + self.mix * base

    def _settings(self) -> dict[str, Any]:
        return {"num_sources": self.num_sources, "temperature": self.temperature, "mix": self.mix}

    def _estimate(self) -> dict[str, Any]:
        return {"loss": self._loss.tolist(), "seen": self._seen.tolist()}

    def _load_estimate(self, state: dict) -> None:
        loss = np.asarray(state["loss"], dtype=np.float64)
        seen = np.asarray(state["seen"], dtype=np.bool_)
        if loss.shape != (self.num_sources,) or seen.shape != (self.num_sources,) or not np.isfinite(loss).all():
            raise ValueError(f"state_dict estimate must hold {self.num_sources} finite losses and seen flags")
        self._loss, self._seen = loss, seen


__all__ = ["ODM", "SoftmaxLoss"]
