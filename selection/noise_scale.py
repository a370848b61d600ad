"""The gradient noise scale ``B_simple = tr(Σ) / |G|²`` (McCandlish et al. 2018, *An Empirical
Model of Large-Batch Training*): the batch size past which a bigger batch stops buying fewer steps.

It is measured from what training already computes: the squared norm of a mean gradient over a
small batch and over a big one that contains it.  Under DDP the small batch is one rank's local
gradient and the big one the all-reduced gradient (:class:`DDPNoiseSource`); on one process the
small batches are the gradient-accumulation micro-steps and the big one their sum
(:class:`AccumulationNoiseSource`).  No extra forward or backward pass either way.

Batch sizes are counted in whatever unit the samples of the mean gradient are: **tokens** for a
loss averaged over tokens (packed batches, the usual LM loss), **examples** for a loss averaged
over examples.  ``B_simple`` comes out in the same unit.

A plain training loop (one process, ``accum`` micro-batches per optimizer step)::

    gns, source = GradientNoiseScale(), AccumulationNoiseSource(model)
    for micro in batches: (loss(micro) / accum).backward(); source.micro_step(tokens_in(micro))
    gns.update(*source.measure()); optimizer.step(); optimizer.zero_grad()   # gns.value: B_noise

torch is imported only by the sources, so ``packwise.selection`` stays torch-free at import.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np


class NoiseEstimate(NamedTuple):
    """``b_simple = trace_sigma / g2``, with the two unbiased estimates it divides."""

    b_simple: float
    g2: float
    trace_sigma: float


def _positive(name: str, value) -> np.ndarray:
    arr = np.asarray(value, np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be finite and > 0 (a batch size in tokens or examples), got {value!r}")
    return arr


def noise_scale(small_sqnorm, b_small, big_sqnorm, b_big) -> NoiseEstimate:
    """Unbiased ``|G|²`` and ``tr(Σ)`` from ``|g_small|²`` (mean gradient over ``b_small`` samples)
    and ``|g_big|²`` (over ``b_big``), and their ratio ``B_simple`` (McCandlish et al., appendix A).

    ``E|g_B|² = |G|² + tr(Σ)/B`` at any batch size ``B``, so two sizes give two linear equations:
    ``|G|² = (b_big |g_big|² - b_small |g_small|²) / (b_big - b_small)`` and
    ``tr(Σ) = (|g_small|² - |g_big|²) / (1/b_small - 1/b_big)``.

    Arrays (several ranks, micro-steps or steps; sizes broadcast against them) are averaged: each
    entry's ``|G|²`` and ``tr(Σ)`` estimate is unbiased, so their means are too (with constant sizes
    this is the same as averaging the squared norms first, the estimators being linear in them).
    ``B_simple`` is then the ratio of the means, never the mean of ratios: a single ``|G|²``
    estimate is noisy and can be near zero or negative, and a ratio of it would be neither unbiased
    nor bounded.  ``b_simple`` is ``nan`` while the averaged ``|G|²`` is not positive.

    Example:
        >>> est = noise_scale(small_sqnorm=[3.0, 5.0], b_small=2, big_sqnorm=2.5, b_big=4)
        >>> est.g2, est.trace_sigma, est.b_simple
        (1.0, 6.0, 6.0)
    """
    b_small, b_big = _positive("b_small", b_small), _positive("b_big", b_big)
    if np.any(b_big <= b_small):
        raise ValueError(f"b_big must be larger than b_small (the big batch contains the small ones), got {b_big} <= {b_small}")
    small, big = np.asarray(small_sqnorm, np.float64), np.asarray(big_sqnorm, np.float64)
    if not (np.all(np.isfinite(small)) and np.all(np.isfinite(big))):
        raise ValueError("small_sqnorm and big_sqnorm must be finite squared gradient norms (a NaN or inf gradient?)")
    g2 = (b_big * big - b_small * small) / (b_big - b_small)
    trace = (small - big) / (1.0 / b_small - 1.0 / b_big)
    g2, trace = float(np.mean(g2)), float(np.mean(trace))
    return NoiseEstimate(trace / g2 if g2 > 0 else math.nan, g2, trace)


class GradientNoiseScale:
    """Smoothed ``|G|²`` and ``tr(Σ)`` (two exponential moving averages), and ``value = B_noise``.

    One step's estimates are noisy (``|G|²`` can come out negative), so, as the paper advises, the
    numerator and the denominator are smoothed separately and divided afterwards.  The averages are
    bias-corrected (as in Adam), so the first steps are not pulled towards zero.  ``value`` is
    ``nan`` until the smoothed ``|G|²`` is positive.  Under DDP, feed it all-reduced quantities
    (:class:`DDPNoiseSource` does) and every rank holds the same value, bit for bit.

    Example:
        >>> gns = GradientNoiseScale(beta=0.5)
        >>> round(gns.update([3.0, 5.0], 2, 2.5, 4), 6)
        6.0
        >>> gns.update(3.0, 2, 1.75, 4)  # this step alone: |G|² = 0.5, tr(Σ) = 5.0 (ratio 10)
        8.0
        >>> round(gns.g2, 6), round(gns.trace_sigma, 6)  # bias-corrected EMAs, divided afterwards
        (0.666667, 5.333333)
    """

    def __init__(self, beta: float = 0.95):
        if not 0 <= beta < 1:
            raise ValueError(f"beta must be an EMA decay in [0, 1), got {beta!r}")
        self.beta = float(beta)
        self._g2 = 0.0
        self._trace = 0.0
        self._weight = 0.0  # 1 - beta**updates: the bias correction
        self.updates = 0
        self.last: NoiseEstimate | None = None

    def update(self, small_sqnorm, b_small, big_sqnorm, b_big) -> float:
        """Fold one measurement (see :func:`noise_scale`) into the averages; returns ``value``."""
        est = noise_scale(small_sqnorm, b_small, big_sqnorm, b_big)
        self.last = est
        b = self.beta
        self._g2 = b * self._g2 + (1 - b) * est.g2
        self._trace = b * self._trace + (1 - b) * est.trace_sigma
        self._weight = b * self._weight + (1 - b)
        self.updates += 1
        return self.value

    @property
    def g2(self) -> float:
        """Smoothed ``|G|²`` (``nan`` before the first update)."""
        return self._g2 / self._weight if self._weight else math.nan

    @property
    def trace_sigma(self) -> float:
        """Smoothed ``tr(Σ)`` (``nan`` before the first update)."""
        return self._trace / self._weight if self._weight else math.nan

    @property
    def value(self) -> float:
        """``B_noise = tr(Σ) / |G|²`` from the smoothed estimates; ``nan`` while ``|G|²`` <= 0."""
        g2 = self.g2
        return self.trace_sigma / g2 if g2 > 0 else math.nan

    def state_dict(self) -> dict:
        return {"beta": self.beta, "g2": self._g2, "trace": self._trace, "weight": self._weight, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        missing = {"beta", "g2", "trace", "weight", "updates"} - set(state)
        if missing:
            raise ValueError(f"GradientNoiseScale state is missing {sorted(missing)}; pass a dict saved by state_dict()")
        self.beta = float(state["beta"])
        self._g2, self._trace = float(state["g2"]), float(state["trace"])
        self._weight, self.updates = float(state["weight"]), int(state["updates"])


class AccumulationNoiseSource:
    """One process: each micro-step's gradient against the whole optimizer step's gradient.

    A hook on every parameter sees the micro-step's own gradient before autograd adds it into
    ``.grad``, and a second one the sum after it, so no copy of the gradients is kept and the step's
    norm is read before any gradient clipping (measure at any point before the next backward).  The loss is taken to be divided by the number
    of micro-steps (the usual convention, so ``.grad`` after the last one is the step's mean
    gradient); ``|G|²`` and ``tr(Σ)`` scale with that convention, ``B_simple`` does not.
    ``micro_step(size)`` after each backward; ``measure()`` before ``optimizer.zero_grad()``
    returns the four arguments of :func:`noise_scale` (``None`` after a single micro-step: one
    batch size cannot separate signal from noise).  ``b_small`` is the mean micro-step size and
    ``b_big`` their sum: exact for equal micro-steps, close for token-balanced packed ones.
    """

    def __init__(self, model):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._micro = 0.0
        self._summed = 0.0
        self._sqnorms: list[float] = []
        self._sizes: list[float] = []
        self._big = 0.0
        self._handles = [p.register_hook(self._seen) for p in self.params]
        self._handles += [p.register_post_accumulate_grad_hook(self._accumulated) for p in self.params]

    def _seen(self, grad):
        self._micro += float(grad.detach().double().pow(2).sum())
        return None

    def _accumulated(self, param) -> None:
        self._summed += float(param.grad.detach().double().pow(2).sum())

    def micro_step(self, size: float) -> None:
        """Close a micro-step whose batch held ``size`` samples (tokens or examples)."""
        self._sqnorms.append(self._micro)
        self._sizes.append(float(size))
        self._big = self._summed  # |sum of the micro-steps so far|^2
        self._micro = 0.0
        self._summed = 0.0

    def measure(self) -> tuple[Any, float, float, float] | None:
        """``(small_sqnorm, b_small, big_sqnorm, b_big)`` for the step; resets for the next one."""
        sqnorms, sizes = np.asarray(self._sqnorms), np.asarray(self._sizes)
        self._sqnorms, self._sizes = [], []
        if sqnorms.shape[0] < 2:
            return None
        # a micro-step's contribution is its mean gradient / k: scale back to a mean gradient
        k = sqnorms.shape[0]
        return sqnorms * k * k, float(sizes.mean()), self._big, float(sizes.sum())

    def close(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []


class DDPNoiseSource:
    """DDP: each rank's local gradient (batch ``B_local``) against the all-reduced one
    (``B_global = world * B_local``), read inside DDP's own communication, with no extra backward.

    ``DDPNoiseSource(ddp_model)`` registers a comm hook that wraps DDP's default all-reduce: it
    adds ``|bucket|²`` before the reduction (this rank's local gradient, accumulated over any
    ``no_sync`` micro-steps) and after it (the global mean gradient, identical on every rank).
    ``measure(local_size)`` all-reduces the local sum and the sizes once (two float64) and returns
    the four arguments of :func:`noise_scale`, with ``b_small`` the mean local size and ``b_big``
    their sum (the step's global size); every rank gets the same numbers, so a
    :class:`GradientNoiseScale` fed from it agrees bit for bit across ranks.  Register it before
    the first backward (DDP accepts one comm hook).  Sizes may differ a little between ranks
    (token-balanced packed batches): the estimator then holds approximately, as for micro-steps.
    """

    def __init__(self, ddp_model, process_group=None):
        import torch
        import torch.distributed as dist

        self._dist = dist
        self.group = process_group
        self.world = dist.get_world_size(process_group)
        if self.world < 2:
            raise ValueError("DDPNoiseSource needs at least 2 ranks; on one process use AccumulationNoiseSource")
        self._local = torch.zeros((), dtype=torch.float64)
        self._global = torch.zeros((), dtype=torch.float64)
        ddp_model.register_comm_hook(None, self._hook)

    def _hook(self, _state, bucket):
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        buf = bucket.buffer()
        self._local += buf.detach().double().pow(2).sum().cpu()
        fut = default_hooks.allreduce_hook(self.group, bucket)

        def reduced(f):
            out = f.value()[0] if isinstance(f.value(), list) else f.value()
            self._global += out.detach().double().pow(2).sum().cpu()
            return out

        return fut.then(reduced)

    def measure(self, local_size: float) -> tuple[float, float, float, float]:
        """``(mean local |g|², mean local size, global |g|², global size)``; resets the sums."""
        import torch

        local = torch.stack((self._local, torch.tensor(float(local_size), dtype=torch.float64)))
        self._dist.all_reduce(local, group=self.group)
        small, total = float(local[0]) / self.world, float(local[1])
        big = float(self._global)
        self._local.zero_()
        self._global.zero_()
        return small, total / self.world, big, total
