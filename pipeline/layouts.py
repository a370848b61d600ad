"""Known dataset layouts, recognised from the schema alone (column names and types).

``packwise pack`` / ``report`` / ``select`` call :func:`detect_layout` when no column option
(``--text-column``, ``--tokens-column``, ``--template``, ``--chat-template``) is given, say on
their first line which layout they chose, and record its name in the manifest.  A layout decides
how a row becomes text (``text_spec``); an unknown schema is a ``ValueError`` listing the columns
and the flags that apply.
"""

from __future__ import annotations

from dataclasses import dataclass

CHAT_COLUMNS: tuple[str, ...] = ("messages", "conversations")
PAIR_PROMPTS: tuple[str, ...] = ("prompt", "question", "conversations")


@dataclass(frozen=True)
class Layout:
    """A recognised layout: its ``name``, the columns it reads and how they are trained on.

    ``columns``: the text columns (a chat layout: its one chat column; a prompt/response layout:
    prompt columns then the response column last); ``chat``: the column holds messages;
    ``response``: the last column is the response (labels on it by default); ``separator``:
    between the prompt columns and the response; ``csv_header``: ``False`` when the file is a CSV
    whose first row is data; ``label``: KTO's per-sequence boolean column.
    """

    name: str
    columns: tuple[str, ...]
    chat: bool = False
    response: bool = False
    separator: str = "\n\n"
    csv_header: bool = True
    label: str | None = None
    pair: tuple[str | None, str, str] | None = None  # DPO: (prompt column or None when implicit, chosen, rejected)

    def line(self, chat_template: str | None = None) -> str:
        """The one line the CLI prints first: which layout, which columns, what is trained on."""
        what = {
            "text": "plain text",
            "chat": "chat, labels on assistant turns",
            "prompt_response": "prompt and response, labels on the response",
            "headerless_csv": "headerless CSV, text columns joined",
            "preference": "preference pairs, labels on chosen and rejected responses",
            "kto": "KTO, per-sequence boolean label",
        }[self.kind]
        cols = ", ".join(c for c in self.pair or self.columns if c) + (f" + {self.label}" if self.label else "")
        if self.pair and self.pair[0] is None:
            cols += "; prompt: their common prefix"
        how = f" ({'ChatML' if chat_template == 'chatml' else 'the tokenizer chat template'})" if self.chat and chat_template else ""
        return f"layout: {self.name} ({cols}) -> {what}{how}"

    @property
    def also_read(self) -> tuple[str, ...]:
        """Columns the reader must deliver beyond the text ones: KTO's label, a pair's responses."""
        return ((self.label,) if self.label else ()) + (self.pair[1:] if self.pair else ())

    @property
    def kind(self) -> str:
        if self.pair is not None:
            return "preference"
        if self.label is not None:
            return "kto"
        if self.chat:
            return "chat"
        if self.response:
            return "prompt_response"
        return "headerless_csv" if not self.csv_header else "text"


def detect_layout(names: list[str], types: list, *, csv_looks_headerless: bool = False) -> Layout:
    """The layout of a schema given as column ``names`` and their pyarrow ``types``.

    Example:
        >>> import pyarrow as pa
        >>> detect_layout(["instruction", "input", "output"], [pa.string()] * 3).name
        'alpaca'
        >>> detect_layout(["conversations", "tools"], [pa.string(), pa.string()]).columns
        ('conversations',)
    """
    import pyarrow as pa

    have = dict(zip(names, types))
    if "chosen" in have and "rejected" in have:
        prompt = next((c for c in PAIR_PROMPTS if c in have), None)
        if prompt is not None:  # messages (a list, or LLaMA-Factory's conversations) render with a chat template
            chat = prompt == "conversations" or _is_list(have[prompt])
            return Layout("dpo", (prompt,), chat=chat, pair=(prompt, "chosen", "rejected"))
        # TRL's implicit prompt: whole conversations (or texts) whose common prefix is the prompt
        return Layout("dpo_implicit", ("chosen",), chat=_is_list(have["chosen"]), pair=(None, "chosen", "rejected"))
    if "label" in have and pa.types.is_boolean(have["label"]):
        if "completion" in have:
            cols = ("prompt", "completion") if "prompt" in have else ("completion",)
            return Layout("kto", cols, response="prompt" in have, separator="", label="label")
        if "messages" in have:
            return Layout("kto", ("messages",), chat=True, label="label")
    for col in CHAT_COLUMNS:
        if col in have:
            return Layout(col, (col,), chat=True)
    if "instruction" in have and "output" in have:
        cols = ("instruction", "input", "output") if "input" in have else ("instruction", "output")
        return Layout("alpaca", cols, response=True)
    if "prompt" in have and "completion" in have:
        return Layout("prompt_completion", ("prompt", "completion"), response=True, separator="")
    if "text" in have:
        return Layout("text", ("text",))
    if csv_looks_headerless:
        text = tuple(f"f{i}" for i, t in enumerate(types) if pa.types.is_string(t) or pa.types.is_large_string(t))
        if text:
            return Layout("headerless_csv", text, csv_header=False)
    raise ValueError(
        f"input: no known layout in the columns {names}; known layouts: text; messages or conversations (chat); "
        f"instruction/input/output (Alpaca); prompt/completion; chosen/rejected, with prompt, question or conversations or "
        f"without (the prompt is their common prefix) (DPO); "
        f"completion or messages with a boolean label (KTO). Pass --text-column COLUMN (several comma-separated are joined), "
        f"--chat-template chatml with --text-column naming a messages column, or --template FILE.py:function for the whole row"
    )


def _is_list(arrow_type) -> bool:
    import pyarrow as pa

    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)


def input_layout(source, *, format: str | None = None, csv_header=True, csv_dialect=None) -> Layout:
    """Detect the layout of an input from its first record batch (nothing else is read)."""
    from .readers import _looks_like_data, open_input

    inp = open_input(source, None, batch_size=64, format=format, csv_header=csv_header, csv_dialect=csv_dialect)
    first = next(iter(inp.batches()), None)
    if first is None:
        raise ValueError(f"input: {inp.name} has no rows: empty input, nothing to pack")
    schema = first.batch.schema
    headerless = inp.format == "csv" and csv_header is True and _looks_like_data(schema.names)
    return detect_layout(schema.names, list(schema.types), csv_looks_headerless=headerless)


def needs_detection(*options) -> bool:
    """Whether a run names no column option (``--text-column``, ``--tokens-column``, ``--template``,
    ``--chat-template``): then its layout is detected."""
    return all(o is None for o in options)


def default_chat_template(tokenizer) -> str:
    """``tokenizer`` (the folder's own template) when a ``--tokenizer`` folder has a chat template, else ``chatml``."""
    from pathlib import Path

    if not isinstance(tokenizer, (str, Path)) or not Path(tokenizer).is_dir():
        return "tokenizer" if getattr(tokenizer, "chat_template", None) else "chatml"
    folder = Path(tokenizer)
    if (folder / "chat_template.jinja").is_file():
        return "tokenizer"
    config = folder / "tokenizer_config.json"
    return "tokenizer" if config.is_file() and '"chat_template"' in config.read_text(encoding="utf-8") else "chatml"


def layout_options(layout: Layout, tokenizer) -> dict:
    """The ``TextSpec`` options and CSV header that read ``layout``: ``text_column``,
    ``chat_template``, ``response``, ``separator`` and ``csv_header``."""
    return {
        "text_column": layout.columns,
        "chat_template": default_chat_template(tokenizer) if layout.chat else None,
        "response": layout.response,
        "separator": layout.separator,
        "csv_header": layout.csv_header,
    }
