"""One run per output folder: an exclusive ``flock`` on ``OUTPUT/.packwise.lock``.

Why: two runs writing one folder delete each other's temporary shards, or one replaces the other's
output while it still reports success.  ``flock`` is released by the kernel when its holder dies
(kill -9 included), so a lock is never stale; the file only says who held it last.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NoReturn

LOCK = ".packwise.lock"


@contextmanager
def output_lock(output: str | Path, *, what: str = "output") -> Iterator[Path]:
    """Hold the lock of folder ``output`` (created if missing) for the ``with`` block, or raise a
    ``ValueError`` naming the lock file and the process holding it.

    Example:
        >>> import tempfile
        >>> from packwise.pipeline.lock import output_lock
        >>> out = tempfile.mkdtemp()
        >>> with output_lock(out) as lock:
        ...     try:
        ...         with output_lock(out):
        ...             pass
        ...     except ValueError as err:
        ...         print(str(err).split(";")[0].endswith("in use by another packwise run (pid %d)" % os.getpid()))
        True
    """
    from .atomic import os_error_message

    output = Path(output)
    path = output / LOCK
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise os_error_message(err, output, "rerun") from None
    if not output.is_dir():
        raise ValueError(f"{what}: {output} is a file; pass a folder path")
    try:
        fd = _acquire(path, what)
    except OSError as err:
        raise os_error_message(err, path, "rerun") from None
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)  # before unlocking: a waiter then finds a new file (see _acquire)
        os.close(fd)


_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # NONBLOCK: a FIFO planted there never hangs the open


def _open_own(path: Path, what: str) -> int | None:
    """Open (or create) the lock file itself: never through a symlink, never anything but a plain
    file with one name (a hard link to another file would be truncated with it).  ``None``: the
    file was removed by its last holder while we opened it; try again."""
    try:
        fd = os.open(path, _FLAGS, 0o644)
    except OSError as err:
        if err.errno not in (errno.ELOOP, errno.EISDIR):
            raise
        _refuse(path, what, "a symlink" if err.errno == errno.ELOOP else "a folder")
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode) and info.st_nlink <= 1:
        if info.st_nlink == 0:
            os.close(fd)
            return None
        return fd
    os.close(fd)
    _refuse(path, what, "a hard link to another file" if stat.S_ISREG(info.st_mode) else "not a regular file")


def _refuse(path: Path, what: str, kind: str) -> NoReturn:
    raise ValueError(
        f"{what}: the lock {path} is {kind}; packwise writes its pid only into a plain file of its own: "
        f"remove {path} (what it points at is left alone) and rerun"
    )


def _acquire(path: Path, what: str) -> int:
    while True:
        fd = _open_own(path, what)
        if fd is None:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ValueError(
                f"{what}: {path.parent} is in use by another packwise run (pid {holder}); it holds the lock {path}. "
                f"Wait for that run to finish, or choose another output folder"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.lstat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its last holder removed while we waited for it
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            return fd
        os.close(fd)
