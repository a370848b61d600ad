"""Read ahead on a background thread: pyarrow decodes without the GIL, so the next record batch
is decoded while the caller tokenizes, packs and writes the current one."""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
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
