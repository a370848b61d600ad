"""Learning rate and EMA momentum that follow the batch budget when it grows.

With the batch ``kappa`` times larger (``kappa = budget / base_budget``):

* ``"linear"``: ``lr * kappa``, the rule for SGD (Goyal et al., *Accurate, Large Minibatch SGD*;
  the maximal SGD learning rate is linear in the batch below the noise scale);
* ``"sqrt"``: ``lr * sqrt(kappa)``, the rule for Adam-style optimizers (*Learning Rates as a
  Function of Batch Size*, a random-matrix argument);
* ``"none"``: leave the learning rate alone;
* a model EMA's momentum ``rho -> rho ** kappa`` (*How to Scale Your EMA*): one big step then
  averages over as many examples as ``kappa`` small ones did.

The Surge caveat for Adam: the *optimal* Adam learning rate first rises and then falls as the batch
grows (*Surge Phenomenon in Optimal Learning Rate and Batch Size Scaling*), with the peak near the
noise scale and moving to larger batches as training goes on.  ``"sqrt"`` follows the rising side;
a budget far past ``B_noise`` (``AdaptiveBudget`` with a large ``k``, or a ramp that ends well
above it) is on the falling side, where scaling the learning rate up can hurt; cap the budget or
use ``"none"`` there.
"""

from __future__ import annotations

import math

RULES = ("linear", "sqrt", "none")


def lr_factor(rule: str, kappa: float) -> float:
    """The learning-rate multiplier for a batch ``kappa`` times the base one.

    Example:
        >>> lr_factor("linear", 4.0), lr_factor("sqrt", 4.0), lr_factor("none", 4.0)
        (4.0, 2.0, 1.0)
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES} (linear: SGD, sqrt: Adam), got {rule!r}")
    if not (math.isfinite(kappa) and kappa > 0):
        raise ValueError(f"kappa must be a finite batch ratio > 0, got {kappa!r}")
    return {"linear": kappa, "sqrt": math.sqrt(kappa), "none": 1.0}[rule]


def ema_momentum(rho: float, kappa: float) -> float:
    """``rho ** kappa``: the EMA momentum for a batch ``kappa`` times the one ``rho`` was tuned at.

    Example:
        >>> round(ema_momentum(0.99, 4.0), 6)
        0.960596
    """
    if not 0 <= rho < 1:
        raise ValueError(f"rho must be an EMA momentum in [0, 1), got {rho!r}")
    if not (math.isfinite(kappa) and kappa > 0):
        raise ValueError(f"kappa must be a finite batch ratio > 0, got {kappa!r}")
    return rho**kappa


class LRScaler:
    """Multiplies every param group's learning rate by ``lr_factor(rule, budget / base_budget)``
    and can take it out again, so the base schedule always computes from unscaled values (a
    chained scheduler such as ``ExponentialLR`` multiplies the group's current lr)."""

    def __init__(self, optimizer, schedule, rule: str = "sqrt", base_budget: int | None = None):
        lr_factor(rule, 1.0)  # validates the rule now
        self.optimizer, self.schedule, self.rule = optimizer, schedule, rule
        self.base_budget = int(schedule.budget if base_budget is None else base_budget)
        if self.base_budget < 1:
            raise ValueError(f"base_budget must be a positive token count, got {base_budget!r}")
        self.factor = 1.0

    @property
    def kappa(self) -> float:
        return self.schedule.budget / self.base_budget

    def unscale(self) -> None:
        """Divide the factor applied last out of every group's lr."""
        for group in self.optimizer.param_groups:
            group["lr"] = group["lr"] / self.factor
        self.factor = 1.0

    def rescale(self) -> None:
        """Apply the factor for the budget in effect now."""
        self.factor = lr_factor(self.rule, self.kappa)
        for group in self.optimizer.param_groups:
            group["lr"] = group["lr"] * self.factor


class BudgetScaledLR:
    """A learning-rate scheduler wrapper: ``scheduler.step()`` as usual, then the learning rate is
    scaled for the budget in effect (``rule``: ``"linear"`` for SGD, ``"sqrt"`` for Adam,
    ``"none"``; see the module docstring for the Surge caveat).  Call ``step()`` once per
    optimizer step, after ``schedule.step(...)``.  ``base_budget`` (default: the schedule's budget
    now) is the global batch in tokens the base learning rate was tuned for.

    Example:
        >>> import torch
        >>> from packwise.selection import RampBudget
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> ramp = RampBudget(100, 400, over_tokens=300, lag_batches=0)
        >>> lr = BudgetScaledLR(torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5), ramp, rule="linear")
        >>> for _ in range(3):
        ...     opt.step(); _ = ramp.step(ramp.budget); lr.step()
        >>> ramp.budget, round(opt.param_groups[0]["lr"], 6)  # 0.1 * 0.5**3 * 400/100
        (400, 0.05)
    """

    def __init__(self, scheduler, schedule, rule: str = "sqrt", base_budget: int | None = None):
        self.scheduler = scheduler
        self.scaler = LRScaler(scheduler.optimizer, schedule, rule, base_budget)
        self.scaler.rescale()

    def step(self) -> None:
        self.scaler.unscale()
        self.scheduler.step()
        self.scaler.rescale()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.scaler.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"scheduler": self.scheduler.state_dict(), "factor": self.scaler.factor}

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.factor = float(state["factor"])
