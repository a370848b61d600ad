"""``check_packing``: does this model really keep the packed sequences of this batch apart?

A packed batch is only as good as the model's reading of it: a KV cache that switches off HF's
packed-sequence detection, an attention backend that ignores ``cu_seq_lens``, a Mamba layer that
never sees ``seq_idx`` all give plausible logits that silently mix documents.  The probe runs the
model (in eval mode, then restores its mode) and checks three things:

1. packed == alone: every document's logits equal the document run alone (``use_cache=False``);
2. no leak: changing one document's tokens moves no other document's logits;
3. which keys matter: each extra key is dropped in turn; a key whose removal changes the logits (or
   makes the model fail) is *used*, the others are *ignored* by this model.

Documents are found from ``position_ids`` (a new one wherever the position does not step by 1),
the rule HF itself uses, so any packwise batch works.  torch is imported inside the function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

_BOOKKEEPING = ("labels", "example_index", "example_ids", "loss_weight")
_PROBE_LENGTHS = (7, 12, 5, 16, 3, 9)


class PackingCheckFailed(AssertionError):
    """The model mixes packed documents (the message is the full :class:`PackingCheck` report)."""


@dataclass(frozen=True)
class PackingCheck:
    """What :func:`check_packing` measured (logit differences are max absolute values)."""

    ok: bool
    documents: int
    max_diff_vs_alone: float
    max_leak: float
    atol: float
    keys_used: tuple[str, ...]
    keys_ignored: tuple[str, ...]
    error: str | None = None

    def __str__(self) -> str:
        verdict = "OK: packed documents stay apart" if self.ok else "FAIL: the model mixes packed documents"
        lines = [verdict]
        if self.error:
            lines.append(f"  the model refused the packed batch: {self.error}")
        else:
            lines += [
                f"  documents: {self.documents}",
                f"  packed vs alone: max |diff| = {self.max_diff_vs_alone:.3g} (atol {self.atol:g})",
                f"  one document changed, others moved by: {self.max_leak:.3g}",
                f"  keys used: {', '.join(self.keys_used) or '-'}",
                f"  keys ignored: {', '.join(self.keys_ignored) or '-'}",
            ]
        return "\n".join(lines)


def _documents(position_ids) -> list[tuple[int, int, int]]:
    """``(row, start, end)`` of every run where positions step by exactly 1."""
    pos = position_ids.cpu().numpy()
    out = []
    for r in range(pos.shape[0]):
        starts = np.flatnonzero(np.diff(pos[r], prepend=pos[r, 0] - 2) != 1)
        ends = np.append(starts[1:], pos.shape[1])
        out += [(r, int(a), int(b)) for a, b in zip(starts, ends)]
    return out


def check_packing(
    model,
    batch_or_collator,
    *,
    examples: Sequence[dict[str, Any]] | None = None,
    atol: float = 1e-4,
    seed: int = 0,
    raise_on_failure: bool = True,
    verbose: bool = True,
) -> PackingCheck:
    """Probe ``model`` with a packed batch (or one a collator builds from ``examples``).

    ``batch_or_collator``: a batch dict from a packwise collator, or the collator itself (then
    ``examples``, default six random documents of 3..16 tokens, are collated).  Prints the report
    when ``verbose``; raises :class:`PackingCheckFailed` when a check fails and ``raise_on_failure``.

    Example:
        >>> import transformers
        >>> from packwise import check_packing
        >>> from packwise.packing import PackedCollator
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        ...                                num_attention_heads=2, num_key_value_heads=1)
        >>> report = check_packing(transformers.LlamaForCausalLM(cfg), PackedCollator(), verbose=False)
        >>> report.ok, report.documents, "use_cache" in report.keys_used
        (True, 6, True)
    """
    import torch

    if callable(batch_or_collator) and not isinstance(batch_or_collator, dict):
        if examples is None:
            vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 0)
            if vocab < 2:
                raise ValueError("model.config.vocab_size is missing; pass examples=[{'input_ids': [...]}, ...] to check_packing")
            rng = np.random.default_rng(seed)
            examples = [{"input_ids": rng.integers(1, vocab, n).tolist()} for n in _PROBE_LENGTHS]
        batch = batch_or_collator(examples)
    elif isinstance(batch_or_collator, dict):
        batch = batch_or_collator
    else:
        raise ValueError(f"batch_or_collator must be a batch dict or a collator, got {type(batch_or_collator).__name__}")
    for key in ("input_ids", "position_ids"):
        if key not in batch:
            raise ValueError(f"the batch has no {key!r}; check_packing needs a packwise batch (input_ids, position_ids)")

    device = next(model.parameters()).device
    inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items() if k not in _BOOKKEEPING}
    vocab_size = int(getattr(model.config, "vocab_size", 0) or int(inputs["input_ids"].max()) + 2)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                packed = model(**inputs).logits.float()
            except Exception as err:  # noqa: BLE001 - any refusal is the finding
                report = PackingCheck(False, 0, float("nan"), float("nan"), atol, (), (), f"{type(err).__name__}: {err}")
                return _finish(report, verbose, raise_on_failure)
            docs = _documents(inputs["position_ids"])
            diff = 0.0
            for r, a, b in docs:
                alone = model(
                    input_ids=inputs["input_ids"][r : r + 1, a:b], position_ids=inputs["position_ids"][r : r + 1, a:b], use_cache=False
                ).logits.float()
                diff = max(diff, (packed[r : r + 1, a:b] - alone).abs().max().item())
            r, a, b = docs[0]
            changed = dict(inputs)
            ids = inputs["input_ids"].clone()
            ids[r, a:b] = (ids[r, a:b] + 1) % vocab_size
            changed["input_ids"] = ids
            moved = (model(**changed).logits.float() - packed).abs()
            moved[r, a:b] = 0
            leak = moved.max().item()
            used, ignored = [], []
            for key in inputs:
                if key == "input_ids":
                    continue
                try:
                    out = model(**{k: v for k, v in inputs.items() if k != key}).logits.float()
                    matters = (out - packed).abs().max().item() > atol
                except Exception:  # noqa: BLE001 - failing without the key means the model reads it
                    matters = True
                (used if matters else ignored).append(key)
    finally:
        model.train(was_training)
    report = PackingCheck(diff <= atol and leak <= atol, len(docs), diff, leak, atol, tuple(used), tuple(ignored))
    return _finish(report, verbose, raise_on_failure)


def _finish(report: PackingCheck, verbose: bool, raise_on_failure: bool) -> PackingCheck:
    if verbose:
        print(report)
    if raise_on_failure and not report.ok:
        raise PackingCheckFailed(str(report))
    return report
