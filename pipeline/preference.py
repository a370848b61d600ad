"""Preference (DPO) rows through the pack stage and back: each pair is one stored sequence.

A pair's prompt ``P``, chosen ``C`` and rejected ``R`` tokens are stored as one sequence, so the
packer never splits a pair and a row's token count is what ``PairCollator`` will lay out
(``pair_lengths``): ``[P | C | P | R]`` (the prompt twice, ``2P + C + R``) or, with
``share_prompt``, ``[P | C | R]`` (``P + C + R``).  The labels carry the structure: -100 on every
prompt token, the ids on the responses, and with a shared prompt -100 on the rejected answer's
first token (``PairCollator``'s own labels: the shifted loss cannot score it).  ``pair_of`` reads a
stored sequence back into ``{"prompt_ids", "chosen_ids", "rejected_ids"}``.

Prompts are text (``prompt`` / ``question`` columns, joined to the response as TRL does) or
messages (a list of role/content or from/value messages, e.g. LLaMA-Factory's ``conversations``),
rendered with the run's chat template up to the assistant turn; a response is text, one message,
or a one-message list. Without a prompt column (TRL's implicit prompt) ``chosen`` and ``rejected``
hold the whole conversations or texts and their common prefix is the prompt (``implicit_prompt``).
"""

from __future__ import annotations

import numpy as np

from . import chat as _chat
from .tokens import IGNORE, TextRows

PROMPT_SEPARATOR = {"prompt": "", "question": "\n\n"}


class PairRows(TextRows):
    """``TextRows`` for a DPO layout: ``tokenize`` gives one ``[P C (P) R]`` sequence per row."""

    has_labels = True  # -100 on the prompts, whatever the text spec says

    def __init__(self, spec, tokenizer, pair: tuple[str | None, str, str], share_prompt: bool):
        super().__init__(spec, tokenizer)
        self.pair, self.share_prompt = pair, bool(share_prompt)

    def tokenize(self, loc):
        texts = []
        for i, row in enumerate(loc.batch.select([c for c in self.pair if c]).to_pylist()):
            texts += self._texts(row, f"{loc.source} row {loc.first_row + i}")
        seg_offsets, values = self.encoder.encode(texts)
        return join_pairs(seg_offsets, values, self.share_prompt, loc)

    def _texts(self, row: dict, where: str) -> list[str]:
        """``[prompt, chosen, rejected]`` texts of one row."""
        if self.pair[0] is None:
            prompt, chosen, rejected = implicit_prompt(row[self.pair[1]], row[self.pair[2]], where, chat=self.render is not None)
        else:
            prompt, chosen, rejected = (row[c] for c in self.pair)
        if self.render is None or (isinstance(prompt, str) and not _is_json_list(prompt) and isinstance(chosen, str)
                                   and isinstance(rejected, str)):  # fmt: skip
            sep = PROMPT_SEPARATOR.get(self.pair[0], "")
            return [prompt + sep if prompt else "", chosen, rejected]
        messages = _chat.messages_of(prompt, f"{where}: column {self.pair[0]!r}")
        head_c, c = self._turn(messages, chosen, f"{where}: column 'chosen'")
        head_r, r = self._turn(messages, rejected, f"{where}: column 'rejected'")
        if head_c != head_r:
            raise ValueError(f"{where}: the chat template renders the prompt differently before chosen and rejected; pass --chat-template chatml")
        return [head_c, c, r]

    def _turn(self, messages: list[dict], response, where: str) -> tuple[str, str]:
        """(prompt text, response text): the conversation plus ``response`` as its last assistant turn."""
        if isinstance(response, str) and not _is_json_list(response):
            reply = [{"role": "assistant", "content": response}]
        else:
            reply = _chat.messages_of(response if isinstance(response, (list, str)) else [response], where)
        if len(reply) != 1 or reply[0]["role"] != "assistant":
            raise ValueError(f"{where}: a response must be one assistant message (or its text), got {len(reply)} messages")
        segments = self.render(messages + reply, None, None)
        last = max(k for k, (_, trainable) in enumerate(segments) if trainable)
        return "".join(t for t, _ in segments[:last]), segments[last][0]


def implicit_prompt(chosen, rejected, where: str, chat: bool) -> tuple:
    """``(prompt, chosen rest, rejected rest)`` of a pair whose prompt is implicit, by TRL's rule
    (``extract_prompt``): the prompt is the longest common prefix of the two, in leading messages
    for conversations (``chat``) and in characters for texts, where a space just before the first
    difference goes to the responses. A pair with no common prefix, or with nothing left of one side
    once it is taken, is a ``ValueError`` naming the row (``where``).

    Example:
        >>> implicit_prompt("The sky is blue.", "The sky is green.", "row 0", chat=False)
        ('The sky is', ' blue.', ' green.')
    """
    if chat:
        chosen = _chat.messages_of(chosen, f"{where}: column 'chosen'")
        rejected = _chat.messages_of(rejected, f"{where}: column 'rejected'")
    elif not (isinstance(chosen, str) and isinstance(rejected, str)):
        raise ValueError(f"{where}: chosen and rejected must both be texts (or both conversations), got "
                         f"{type(chosen).__name__} and {type(rejected).__name__}; fix or drop that row")  # fmt: skip
    n = min(len(chosen), len(rejected))
    k = next((i for i in range(n) if chosen[i] != rejected[i]), n)
    if k == n:
        short, other = ("chosen", "rejected") if len(chosen) == n else ("rejected", "chosen")
        side = "chosen and rejected are the same" if len(chosen) == len(rejected) else f"the {short} is a prefix of the {other}"
        raise ValueError(f"{where}: {side}, so nothing of the {short} is left once their common prefix (the implicit "
                         f"prompt) is taken; drop that row, or add a prompt column")  # fmt: skip
    if not chat and k > 0 and chosen[k - 1] == " ":
        k -= 1
    if k == 0:
        what = "leading message" if chat else "prefix (a space before the first difference goes to the responses)"
        raise ValueError(f"{where}: chosen and rejected have no common {what}, so no implicit prompt; add a prompt column")
    return chosen[:k], chosen[k:], rejected[k:]


def _is_json_list(text: str) -> bool:
    return text.lstrip().startswith("[{")


def join_pairs(seg_offsets: np.ndarray, values: np.ndarray, share_prompt: bool, loc) -> tuple:
    """``(offsets, values, labels)``: one stored sequence per pair from the CSR of ``[P, C, R]`` texts."""
    lens = np.diff(seg_offsets).reshape(-1, 3)
    for k in np.flatnonzero((lens == 0).any(axis=1)):
        what = ("prompt", "chosen", "rejected")[int(np.flatnonzero(lens[k] == 0)[0])]
        raise ValueError(f"{loc.source} row {loc.first_row + int(k)}: the {what} has no tokens; a pair needs all three, drop that row")
    ids, labels, offsets = [], [], [0]
    for k in range(lens.shape[0]):
        p, c, r = (values[seg_offsets[3 * k + j] : seg_offsets[3 * k + j + 1]] for j in range(3))
        mask_p = np.full(p.shape[0], IGNORE, np.int32)
        if share_prompt:
            parts, labs = (p, c, r), (mask_p, c, np.concatenate(([IGNORE], r[1:])).astype(np.int32))
        else:
            parts, labs = (p, c, p, r), (mask_p, c, mask_p, r)
        ids += parts
        labels += labs
        offsets.append(offsets[-1] + sum(x.shape[0] for x in parts))
    return np.asarray(offsets, np.int64), np.concatenate(ids).astype(np.int32), np.concatenate(labels).astype(np.int32)


def pair_of(ids: np.ndarray, labels: np.ndarray, share_prompt: bool) -> dict:
    """The pair stored as one sequence (see the module docstring).

    Example:
        >>> ids, labels = np.array([1, 2, 3, 1, 2, 4, 5]), np.array([-100, -100, 3, -100, -100, 4, 5])
        >>> pair_of(ids, labels, share_prompt=False)
        {'prompt_ids': [1, 2], 'chosen_ids': [3], 'rejected_ids': [4, 5]}
        >>> pair_of(np.array([1, 2, 3, 4, 5]), np.array([-100, -100, 3, -100, 5]), share_prompt=True)
        {'prompt_ids': [1, 2], 'chosen_ids': [3], 'rejected_ids': [4, 5]}
    """
    trained = labels != IGNORE
    p = int(np.argmax(trained)) if trained.any() else ids.shape[0]
    c_end = p + int(np.argmin(trained[p:])) if not trained[p:].all() else ids.shape[0]
    if p == 0 or c_end == p or c_end == ids.shape[0]:
        raise ValueError("packed dataset: a sequence is not a stored pair (prompt -100, chosen, rejected); was it packed from a DPO layout?")
    prompt, chosen = ids[:p], ids[p:c_end]
    rejected = ids[c_end:] if share_prompt else ids[c_end + p :]
    if not share_prompt and not np.array_equal(ids[c_end : c_end + p], prompt):
        raise ValueError("packed dataset: a stored pair's two prompts differ; the shards were not written by a DPO pack")
    return {"prompt_ids": prompt.tolist(), "chosen_ids": chosen.tolist(), "rejected_ids": rejected.tolist()}


class PairCollate:
    """``PackedDataset.collate`` of a DPO pack: rows -> their pairs -> ``PairCollator``."""

    def __init__(self, share_prompt: bool, collator=None):
        from ..packing import PairCollator

        self.share_prompt = bool(share_prompt)
        self.collator = collator or PairCollator(share_prompt=share_prompt, layout="sdpa" if share_prompt else ("flash", "seq_idx"))
        self.allow_unlabeled = False

    def pairs(self, rows: list[dict]) -> list[dict]:
        out = []
        for row in rows:
            ends = np.cumsum(row["seq_lens"])
            for a, b in zip(np.concatenate(([0], ends[:-1])), ends):
                out.append(pair_of(row["input_ids"][a:b], row["labels"][a:b], self.share_prompt))
        return out

    def __call__(self, rows: list[dict]) -> dict:
        return self.collator(self.pairs(rows))
