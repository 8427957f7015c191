"""Writing an output's bytes to disk while the conversion is still computing the rest.

The output is made durable with one ``fsync`` before it is renamed into place (:mod:`.atomic`).  Left to
itself the kernel starts writing dirty pages back only once they exceed ``vm.dirty_background_ratio`` of
memory (gigabytes on a normal machine), so a multi-gigabyte output would reach the disk mostly inside that
final ``fsync``, after all the CPU work: the disk idles while the converter computes, then the converter
idles while the disk writes.  :class:`Writeback` instead asks for the data written so far to be synced
(``fdatasync`` on a background thread) every :data:`STEP` bytes, so the disk writes while the CPU works and
the final ``fsync`` finds little left.
"""

from __future__ import annotations

import os
import queue
import threading

#: Bytes written between two background syncs.
STEP = 256 << 20

_sync = getattr(os, "fdatasync", os.fsync)


class Writeback:
    """Background syncs of one open file descriptor.

    ``wrote(n)`` after each write; ``finish()`` joins the thread and raises the first error a sync met (a
    full disk shows here, in the caller's thread); ``stop()`` joins it and drops errors (after a failure).
    """

    def __init__(self, fd: int, step: int = STEP) -> None:
        self.fd, self.step = fd, step
        self.syncs = 0                      # syncs done (for tests)
        self._pending = 0
        self._requested = False
        # a C-level SimpleQueue, not an Event: finish() and stop() wake the thread from the caller's thread, which
        # must take no Python lock (a signal raised inside Event.set() could leave its lock held, and then this
        # thread could never wait on it again, nor be joined)
        self._wake: queue.SimpleQueue = queue.SimpleQueue()
        self._done = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tmac-convert-writeback", daemon=True)
        self._thread.start()

    def wrote(self, nbytes: int) -> None:
        self._pending += nbytes
        if self._pending >= self.step:
            self._pending = 0
            self._requested = True
            self._wake.put(None)

    def _run(self) -> None:
        while True:
            self._wake.get()
            if self._requested:  # a sync asked for before finish() still runs
                self._requested = False
                try:
                    _sync(self.fd)
                    self.syncs += 1
                except OSError as e:
                    self._error = e
                    return
            if self._done:
                return

    def _join(self) -> None:
        self._done = True
        self._wake.put(None)
        self._thread.join()

    def finish(self) -> None:
        self._join()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        self._requested = False
        self._join()
