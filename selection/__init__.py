"""Data selection during training: dynamic pruning (InfoBatch), random subsets (RS2),
score-driven sampling, a loss-threshold filter for streams, in-step super-batch selection
with a reference model (``RhoLoss``, ``JEST`` pointwise and pairwise), online mixture
policies (``ODM``, ``SoftmaxLoss``) fed by a ``SourceLossTracker``, and the gradient noise scale
with the token-budget schedules it drives (``GradientNoiseScale``, ``RampBudget``,
``AdaptiveBudget``, ``BudgetScaledLR``).  torch-free at import time.

The epoch-plan protocol (every policy here; what samplers compose with):

* ``indices_for_epoch(epoch) -> np.ndarray[int64]``: the sorted ids kept in ``epoch``, a pure
  function of ``(seed, epoch, scores at the epoch's start)``; planned once, cached for the epoch.
* ``weights_for(indices) -> np.ndarray[float32]``: the loss weight of each id in the current
  epoch (a ``ValueError`` for an id the epoch does not keep).
* ``update(indices, per_example_loss) -> torch.Tensor``: record scores (ids and losses gathered
  across DDP ranks as int64 and float32) and return ``mean(weight * loss)`` to backpropagate.
* ``len(policy)``, ``plan(epoch)`` (kept count and fraction), ``planned_steps(total_epochs, batch_size)``,
  ``state_dict()`` / ``load_state_dict()``.

Prune first, then bucket or pack what is kept: any batch sampler built over
``lengths[policy.indices_for_epoch(epoch)]`` maps its positions back through those ids.

Example:
    >>> import numpy as np, torch
    >>> from packwise.selection import InfoBatch
    >>> ib = InfoBatch(6, num_epochs=2, delta=0.5)
    >>> ids = ib.indices_for_epoch(0)
    >>> round(ib.update(ids, torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])).item(), 6)  # float32: 1/B folded into the weights
    3.5
"""

from ._policy import EpochPlan
from ._torch import per_example_loss
from .infobatch import InfoBatch
from .policies import POLICIES, ScoreSelector, select_by_score
from .rs2 import RS2
from .scores import ScoreStore
from .stream_filter import LossThresholdFilter
from .balance import balanced_caps, balanced_subset, group_weights
from .cluster import KMeans, TrainReport, kmeans
from .decontaminate import Contamination, decontaminate
from .dedup import DedupResult, exact_dedup, exact_duplicates, hash_rows, semantic_dedup
from .prototypes import proportional_quotas, prototype_prune, select_per_cluster
from ._batch import BatchSelection, gather_rows
from .jest import JEST, conditional_learnability, pairwise_learnability, sigmoid_pair_losses, softmax_conditional_learnability
from .reference import ReferenceScores, reference_scores
from .rho import RhoLoss
from .mixing import ODM, SoftmaxLoss
from .source_loss import SourceLossTracker, count_all_reduce
from .noise_scale import AccumulationNoiseSource, DDPNoiseSource, GradientNoiseScale, NoiseEstimate, noise_scale
from .budget import AdaptiveBudget, BudgetChange, BudgetSchedule, RampBudget
from .lr_scaling import BudgetScaledLR, LRScaler, ema_momentum, lr_factor

__all__ = [
    "EpochPlan",
    "InfoBatch",
    "LossThresholdFilter",
    "POLICIES",
    "RS2",
    "ScoreSelector",
    "ScoreStore",
    "per_example_loss",
    "select_by_score",
    "Contamination",
    "DedupResult",
    "KMeans",
    "TrainReport",
    "balanced_caps",
    "balanced_subset",
    "decontaminate",
    "exact_dedup",
    "exact_duplicates",
    "group_weights",
    "hash_rows",
    "kmeans",
    "proportional_quotas",
    "prototype_prune",
    "select_per_cluster",
    "semantic_dedup",
    "BatchSelection",
    "JEST",
    "ReferenceScores",
    "RhoLoss",
    "ODM",
    "SoftmaxLoss",
    "SourceLossTracker",
    "count_all_reduce",
    "conditional_learnability",
    "gather_rows",
    "pairwise_learnability",
    "reference_scores",
    "sigmoid_pair_losses",
    "softmax_conditional_learnability",
    "AccumulationNoiseSource",
    "DDPNoiseSource",
    "GradientNoiseScale",
    "NoiseEstimate",
    "noise_scale",
    "AdaptiveBudget",
    "BudgetChange",
    "BudgetSchedule",
    "RampBudget",
    "BudgetScaledLR",
    "LRScaler",
    "ema_momentum",
    "lr_factor",
]
