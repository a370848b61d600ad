"""Bin packing and bucketing on length arrays, plus waste statistics.

Pure NumPy/numba: nothing here imports torch at import time.
"""

from .core import ALGORITHMS, OVERSIZE_POLICIES, Packing, concat_chunk, lower_bounds, pack
from .stream import ClosedBins, WindowPacker
from .waste import StrategyWaste, WasteReport, waste_report

__all__ = [
    "ALGORITHMS",
    "OVERSIZE_POLICIES",
    "ClosedBins",
    "Packing",
    "StrategyWaste",
    "WasteReport",
    "WindowPacker",
    "concat_chunk",
    "lower_bounds",
    "pack",
    "waste_report",
]
