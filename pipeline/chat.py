"""Chat rows to text segments: a ``messages`` (role/content) or ShareGPT ``conversations``
(from/value) column rendered with a built-in ChatML or the tokenizer's own chat template.

A rendered conversation is a list of ``(text, trainable)`` segments whose texts concatenate to the
full rendering; ``trainable`` marks the assistant turns (their content and end-of-turn marker), so
``--train-on assistant`` can set ``labels`` = -100 everywhere else.  Segments are tokenized one by
one, so a label boundary is always a token boundary.

ShareGPT roles map to chat roles: ``human`` -> ``user``, ``gpt`` and ``function_call`` ->
``assistant`` (a tool call is the model's output, trained on), ``observation`` -> ``tool``.
"""

from __future__ import annotations

import json
from typing import Callable, Sequence

CHAT_TEMPLATES: tuple[str, ...] = ("chatml", "tokenizer")
TRAIN_ON: tuple[str, ...] = ("assistant", "all")
MESSAGE_COLUMNS: tuple[str, ...] = ("messages", "conversations")
CHATML_TOKENS: tuple[str, ...] = ("<|im_start|>", "<|im_end|>")
ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "function_call": "assistant",
    "tool": "tool",
    "observation": "tool",
    "function": "tool",
}

Segments = list[tuple[str, bool]]


def messages_of(value, where: str) -> list[dict]:
    """Validate one chat value and normalise it to ``[{"role": ..., "content": ...}, ...]``.

    Example:
        >>> messages_of([{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}], "row 0")
        [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'hello'}]
    """
    fix = 'each row must be a list of {"role": ..., "content": ...} or {"from": ..., "value": ...} messages'
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"{where}: the chat column holds text that is not JSON; {fix}") from None
    if not isinstance(value, list):
        raise ValueError(f"{where}: the chat column holds {_kind(value)}, not a list of messages; {fix}")
    if not value:
        raise ValueError(f"{where}: the chat column holds no messages (an empty list); drop that row")
    out = []
    for k, m in enumerate(value):
        if not isinstance(m, dict):
            raise ValueError(f"{where}: message {k} is {_kind(m)}, not an object; {fix}")
        role, content = (m.get("role"), m.get("content")) if m.get("role") is not None else (m.get("from"), m.get("value"))
        if role is None or content is None:
            raise ValueError(f"{where}: message {k} has keys {sorted(k for k, v in m.items() if v is not None)}; {fix}")
        if role not in ROLES:
            raise ValueError(f"{where}: message {k} has role {role!r}; use one of {sorted(ROLES)}")
        if isinstance(content, list):
            content = _text_parts(content, f"{where}: message {k}")
        if not isinstance(content, str):
            raise ValueError(f"{where}: message {k} has {_kind(content)} content; message content must be text")
        out.append({"role": ROLES[role], "content": content})
    return out


def _text_parts(parts: list, where: str) -> str:
    """The content-list form ``[{"type": "text", "text": ...}, ...]`` joined to one text."""
    texts = []
    for j, part in enumerate(parts):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            got = part.get("type") if isinstance(part, dict) else _kind(part)
            raise ValueError(f'{where}: content part {j} is {got!r}, not {{"type": "text", "text": ...}}; only text parts can be tokenized')
        texts.append(part["text"])
    return "".join(texts)


def _kind(value) -> str:
    return "nothing (null)" if value is None else f"a {type(value).__name__}"


def chatml(messages: Sequence[dict], system: str | None = None, tools=None) -> Segments:
    """ChatML segments: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message; an assistant
    message's content and ``<|im_end|>`` are trainable.  ``system`` and ``tools`` (a list of tool
    schemas, or their JSON text) become a system message first; when the messages start with one,
    the tools are appended to it.

    Example:
        >>> chatml([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
        [('<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\n', False), ('hello<|im_end|>', True), ('\\n', False)]
    """
    out: Segments = []
    if messages[0]["role"] == "system":  # the conversation's own system message wins over a system column
        head = "\n\n".join(t for t in (messages[0]["content"], _system_text(None, tools)) if t)
        messages = [{"role": "system", "content": head}, *messages[1:]]
    elif _system_text(system, tools):
        messages = [{"role": "system", "content": _system_text(system, tools)}, *messages]
    for m in messages:
        if m["role"] == "assistant":
            _append(out, "<|im_start|>assistant\n", False)
            _append(out, m["content"] + "<|im_end|>", True)
            _append(out, "\n", False)
        else:
            _append(out, f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n", False)
    return out


def _system_text(system: str | None, tools) -> str:
    parts = [system] if system else []
    if tools:
        listed = json.loads(tools) if isinstance(tools, str) else tools
        if listed:
            parts.append("# Tools\n<tools>\n" + "\n".join(json.dumps(t, ensure_ascii=False) for t in listed) + "\n</tools>")
    return "\n\n".join(parts)


def _append(out: Segments, text: str, trainable: bool) -> None:
    if not text:
        return
    if out and out[-1][1] == trainable:
        out[-1] = (out[-1][0] + text, trainable)
    else:
        out.append((text, trainable))


def hf_template(tokenizer) -> Callable[..., Segments]:
    """Segments from a ``transformers`` tokenizer's own chat template, found by rendering the
    conversation up to each assistant turn: the text between the generation prompt before it and
    the rendering that ends with it is that turn (its trailing whitespace is not trained on)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            "--chat-template tokenizer: this tokenizer has no chat template (a transformers tokenizer folder whose "
            "tokenizer_config.json or chat_template.jinja has one); pass --chat-template chatml"
        )

    def render(messages: Sequence[dict], system: str | None = None, tools=None) -> Segments:
        messages = list(messages)
        if system and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system})
        kwargs = {"tools": json.loads(tools) if isinstance(tools, str) else tools} if tools else {}

        def text(msgs, prompt=False):
            return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=prompt, **kwargs)

        out: Segments = []
        done = ""
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            head = text(messages[:i], prompt=True) if i else ""
            upto = text(messages[: i + 1])
            if not (head.startswith(done) and upto.startswith(head)):
                raise ValueError(
                    "--chat-template tokenizer: the tokenizer's chat template does not render conversations "
                    "incrementally (an earlier turn renders differently once later turns follow), so assistant "
                    "turns cannot be located; pass --train-on all or --chat-template chatml"
                )
            turn = upto[len(head) :]
            kept = turn.rstrip()
            _append(out, head[len(done) :], False)
            _append(out, kept, True)
            _append(out, turn[len(kept) :], False)
            done = upto
        full = text(messages)
        if not full.startswith(done):
            raise ValueError("--chat-template tokenizer: the full rendering does not extend its turns; pass --train-on all")
        _append(out, full[len(done) :], False)
        return out

    return render
