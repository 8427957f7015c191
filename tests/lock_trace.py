"""Where a thread enters a Python-level lock, for tests of what Ctrl-C can interrupt.

Ctrl-C and SIGTERM raise in the main thread at any bytecode, also between a Python lock's acquire and the
``with`` block that would release it; a lock left held that way deadlocks whatever cleans up next (a converter
killed by SIGTERM once hung in ``Queue.get_nowait``).  The converter's thread therefore waits on C-level
primitives only (``queue.SimpleQueue``, thread joins), and the tests check it with :func:`python_lock_entries`.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def _lifecycle(frame) -> bool:
    """Whether ``frame`` runs inside the starting, joining or shutting down of threads (outside the rule: those
    happen once, not in a loop, and CPython's own code takes these locks)."""
    while frame is not None:
        if frame.f_code.co_name in ("start", "join", "shutdown") and \
                (frame.f_globals.get("__name__") or "").startswith(("threading", "concurrent.futures")):
            return True
        frame = frame.f_back
    return False


@contextmanager
def python_lock_entries() -> Iterator[list[str]]:
    """Trace the current thread; the list names (file:line (function)) every place it entered a lock of the
    ``threading`` module (a Condition's, hence a Queue's, an Event's, a Future's) outside thread lifecycles."""
    entered: list[str] = []

    def tracer(frame, event, arg):
        if event == "call" and frame.f_code.co_name == "__enter__" and frame.f_globals.get("__name__") == "threading" \
                and not _lifecycle(frame):
            caller = frame.f_back
            entered.append(f"{caller.f_code.co_filename}:{caller.f_lineno} ({caller.f_code.co_name})")
        return None

    sys.settrace(tracer)
    try:
        yield entered
    finally:
        sys.settrace(None)


def run_in_fresh_thread(fn: Callable[[], object], timeout: float = 60) -> object:
    """``fn()`` in a new thread (so that no test harness trace is active there); its result, or its exception."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(("ok", fn()))
        except BaseException as e:  # noqa: BLE001 - handed back
            outcome.append(("err", e))

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout=timeout)
    assert outcome, f"{fn} did not finish within {timeout} s"
    kind, value = outcome[0]
    if kind == "err":
        raise value
    return value
