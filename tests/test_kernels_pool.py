"""The native worker pool and the GEMM row-block kernel.

* The GEMM (N >= 2 rows) reads each weight tile once per block of rows; it gives the numpy reference's bits
  for every path, shape, row count (blocks of 8 and a remainder) and thread count.
* One persistent pool serves the LUT kernels and the layout engine: workers are started once, not per call
  (the process's thread count stays put across calls), and a fork()ed child computes the same results
  instead of waiting on workers that do not exist in it; Python threads calling kernels at once take the pool
  in turn; Ctrl-C interrupts a loop of threaded calls and leaves the pool usable.
* The workers' spin adapts to the calls: back-to-back calls (a decode loop) find them awake, calls far apart
  (a conversion, which does other work between) let them sleep instead of burning the cores.
"""

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tmac_convert as tc
from tmac_convert import kernels
from tmac_convert.kernels import _native

from .test_kernels_cases import layouts, make_case

pool = pytest.importorskip("tmac_convert._pool_native")
pytestmark = pytest.mark.skipif(_native.native is None, reason="native LUT kernels not built")
PATHS = [p for p in kernels.available_paths() if p != "reference"]


def _tasks() -> int:
    return len(os.listdir("/proc/self/task"))


@settings(max_examples=25, deadline=None)
@given(layout=layouts(max_m0=128, max_k=512), seed=st.integers(0, 2**32 - 1),
       n=st.sampled_from([2, 3, 7, 8, 9, 16, 17, 30]), threads=st.sampled_from([1, 2, 3, 7]))
def test_gemm_row_blocks_equal_the_reference(layout, seed, n, threads):
    bits, m0, k, bm, kfactor, gs, zp, per_tensor, ags = layout
    rng = np.random.default_rng(seed)
    case = make_case(rng, bits, m0, k, bm, kfactor, gs, zp, per_tensor)
    x = (rng.standard_normal((n, k)) * rng.uniform(0.01, 100)).astype(np.float32)
    want = kernels.gemm(case.blob, x, **case.kw, act_group_size=ags, path="reference")
    for path in PATHS:
        got = kernels.gemm(case.blob, x, **case.kw, act_group_size=ags, path=path, threads=threads)
        assert np.array_equal(got, want), (path, n, threads)


def test_gemm_rows_equal_one_gemv_per_row():
    # the row-block kernel and the per-tile GEMV kernel (the one the fork calls) agree bit for bit
    rng = np.random.default_rng(3)
    for bits in (1, 2, 3, 4):
        case = make_case(rng, bits, 256, 1024, 192 if bits == 3 else 256, 16, 128, True, False)
        x = rng.standard_normal((19, 1024)).astype(np.float32)
        for path in PATHS:
            y = kernels.gemm(case.blob, x, **case.kw, path=path, threads=2)
            rows = np.stack([kernels.gemm(case.blob, x[i], **case.kw, path=path, threads=1) for i in range(19)])
            assert np.array_equal(y, rows), (bits, path)


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
def test_every_kernel_and_layout_is_thread_count_invariant(threads):
    rng = np.random.default_rng(11)
    case = make_case(rng, 2, 1024, 512, 128, 16, 128, True, False)  # 16 tiles
    x = rng.standard_normal((12, 512)).astype(np.float32)
    assert np.array_equal(kernels.gemm(case.blob, x, **case.kw, threads=threads),
                          kernels.gemm(case.blob, x, **case.kw, threads=1))
    assert np.array_equal(kernels.gemm(case.blob, x[0], **case.kw, threads=threads),
                          kernels.gemm(case.blob, x[0], **case.kw, threads=1))
    assert np.array_equal(kernels.dequant_gemm(case.blob, x, **case.kw, threads=threads),
                          kernels.dequant_gemm(case.blob, x, **case.kw, threads=1))
    codes = rng.integers(0, 8, (1024, 4096), dtype=np.uint8)  # 1.5 MiB of weights: above the layout's threading threshold
    scales = rng.random((1024, 32)).astype(np.float16)
    blob = tc.pack(codes, scales, bits=3, bm=192 * 2, kfactor=16, threads=threads)
    assert np.array_equal(blob, tc.pack(codes, scales, bits=3, bm=384, kfactor=16, threads=1))
    back = tc.unpack(blob, m=1024, k=4096, bits=3, group_size=128, zero_point=False, bm=384, kfactor=16,
                     threads=threads)
    assert np.array_equal(back[0], codes)


def test_runs_of_different_thread_counts_back_to_back_give_the_same_bits():
    """Work stealing: a worker that wakes after its run has ended must neither take a later run's items as a
    thread that run does not have (its scratch would be another size) nor leave any item undone.  Runs of 7, 2
    and 1 threads alternate with no pause, more threads than this machine has cores."""
    rng = np.random.default_rng(12)
    case = make_case(rng, 2, 1024, 512, 128, 16, 128, True, False)  # 16 tiles
    x = rng.standard_normal((9, 512)).astype(np.float32)
    want_gemm = kernels.gemm(case.blob, x, **case.kw, threads=1)
    want_gemv = kernels.gemm(case.blob, x[3], **case.kw, threads=1)
    for i in range(60):
        threads = (7, 2, 1)[i % 3]
        assert np.array_equal(kernels.gemm(case.blob, x[3], **case.kw, threads=threads), want_gemv), (i, threads)
        assert np.array_equal(kernels.gemm(case.blob, x, **case.kw, threads=threads), want_gemm), (i, threads)


def test_pool_threads_persist_across_calls():
    rng = np.random.default_rng(2)
    case = make_case(rng, 2, 512, 512, 128, 16, 128, True, False)
    x = rng.standard_normal((4, 512)).astype(np.float32)
    codes = rng.integers(0, 4, (2048, 4096), dtype=np.uint8)  # 2 MiB of weights: the layout threads too
    scales = rng.random((2048, 32)).astype(np.float16)
    kernels.gemm(case.blob, x, **case.kw, threads=3)  # starts (at least) 2 workers, once
    before, workers = _tasks(), pool.workers()
    assert workers >= 2
    for i in range(30):
        kernels.gemm(case.blob, x[i % 4], **case.kw, threads=1 + i % 3)
        kernels.gemm(case.blob, x, **case.kw, threads=1 + i % 3)
        kernels.dequant_gemm(case.blob, x, **case.kw, threads=3)
        tc.pack(codes, scales, bits=2, bm=256, kfactor=16, threads=3)
        assert _tasks() == before
    assert pool.workers() == workers


def _run_fresh(script: str) -> subprocess.CompletedProcess:
    """``script`` (with ``{root}``, the repository root, filled in) in a fresh interpreter: a pool of its own."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-c", script.format(root=root)], capture_output=True, text=True,
                          timeout=120)


# A fresh process with a 2-thread pool that has learnt the gaps of back-to-back GEMVs; the body then runs its
# calls, and the process prints how often a helper went to sleep during them.
WARM_POOL_PRELUDE = """
import sys, time
import numpy as np
from tmac_convert import kernels
import tmac_convert._pool_native as pool
sys.path.insert(0, {root!r})
from tests.test_kernels_cases import make_case

rng = np.random.default_rng(4)
case = make_case(rng, 2, 1024, 1024, 128, 16, 128, True, False)
x = rng.standard_normal(1024).astype(np.float32)
for _ in range(20):  # the pool learns the gaps
    kernels.gemm(case.blob, x, **case.kw, threads=2)
before = pool.sleeps()
"""


def _helper_sleeps_in_fresh_process(body: str) -> int:
    """Runs WARM_POOL_PRELUDE then ``body`` (unindented Python) in a fresh interpreter; the sleeps during ``body``."""
    r = _run_fresh(WARM_POOL_PRELUDE + textwrap.dedent(body) + "print(pool.sleeps() - before)\n")
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[-1])


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="a spinning helper needs a core of its own")
def test_back_to_back_calls_find_the_workers_awake():
    # waking a sleeping thread costs about as much as a small GEMV on a virtual machine.  In a fresh process: in
    # the suite's own process, threads left by earlier tests compete for the 2 cores and preempt the spin.
    sleeps = _helper_sleeps_in_fresh_process("""
        for _ in range(200):
            kernels.gemm(case.blob, x, **case.kw, threads=2)
    """)
    # a fixed short spin sleeps about once per call per helper here (216 in 200 calls on the EPYC VM); the adaptive
    # one a handful of times (7 quiet, 36 with the machine's two cores busy with another test run)
    assert sleeps < 100


def test_calls_far_apart_let_the_workers_sleep():
    rng = np.random.default_rng(5)
    case = make_case(rng, 2, 1024, 1024, 128, 16, 128, True, False)
    x = rng.standard_normal(1024).astype(np.float32)
    for _ in range(5):
        kernels.gemm(case.blob, x, **case.kw, threads=2)
        time.sleep(0.005)
    before = pool.sleeps()
    for _ in range(20):
        kernels.gemm(case.blob, x, **case.kw, threads=2)
        time.sleep(0.005)  # five times the longest spin
    assert pool.sleeps() - before >= 18  # the one helper slept in (nearly) every gap


FORK_SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    import tmac_convert as tc
    from tmac_convert import kernels
    sys.path.insert(0, {root!r})
    from tests.test_kernels_cases import make_case

    rng = np.random.default_rng(1)
    case = make_case(rng, 2, 1024, 512, 128, 16, 128, True, False)
    x = rng.standard_normal((9, 512)).astype(np.float32)
    codes = rng.integers(0, 4, (2048, 4096), dtype=np.uint8)
    scales = rng.random((2048, 32)).astype(np.float16)
    want = kernels.gemm(case.blob, x, **case.kw, threads=2)       # the parent's workers exist now
    want_blob = tc.pack(codes, scales, bits=2, bm=256, kfactor=16, threads=2)
    pid = os.fork()
    if pid == 0:
        ok = np.array_equal(kernels.gemm(case.blob, x, **case.kw, threads=2), want)
        ok &= np.array_equal(tc.pack(codes, scales, bits=2, bm=256, kfactor=16, threads=2), want_blob)
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    import multiprocessing as mp
    def work(_):
        return kernels.gemm(case.blob, x, **case.kw, threads=2)
    with mp.get_context("fork").Pool(2) as p:
        assert all(np.array_equal(y, want) for y in p.map(work, range(4)))
    assert np.array_equal(kernels.gemm(case.blob, x, **case.kw, threads=2), want)  # the parent's pool still works
    # fork while another thread is inside a threaded kernel call (the GIL is released there)
    import threading
    stop = []
    def loop():
        while not stop:
            kernels.gemm(case.blob, x, **case.kw, threads=2)
    t = threading.Thread(target=loop)
    t.start()
    for _ in range(5):
        pid = os.fork()
        if pid == 0:
            os._exit(0 if np.array_equal(kernels.gemm(case.blob, x, **case.kw, threads=2), want) else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
    stop.append(1)
    t.join()
    print("fork-ok")
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() here")
def test_a_forked_child_runs_the_kernels_without_deadlock():
    r = _run_fresh(FORK_SCRIPT)
    assert r.returncode == 0 and "fork-ok" in r.stdout, r.stderr


def test_python_threads_calling_kernels_at_once_share_the_pool():
    # each call takes the pool in turn with the GIL released; none deadlocks and every result is exact
    import threading

    rng = np.random.default_rng(6)
    case = make_case(rng, 2, 512, 512, 128, 16, 128, True, False)
    xs = [rng.standard_normal((n, 512)).astype(np.float32) for n in (1, 5, 9, 16)]
    want = [kernels.gemm(case.blob, x, **case.kw, threads=1) for x in xs]
    codes = rng.integers(0, 4, (2048, 4096), dtype=np.uint8)
    scales = rng.random((2048, 32)).astype(np.float16)
    blob_want = tc.pack(codes, scales, bits=2, bm=256, kfactor=16, threads=1)
    bad = []

    def work(i):
        for _ in range(10):
            if not np.array_equal(kernels.gemm(case.blob, xs[i], **case.kw, threads=2), want[i]):
                bad.append(i)
            if i == 0 and not np.array_equal(tc.pack(codes, scales, bits=2, bm=256, kfactor=16, threads=2), blob_want):
                bad.append("pack")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads) and not bad


SIGINT_SCRIPT = textwrap.dedent("""
    import os, signal, sys, threading, time
    import numpy as np
    from tmac_convert import kernels
    sys.path.insert(0, {root!r})
    from tests.test_kernels_cases import make_case

    case = make_case(np.random.default_rng(1), 2, 1024, 1024, 128, 16, 128, True, False)
    x = np.random.default_rng(2).standard_normal((16, 1024)).astype(np.float32)
    threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    try:
        while True:
            kernels.gemm(case.blob, x, **case.kw, threads=2)
    except KeyboardInterrupt:
        # the pool is usable after the interrupt
        assert np.array_equal(kernels.gemm(case.blob, x, **case.kw, threads=2), kernels.gemm(case.blob, x, **case.kw, threads=1))
        print("interrupted-ok")
""")


@pytest.mark.skipif(not hasattr(os, "kill") or sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_interrupts_a_loop_of_threaded_kernel_calls():
    r = _run_fresh(SIGINT_SCRIPT)
    assert r.returncode == 0 and "interrupted-ok" in r.stdout, r.stderr
