"""Atomic file output: write to a temporary name in the same folder, rename when complete.

A reader never sees a half-written file under the final name; an interrupted write leaves only a
hidden ``.<name>.*.tmp`` file that the next run can ignore or remove.
"""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync and rename it to ``path``.

    Example:
        >>> import tempfile, pathlib
        >>> from packwise.pipeline.atomic import atomic_path
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "hello.txt"
        >>> with atomic_path(out) as tmp:
        ...     _ = tmp.write_text("hi")
        >>> out.read_text()
        'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    try:
        yield tmp
        publish(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def naming_os_errors(path: str | Path, rerun: str = "rerun") -> Iterator[None]:
    """Writing ``path`` inside: an ``OSError`` (full disk, read-only, permissions) becomes the
    ``ValueError`` of ``os_error_message`` naming ``path``, so a command exits 2, not with a trace."""
    try:
        yield
    except OSError as err:
        raise os_error_message(err, path, rerun) from None


def write_text_atomic(path: str | Path, text: str) -> None:
    """``text`` to ``path`` through a temporary name, an ``OSError`` named as above."""
    with naming_os_errors(path), atomic_path(path) as tmp:
        tmp.write_text(text)


def temp_beside(path: Path) -> Path:
    """A new hidden ``.<name>.*.tmp`` file beside ``path`` with the mode a plain ``open`` would give
    (``mkstemp`` makes 0600); a run that dies leaves only this name, which reruns remove."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    return Path(tmp)


def publish(tmp: Path, path: Path) -> None:
    """fsync ``tmp`` and rename it to ``path``: readers see the whole file under its name or nothing."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_writable(path: str | Path, option: str) -> None:
    """Fail now, not after the work, when ``path`` cannot be written: a folder in the way, a
    parent that is a file, a read-only or full place (a ``ValueError`` naming ``option``)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a folder; pass a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp_beside(path).unlink()
    except OSError as err:
        raise ValueError(f"{option} {os_error_message(err, path)}") from None


def os_error_message(err: OSError, path: str | Path, rerun: str = "rerun") -> ValueError:
    """A ``ValueError`` for an ``OSError`` met writing ``path``: which file, why, and the fix.

    Example:
        >>> import errno
        >>> from packwise.pipeline.atomic import os_error_message
        >>> str(os_error_message(OSError(errno.ENOSPC, "No space left on device"), "out/shard-00000.parquet"))
        'out/shard-00000.parquet: cannot write it: the disk is full (No space left on device); free space and rerun'
    """
    code = err.errno
    if code is None:  # pyarrow: "[errno 28] ..." in the message only
        text = str(err)
        code = errno.ENOSPC if "errno 28" in text or "No space left" in text else None
    why = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is used up",
        errno.EACCES: "no permission to write there",
        errno.EPERM: "no permission to write there",
        errno.EROFS: "the file system is read-only",
        errno.ENOTDIR: "a parent of it is a file, not a folder",
        errno.EISDIR: "it is a folder",
        errno.EEXIST: "a file is in the way of a folder there",
        errno.ENOENT: "its folder is gone (removed while the run wrote it?)",
    }.get(code, "an I/O error")
    fix = {errno.ENOSPC: "free space", errno.EDQUOT: "free space"}.get(
        code, "choose a path you can write to" if code in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST) else "check the device"
    )
    return ValueError(f"{path}: cannot write it: {why} ({err.strerror or err}); {fix} and {rerun}")
