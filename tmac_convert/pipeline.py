"""The bounded conversion pipeline: read -> (encode + verify on a worker pool) -> write, in order.

    reader thread:  next(tensors) --submit--> worker pool: encode (pack) + verify
    caller thread:  takes the futures in reader order and writes each result

Three kinds of work overlap: the reader (unpacking the source, numpy), the workers (the native pack
and the kernel check, both releasing the GIL) and the writer (file I/O in the caller's thread).
Results come out strictly in reader order, so the output does not depend on the thread count.

Memory is bounded by a budget taken *before* the reader loads a tensor and given back only after
the caller has written it: at most ``threads + 2`` tensors and :data:`INFLIGHT_BYTES` source bytes
are alive at once (a single tensor larger than that runs alone).
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator

from .errors import TmacError
from .parallel import Budget, Stopped

INFLIGHT_BYTES = 384 << 20
_END = object()


def run_pipeline(tensors: Iterable[Any], entries: list[Any], work: Callable[[Any, Any], Any], *,
                 threads: int, max_bytes: int = INFLIGHT_BYTES) -> Iterator[Any]:
    """Yield ``work(tensor, entry)`` for each tensor, in order, computed on ``threads`` workers.

    Args:
        tensors: the reader's stream; tensor ``i`` must be named ``entries[i].name``.
        entries: the plan entries (``name`` and ``src_nbytes`` are used for checks and the budget).
        work: the per-tensor job (runs in a worker thread; must be thread-safe).
        threads: worker threads; 1 runs everything in the caller's thread, in sequence.
        max_bytes: source bytes allowed in flight.

    Raises:
        TmacError: when the stream does not follow ``entries``; anything ``work`` or the reader raises.
    """

    def planned(i: int, t: Any) -> Any:
        if i >= len(entries):
            raise TmacError("the reader yielded more tensors than it announced", tensor=t.name,
                            rule="reader yields what tensor_infos() said")
        e = entries[i]
        if t.name != e.name:
            raise TmacError(f"yielded where {e.name} was announced", tensor=t.name,
                            rule="reader yields what tensor_infos() said")
        return e

    if threads <= 1:
        for i, t in enumerate(tensors):
            yield work(t, planned(i, t))
        return

    budget = Budget(max_bytes, threads + 2)
    # C-level queues only (see tmac_convert.parallel): the caller's thread takes each result from its own
    # one-item box rather than from the future (whose result() holds a Python lock).
    q: queue.SimpleQueue = queue.SimpleQueue()
    pool = ThreadPoolExecutor(threads, thread_name_prefix="tmac-convert")

    def run(box: queue.SimpleQueue, t: Any, e: Any) -> None:
        try:
            box.put((True, work(t, e)))
        except BaseException as ex:  # noqa: BLE001 - handed to the caller's thread
            box.put((False, ex))

    def produce() -> None:
        try:
            it = iter(tensors)
            i = 0
            while True:
                n = entries[i].src_nbytes if i < len(entries) else 0
                budget.acquire(n)
                try:
                    t = next(it)
                except StopIteration:
                    budget.release(n)
                    q.put(_END)
                    return
                box: queue.SimpleQueue = queue.SimpleQueue()
                pool.submit(run, box, t, planned(i, t))
                q.put((box, n))
                del t
                i += 1
        except Stopped:
            return
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            q.put(e)

    reader = threading.Thread(target=produce, name="tmac-convert-reader", daemon=True)
    reader.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            box, n = item
            try:
                ok, value = box.get()
                if not ok:
                    raise value
                yield value
            finally:
                budget.release(n)
    finally:
        budget.stop()
        pool.shutdown(wait=True, cancel_futures=True)  # what the reader queued but nobody will take: cancelled
        reader.join(timeout=30)
