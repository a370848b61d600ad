"""Length-bucketed and packed batch samplers for torch: DDP-exact, resumable, reported.

Hand a sampler to ``DataLoader(dataset, batch_sampler=sampler, collate_fn=...)``; call
``sampler.set_epoch(epoch)`` each epoch; save ``sampler.state_dict()`` (or a
``StatefulDataLoader``'s) to resume mid-epoch exactly.  Under accelerate / HF Trainer the batch
samplers cooperate with ``Accelerator.prepare``; ``audit(loader)`` checks every example arrives once.
``PackedIterable`` streams resume under another world size or worker count too
(``state_dict(loader=it)``, ``merge_states`` across ranks).

Mixtures: ``MixtureSampler(lengths, groups, weights, max_tokens)`` packs batches drawn from several
sources at target token (or example) proportions: static, ``temperature`` (size ** alpha), two
levels (``parents``), a ``[(step, weights), ...]`` schedule, or an online ``MixturePolicy`` updated
every ``update_every`` steps from per-source losses (``sampler.sources_of(batch)``).  The epoch is
one canonical stream of global batches, planned window by window (always drawing from the source
furthest below its target), so realised proportions stay within 0.5% of the target over any
1,000 batches, and a saved state resumes it exactly under any world size.
``mixture_inputs({...})`` builds ``lengths, groups, names`` from datasets, tables or Parquet
files; ``MixtureDataset({...})`` indexes the same rows for the DataLoader.

Example:
    >>> import numpy as np
    >>> from packwise.samplers import PackedBatchSampler
    >>> s = PackedBatchSampler(np.array([700, 300, 900, 100, 24]), max_tokens=1024, num_replicas=1, rank=0)
    >>> len(s), sorted(i for batch in s for i in batch)
    (2, [0, 1, 2, 3, 4])
"""

from ._lengths import resolve_lengths
from .audit import AuditReport, audit
from .bucket import BucketBatchSampler, estimate_boundaries
from .cluster import ClusterBatchSampler
from .mixture import MixtureDataset, MixturePolicy, MixtureSampler, MixtureStats, mixture_inputs
from .packed import PackedBatchSampler
from .stats import EpochStats
from .stream import BucketedIterable, MixedPackedIterable, PackedIterable
from .pruning import PackedPruningSampler, PruningSampler
from .schedule import ProgressSchedule
from .state_file import load_state, save_state
from .superbatch import SuperBatch, TrainBatch
from .with_index import WithIndex

__all__ = [
    "AuditReport",
    "audit",
    "BucketBatchSampler",
    "ClusterBatchSampler",
    "BucketedIterable",
    "EpochStats",
    "MixtureDataset",
    "MixturePolicy",
    "MixtureSampler",
    "MixtureStats",
    "mixture_inputs",
    "PackedBatchSampler",
    "PackedIterable",
    "MixedPackedIterable",
    "estimate_boundaries",
    "resolve_lengths",
    "PackedPruningSampler",
    "PruningSampler",
    "ProgressSchedule",
    "load_state",
    "save_state",
    "SuperBatch",
    "TrainBatch",
    "WithIndex",
]
