"""Writing a file's data section in order on a background thread, with direct I/O where the file system allows.

A conversion writes gigabytes it never reads again.  Through the page cache every byte is first copied into
freshly allocated cache pages and later written back; on the virtual machines this project runs on, that
copy was the largest single cost of a conversion (``write(2)`` of 4 GiB: 4.4-16 s of kernel time, against
0.2 s with ``O_DIRECT``).  :class:`SequentialWriter` therefore assembles the bytes into aligned staging
buffers and writes them with ``O_DIRECT``, :data:`DISK_DEPTH` buffers going to the disk while the next is
filled; the last, partial block goes through the page cache.  Where ``O_DIRECT`` is refused (tmpfs, some network and FUSE
file systems, platforms without it) the same bytes are written through the page cache, source spans copied
by ``os.copy_file_range`` (:func:`~tmac_convert.writers.copy.copy_span`), with background syncs
(:class:`~tmac_convert.writers.writeback.Writeback`) so that the final ``fsync`` finds little left.

The caller queues pieces (:meth:`~SequentialWriter.write` an array, :meth:`~SequentialWriter.copy` a source
span, :meth:`~SequentialWriter.zeros`) and goes on; at most :data:`PENDING_BYTES` of queued arrays make it
wait when the disk is behind.  An error met in the background (a full disk) is raised in the caller's
thread at its next call or at :meth:`~SequentialWriter.close`.
"""

from __future__ import annotations

import errno
import mmap
import os
import queue
import sys
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import TmacError
from ..format.tensor import FileSpan
from ..parallel import Budget, StopFlag, Stopped
from .copy import copy_span
from .writeback import Writeback

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no O_DIRECT either, so never needed
    fcntl = None

#: Bytes of one staging buffer.
STAGING_BYTES = 16 << 20
#: Staging buffers on their way to the disk at once (one more is being filled): a virtual disk writes 1.05 GB/s
#: with one direct write in flight, 1.4 GB/s with four (measured on the development VM).
DISK_DEPTH = 2
#: Alignment of direct writes (file offset, length and memory address): the largest logical block size in use.
ALIGN = 4096
#: Queued array bytes the caller may run ahead of the disk by.
PENDING_BYTES = 128 << 20
#: Arrays at least this large are written from their own memory in buffered mode (no staging copy).
_DIRECT_FROM_ARRAY = 1 << 20
#: False: write through the page cache even where direct I/O is available (``TMAC_CONVERT_DIRECT_IO=0``,
#: read once at import; tests set this attribute).
USE_DIRECT_IO = os.environ.get("TMAC_CONVERT_DIRECT_IO", "1").strip().lower() not in ("0", "false", "no", "off")

_O_DIRECT = getattr(os, "O_DIRECT", 0) if fcntl is not None else 0
_END = object()


class SequentialWriter:
    """Appends bytes to the file at ``path`` from offset ``start`` on; the bytes before ``start`` are kept.

    Attributes:
        mode: ``"direct"`` or ``"buffered"`` (see the module docstring); the file's bytes are the same.
        position: the file offset just past everything queued so far.
    """

    def __init__(self, path: str | os.PathLike, start: int, *, direct: bool | None = None,
                 pending_bytes: int = PENDING_BYTES, staging_bytes: int = STAGING_BYTES) -> None:
        self.path = Path(path)
        self.position = start
        self.fd = -1
        if (USE_DIRECT_IO if direct is None else direct) and _O_DIRECT:
            try:
                self.fd = os.open(self.path, os.O_WRONLY | _O_DIRECT)
            except OSError:  # EINVAL: the file system does not do direct I/O
                self.fd = -1
        self.mode = "direct" if self.fd >= 0 else "buffered"
        if self.fd < 0:
            self.fd = os.open(self.path, os.O_WRONLY)
        # queued array bytes: the caller acquires, the writer thread releases (stop() on an error wakes the
        # caller); no Python lock in the caller's thread (see tmac_convert.parallel)
        self._budget = Budget(max(1, pending_bytes), sys.maxsize)
        self._error: BaseException | None = None
        self._stop = StopFlag()
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._writeback = Writeback(self.fd) if self.mode == "buffered" else None
        # staging buffers in anonymous maps (page-aligned, as O_DIRECT wants), used in ring order; the file offset
        # of the current one's byte 0 is ``_base``, an aligned block start, and the bytes of that block before
        # ``start`` are read back into it
        self._size = max(ALIGN, staging_bytes // ALIGN * ALIGN)
        self._bufs = [np.frombuffer(mmap.mmap(-1, self._size), dtype=np.uint8) for _ in range(DISK_DEPTH + 1)]
        self._cur = 0
        self._base = start - start % ALIGN if self.mode == "direct" else start
        self._fill = start - self._base
        if self._fill:
            with open(self.path, "rb") as f:
                f.seek(self._base)
                head = f.read(self._fill)
            if len(head) != self._fill:
                os.close(self.fd)
                raise TmacError(f"the file is {self._base + len(head)} bytes long, the data starts at {start}",
                                file=str(self.path), rule="header written before the data")
            self._bufs[0][:self._fill] = np.frombuffer(head, dtype=np.uint8)
        self._disk = ThreadPoolExecutor(DISK_DEPTH, thread_name_prefix="tmac-convert-disk")
        self._inflight: deque[Future] = deque()  # oldest first
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tmac-convert-writer", daemon=True)
        self._thread.start()

    # -- the caller's side ----------------------------------------------------------------------

    def write(self, data: np.ndarray) -> None:
        """Queue a C-contiguous array's bytes (kept referenced, not copied, until written)."""
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        n = data.nbytes
        if n == 0:
            return
        self._raise_error()
        try:
            self._budget.acquire(n)  # waits while the disk is behind
        except Stopped:
            self._raise_error()
            raise
        self._q.put(("mem", data))
        self.position += n

    def copy(self, span: FileSpan, *, tensor: str | None = None) -> None:
        """Queue ``span``'s bytes, read from its file when their turn comes."""
        self._raise_error()
        if span.nbytes:
            self._q.put(("span", (span, tensor)))
            self.position += span.nbytes

    def zeros(self, n: int) -> None:
        """Queue ``n`` zero bytes (padding)."""
        self._raise_error()
        if n > 0:
            self._q.put(("zeros", n))
            self.position += n

    def close(self) -> None:
        """Write everything queued, then raise the first error met (the file's bytes are complete only
        when this returns)."""
        if self._closed:
            return
        self._closed = True
        self._q.put((_END, None))
        self._thread.join()
        self._release()
        self._raise_error()

    def abort(self) -> None:
        """Stop writing (after a failure elsewhere): queued pieces are dropped, errors ignored."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._q.put((_END, None))
        self._thread.join()
        self._release()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _release(self) -> None:
        self._disk.shutdown(wait=True)
        if self._writeback is not None:
            try:
                if self._error is None and not self._stop.is_set():
                    self._writeback.finish()
                else:
                    self._writeback.stop()
            except BaseException as e:  # noqa: BLE001 - a sync's error is the writer's error
                self._error = self._error or e
        os.close(self.fd)
        self._bufs = []  # unmapped once nothing refers to them

    # -- the background thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            kind, obj = self._q.get()
            if kind is _END:
                if self._error is None and not self._stop.is_set():
                    self._guard(self._finish)
                return
            if self._error is None and not self._stop.is_set():
                if kind == "mem":
                    self._guard(self._put_array, obj)
                elif kind == "span":
                    self._guard(self._put_span, *obj)
                else:
                    self._guard(self._put_zeros, obj)
            if kind == "mem":
                self._budget.release(obj.nbytes)
            del obj

    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            self._error = e
            self._budget.stop()  # wakes a caller waiting in write()

    def _put_array(self, src: np.ndarray) -> None:
        if self.mode == "buffered" and src.nbytes >= _DIRECT_FROM_ARRAY:
            self._flush_partial()
            self._pwrite(memoryview(src), self._base)
            self._advance(src.nbytes)
            return
        i = 0
        while i < src.nbytes:
            n = min(src.nbytes - i, self._size - self._fill)
            self._bufs[self._cur][self._fill:self._fill + n] = src[i:i + n]
            self._fill += n
            i += n
            if self._fill == self._size:
                self._flush_full()

    def _put_zeros(self, count: int) -> None:
        while count:
            n = min(count, self._size - self._fill)
            self._bufs[self._cur][self._fill:self._fill + n] = 0
            self._fill += n
            count -= n
            if self._fill == self._size:
                self._flush_full()

    def _put_span(self, span: FileSpan, tensor: str | None) -> None:
        if self.mode == "buffered":
            self._flush_partial()
            if copy_span(span, self.fd, self._base, tensor=tensor, stop=self._stop) == "stopped":
                return
            self._advance(span.nbytes)
            return
        fd = os.open(span.path, os.O_RDONLY)
        try:
            done = 0
            while done < span.nbytes:
                if self._stop.is_set():
                    return
                n = min(span.nbytes - done, self._size - self._fill)
                got = os.preadv(fd, [self._bufs[self._cur][self._fill:self._fill + n]], span.offset + done)
                if got == 0:
                    raise TmacError(f"the source ended {span.nbytes - done} bytes early", file=str(span.path),
                                    tensor=tensor, rule="tensor data within file")
                self._fill += got
                done += got
                if self._fill == self._size:
                    self._flush_full()
        finally:
            os.close(fd)

    def _flush_full(self) -> None:
        """Hand the full staging buffer to a disk thread and go on filling the next one (buffers are used in
        ring order, so the next one is the oldest handed out: waited for here when :data:`DISK_DEPTH` are out)."""
        if len(self._inflight) >= DISK_DEPTH:
            self._inflight.popleft().result()
        self._inflight.append(self._disk.submit(self._pwrite, memoryview(self._bufs[self._cur]), self._base))
        self._cur = (self._cur + 1) % len(self._bufs)
        self._advance(self._size)

    def _advance(self, n: int) -> None:
        self._base += n
        self._fill = 0
        if self._writeback is not None:
            self._writeback.wrote(n)

    def _flush_partial(self) -> None:
        """Buffered mode only: write what the staging buffer holds now."""
        if self._fill:
            self._wait_disk()
            n = self._fill
            self._pwrite(memoryview(self._bufs[self._cur][:n]), self._base)
            self._advance(n)

    def _wait_disk(self) -> None:
        while self._inflight:
            self._inflight.popleft().result()

    def _finish(self) -> None:
        """Write the last partial block (through the page cache: its length is not aligned)."""
        self._wait_disk()
        if not self._fill:
            return
        if self.mode == "direct":
            self._drop_direct()
        n = self._fill
        self._pwrite(memoryview(self._bufs[self._cur][:n]), self._base)
        self._advance(n)

    def _pwrite(self, view: memoryview, offset: int) -> None:
        while len(view):
            try:
                w = os.pwrite(self.fd, view, offset)
            except OSError as e:
                if e.errno != errno.EINVAL or self.mode != "direct":
                    raise
                self._drop_direct()  # accepted at open but refused on write: the rest goes through the page cache
                continue
            if w == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view = view[w:]
            offset += w

    def _drop_direct(self) -> None:
        """Write through the page cache from now on (the descriptor's ``O_DIRECT`` cleared)."""
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~_O_DIRECT)
