"""Who iterates a sampler.  accelerate wraps a batch sampler and deals its batches again
(``BatchSamplerShard``), reads the whole epoch on process 0 (``DataLoaderDispatcher``), reads one
batch ahead (``DataLoaderShard``) and counts epochs itself.  The samplers look at their callers
once per pass, so they can cooperate (one global plan dealt by accelerate) or refuse with the fix,
and report consumed rather than prefetched batches.  Nothing here imports accelerate."""

from __future__ import annotations

import sys
from dataclasses import dataclass

_DEPTH = 16  # frames to look up: our caller to the accelerate loader is at most ~8 frames away


@dataclass(frozen=True)
class Dealer:
    """accelerate dealing a sampler's batches to ``processes`` ranks (this is ``index``):
    ``"shard"`` = round-robin per process (``BatchSamplerShard``), ``"dispatch"`` = process 0 reads
    ``processes`` batches per step and sends one to each (``DataLoaderDispatcher``)."""

    kind: str
    processes: int
    index: int


@dataclass(frozen=True)
class Caller:
    """What iterates a sampler this pass: the dealer (if any), the torch DataLoader iterator that
    counts batches it returned, and accelerate's loader around it (it reads one batch ahead).
    Held until the next pass, so a ``state_dict()`` after breaking out of the loop still knows."""

    dealer: Dealer | None = None
    loader_iter: object | None = None
    prepared: object | None = None


def _is_accelerate(obj, *names: str) -> bool:
    kind = type(obj)  # not obj.__class__: accelerate's loaders pretend to be torch DataLoaders
    return kind.__name__ in names and kind.__module__.startswith("accelerate.")


def find_caller(skip: int = 2) -> Caller:
    """Walk up the stack from the sampler method's caller to the first accelerate loader."""
    from torch.utils.data.dataloader import _BaseDataLoaderIter

    dealer = loader_iter = prepared = None
    frame = sys._getframe(skip)
    for _ in range(_DEPTH):
        if frame is None:
            break
        me = frame.f_locals.get("self")
        if me is not None:
            if dealer is None and _is_accelerate(me, "BatchSamplerShard") and not me.split_batches:
                dealer = Dealer("shard", int(me.num_processes), int(me.process_index))
            elif loader_iter is None and isinstance(me, _BaseDataLoaderIter):
                loader_iter = me
            elif _is_accelerate(me, "DataLoaderDispatcher"):
                if dealer is None:
                    dealer = Dealer("dispatch", int(me.state.num_processes), int(me.state.process_index))
                prepared = me
                break
            elif _is_accelerate(me, "DataLoaderShard", "SkipDataLoader"):
                prepared = me
                break
        frame = frame.f_back
    return Caller(dealer, loader_iter, prepared)


def called_from(package: str, skip: int = 2) -> bool:
    """Whether the caller of the function calling this lives in ``package`` (e.g. ``"accelerate"``)."""
    name = sys._getframe(skip).f_globals.get("__name__", "")
    return name == package or name.startswith(package + ".")


def consumed_steps(caller: Caller | None, yielded: int, start: int) -> int:
    """Steps of this rank the training loop has received: the torch iterator's count of returned
    batches, less the one accelerate holds ahead; ``yielded`` (handed to the loader) when unknown."""
    it = caller.loader_iter if caller is not None else None
    if it is None or not hasattr(it, "_num_yielded"):
        return yielded
    got = int(it._num_yielded)
    if caller.dealer is not None and caller.dealer.kind == "dispatch":
        got //= caller.dealer.processes  # process 0 reads one batch per rank per step
    prepared = caller.prepared
    if prepared is not None and got > 0 and not getattr(prepared, "end_of_dataloader", False):
        got -= 1  # accelerate fetched the next step before yielding this one
    return min(start + got, yielded)


def loader_counting() -> bool:
    """Whether ``set_epoch`` was called by accelerate's loader for its own pass counter (from its
    ``__iter__``), not by a user or Trainer through ``loader.set_epoch(e)``."""
    return called_from("accelerate", skip=3) and called_from("accelerate", skip=4)


class LoaderEpoch:
    """Epoch bookkeeping shared by the samplers: accelerate's prepared loader calls ``set_epoch``
    with its own pass counter at every ``__iter__`` (0, 1, 2, ... or what ``loader.set_epoch`` set).
    An explicit ``sampler.set_epoch(e)`` (or ``loader.set_epoch(e)``) wins: that pass plays ``e``
    and later loader passes count on from ``e``.  Without explicit calls the counter is the epoch."""

    def follow(self, epoch: int, from_loader: bool) -> int:
        """The epoch to play after a ``set_epoch(epoch)`` call (``from_loader``: accelerate's)."""
        anchor = getattr(self, "_anchor", None)
        if not from_loader:
            self._anchor = [epoch, None]
            return epoch
        if anchor is None:
            return epoch
        if anchor[1] is None:
            anchor[1] = epoch
        return max(anchor[0] + epoch - anchor[1], 0)
