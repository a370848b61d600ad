"""Path safety of every command and paths in messages.

``refuse_overlap`` / ``refuse_stray``: nothing a run writes may be, hold, or lie inside what it
reads, and nothing packwise did not write is written over.  Why: ``report X --json X`` replaced its
own input, ``pack in out`` with ``out -> in`` (a symlink) wrote shards into the input, and ``pack
OUT/shard-00001.parquet OUT --overwrite`` deleted its own input.  Paths are compared resolved
(symlinks followed, ``..`` removed), before anything is written.
``inside``: a file name taken from a file (``state.json``, ``manifest.json``) must stay inside the
folder that holds that file; a crafted ``../../secret`` would otherwise be read as input.
``shown``: how every message prints a path, so a file name holding a newline or another control
character can neither split a one-line error nor forge a line of its own.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from pathlib import Path
from typing import Iterable, Sequence

Named = Sequence[tuple[str, object]]  # (option, path) pairs; a path of None (option not given) is skipped
_GLOB_CHARS = "*?["
_OUTPUT_NAMES = ("shard-00000.parquet", "decisions.parquet")  # what a rerun's glob could pick up in an output folder


def refuse_overlap(writes: Named, reads: Named, *, folders: bool = False) -> None:
    """Raise a ``ValueError`` naming both paths when a path in ``writes`` is a path in ``reads``,
    holds one (a folder output around an input) or lies inside one (an input folder), symlinks
    followed; or when an input glob would match what the run writes (a rerun would read it):
    with ``folders``, the written paths are folders and the shards the run puts in them count."""
    for what, target in writes:
        if target is None:
            continue
        written = _resolved(target)
        for source_what, source in reads:
            for read in _read_paths(source):
                problem = _relation(written, _resolved(read))
                if problem:
                    raise ValueError(_message(what, target, problem, source_what, source, written, _resolved(read)))
            if any(_glob_covers(source, p, folders) for p in (Path(os.path.abspath(target)), written)):
                raise ValueError(
                    f"{_head(what, target)} lies inside {source_what} {source} (the glob matches what this run writes there); "
                    f"a rerun would read its own output: choose an output outside the input"
                )


def refuse_stray(output: Path, owned: set[Path], writes: Iterable[str]) -> None:
    """Raise naming the first file of ``output`` the run would write over (``writes``) or read as its
    own (``shard-*.parquet``) that is not in ``owned`` (what a previous run's manifest lists):
    packwise leaves what it did not write alone, ``--overwrite`` included."""
    stray = sorted(p.name for p in output.glob("shard-*.parquet") if p not in owned)
    stray += [n for n in writes if os.path.lexists(output / n) and output / n not in owned]
    if stray:
        raise ValueError(
            f"output: {output / stray[0]} is in the way: no packwise manifest in {output} lists it, so packwise did not "
            f"write it and leaves it alone (--overwrite removes only what a previous run wrote); move it away or choose another output folder"
        )


def run_reads(input, *, tokenizer=None, template: str | None = None, model=None, eval_input=None) -> list[tuple[str, object]]:
    """Every path a command reads, named as its option: what no output of the run may touch."""
    return [("the input", input), ("the --tokenizer", tokenizer), ("the --template", _template_file(template)),
            ("the --model", _existing(model)), ("the --eval input", eval_input)]  # fmt: skip


def _template_file(spec: str | None) -> Path | None:
    """The file of a ``--template FILE.py[:function]`` spec (``None`` for ``module:function``)."""
    if spec is None:
        return None
    target = spec.rpartition(":")[0] if ":" in spec else spec
    return Path(target) if target.endswith(".py") or Path(target).is_file() else None


def _existing(path) -> Path | None:
    """``path`` when it names something on disk (``--model`` may also be a bundled model's name)."""
    return Path(path) if path is not None and os.path.lexists(path) else None


def _resolved(path) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _read_paths(source) -> Iterable[Path]:
    """The concrete paths of an input: itself, or every match of a glob."""
    if source is None or not isinstance(source, (str, Path)):
        return ()  # an in-memory dataset or tokenizer object: nothing on disk to protect
    text = str(source)
    if any(ch in text for ch in _GLOB_CHARS) and not os.path.lexists(text):
        return [Path(p) for p in glob.glob(text, recursive=True)]
    return [Path(text)]


def _relation(written: Path, read: Path) -> str | None:
    if written == read:
        return "is"
    if read in written.parents:
        return "lies inside"
    if written in read.parents:
        return "holds"
    return None


def _message(what: str, target, problem: str, source_what: str, source, written: Path, read: Path) -> str:
    where = f"both resolve to {written}" if problem == "is" else f"resolved: {written} and {read}"
    plain = Path(os.path.abspath(target)) == written and Path(os.path.abspath(source)) == read
    resolved = "" if plain else f" ({where})"
    fix = "choose an output folder outside the input" if what == "output" else f"choose a {what} path outside the inputs"
    return f"{_head(what, target)} {problem} {source_what} {source}{resolved}; packwise never writes over what it reads: {fix}"


def _head(what: str, target) -> str:
    """``output: PATH`` (as the other output errors say) or ``--json PATH:`` (as option errors say)."""
    return f"output: {target}" if what == "output" else f"{what} {target}:"


def _glob_covers(source, written: Path, folder: bool) -> bool:
    """Whether the input glob ``source`` matches ``written`` or the files a run writes in it (a
    rerun would read them)."""
    if not isinstance(source, (str, Path)) or not any(ch in str(source) for ch in _GLOB_CHARS):
        return False
    pattern = Path(os.path.abspath(str(source))).parts
    candidates = [written] + ([written / name for name in _OUTPUT_NAMES] if folder else [])
    return any(_glob_match(pattern, c.parts) for c in candidates)


def _glob_match(pattern: tuple, parts: tuple) -> bool:
    """``glob.glob(recursive=True)`` semantics on path parts: ``**`` spans folders, ``*`` does not."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_glob_match(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _glob_match(pattern[1:], parts[1:])


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
