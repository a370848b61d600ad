"""packwise: dense, well-chosen training batches for PyTorch.

Subpackages: ``packwise.packing`` (bin packing, bucketing, waste statistics),
``packwise.samplers`` (torch samplers), ``packwise.selection`` (data selection),
``packwise.pipeline`` (streaming Arrow I/O), ``packwise.integrations`` (HF Trainer / TRL) and
``packwise.cli`` (the ``packwise`` command).  ``packwise.check_packing(model, collator)`` probes
whether a model keeps packed sequences apart.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "check_packing"]


def __getattr__(name: str):
    # ``packwise.check_packing`` without importing the subpackages on ``import packwise``
    if name == "check_packing":
        from .packing.probe import check_packing

        return check_packing
    raise AttributeError(f"module 'packwise' has no attribute {name!r}")
