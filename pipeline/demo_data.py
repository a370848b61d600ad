"""A real corpus every machine has offline: the docstrings of the Python standard library.

Docstrings are real English prose of widely varying length (one line to several pages), read with
``ast`` from the standard library's source files, so no module is imported or executed.
"""

from __future__ import annotations

import ast
import inspect
import json
import sysconfig
from pathlib import Path
from typing import Iterator

from .atomic import atomic_path

_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__", "lib2to3", "turtledemo"}


def stdlib_docstrings(min_chars: int = 1) -> Iterator[dict]:
    """Yield ``{"text", "source"}`` for every module, class and function docstring of the stdlib.

    Deterministic: files in sorted order, definitions in source order.

    Example:
        >>> from packwise.pipeline.demo_data import stdlib_docstrings
        >>> first = next(stdlib_docstrings())
        >>> sorted(first)
        ['source', 'text']
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIP_DIRS.intersection(rel.parts[:-1]):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        parts = rel.with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield from _docstrings(tree, module, min_chars)


def _docstrings(tree: ast.AST, prefix: str, min_chars: int) -> Iterator[dict]:
    doc = ast.get_docstring(tree, clean=False)
    if doc and len(doc.strip()) >= min_chars:
        yield {"text": inspect.cleandoc(doc), "source": prefix}
    for node in getattr(tree, "body", ()):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield from _docstrings(node, f"{prefix}.{node.name}", min_chars)


def write_demo_corpus(path: str | Path, min_chars: int = 20) -> int:
    """Write the stdlib docstring corpus as JSON Lines (atomically); return the number of rows."""
    rows = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for record in stdlib_docstrings(min_chars):
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            rows += 1
    return rows
