"""LUT kernel speed on this CPU: T-MAC's table lookup vs dequantise-then-FMA vs numpy float32, on Llama-3-8B shapes.

    .venv/bin/python benchmarks/bench_kernels.py [--quick] [--repeats R] [--threads T] [--rounds R] [--stream-gb G]

For each weight shape of Llama-3-8B (M0 x K: 4096x4096 attn q/o, 1024x4096 attn k/v, 14336x4096 ffn up/gate,
4096x14336 ffn down), bits 1-4 (group 128 with zero points, default tiles), N = 1 (GEMV) and N = 256, one
thread and all threads, it prints, all measured in this process on the same blob:

* ``lut us``: ``tmac_convert.kernels.gemm`` (int8 LUT, act group 64) on the auto-chosen native path;
* ``GB/s``: bytes of the blob (packed weights + scales) read per second by the LUT kernel;
* ``dq us`` / ``dq/lut``: the dequantise-then-FMA baseline over the same packed bits, and its time ratio;
* ``np us`` / ``np/lut``: numpy's float32 matmul (OpenBLAS) on the pre-dequantised float32 weights (timed
  once per shape, N and thread count: its speed does not depend on the values), and its ratio;
* ``err``: max |lut - numpy| / max |numpy| on that row's outputs (a sanity check, int8 LUT noise).

Then the two regimes of issue 14 on the 4096x14336 shape (ffn_down), at one thread and at ``--threads``:

* **cache-resident**: one tensor timed in a loop (the kernel's arithmetic: it may never leave the L3);
* **streaming**: the GEMV cycles over distinct copies of the weights totalling ``--stream-gb`` (default 2.2 GB,
  more than any L3): what decoding a real model sees.

Every figure is printed next to a streaming-read probe over the same working set at the same thread count
(``_lut_native.read_probe``: AVX2 loads, four accumulators, split over the same worker pool) and next to
ggml's Q2_K, TQ2_0 and Q4_0 measured the same way in the same run (one weight used by several MUL_MAT nodes of
one graph, or one node per distinct weight copy), then the GEMM N = 256 against ggml Q2_K and numpy float32
BLAS at the same threads.  Kernels compared in one block are timed round-robin (each once per round, the
fastest round kept), so that load from other processes hits them alike; each timed call follows a 30 ms pause
(ggml's threads spin for about 10 ms after a graph) and one untimed call of the same kernel.  The issue's bars
are printed with PASS/FAIL.

Where ``llama_cpp`` (llama-cpp-python) imports, llama.cpp's own Q2_K, TQ2_0, Q4_0 and F16 matrix products
are timed in-process through ctypes on the ggml libraries it ships (``ggml_mul_mat`` on the CPU backend, the
call llama.cpp makes); otherwise the reference figures of the environment notes are printed instead.
``--quick`` skips the per-shape table and runs only the regimes.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tmac_convert as tc  # noqa: E402
from tmac_convert import kernels  # noqa: E402

SHAPES = [(4096, 4096, "attn_q/attn_o"), (1024, 4096, "attn_k/attn_v"), (14336, 4096, "ffn_up/ffn_gate"),
          (4096, 14336, "ffn_down")]
GROUP = 128
AGS = 64
GGML_NOTES = ("ggml CPU backend on this machine type (environment notes, 2 threads, MUL_MAT m=4096 k=14336 n=1): "
              "f16 12.4 ms, q4_0 6.1 ms, q2_K 8.2 ms, tq2_0 8.2 ms")


def blas_threads(n: int) -> bool:
    """Set OpenBLAS's thread count for numpy's matmul; False when it cannot be controlled here."""
    try:
        from threadpoolctl import threadpool_limits  # type: ignore

        threadpool_limits(n)
        return True
    except ImportError:
        pass
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "libscipy_openblas*"))
    for lib in libs:
        handle = ctypes.CDLL(lib)
        for sym in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads"):
            fn = getattr(handle, sym, None)
            if fn is not None:
                fn(ctypes.c_int(n))
                return True
    return False


def best_time(fn, repeats: int, budget_s: float = 2.0) -> float:
    """Fastest of up to ``repeats`` runs after one warm-up (fewer when one run is slow)."""
    fn()
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
        if spent > budget_s:
            break
    return best


def make_tensor(rng, m0: int, k: int, bits: int):
    codes = rng.integers(0, 1 << bits, (m0, k), dtype=np.uint8)
    scales = rng.uniform(0.002, 0.03, (m0, k // GROUP)).astype(np.float16)
    zeros = (rng.standard_normal((m0, k // GROUP)) * 0.01).astype(np.float16)
    tiles = tc.default_tiles(m0, k, bits, GROUP)
    blob = tc.pack(codes, scales, zeros, bits=bits, bm=tiles.bm, kfactor=tiles.kfactor)
    return codes, scales, zeros, tiles, blob


def dequantise_f32(codes, scales, zeros, bits: int, rows: int = 1024) -> np.ndarray:
    """float32 ``[M0, K]`` weights, row chunk by row chunk (no float64 copy of the whole matrix)."""
    m0, k = codes.shape
    w = np.empty((m0, k), dtype=np.float32)
    h = np.float32(1 << (bits - 1))
    for r in range(0, m0, rows):
        s = np.repeat(scales[r:r + rows].astype(np.float32), GROUP, axis=1)
        z = np.repeat(zeros[r:r + rows].astype(np.float32), GROUP, axis=1)
        w[r:r + rows] = (codes[r:r + rows].astype(np.float32) - h) * s - z
    return w


class Ggml:
    """ggml's own MUL_MAT (the CPU backend llama.cpp runs), through ctypes on the libraries llama_cpp ships.

    The weight tensor is filled with random blocks whose fp16 block scales are set to a finite value (speed
    does not depend on the values); the activations are float32, converted by ggml itself to its dot-product
    type as part of the timed call, as in llama.cpp.
    """

    TYPES = {"q2_K": (10, 256, 84, (80, 82)), "q4_0": (2, 32, 18, (0,)), "tq2_0": (35, 256, 66, (64,)),
             "f16": (1, 1, 2, ())}  # ggml type id, block size, block bytes, byte offsets of fp16 block scales

    def __init__(self) -> None:
        import llama_cpp

        lib = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
        self.base = ctypes.CDLL(os.path.join(lib, "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
        self.cpu = ctypes.CDLL(os.path.join(lib, "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)

        class Params(ctypes.Structure):
            _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]

        self.Params = Params
        vp, b, c = ctypes.c_void_p, self.base, self.cpu
        b.ggml_init.restype, b.ggml_init.argtypes = vp, [Params]
        b.ggml_new_tensor_2d.restype = vp
        b.ggml_new_tensor_2d.argtypes = [vp, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        b.ggml_mul_mat.restype, b.ggml_mul_mat.argtypes = vp, [vp, vp, vp]
        b.ggml_new_graph.restype, b.ggml_new_graph.argtypes = vp, [vp]
        b.ggml_build_forward_expand.argtypes = [vp, vp]
        b.ggml_get_data.restype, b.ggml_get_data.argtypes = vp, [vp]
        b.ggml_nbytes.restype, b.ggml_nbytes.argtypes = ctypes.c_size_t, [vp]
        b.ggml_free.argtypes = [vp]
        c.ggml_graph_compute_with_ctx.restype = ctypes.c_int
        c.ggml_graph_compute_with_ctx.argtypes = [vp, vp, ctypes.c_int]
        c.ggml_cpu_init()

    def prepare(self, kind: str, m0: int, k: int, x: np.ndarray, threads: int, rng, nodes: int = 1,
                distinct: bool = False):
        """``(run, free)``: ``run()`` computes ggml's ``W @ x`` for a random ``kind`` weight ``[m0, k]``.

        With ``nodes`` > 1 the graph holds that many MUL_MAT nodes, all on one weight (cache-resident) or each on
        its own copy of it (``distinct``: the streaming regime); ``run()`` then computes them all, one graph call
        (ggml's per-call thread start is shared by the nodes, as in a model's graph).
        """
        typ, blk, bsz, dpos = self.TYPES[kind]
        n = x.shape[0]
        nbytes = m0 * k // blk * bsz
        nw = nodes if distinct else 1
        mem = nw * (nbytes + 256) + 8 * k * n + nodes * (4 * m0 * n + 512) + (64 << 20)
        ctx = self.base.ggml_init(self.Params(mem, None, False))
        if not ctx:
            raise MemoryError(f"ggml_init could not allocate {mem / 1e9:.1f} GB")
        b = self.base.ggml_new_tensor_2d(ctx, 0, k, n)
        if kind == "f16":
            data = rng.standard_normal(m0 * k).astype(np.float16).view(np.uint8)
        else:
            data = rng.integers(0, 256, nbytes, dtype=np.uint8).reshape(-1, bsz)
            for off in dpos:
                data[:, off:off + 2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
        data = np.ascontiguousarray(data)
        weights = []
        for _ in range(nw):
            a = self.base.ggml_new_tensor_2d(ctx, typ, k, m0)
            if self.base.ggml_nbytes(a) != nbytes:
                self.base.ggml_free(ctx)
                raise RuntimeError(f"ggml {kind} tensor is {self.base.ggml_nbytes(a)} bytes, expected {nbytes}")
            ctypes.memmove(self.base.ggml_get_data(a), data.ctypes.data, nbytes)
            weights.append(a)
        ctypes.memmove(self.base.ggml_get_data(b), np.ascontiguousarray(x).ctypes.data, x.nbytes)
        graph = self.base.ggml_new_graph(ctx)
        for i in range(nodes):
            self.base.ggml_build_forward_expand(graph, self.base.ggml_mul_mat(ctx, weights[i % nw], b))
        return (lambda: self.cpu.ggml_graph_compute_with_ctx(ctx, graph, threads)), (lambda: self.base.ggml_free(ctx))

    def time_matmul(self, kind: str, m0: int, k: int, x: np.ndarray, threads: int, repeats: int, rng) -> float:
        run, free = self.prepare(kind, m0, k, x, threads, rng)
        try:
            return best_time(run, repeats)
        finally:
            free()


def ggml_or_note():
    try:
        return Ggml(), None
    except (ImportError, OSError, AttributeError) as e:
        return None, (f"llama.cpp's ggml is not available here ({type(e).__name__}: {e}); reference figures: "
                      f"{GGML_NOTES}.")


SETTLE_S = 0.03  # pause before each timed sample: longer than ggml's OpenMP threads spin after a graph


def round_robin(runs: dict, rounds: int, settle_s: float = SETTLE_S) -> dict:
    """Fastest time of each callable over ``rounds`` rounds, each round calling every one once in turn.

    Each timed call follows a pause of ``settle_s`` and one untimed call of the same callable.  The pause: after a
    graph, ggml's OpenMP threads spin for about 10 ms (measured on the 2-core EPYC VM: 8-12 ms of CPU time in the
    first 20 ms of a sleep after a 2-thread graph), and a kernel timed in that window shares its cores with them
    (2-thread LUT GEMV 550 us timed right after ggml against 437 us alone).  The untimed call: each kernel's own
    threads are then awake and spinning, as in back-to-back decoding, whichever kernel ran before it.
    """
    best = {name: float("inf") for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            time.sleep(settle_s)
            fn()
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


REGIME_SHAPE = (4096, 14336)
GGML_KINDS = ("q2_K", "tq2_0", "q4_0")
CACHE_REPS = 8  # calls per timed sample in the cache-resident regime (one tensor, again and again)


def regimes(rng, rounds: int, thread_counts: list[int], stream_gb: float, ggml) -> None:
    """Issue 14's two regimes, GEMV 4096x14336, with a read probe and ggml at each thread count, and the bars."""
    native = kernels._native.native
    m0, k = REGIME_SHAPE
    x = rng.standard_normal((1, k)).astype(np.float32)
    tensors = {}
    for bits in (1, 2, 4):
        _, _, _, tiles, blob = make_tensor(rng, m0, k, bits)
        tensors[bits] = (blob, dict(m=m0, k=k, bits=bits, group_size=GROUP, zero_point=True, bm=tiles.bm,
                                    kfactor=tiles.kfactor))
    blob2, kw2 = tensors[2]
    mb = blob2.size / 1e6
    print(f"\n=== regimes: GEMV {m0}x{k}, 2-bit blob {mb:.1f} MB (g{GROUP} + zeros), act group {AGS}; "
          f"fastest of {rounds} round-robin rounds ===")
    print("cache-resident: one tensor timed in a loop (it may stay in the L2/L3: the kernel's arithmetic)")
    cache = {}
    for thr in thread_counts:
        runs = {"probe": lambda thr=thr: [native.read_probe(blob2, thr) for _ in range(CACHE_REPS)]}
        for bits, (blob, kw) in tensors.items():
            runs[f"lut{bits}"] = (lambda blob=blob, kw=kw, thr=thr:
                                  [kernels.gemm(blob, x, **kw, act_group_size=AGS, threads=thr) for _ in range(CACHE_REPS)])
        runs["dq2"] = lambda thr=thr: [kernels.dequant_gemm(blob2, x, **kw2, threads=thr) for _ in range(CACHE_REPS)]
        frees = []
        if ggml is not None:
            for kind in GGML_KINDS:
                run, free = ggml.prepare(kind, m0, k, x, thr, rng, nodes=CACHE_REPS)
                runs[kind], _ = run, frees.append(free)
        best = {name: t / CACHE_REPS for name, t in round_robin(runs, rounds).items()}
        for free in frees:
            free()
        cache[thr] = best
        probe_bw = blob2.size / best["probe"]
        line = (f"  {thr} thr: probe {probe_bw / 1e9:6.1f} GB/s | LUT 1/2/4-bit {best['lut1'] * 1e6:7.0f} "
                f"{best['lut2'] * 1e6:7.0f} {best['lut4'] * 1e6:7.0f} us (2-bit {blob2.size / best['lut2'] / 1e9:5.1f} "
                f"GB/s = {best['probe'] / best['lut2']:4.0%} of probe) | dequant 2-bit {best['dq2'] * 1e6:7.0f} us")
        if ggml is not None:
            line += " | ggml " + " ".join(f"{kind} {best[kind] * 1e6:.0f} us" for kind in GGML_KINDS)
        print(line, flush=True)

    print(f"streaming: the GEMV cycles over distinct copies of the weights totalling >= {stream_gb:.1f} GB "
          f"(what decoding a real model sees); the probe reads the same copies")
    stream = {}
    copies = max(2, int(np.ceil(stream_gb * 1e9 / blob2.size)))
    pile = [blob2.copy() for _ in range(copies)]
    print(f"  {copies} copies of the 2-bit blob = {copies * blob2.size / 1e9:.2f} GB", flush=True)
    for thr in thread_counts:
        runs = {"probe": lambda thr=thr: [native.read_probe(b, thr) for b in pile],
                "lut2": lambda thr=thr: [kernels.gemm(b, x, **kw2, act_group_size=AGS, threads=thr) for b in pile]}
        stream[thr] = {name: t / copies for name, t in round_robin(runs, max(2, rounds // 2)).items()}
    del pile
    if ggml is not None:
        for kind in GGML_KINDS:
            _, blk, bsz, _ = ggml.TYPES[kind]
            n = max(2, int(np.ceil(stream_gb * 1e9 / (m0 * k // blk * bsz))))
            for thr in thread_counts:
                run, free = ggml.prepare(kind, m0, k, x, thr, rng, nodes=n, distinct=True)
                try:
                    stream[thr][kind] = round_robin({kind: run}, max(2, rounds // 2))[kind] / n
                finally:
                    free()
    for thr in thread_counts:
        best = stream[thr]
        line = (f"  {thr} thr: probe {blob2.size / best['probe'] / 1e9:6.1f} GB/s | LUT 2-bit {best['lut2'] * 1e6:7.0f} us "
                f"({blob2.size / best['lut2'] / 1e9:5.1f} GB/s = {best['probe'] / best['lut2']:4.0%} of probe)")
        if ggml is not None:
            line += " | ggml " + " ".join(f"{kind} {best[kind] * 1e6:.0f} us" for kind in GGML_KINDS)
        print(line, flush=True)

    print(f"GEMM N=256, 2-bit {m0}x{k}: LUT vs ggml Q2_K vs numpy float32 BLAS (pre-dequantised weights)")
    xn = rng.standard_normal((256, k)).astype(np.float32)
    codes, scales, zeros, _, _ = make_tensor(rng, m0, k, 2)
    w32 = dequantise_f32(codes, scales, zeros, 2)
    del codes
    gemm = {}
    for thr in thread_counts:
        blas_ok = blas_threads(thr)
        runs = {"lut": lambda thr=thr: kernels.gemm(blob2, xn, **kw2, act_group_size=AGS, threads=thr),
                "numpy": lambda: xn @ w32.T}
        free = None
        if ggml is not None:
            runs["q2_K"], free = ggml.prepare("q2_K", m0, k, xn, thr, rng)
        gemm[thr] = round_robin(runs, max(2, rounds // 3))
        if free is not None:
            free()
        g = gemm[thr]
        line = f"  {thr} thr: LUT {g['lut'] * 1e3:8.1f} ms | numpy f32 {g['numpy'] * 1e3:8.1f} ms"
        line += "" if blas_ok else " (BLAS threads not controlled)"
        if "q2_K" in g:
            line += f" | ggml q2_K {g['q2_K'] * 1e3:8.1f} ms"
        print(line, flush=True)
    del w32

    print("bars (issue 14; ratios within this run):")
    for thr in thread_counts:
        b, st = cache[thr], stream[thr]
        print(f"  [{thr} thr] streaming 2-bit LUT at {st['probe'] / st['lut2']:.0%} of the probe's bandwidth "
              f"(bar >= 90%): {verdict(st['probe'] / st['lut2'] >= 0.9)}")
        if ggml is not None:
            print(f"  [{thr} thr] cache-resident 2-bit: TQ2_0/LUT {b['tq2_0'] / b['lut2']:.2f}x (bar > 1): "
                  f"{verdict(b['tq2_0'] > b['lut2'])}; Q2_K/LUT {b['q2_K'] / b['lut2']:.2f}x (bar >= 1.5): "
                  f"{verdict(b['q2_K'] / b['lut2'] >= 1.5)}")
            print(f"  [{thr} thr] (info) streaming 2-bit: TQ2_0/LUT {st['tq2_0'] / st['lut2']:.2f}x, Q2_K/LUT "
                  f"{st['q2_K'] / st['lut2']:.2f}x; cache-resident Q4_0/LUT 4-bit {b['q4_0'] / b['lut4']:.2f}x")
        print(f"  [{thr} thr] bits: 1-bit/2-bit {b['lut1'] / b['lut2']:.2f} (bar <= 0.6): "
              f"{verdict(b['lut1'] / b['lut2'] <= 0.6)}; 4-bit/2-bit {b['lut4'] / b['lut2']:.2f} (bar <= 2.0): "
              f"{verdict(b['lut4'] / b['lut2'] <= 2.0)}; dequant/LUT 2-bit {b['dq2'] / b['lut2']:.2f}x (issue 6 bar >= 3)")
        g = gemm[thr]
        line = (f"  [{thr} thr] GEMM N=256: numpy/LUT {g['numpy'] / g['lut']:.2f}x (bar >= 1.5): "
                f"{verdict(g['numpy'] / g['lut'] >= 1.5)}")
        if "q2_K" in g:
            line += f"; Q2_K/LUT {g['q2_K'] / g['lut']:.2f}x (bar >= 1.5): {verdict(g['q2_K'] / g['lut'] >= 1.5)}"
        print(line)
    if len(thread_counts) > 1:
        t1, tn = thread_counts[0], thread_counts[-1]
        sp = cache[t1]["lut2"] / cache[tn]["lut2"]
        print(f"  cache-resident 2-bit GEMV, {tn} threads vs {t1}: {sp:.2f}x faster (bar >= 1.8): {verdict(sp >= 1.8)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="only the regimes (no per-shape table)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (fastest counts)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="the 'all threads' count")
    ap.add_argument("--rounds", type=int, default=6, help="round-robin rounds in the regime measurements")
    ap.add_argument("--stream-gb", type=float, default=2.2,
                    help="total size of the distinct weight copies of the streaming regime (GB; each ggml type "
                         "allocates as much again, one at a time)")
    args = ap.parse_args()
    repeats = args.repeats or (5 if args.quick else 7)
    shapes = [] if args.quick else SHAPES
    thread_counts = sorted({1, args.threads})
    path = kernels.resolve_path()
    blas_ok = blas_threads(1)
    print(f"kernel path: {path}; numpy BLAS thread control: {'yes' if blas_ok else 'no (numpy uses its default)'}; "
          f"threads: {thread_counts}; act group {AGS}, group {GROUP} with zero points; repeats {repeats}")
    if path == "reference":
        print("the native kernels are not built: timings would be of the numpy reference; stopping")
        return
    rng = np.random.default_rng(0)
    luts = {}
    hdr = f"{'shape':>12} {'bits':>4} {'N':>4} {'thr':>3} {'bm/kf':>7} {'lut us':>10} {'GB/s':>6} {'dq us':>11} " \
          f"{'dq/lut':>6} {'np us':>11} {'np/lut':>6} {'err':>8}"
    if shapes:
        print(hdr)
    for m0, k, label in shapes:
        np_time = {}
        for bits in (1, 2, 3, 4):
            codes, scales, zeros, tiles, blob = make_tensor(rng, m0, k, bits)
            w32 = dequantise_f32(codes, scales, zeros, bits)
            del codes
            kw = dict(m=m0, k=k, bits=bits, group_size=GROUP, zero_point=True, bm=tiles.bm, kfactor=tiles.kfactor)
            for n in (1, 256):
                if n == 256 and args.quick and bits != 2:
                    continue
                x = rng.standard_normal((n, k)).astype(np.float32)
                for thr in thread_counts:
                    if args.quick and n == 256 and thr == 1:
                        continue
                    t_lut = best_time(lambda: kernels.gemm(blob, x, **kw, act_group_size=AGS, threads=thr), repeats)
                    t_dq = best_time(lambda: kernels.dequant_gemm(blob, x, **kw, threads=thr), repeats)
                    if (n, thr) not in np_time:
                        blas_threads(thr)
                        np_time[(n, thr)] = best_time(lambda: x @ w32.T, repeats)
                    y = kernels.gemm(blob, x, **kw, act_group_size=AGS, threads=thr)
                    yn = x @ w32.T
                    err = float(np.abs(y - yn).max() / np.abs(yn).max())
                    gbs = blob.size / t_lut / 1e9
                    t_np = np_time[(n, thr)]
                    print(f"{m0:>5}x{k:<6} {bits:>4} {n:>4} {thr:>3} {tiles.bm:>4}/{tiles.kfactor:<2} "
                          f"{t_lut * 1e6:>10.0f} {gbs:>6.2f} {t_dq * 1e6:>11.0f} {t_dq / t_lut:>6.2f} "
                          f"{t_np * 1e6:>11.0f} {t_np / t_lut:>6.2f} {err:>8.1e}", flush=True)
                    luts[(m0, k, bits, n, thr)] = t_lut
    ggml, note = ggml_or_note()
    if ggml is None:
        print(note)
    regimes(rng, args.rounds, thread_counts, args.stream_gb, ggml)
    if ggml is None or not shapes:
        return
    print()
    print("llama.cpp (ggml CPU backend, in this process) vs the LUT kernel at the matching bit width:")
    print(f"{'shape':>12} {'type':>6} {'N':>4} {'thr':>3} {'ggml us':>11} {'lut us':>10} {'ggml/lut':>8}")
    for m0, k, _ in shapes:
        for n in (1, 256):
            x = rng.standard_normal((n, k)).astype(np.float32)
            for kind, bits in (("q2_K", 2), ("tq2_0", 2), ("q4_0", 4), ("f16", None)):
                for thr in thread_counts:
                    t_g = ggml.time_matmul(kind, m0, k, x, thr, repeats, rng)
                    lut = luts.get((m0, k, bits, n, thr)) if bits else None
                    ratio = f"{t_g / lut:>8.2f}" if lut else f"{'':>8}"
                    print(f"{m0:>5}x{k:<6} {kind:>6} {n:>4} {thr:>3} {t_g * 1e6:>11.0f} "
                          f"{lut * 1e6 if lut else float('nan'):>10.0f} {ratio}", flush=True)


if __name__ == "__main__":
    main()
