"""packwise: dense, well-chosen training batches for PyTorch.

Subpackages: ``packwise.packing`` (bin packing, bucketing, waste statistics),
``packwise.samplers`` (torch samplers), ``packwise.selection`` (data selection),
``packwise.pipeline`` (streaming Arrow I/O) and ``packwise.cli`` (the ``packwise`` command).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
