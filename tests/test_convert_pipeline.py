"""The bounded pipeline on its own: order, bounds, error propagation, clean shutdown."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

import pytest

from tmac_convert.errors import TmacError
from tmac_convert.pipeline import run_pipeline

from .lock_trace import python_lock_entries, run_in_fresh_thread


@dataclass
class T:
    name: str


@dataclass
class E:
    name: str
    src_nbytes: int


def _plan(n: int, size: int = 10):
    return [T(f"t{i}") for i in range(n)], [E(f"t{i}", size) for i in range(n)]


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_results_come_out_in_reader_order(threads):
    tensors, entries = _plan(40)
    rnd = random.Random(threads)

    def work(t, e):
        time.sleep(rnd.random() * 0.003)  # finish out of order
        return t.name

    assert list(run_pipeline(tensors, entries, work, threads=threads)) == [e.name for e in entries]


def test_tensors_and_bytes_in_flight_are_bounded():
    tensors, entries = _plan(30, size=100)
    live = {"n": 0, "bytes": 0, "max_n": 0, "max_bytes": 0}
    lock = threading.Lock()

    def stream():
        for t, e in zip(tensors, entries):
            with lock:
                live["n"] += 1
                live["bytes"] += e.src_nbytes
                live["max_n"] = max(live["max_n"], live["n"])
                live["max_bytes"] = max(live["max_bytes"], live["bytes"])
            yield t

    for e in run_pipeline(stream(), entries, lambda t, e: e, threads=3, max_bytes=250):
        time.sleep(0.002)  # a slow writer
        with lock:
            live["n"] -= 1
            live["bytes"] -= e.src_nbytes
    assert live["max_bytes"] <= 250 and live["max_n"] <= 2


def test_a_tensor_larger_than_the_budget_runs_alone():
    tensors, entries = _plan(6, size=10)
    entries[3].src_nbytes = 10_000
    seen_with_big = []
    alive: set[str] = set()

    def stream():
        for t in tensors:
            alive.add(t.name)
            if t.name == "t3":
                seen_with_big.append(set(alive))
            yield t

    for e in run_pipeline(stream(), entries, lambda t, e: e, threads=2, max_bytes=100):
        alive.discard(e.name)
    assert seen_with_big == [{"t3"}]


@pytest.mark.parametrize("threads", [1, 2])
def test_worker_errors_propagate_and_stop_the_reader(threads):
    tensors, entries = _plan(50)
    read = []

    def stream():
        for t in tensors:
            read.append(t.name)
            yield t

    def work(t, e):
        if t.name == "t5":
            raise ValueError("boom")
        return t.name

    out = []
    with pytest.raises(ValueError, match="boom"):
        for x in run_pipeline(stream(), entries, work, threads=threads):
            out.append(x)
    assert out == [f"t{i}" for i in range(5)]
    assert len(read) <= 5 + threads + 2


def test_reader_errors_propagate():
    tensors, entries = _plan(10)

    def stream():
        yield tensors[0]
        raise TmacError("bad source", tensor="t1", rule="test")

    with pytest.raises(TmacError, match="bad source"):
        list(run_pipeline(stream(), entries, lambda t, e: t.name, threads=2))


@pytest.mark.parametrize("threads", [1, 2])
def test_a_stream_that_differs_from_the_plan_is_refused(threads):
    tensors, entries = _plan(4)
    tensors[2] = T("other")
    with pytest.raises(TmacError, match="yielded where t2 was announced"):
        list(run_pipeline(tensors, entries, lambda t, e: t.name, threads=threads))
    with pytest.raises(TmacError, match="more tensors than it announced"):
        list(run_pipeline(_plan(5)[0], entries, lambda t, e: t.name, threads=threads))


def test_closing_early_shuts_the_workers_down():
    tensors, entries = _plan(100)
    gen = run_pipeline(tensors, entries, lambda t, e: t.name, threads=2)
    assert next(gen) == "t0"
    gen.close()
    time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.name.startswith("tmac-convert")]



def _python_lock_entries(threads: int) -> list[str]:
    """Run a pipeline in this thread; return where this thread entered a Python-level lock."""
    tensors, entries = _plan(6)
    with python_lock_entries() as entered:
        assert list(run_pipeline(tensors, entries, lambda t, e: t.name, threads=threads)) == [e.name for e in entries]
    return entered


@pytest.mark.parametrize("threads", [2, 3])
def test_the_callers_thread_holds_no_python_lock_while_it_waits(threads):
    # Ctrl-C and SIGTERM raise in the caller's thread at any bytecode, also between a Python lock's acquire and
    # the `with` block that would release it.  A queue.Queue there once deadlocked the cleanup that way (a
    # converter killed by SIGTERM hung); the caller's side now waits on C-level SimpleQueues only.
    assert run_in_fresh_thread(lambda: _python_lock_entries(threads)) == []
