"""How a ``packwise`` command's process starts its job and ends.

A command runs one data job in a process of its own, so it may make choices that a library must
leave to its caller. ``benchmarks/bench_cli_process.py`` undoes each one on the raw-text pack of
``bench_pipeline.py --text`` (results: ``benchmarks/results/bench_pipeline_text.md``):

- Arrow's memory pool is jemalloc (or the system allocator), not mimalloc. mimalloc returns freed
  pages to the kernel within milliseconds and asks for transparent huge pages, so the next
  record batch faults in fresh, zeroed 2 MiB pages; on a VM whose free memory goes back to the
  host, each of those is slow. ``$ARROW_DEFAULT_MEMORY_POOL``, when set, wins.
- ``pack`` and ``report`` run only packwise's own kernels, so:
  - the cyclic garbage collector is off unless a ``--template`` runs the user's code on every
    row: their data lives in NumPy and Arrow buffers (the chat renderers make no reference
    cycles), and the collections only walked numba's objects again and again;
  - numba is imported without ``scipy.linalg``. numba needs it only for ``np.dot`` and
    ``np.linalg`` inside kernels, which no packwise kernel calls;
  - NumPy's OpenBLAS starts no thread pool (``$OPENBLAS_NUM_THREADS`` 1 unless set): these jobs
    never call BLAS, and each pool thread spins for a while at start-up beside the real work.
- The process ends with ``os._exit`` once the job is done, its files are closed, its atexit
  handlers have run and no other thread is running: the interpreter's teardown of its modules
  (numba and llvmlite above all) is skipped.

Undone one at a time, each cost 2-10% of the wall time there; all together, 1.66x.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading
from typing import Callable, NoReturn


def batch_job(*, kernels_only: bool = False, user_code: bool = False) -> None:
    """Set this process up for one data job; ``kernels_only`` for jobs that run no model or BLAS
    code, ``user_code`` when the user's own function runs per row (the collector then stays on).

    Call it before the job imports its libraries (``packwise.pipeline`` imports numba).
    """
    if kernels_only and "numpy" not in sys.modules:  # read once, when NumPy loads OpenBLAS
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        import pyarrow as pa

        try:
            pa.set_memory_pool(pa.jemalloc_memory_pool())
        except NotImplementedError:  # a pyarrow built without jemalloc
            pa.set_memory_pool(pa.system_memory_pool())
    if kernels_only:
        if not user_code:
            gc.disable()
        import_numba_without_blas()


def import_numba_without_blas() -> None:
    """Import numba and its NumPy support without ``scipy.linalg``, on this thread.

    While ``numba.np.arraymath`` loads, ``scipy.linalg.cython_blas`` is marked missing, so
    numba finds no BLAS (``np.dot`` in a kernel compiled by this process would then fail to
    compile). The mark is removed right after, so a later ``import scipy.linalg`` works. This does
    nothing when numba or ``scipy.linalg`` is already imported.
    """
    if "numba" in sys.modules or "scipy.linalg" in sys.modules:
        return
    blas = "scipy.linalg.cython_blas"
    sys.modules[blas] = None  # makes "import scipy.linalg.cython_blas" raise ImportError
    try:
        import numba.np.arraymath  # noqa: F401  (numba's BLAS check runs here)
    finally:
        if blas in sys.modules and sys.modules[blas] is None:
            del sys.modules[blas]


def run_and_exit(command: Callable[[], object]) -> NoReturn:
    """Run ``command`` (the typer app), then end the process with its exit code.

    An exception other than ``SystemExit`` propagates as usual (traceback, normal shutdown).
    """
    try:
        command()
        code = 0
    except SystemExit as stop:
        code = stop.code
    exit_now(code)


def exit_now(code) -> NoReturn:
    """``sys.exit(code)``, without the interpreter's module teardown when nothing else runs.

    Other non-daemon threads alive: a normal ``sys.exit``, which waits for them. Otherwise the
    atexit handlers run (multiprocessing, Ray and logging shutdowns, coverage), stdout and stderr
    are flushed and the process ends with ``os._exit``.
    """
    if not isinstance(code, int):  # what sys.exit does with None and with a message
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    if any(t is not threading.current_thread() and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code)
