"""Cost of the per-tensor proof (:func:`tmac_convert.proof.verify_tensor`) against packing the same tensor.

    .venv/bin/python benchmarks/bench_proof.py [--threads 1] [--repeat 3]

For Llama-3-8B-shaped tensors at 1, 2 and 4 bits it times, in one run and on one thread (as each
pipeline worker verifies one tensor): packing (``tc.pack``), the previous single-judgement check's work
(the int8 kernel on two activation rows plus the float64 reference), and the full proof (layout proof
with float tables, int8 judgement against the tables' rounding, the rounding model's average).  It
prints seconds (best of ``--repeat``) and the ratios; only ratios from one run mean anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tmac_convert as tc  # noqa: E402
from tmac_convert import kernels, proof  # noqa: E402
from tmac_convert.layouts import default_tiles  # noqa: E402


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for bits, (m0, k) in ((2, (14336, 4096)), (2, (4096, 14336)), (4, (4096, 4096)), (1, (4096, 4096))):
        codes = rng.integers(0, 1 << bits, (m0, k), dtype=np.uint8)
        s = rng.uniform(0.01, 0.02, (m0, k // 128)).astype(np.float16)
        z = (rng.standard_normal((m0, k // 128)) * 0.01).astype(np.float16)
        qt = tc.QuantTensor("t", codes, s, z, bits, 128)
        t = default_tiles(m0, k, bits, 128)
        blob = tc.pack(codes, s, z, bits=bits, bm=t.bm, kfactor=t.kfactor, threads=args.threads)
        a, x = proof.activations(k, 2, 0)

        def previous() -> None:
            kernels.gemm(blob, x, m=m0, k=k, bits=bits, group_size=128, zero_point=True, bm=t.bm, kfactor=t.kfactor,
                         threads=args.threads)
            proof.reference_output(qt, a, args.threads)

        t_pack = best(lambda: tc.pack(codes, s, z, bits=bits, bm=t.bm, kfactor=t.kfactor, threads=args.threads),
                      args.repeat)
        t_prev = best(previous, args.repeat)
        t_proof = best(lambda: proof.verify_tensor(qt, blob, bm=t.bm, kfactor=t.kfactor, threads=args.threads),
                       args.repeat)
        r = proof.verify_tensor(qt, blob, bm=t.bm, kfactor=t.kfactor, threads=args.threads)
        rows.append({"bits": bits, "shape": [m0, k], "pack_s": round(t_pack, 4), "previous_check_s": round(t_prev, 4),
                     "proof_s": round(t_proof, 4), "proof_over_pack": round(t_proof / t_pack, 2),
                     "proof_over_previous": round(t_proof / t_prev, 2), "ok": r.ok,
                     "exact_error_over_limit": float(f"{r.exact_error / r.exact_limit:.3g}"),
                     "int8_ratio": round(r.int8_ratio, 6)})
        print(json.dumps(rows[-1]))


if __name__ == "__main__":
    main()
