"""Paths in messages and paths read from files.

``shown``: how every message prints a path, so a file name holding a newline or another control
character can neither split a one-line error nor forge a line of its own.
``inside``: a file name taken from a file (``state.json``, ``manifest.json``) must stay inside the
folder that holds that file; a crafted ``../../secret`` would otherwise be read as input.
"""

from __future__ import annotations

from pathlib import Path


def printable(text: str) -> str:
    """``text`` with every character that does not print written as its escape (``\\n``, ``\\x1b``):
    the CLI's last guard that an error stays one line, whatever a message embeds."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shown(path) -> str:
    """``path`` as text for a message: as is, or ``repr``-escaped when it holds a character that does
    not print (a newline, a tab, an escape sequence).

    Example:
        >>> shown("data/a.jsonl"), shown("data/a\\nb.jsonl")
        ('data/a.jsonl', "'data/a\\\\nb.jsonl'")
    """
    text = str(path)
    return text if text.isprintable() else repr(text)


def inside(folder: Path, name, listed_in: Path, entry: str) -> Path:
    """``folder / name``, where ``name`` was read from the file ``listed_in`` (at ``entry``), or a
    ``ValueError`` when it is not a relative name that resolves (symlinks followed) inside ``folder``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{shown(listed_in)}: {entry} is {name!r}, not a file name; regenerate {shown(listed_in.name)}")
    path = folder / name
    root, real = folder.resolve(), path.resolve()
    if root not in real.parents:
        raise ValueError(
            f"{shown(listed_in)}: {entry} {name!r} resolves to {shown(real)}, outside {shown(root)}; every file it lists "
            f"must lie inside that folder: remove the entry or regenerate {shown(listed_in.name)}"
        )
    return path
