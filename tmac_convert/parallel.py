"""The package's thread count, and the one Python-level parallel map.

Every multi-threaded compute step runs in native code on one persistent worker pool (``kernels/pool.c``, shared
by the LUT kernels and the layout engine through ``tmac_convert._pool_native``); Python only says how many
threads.  Work that is mostly file reads (numpy releases the GIL there) runs on Python threads through
:func:`map_in_threads`.

Hand-offs between Python threads use C-level :class:`queue.SimpleQueue` s and plain attributes only
(:class:`StopFlag`, :class:`Budget`), never a Python-level lock in the converter's thread: Ctrl-C and SIGTERM
raise there at any bytecode, also between such a lock's acquire and the ``with`` block that would release it,
and a lock left held that way deadlocks the cleanup (seen once in a CI run of the random-kill test).
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


class StopFlag:
    """A stop request that one thread sets and others poll: a plain attribute, where ``threading.Event.set()``
    would take a Python lock."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


class Stopped(Exception):
    """Raised by :meth:`Budget.acquire` once :meth:`Budget.stop` was called."""


class Budget:
    """Counts items and bytes in flight; ``acquire`` (one thread's alone) blocks until there is room.

    ``release`` and ``stop`` (any thread) only post to a :class:`queue.SimpleQueue` that ``acquire`` drains, so
    the counts belong to the acquiring thread and no thread takes a Python lock here.  An item larger than
    ``max_bytes`` is admitted when nothing else is in flight.
    """

    def __init__(self, max_bytes: int, max_items: int) -> None:
        self.max_bytes, self.max_items = max_bytes, max_items
        self.bytes = self.items = 0
        self.posted: queue.SimpleQueue = queue.SimpleQueue()  # released byte counts; None: stop

    def _apply(self, n: int | None) -> None:
        if n is None:
            raise Stopped
        self.items -= 1
        self.bytes -= n

    def acquire(self, n: int) -> None:
        """Take room for one item of ``n`` bytes, waiting for releases while there is none; :class:`Stopped`
        once :meth:`stop` was called."""
        while True:
            try:
                while True:
                    self._apply(self.posted.get_nowait())
            except queue.Empty:
                pass
            if not (self.items and (self.items >= self.max_items or self.bytes + n > self.max_bytes)):
                break
            self._apply(self.posted.get())
        self.items += 1
        self.bytes += n

    def release(self, n: int) -> None:
        """Give back the room of one item of ``n`` bytes."""
        self.posted.put(n)

    def stop(self) -> None:
        """Make the acquiring thread's next (or current) wait raise :class:`Stopped`."""
        self.posted.put(None)


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
    stop = StopFlag()

    def worker() -> None:
        while not stop.is_set():
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
                stop.set()  # the items before this one were taken before it, so they are still reported
            while ready in results:
                if not results[ready][0]:
                    raise results[ready][1]  # type: ignore[misc]
                ready += 1
        return [results[i][1] for i in range(n)]  # type: ignore[misc]
    finally:
        stop.set()
        for t in pool:
            t.join()
