"""Layout engine speed: native pack/unpack against the numpy reshape/transpose baseline, same process.

    python benchmarks/bench_layout.py [--repeat 5] [--threads N]

For each Llama-3-8B projection shape and bit setting it prints the best-of-N time of
  baseline  the numpy reshape/transpose implementation of section 1.2 (tmac_convert's numpy fallback),
  pack/1    the native pack on one thread,
  pack/N    the native pack on N threads,
  unpack/1  the native unpack on one thread,
with ratios against the baseline, and the peak extra memory of pack relative to its output size.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

import tmac_convert as tc
from tmac_convert.layouts import default_tiles, format_a
from tmac_convert.parallel import cpu_count

SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336)]
SETTINGS = [("2-bit gs128 zp", 2, 128, True), ("4-bit gs128", 4, 128, False)]


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def baseline_pack(codes, scales, zeros, bits, bm, kfactor):
    """The numpy path of tmac_convert.pack, forced (native module switched off)."""
    native = format_a.native
    format_a.native = None
    try:
        return tc.pack(codes, scales, zeros, bits=bits, bm=bm, kfactor=kfactor)
    finally:
        format_a.native = native


def peak_extra_ratio(fn, out_bytes: int) -> float:
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    blob = fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del blob
    return (peak - base) / out_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=cpu_count())
    args = ap.parse_args()
    assert format_a.native is not None, "native layout module not built (pip install -e .)"
    rng = np.random.default_rng(0)
    print(f"cores {cpu_count()}, threads {args.threads}, best of {args.repeat}")
    head = (f"{'shape':>12} {'setting':>15} {'tiles':>9} {'baseline':>9} {'pack/1':>8} {'pack/N':>8} "
            f"{'unpack/1':>9} {'x base/1':>8} {'x base/N':>8} {'x unpk':>7} {'mem/out':>7}")
    print(head)
    for m0, k in SHAPES:
        for label, bits, gs, zp in SETTINGS:
            codes = rng.integers(0, 1 << bits, (m0, k), dtype=np.uint8)
            scales = (rng.random((m0, k // gs)) * 0.01).astype(np.float16)
            zeros = (rng.standard_normal((m0, k // gs)) * 0.01).astype(np.float16) if zp else None
            t = default_tiles(m0, k, bits, gs)
            kw = dict(bits=bits, bm=t.bm, kfactor=t.kfactor)
            ref = baseline_pack(codes, scales, zeros, **kw)
            blob = tc.pack(codes, scales, zeros, threads=1, **kw)
            assert np.array_equal(ref, blob), "native and baseline bytes differ"
            t_base = best(lambda: baseline_pack(codes, scales, zeros, **kw), max(1, args.repeat // 2))
            t_one = best(lambda: tc.pack(codes, scales, zeros, threads=1, **kw), args.repeat)
            t_all = best(lambda: tc.pack(codes, scales, zeros, threads=args.threads, **kw), args.repeat)
            ukw = dict(m=m0, k=k, bits=bits, group_size=gs, zero_point=zp, bm=t.bm, kfactor=t.kfactor, threads=1)
            t_un = best(lambda: tc.unpack(blob, **ukw), args.repeat)
            mem = peak_extra_ratio(lambda: tc.pack(codes, scales, zeros, threads=args.threads, **kw), blob.nbytes)
            print(f"{m0:>5}x{k:<6} {label:>15} {t.bm:>4}/{t.kfactor:<4} {t_base * 1e3:>7.1f}ms {t_one * 1e3:>6.2f}ms "
                  f"{t_all * 1e3:>6.2f}ms {t_un * 1e3:>7.2f}ms {t_base / t_one:>7.1f}x {t_base / t_all:>7.1f}x "
                  f"{t_base / t_un:>6.1f}x {mem:>6.2f}x")


if __name__ == "__main__":
    main()
