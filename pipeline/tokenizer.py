"""Real tokenizers available offline: a user's ``tokenizer.json``, or a byte-level BPE trained
in seconds on the corpus itself (so every machine can measure real token lengths)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np


def train_byte_bpe(texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2, special_tokens: Sequence[str] = ()):
    """Train a byte-level BPE ``tokenizers.Tokenizer`` on ``texts``.

    Byte-level means every string encodes (no unknown tokens), like GPT-2/Llama-3 tokenizers.
    ``<|endoftext|>`` (id 0, the EOS token) and ``special_tokens`` are never split.

    Example:
        >>> from packwise.pipeline.tokenizer import train_byte_bpe
        >>> tok = train_byte_bpe(["packing makes batches dense"] * 50, vocab_size=300)
        >>> len(tok.encode("packing").ids) >= 1
        True
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257 + len(special_tokens):
        raise ValueError(f"vocab_size must be >= {257 + len(special_tokens)} (256 bytes + the special tokens), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=["<|endoftext|>", *special_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def load_tokenizer(path: str | Path):
    """Load a Hugging Face ``tokenizer.json`` (file, or a folder holding one) without truncation."""
    from tokenizers import Tokenizer

    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"tokenizer: no tokenizer.json at {path}; pass the path of a tokenizers JSON file")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def token_lengths(tokenizer, texts: list[str], batch_size: int = 1024) -> np.ndarray:
    """Token count of every text (int64), encoded in batches without special tokens."""
    out = np.empty(len(texts), np.int64)
    for i in range(0, len(texts), batch_size):
        encoded = tokenizer.encode_batch(texts[i : i + batch_size], add_special_tokens=False)
        out[i : i + len(encoded)] = [len(e.ids) for e in encoded]
    return out
