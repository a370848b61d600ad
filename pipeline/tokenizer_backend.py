"""Which library turns text into token ids: Hugging Face ``tokenizers`` or ``fastokens``.

Why a layer: ``fastokens`` runs the same ``tokenizer.json`` in Rust 10x+ faster and releases the
GIL, but it covers only part of what ``tokenizers`` does (no Unigram or WordPiece models, no
BERT/NFKC normalizers, no Metaspace pre-tokenizer, ...).  So ``auto`` uses it only after it loaded
the tokenizer and encoded a sample of the real input (the first batch) to exactly the ids HF
gives; any load error or id difference falls back to HF with a one-line notice on stderr.  The
decision is kept on the encoder (``describe()``) and recorded in the manifest.

Example:
    >>> from packwise.pipeline.tokenizer import train_byte_bpe
    >>> from packwise.pipeline.tokenizer_backend import TextEncoder
    >>> enc = TextEncoder(train_byte_bpe(["packing makes batches dense"] * 50, vocab_size=300), "hf")
    >>> offsets, values = enc.encode(["packing", "dense batches"])
    >>> offsets.dtype.name, values.dtype.name, len(offsets), enc.describe()["used"]
    ('int64', 'int32', 3, 'hf')
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
from typing import Callable

import numpy as np

from ._kernels import csr_take

BACKENDS: tuple[str, ...] = ("auto", "hf", "fastokens")
SAMPLE_TEXTS = 256  # texts of the first batch encoded by both backends before ``auto`` trusts fastokens,
SAMPLE_CHARS = 1 << 18  # and at most this many characters of them (HF encodes the sample: ~0.05 s)
_INSTALL = "pip install 'packwise[fast]'"
LONG_CHARS = 1 << 20  # a text longer than this is encoded in pieces of about this size (when cuttable)


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"--tokenizer-backend {backend}: use one of {', '.join(BACKENDS)}")


def stderr_notice(line: str) -> None:
    """The default notice sink: one line on stderr (the CLI's and a library user's terminal)."""
    print(f"packwise: {line}", file=sys.stderr, flush=True)


class TextEncoder:
    """Texts -> CSR token ids (``offsets`` int64, ``values`` int32) without special tokens.

    ``backend="hf"`` encodes with ``tokenizer`` itself; ``"fastokens"`` must load it and match HF
    on the sample (else ``ValueError``); ``"auto"`` takes fastokens when it can, HF otherwise.
    The check runs once, on the first ``encode`` call (thread-safe); ``used`` is ``None`` until then.
    Pickles (Ray workers) with the decision made: the fastokens tokenizer is rebuilt there.
    """

    def __init__(self, tokenizer, backend: str = "auto", notify: Callable[[str], None] = stderr_notice):
        check_backend(backend)
        self.tokenizer, self.requested, self.notify = tokenizer, backend, notify
        self.used: str | None = "hf" if backend == "hf" else None
        self.reason: str | None = None
        self.checked_texts = 0
        self._fast = None
        self._lock = threading.Lock()
        self._cuttable, self._cuts_checked = cuttable(tokenizer), False
        if backend != "hf":
            self._fast, why = load_fastokens(tokenizer)
            if self._fast is None:
                self._decline(why, notify=why != "fastokens is not installed")

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """CSR ids of ``texts``; a text over ``LONG_CHARS`` is encoded in pieces cut where the ids
        provably do not change (see :func:`safe_cuts`), so its memory follows the piece, not the text."""
        if self._cuttable and any(len(t) > LONG_CHARS for t in texts):
            pieces, groups = split_long(texts)
            if not self._cuts_checked:
                self._check_cuts(pieces, groups)
            if self._cuttable:
                offsets, values = self._encode(pieces)
                return offsets[groups], values
        return self._encode(texts)

    def _check_cuts(self, pieces: list[str], groups: np.ndarray) -> None:
        """Once: the first cut text's first two pieces encoded joined must give their ids
        concatenated; else cutting is turned off (with a notice) and long texts are encoded whole."""
        k = int(np.argmax(np.diff(groups) > 1))
        if groups[k + 1] - groups[k] < 2:
            return
        a, b = pieces[groups[k]], pieces[groups[k] + 1]
        joined, parts = self._encode([a + b])[1], self._encode([a, b])[1]
        self._cuts_checked = True
        if not np.array_equal(joined, parts):
            self._cuttable = False
            self.notify("long texts are encoded whole: ids of their pieces differ from the joined text's")

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.used is None:
            with self._lock:
                if self.used is None:
                    first = self._check(texts)
                    if first is not None:
                        return first
        if self.used == "fastokens":
            return fast_csr(self._fast, texts)
        return hf_csr(self.tokenizer, texts)

    def describe(self) -> dict:
        """What was asked, what was used and why (for the manifest)."""
        return {"requested": self.requested, "used": self.used, "checked_texts": self.checked_texts, "reason": self.reason}

    def _check(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """Decide on the first batch; return it encoded when fastokens is taken. HF encodes the
        sample on a helper thread while fastokens encodes the whole batch (both release the GIL),
        so the check costs about the HF sample's time, not that plus two fastokens passes."""
        from concurrent.futures import ThreadPoolExecutor

        picks = sample_positions(texts)
        self.checked_texts = len(picks)
        with ThreadPoolExecutor(1, thread_name_prefix="packwise-backend-check") as pool:
            hf = pool.submit(hf_csr, self.tokenizer, [texts[i] for i in picks])
            try:
                fo, fv = fast_csr(self._fast, texts)
            except Exception as err:  # e.g. a PCRE2 resource limit on a pathological text
                hf.result()
                self._decline(f"fastokens failed on the first batch ({str(err).splitlines()[0]})", notify=True)
                return None
            ho, hv = hf.result()
        entries, so = csr_take(fo, picks)  # the sampled texts' ids out of the whole batch
        sv = fv[entries]
        bad = _first_difference(ho, hv, so, sv)
        if bad is None:
            self.used = "fastokens"
            return fo, fv
        self._decline(f"fastokens ids differ from HF tokenizers on sampled text {bad} of the first batch", notify=True)
        return None

    def _decline(self, why: str, notify: bool) -> None:
        if self.requested == "fastokens":
            raise ValueError(f"--tokenizer-backend fastokens: {why}; use --tokenizer-backend hf (or auto, which falls back to HF)")
        self.used, self.reason, self._fast = "hf", why, None
        if notify:
            self.notify(f"tokenizer backend auto -> hf: {why}")

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_fast", "_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._fast = load_fastokens(self.tokenizer)[0] if self.used != "hf" else None


def cuttable(tokenizer) -> bool:
    """Whether :func:`safe_cuts` holds for ``tokenizer``: no normalizer and a byte-level
    pre-tokenizer with the GPT-2 split regex and no prefix space (what ``train_byte_bpe`` makes).
    Anything else (other normalizers or pre-tokenizers) is encoded whole: we cannot prove the cut."""
    source = tokenizer if hasattr(tokenizer, "to_str") else getattr(tokenizer, "backend_tokenizer", None)
    if source is None:
        return False
    spec = json.loads(source.to_str())
    pre = spec.get("pre_tokenizer") or {}
    return (
        spec.get("normalizer") is None
        and (spec.get("model") or {}).get("type") == "BPE"
        and pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True) is True
        and pre.get("add_prefix_space") is False
    )


def safe_cuts(text: str, every: int) -> list[int]:
    r"""Cut positions about ``every`` characters apart where byte-level BPE ids cannot change.

    The rule: cut after a single ``"\n"`` that has a non-space character on both sides.  In the
    GPT-2 pre-tokenizer regex a newline is only ever part of a whitespace-only pre-token, and a
    lone newline before a non-space is its own pre-token ``"\n"`` (``\s+``), also at the end of
    a piece (``\s+(?!\S)``); BPE merges never cross pre-tokens, so the ids of the pieces joined
    are the ids of the text.  A text with no such newline near a boundary stays whole there.
    """
    cuts, start = [], 0
    while len(text) - start > every:
        i = _next_cut(text, start + every // 2)
        if i == -1:
            break
        start = i + 1
        cuts.append(start)
    return cuts


def _next_cut(text: str, i: int) -> int:
    """The first lone newline at or after ``i`` with a non-space character on both sides, or -1."""
    i = text.find("\n", max(i, 1))
    while i != -1 and (text[i - 1].isspace() or i + 1 >= len(text) or text[i + 1].isspace()):
        i = text.find("\n", i + 1)
    return i


def split_long(texts: list[str]) -> tuple[list[str], np.ndarray]:
    """``(pieces, groups)``: texts over ``LONG_CHARS`` cut at :func:`safe_cuts`; ``groups[k]`` is
    the first piece of text ``k`` (``groups[-1]`` = number of pieces), so ``offsets[groups]``
    turns the pieces' CSR offsets back into the texts'."""
    pieces, groups = [], [0]
    for text in texts:
        if len(text) > LONG_CHARS:
            bounds = [0, *safe_cuts(text, LONG_CHARS), len(text)]
            pieces.extend(text[a:b] for a, b in zip(bounds, bounds[1:]))
        else:
            pieces.append(text)
        groups.append(len(pieces))
    return pieces, np.asarray(groups, np.int64)


def check_sample(texts: list[str]) -> list[str]:
    """Texts evenly spaced over ``texts``, at most ``SAMPLE_TEXTS`` of them and ``SAMPLE_CHARS`` characters (>= 1 text).

    Example:
        >>> len(check_sample(["ab"] * 1000)), len(check_sample(["x" * 300_000] * 3))
        (256, 1)
    """
    return [texts[i] for i in sample_positions(texts)]


def sample_positions(texts: list[str]) -> np.ndarray:
    """Positions of ``check_sample(texts)`` in ``texts``."""
    step = max(1, len(texts) // SAMPLE_TEXTS)
    picked = np.arange(0, len(texts), step, dtype=np.int64)[:SAMPLE_TEXTS]
    chars = np.cumsum([len(texts[i]) for i in picked])
    return picked[: max(1, int(np.searchsorted(chars, SAMPLE_CHARS, side="right")))]


def as_encoder(tokenizer) -> TextEncoder:
    """``tokenizer`` itself when it is a ``TextEncoder``, else an HF encoder of it (no check, no notice)."""
    return tokenizer if isinstance(tokenizer, TextEncoder) else TextEncoder(tokenizer, "hf")


def load_fastokens(tokenizer):
    """``(fastokens.Tokenizer, None)`` built from ``tokenizer``'s JSON, or ``(None, why not)``."""
    try:
        import fastokens
    except ImportError:
        return None, "fastokens is not installed"
    source = tokenizer if hasattr(tokenizer, "to_str") else getattr(tokenizer, "backend_tokenizer", None)
    if source is None:
        return None, f"{type(tokenizer).__name__} has no tokenizer.json (not a fast tokenizer)"
    try:
        fast = fastokens.Tokenizer.from_json_str(source.to_str())
    except Exception as err:  # fastokens raises ValueError/RuntimeError naming the unsupported component
        return None, f"fastokens cannot load this tokenizer ({str(err).splitlines()[0]})"
    fast.no_truncation()
    fast.no_padding()
    return fast, None


def fast_csr(fast, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """fastokens' flat buffers as CSR arrays: no Python object per token."""
    ids, offsets = fast.encode_batch_flat(texts, add_special_tokens=False)
    return np.frombuffer(offsets, np.uint64).astype(np.int64), np.frombuffer(ids, np.uint32).view(np.int32)


def hf_csr(tokenizer, texts: list[str], chunk_chars: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """HF ids (``tokens.encode``: ``tokenizers`` or ``transformers``) as CSR arrays.

    Encoded at most ``chunk_chars`` characters (or one text) at a time: a Python int per token
    costs ~36 bytes, so a whole 8 MiB record batch as lists would hold ~80 MB per encoding
    thread; chunks of 1M characters keep that near 10 MB.
    """
    from .tokens import encode

    lengths, parts = [np.zeros(0, np.int64)], [np.zeros(0, np.int32)]
    for a, b in _chunks(texts, chunk_chars):
        ids = encode(tokenizer, texts[a:b])
        n = np.fromiter(map(len, ids), np.int64, count=len(ids))
        lengths.append(n)
        parts.append(np.fromiter(itertools.chain.from_iterable(ids), np.int32, count=int(n.sum())))
    offsets = np.zeros(len(texts) + 1, np.int64)
    np.cumsum(np.concatenate(lengths), out=offsets[1:])
    return offsets, np.concatenate(parts)


def _chunks(texts: list[str], chars: int):
    """``(start, stop)`` ranges of ``texts`` of at most ``chars`` characters each, or one longer text.

    Example:
        >>> list(_chunks(["aaaa", "b", "c", "dddddd", "e"], chars=5))
        [(0, 2), (2, 3), (3, 4), (4, 5)]
    """
    ends = np.cumsum(np.fromiter(map(len, texts), np.int64, count=len(texts)))
    a = 0
    while a < len(texts):
        base = int(ends[a - 1]) if a else 0
        b = max(a + 1, int(np.searchsorted(ends, base + chars, side="right")))
        yield a, b
        a = b


def _first_difference(ao, av, bo, bv) -> int | None:
    """Index of the first text whose ids differ between two CSR encodings of the same texts."""
    if np.array_equal(ao, bo) and np.array_equal(av, bv):
        return None
    return next(k for k in range(ao.shape[0] - 1) if not np.array_equal(av[ao[k] : ao[k + 1]], bv[bo[k] : bo[k + 1]]))
