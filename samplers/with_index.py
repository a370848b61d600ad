"""``WithIndex``: a dataset wrapper that returns each example together with its index, so a
training loop can hand ``(indices, per_example_loss)`` to a selection policy without any
DataLoader patching."""

from __future__ import annotations

from torch.utils.data import Dataset


class WithIndex(Dataset):
    """``WithIndex(ds)[i] == (i, ds[i])``; the default collate turns the indices into a long tensor.

    Plain attributes only (no ``__getattr__`` forwarding), so it pickles safely into spawned workers.

    Example:
        >>> from packwise.samplers import WithIndex
        >>> ds = WithIndex(["a", "b", "c"])
        >>> len(ds), ds[2]
        (3, (2, 'c'))
    """

    def __init__(self, dataset):
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise ValueError(
                f"dataset must be map-style (with __getitem__ and __len__), got {type(dataset).__name__}; "
                f"for an IterableDataset use packwise.selection.LossThresholdFilter"
            )
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        return index, self.dataset[index]
