"""map_in_threads: the list comprehension's result in item order, the first error in item order, no thread left
behind, and a caller's thread that never waits on a Python lock (so Ctrl-C cannot hang it)."""

from __future__ import annotations

import _thread
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tmac_convert.parallel import map_in_threads

from .lock_trace import python_lock_entries, run_in_fresh_thread


def _alive(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(name + "-")]


@settings(max_examples=40, deadline=None)
@given(items=st.lists(st.integers(-1000, 1000), max_size=40), threads=st.integers(1, 6))
def test_results_are_the_list_comprehensions_in_item_order(items: list[int], threads: int) -> None:
    assert map_in_threads(lambda v: v * v - 3, items, threads, name="t-sq") == [v * v - 3 for v in items]
    assert not _alive("t-sq")


def test_the_first_error_in_item_order_is_raised_even_when_a_later_one_comes_first() -> None:
    def fn(i: int) -> int:
        if i == 2:
            time.sleep(0.2)  # item 5 fails long before item 2 does
            raise ValueError("item 2")
        if i == 5:
            raise KeyError("item 5")
        return i

    with pytest.raises(ValueError, match="item 2"):
        map_in_threads(fn, list(range(30)), 4, name="t-err")
    assert not _alive("t-err")


def test_after_an_error_no_new_item_is_started() -> None:
    started: list[int] = []

    def fn(i: int) -> int:
        started.append(i)
        if i == 0:
            raise RuntimeError("boom")
        time.sleep(0.01)
        return i

    with pytest.raises(RuntimeError):
        map_in_threads(fn, list(range(200)), 2, name="t-stop")
    assert len(started) < 10


def test_the_callers_thread_waits_on_no_python_lock() -> None:
    def run() -> list[str]:
        with python_lock_entries() as entered:
            assert map_in_threads(lambda v: time.sleep(0.001) or v, list(range(50)), 3, name="t-lock") == list(range(50))
        return entered

    assert run_in_fresh_thread(run) == []


def test_ctrl_c_while_waiting_stops_the_workers_and_joins_them() -> None:
    # _thread.interrupt_main() is what a SIGINT does to the main thread, where pytest runs this test
    threading.Timer(0.1, _thread.interrupt_main).start()
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        map_in_threads(lambda v: time.sleep(0.05) or v, list(range(400)), 2, name="t-intr")
    assert time.perf_counter() - t0 < 2.0  # 400 items would take 10 s
    assert not _alive("t-intr")
