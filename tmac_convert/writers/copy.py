"""Copying a source tensor's bytes into the output without a round trip through Python buffers.

``os.copy_file_range`` lets the kernel move the bytes page cache to page cache (or share extents on
file systems that can); where it is unsupported (another file system, an old kernel, a platform
without it) a bounded ``pread``/``pwrite`` loop does the same in 8 MiB pieces.

:class:`BackgroundCopies` runs such copies on their own thread: the GGUF writer knows every tensor's
place in the file up front, so it reserves a copied tensor's bytes, moves on to the next tensor and
lets the copy (I/O, which releases the GIL) overlap the encoding and verification of the following
ones; :meth:`BackgroundCopies.wait` joins them before the file is closed.
"""

from __future__ import annotations

import errno
import os
import threading

from ..errors import TmacError
from ..format.tensor import FileSpan

#: Bytes per step of the fallback copy (bounds its memory).
CHUNK = 8 << 20
#: Bytes per ``copy_file_range`` call (a stop request is seen between calls).
STEP = 64 << 20
#: errno values that mean "copy_file_range cannot do this pair of files": fall back to read/write.
_UNSUPPORTED = frozenset(e for e in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF,
                                     getattr(errno, "ENOTSUP", None)) if e is not None)


def copy_span(span: FileSpan, dst_fd: int, dst_offset: int, *, tensor: str | None = None,
              stop: threading.Event | None = None) -> str:
    """Copy ``span``'s bytes to ``dst_fd`` at ``dst_offset`` (the file position of ``dst_fd`` is not used).

    Returns ``"copy_file_range"`` or ``"read/write"`` (how it was done), or ``"stopped"`` when ``stop`` was set
    (checked every :data:`STEP` bytes).  Raises :class:`TmacError` when the source ends early; other
    ``OSError`` (a full disk) propagate for the caller to report.
    """
    fd = os.open(span.path, os.O_RDONLY)
    try:
        done = 0
        how = "copy_file_range"
        use_cfr = hasattr(os, "copy_file_range")
        while done < span.nbytes:
            if stop is not None and stop.is_set():
                return "stopped"
            n = min(span.nbytes - done, STEP)
            if use_cfr:
                try:
                    got = os.copy_file_range(fd, dst_fd, n, span.offset + done, dst_offset + done)
                except OSError as e:
                    if e.errno not in _UNSUPPORTED:
                        raise
                    use_cfr, how = False, "read/write"
                    continue
            else:
                buf = os.pread(fd, min(n, CHUNK), span.offset + done)
                got = len(buf)
                view = memoryview(buf)
                while view:
                    w = os.pwrite(dst_fd, view, dst_offset + done + (len(buf) - len(view)))
                    view = view[w:]
            if got == 0:
                raise TmacError(f"the source ended {span.nbytes - done} bytes early", file=str(span.path),
                                tensor=tensor, rule="tensor data within file")
            done += got
        return how
    finally:
        os.close(fd)


class BackgroundCopies:
    """File-to-file copies running on background threads while the caller writes other parts of the file.

    ``start`` returns at once; ``wait`` joins every copy and raises the first error one of them met (so a
    full disk is reported in the caller's thread); ``cancel`` asks them to stop and joins them (after a
    failure, before the output is removed).
    """

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        self._stop = threading.Event()
        self.methods: list[str] = []  # how each finished copy was done (for tests and reports)

    def start(self, span: FileSpan, dst_fd: int, dst_offset: int, *, tensor: str | None = None) -> None:
        def run() -> None:
            try:
                self.methods.append(copy_span(span, dst_fd, dst_offset, tensor=tensor, stop=self._stop))
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread by wait()
                self._errors.append(e)

        t = threading.Thread(target=run, name="tmac-convert-copy", daemon=True)
        t.start()
        self._threads.append(t)

    def wait(self) -> None:
        for t in self._threads:
            t.join()
        self._threads.clear()
        if self._errors:
            raise self._errors[0]

    def cancel(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        self._threads.clear()
