"""One process-wide thread pool for GIL-releasing native work split into index ranges."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max(2, cpu_count()), thread_name_prefix="tmac")
        return _pool


def run_ranges(fn: Callable[[int, int], int], n: int, threads: int) -> list[int]:
    """Call ``fn(begin, end)`` over ``threads`` contiguous slices of ``range(n)``; results in slice order.

    With one thread (or from inside a pool worker, to avoid waiting on our own pool) it runs inline.
    """
    threads = max(1, min(threads, n))
    if threads == 1 or threading.current_thread().name.startswith("tmac"):
        return [fn(0, n)]
    edges = [n * i // threads for i in range(threads + 1)]
    pool = _get_pool()
    futures = [pool.submit(fn, a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    return [f.result() for f in futures]
