"""The package's thread count, and the one Python-level parallel map.

Every multi-threaded compute step runs in native code on one persistent worker pool (``kernels/pool.c``, shared
by the LUT kernels and the layout engine through ``tmac_convert._pool_native``); Python only says how many
threads.  Work that is mostly file reads (numpy releases the GIL there) runs on Python threads through
:func:`map_in_threads`.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def map_in_threads(fn: Callable[[T], R], items: Sequence[T], threads: int, *, name: str) -> list[R]:
    """``[fn(x) for x in items]`` computed on up to ``threads`` threads named ``name-i``.

    The first error in item order is raised (items after it may not have run).  The caller's thread waits on a
    C-level :class:`queue.SimpleQueue` only, never on a Python lock (a ``concurrent.futures`` map waits in
    ``Future.result()``, a Condition): Ctrl-C raises there at any bytecode, and a lock left held between its
    acquire and its ``with`` block would hang the cleanup.  On any exit the workers finish the item in hand and
    are joined.
    """
    n = len(items)
    if n == 0:
        return []
    work: queue.SimpleQueue = queue.SimpleQueue()
    for i in range(n):
        work.put(i)
    done: queue.SimpleQueue = queue.SimpleQueue()
    stop = [False]

    def worker() -> None:
        while not stop[0]:
            try:
                i = work.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((i, True, fn(items[i])))
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                done.put((i, False, e))

    pool = [threading.Thread(target=worker, name=f"{name}-{k}", daemon=True) for k in range(min(threads, n))]
    for t in pool:
        t.start()
    results: dict[int, tuple[bool, object]] = {}
    try:
        ready = 0  # results[0:ready] are all in
        while ready < n:
            i, ok, value = done.get()
            results[i] = (ok, value)
            if not ok:
                stop[0] = True  # the items before this one were taken before it, so they are still reported
            while ready in results:
                if not results[ready][0]:
                    raise results[ready][1]  # type: ignore[misc]
                ready += 1
        return [results[i][1] for i in range(n)]  # type: ignore[misc]
    finally:
        stop[0] = True
        for t in pool:
            t.join()
