"""The package's thread count.

Every multi-threaded step runs in native code on one persistent worker pool (``kernels/pool.c``, shared by the
LUT kernels and the layout engine through ``tmac_convert._pool_native``); Python only says how many threads.
"""

from __future__ import annotations

import os


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
