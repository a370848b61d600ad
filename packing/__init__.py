"""Bin packing and bucketing on length arrays, plus waste statistics.

Pure NumPy/numba: nothing here imports torch at import time.
"""

from .core import ALGORITHMS, OVERSIZE_POLICIES, Packing, concat_chunk, lower_bounds, pack
from .stream import ClosedBins, WindowPacker
from .waste import StrategyWaste, WasteReport, waste_report
from .collate import LAYOUTS, SHAPES, DocumentCausalMask, PackedCollator, block_causal_mask, flex_block_mask
from .loss import example_losses, packed_loss, token_losses
from .pairs import PairCollator, SharedPromptMask, pair_lengths, pair_logps, sequence_logps
from .probe import PackingCheck, PackingCheckFailed, check_packing
from .score import PackedLogprobs, packed_logprobs, prepack_prefill

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
    "LAYOUTS",
    "SHAPES",
    "DocumentCausalMask",
    "PackedCollator",
    "block_causal_mask",
    "flex_block_mask",
    "example_losses",
    "packed_loss",
    "token_losses",
    "PairCollator",
    "SharedPromptMask",
    "pair_lengths",
    "pair_logps",
    "sequence_logps",
    "PackingCheck",
    "PackingCheckFailed",
    "check_packing",
    "PackedLogprobs",
    "packed_logprobs",
    "prepack_prefill",
]
