"""RHO-LOSS: train on the super-batch examples with the highest reducible holdout loss.

Score = learner loss - reference (irreducible) loss.  A high learner loss alone also picks noisy
or unlearnable examples; subtracting what a model trained on clean holdout data still gets wrong
keeps the examples that are learnable and not yet learned (Mindermann et al., ICML 2022).
"""

from __future__ import annotations

from ._batch import _PointwiseSelector


class RhoLoss(_PointwiseSelector):
    """Select ``round((1 - filter_ratio) * B)`` of each super-batch of ``B`` by reducible loss.

    ``reference``: a lookup by id (:class:`ReferenceScores`, precomputed once by
    :func:`reference_scores`), or ``None`` to pass ``reference_loss`` online to :meth:`select`.
    ``policy`` is any of ``POLICIES`` (``"topk"``, as in the paper, by default; ``"softmax"``
    etc. sample by score and can return importance weights).  Every draw is seeded by
    ``(seed, step)``; :meth:`state_dict` saves both.

    Example:
        >>> import numpy as np, torch
        >>> from packwise.selection import ReferenceScores, RhoLoss
        >>> ref = ReferenceScores.from_array(np.array([0.1, 2.0, 0.2, 0.3, 1.5, 0.0], np.float32))
        >>> rho = RhoLoss(ref, filter_ratio=0.5)
        >>> ids = torch.tensor([5, 1, 4, 0, 2, 3])
        >>> sel = rho.select(ids, torch.tensor([0.9, 2.2, 1.6, 1.0, 0.3, 0.4]))
        >>> sel.ids.tolist(), [round(float(s), 2) for s in sel.scores]  # super-batch order; learner - reference
        ([5, 1, 0], [0.9, 0.2, 0.1, 0.9, 0.1, 0.1])
        >>> rho.step
        1
    """

    _kind = "rho_loss"

    def __init__(
        self,
        reference=None,
        filter_ratio: float = 0.8,
        policy: str = "topk",
        beta: float = 1.0,
        seed: int = 0,
        *,
        threshold: float | None = None,
        importance_weights: bool = False,
    ):
        super().__init__(reference, filter_ratio, policy, beta, seed, threshold, importance_weights)
