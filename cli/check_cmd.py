"""``packwise check-model PATH``: load a local model folder and run :func:`packwise.check_packing` on it."""

from __future__ import annotations

import pickle
from pathlib import Path


def _load_model(transformers, path: Path, kwargs: dict):
    """The model in ``path``, loaded with transformers' safe loaders (safetensors, or torch.load with
    ``weights_only=True``): a weights file that is any other pickle is refused, never run."""
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except pickle.UnpicklingError:
        raise ValueError(
            f"{path}: a weights file holds more than plain tensors and was not loaded (packwise never unpickles "
            f"model files); save the model with save_pretrained(safe_serialization=True) and retry"
        ) from None


def run_check_model(path: Path, attn: str | None, layout: str, shape: str, capacity: int | None) -> bool:
    """Probe the model in ``path`` with a packed batch of random documents; print the report, return ok."""
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} has no config.json; pass a local model folder (what save_pretrained writes)")
    try:
        import torch
        import transformers
    except ImportError:
        raise ValueError("check-model needs transformers: pip install 'packwise[hf]'") from None
    from ..packing import PackedCollator, check_packing

    kwargs = {"local_files_only": True, "dtype": torch.float32}
    if attn:
        kwargs["attn_implementation"] = attn
    model = _load_model(transformers, path, kwargs)
    collator = PackedCollator(layout=tuple(x.strip() for x in layout.split(",") if x.strip()), shape=shape, capacity=capacity)
    print(f"model: {type(model).__name__} ({model.config._attn_implementation} attention), collator: {collator!r}")
    return check_packing(model, collator, raise_on_failure=False).ok
