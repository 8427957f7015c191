"""pack needs little memory beyond its output: at most 2x the blob (the issue's bar), measured by tracemalloc."""

import tracemalloc

import numpy as np
import pytest

import tmac_convert as tc


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("bits, zp", [(2, True), (4, False)])
def test_pack_peak_extra_memory_is_at_most_twice_the_output(bits, zp, threads):
    rng = np.random.default_rng(0)
    m0, k, gs = 2048, 2048, 128
    codes = rng.integers(0, 1 << bits, (m0, k), dtype=np.uint8)
    scales = rng.random((m0, k // gs)).astype(np.float16)
    zeros = scales.copy() if zp else None
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        blob = tc.pack(codes, scales, zeros, bits=bits, bm=256, kfactor=16, threads=threads)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (peak - before) <= 2 * blob.nbytes
