"""Work ahead on background threads: pyarrow decodes and Rust tokenizers encode without the GIL,
so the next record batches are decoded and tokenized while the caller packs and writes."""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")
_DONE = object()


def prefetched(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield ``items`` in order while a thread produces up to ``depth`` of them ahead.

    An error raised by ``items`` is re-raised here, at the position it happened; closing the
    returned generator early stops the thread after at most one more item.

    Example:
        >>> list(prefetched(iter(range(5))))
        [0, 1, 2, 3, 4]
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as err:  # handed to the consumer, raised there
            put((_DONE, err))

    thread = threading.Thread(target=produce, name="packwise-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, err = ready.get()
            if item is _DONE:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        thread.join()


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads, results in input order, at most ``workers`` in flight.

    For work that releases the GIL (Rust tokenizers encode without it).  The first item runs on
    the calling thread before any other starts, so one-time setup inside ``fn`` (the tokenizer
    backend check) always sees the first item.  An error is raised at its item's position; closing
    the generator early cancels what has not started.

    Example:
        >>> list(ordered_map(lambda x: x * x, range(6), workers=2))
        [0, 1, 4, 9, 16, 25]
    """
    it = iter(items)
    for first in it:
        yield fn(first)
        break
    if workers <= 1:
        yield from map(fn, it)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="packwise-encode") as pool:
        pending: deque[Future] = deque()
        try:
            for item in it:
                pending.append(pool.submit(fn, item))
                if len(pending) >= workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)
