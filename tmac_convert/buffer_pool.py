"""Large output buffers that readers reuse once nothing refers to them any more.

A reader allocates one codes array per quantised tensor (``M0·K`` bytes: 58 MB for a Llama-3-8B MLP
projection).  Arrays that large come straight from the kernel (``mmap``) and go back to it when freed, so
every tensor pays again for faulting in and zeroing fresh pages — about a third of the GPTQ unpack's time.
:class:`BufferPool` keeps the buffers instead and hands one out again when the only reference left is the
pool's own: views and slices of a numpy array refer to its base array, so a buffer is never reused while
anything derived from it is alive.  The pool holds at most :data:`MAX_BYTES` of idle buffers.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

#: Idle bytes the pool may keep.
MAX_BYTES = 512 << 20

# Reference counts are exact only with the GIL (the default CPython build); elsewhere the pool only allocates.
_EXACT_REFCOUNTS = sys.implementation.name == "cpython" and getattr(sys, "_is_gil_enabled", lambda: True)()


def _refcount_when_idle() -> int:
    bufs = [np.empty(1, np.uint8)]
    return sys.getrefcount(bufs[0])  # the list's reference and the call's argument


class BufferPool:
    """``empty(shape)`` like ``np.empty(shape, np.uint8)``, reusing an idle buffer of the same size."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._bufs: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._idle = _refcount_when_idle()
        self.reused = 0  # for tests

    def empty(self, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape))
        if not _EXACT_REFCOUNTS or n == 0:
            return np.empty(shape, np.uint8)
        with self._lock:
            idle = [i for i in range(len(self._bufs)) if sys.getrefcount(self._bufs[i]) <= self._idle]
            for i in idle:
                if self._bufs[i].nbytes == n:
                    self.reused += 1
                    return self._bufs[i].reshape(shape)
            # no idle buffer of this size: drop idle ones beyond the budget, then keep the new one
            kept = sum(self._bufs[i].nbytes for i in idle)
            for i in sorted(idle, reverse=True):
                if kept + n <= self.max_bytes:
                    break
                kept -= self._bufs[i].nbytes
                del self._bufs[i]
            buf = np.empty(n, np.uint8)
            if n <= self.max_bytes:
                self._bufs.append(buf)
            return buf.reshape(shape)
