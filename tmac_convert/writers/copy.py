"""Copying a source tensor's bytes into the output without a round trip through Python buffers.

``os.copy_file_range`` lets the kernel move the bytes page cache to page cache (or share extents on
file systems that can); where it is unsupported (another file system, an old kernel, a platform
without it) a bounded ``pread``/``pwrite`` loop does the same in 8 MiB pieces.  The output's writer
(:mod:`.sequential`) uses it where it writes through the page cache; with direct I/O it reads the span
into its aligned staging buffers instead.
"""

from __future__ import annotations

import errno
import os

from ..errors import TmacError
from ..format.tensor import FileSpan
from ..parallel import StopFlag

#: Bytes per step of the fallback copy (bounds its memory).
CHUNK = 8 << 20
#: Bytes per ``copy_file_range`` call (a stop request is seen between calls).
STEP = 64 << 20
#: errno values that mean "copy_file_range cannot do this pair of files": fall back to read/write.
_UNSUPPORTED = frozenset(e for e in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF,
                                     getattr(errno, "ENOTSUP", None)) if e is not None)


def copy_span(span: FileSpan, dst_fd: int, dst_offset: int, *, tensor: str | None = None,
              stop: StopFlag | None = None) -> str:
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
