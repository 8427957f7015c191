"""pack then unpack gives back the codes, scales and zeros exactly, for every admissible layout."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tmac_convert as tc
from tmac_convert.layouts import bm_candidates, format_a, kfactor_candidates

from .conftest import layout_native


@st.composite
def layouts(draw):
    bits = draw(st.sampled_from([1, 2, 3, 4]))
    m0 = 8 * draw(st.integers(1, 48))
    if not bm_candidates(m0, bits):
        m0 *= 12
    bm = draw(st.sampled_from(bm_candidates(m0, bits)))
    per_tensor = draw(st.booleans()) and bits == 2
    k = 32 * draw(st.integers(1, 24))
    if per_tensor:
        gs = k
    else:
        gs = draw(st.sampled_from([d for d in range(4, k + 1, 4) if k % d == 0 and kfactor_candidates(k, d)]))
    kfactor = draw(st.sampled_from(kfactor_candidates(k, None if per_tensor else gs)))
    zp = (not per_tensor) and draw(st.booleans())
    return bits, m0, k, bm, kfactor, gs, zp, per_tensor


def _arrays(rng, bits, m0, k, gs, zp, per_tensor):
    codes = rng.integers(0, 1 << bits, (m0, k), dtype=np.uint8)
    if per_tensor:
        return codes, rng.random(1).astype(np.float32), None
    scales = (rng.standard_normal((m0, k // gs)) * 0.01).astype(np.float16)
    zeros = (rng.standard_normal((m0, k // gs)) * 0.01).astype(np.float16) if zp else None
    return codes, scales, zeros


@pytest.mark.parametrize("use_native", [True, False], ids=["native", "numpy"])
@given(layout=layouts(), seed=st.integers(0, 2**32 - 1), threads=st.sampled_from([1, 2, 4]))
def test_pack_unpack_round_trip(use_native, layout, seed, threads):
    bits, m0, k, bm, kfactor, gs, zp, per_tensor = layout
    codes, scales, zeros = _arrays(np.random.default_rng(seed), bits, m0, k, gs, zp, per_tensor)
    with layout_native(use_native):
        blob = tc.pack(codes, scales, zeros, bits=bits, bm=bm, kfactor=kfactor, threads=threads)
        c2, s2, z2 = tc.unpack(blob, m=m0, k=k, bits=bits, group_size=gs, zero_point=zp, bm=bm, kfactor=kfactor,
                               threads=threads)
    assert blob.size == format_a.blob_nbytes(m0, k, bits, gs, zp, per_tensor)
    assert np.array_equal(c2, codes)
    assert s2.dtype == np.float32 and np.array_equal(s2, scales.astype(np.float32))
    assert (z2 is None) == (zeros is None)
    if zeros is not None:
        assert np.array_equal(z2, zeros.astype(np.float32))


@given(layout=layouts(), seed=st.integers(0, 2**32 - 1))
def test_native_and_numpy_paths_give_identical_bytes(layout, seed):
    bits, m0, k, bm, kfactor, gs, zp, per_tensor = layout
    codes, scales, zeros = _arrays(np.random.default_rng(seed), bits, m0, k, gs, zp, per_tensor)
    with layout_native(True):
        a = tc.pack(codes, scales, zeros, bits=bits, bm=bm, kfactor=kfactor)
    with layout_native(False):
        b = tc.pack(codes, scales, zeros, bits=bits, bm=bm, kfactor=kfactor)
    assert np.array_equal(a, b)


def _pack_paths() -> list[str]:
    from tmac_convert.layouts import _native

    return [] if _native.native is None else _native.native.paths()


@pytest.mark.parametrize("path", _pack_paths())
def test_every_native_pack_path_gives_the_portable_loops_bytes(rng, path):
    """Each SIMD pack (SSE2, AVX2 where the CPU has it) gives the bytes of the portable C loop, for every bit
    width and for kfactors that fill 16-group chunks, leave a part-chunk (8, 24) or pair chunks across
    kfactor steps; the portable loop itself is held to the numpy statement by the tests above."""
    from tmac_convert.layouts import _native

    for bits, m0, k, bm, kfactor in [(2, 64, 256, 128, 16), (3, 128, 384, 192, 8), (4, 32, 128, 128, 32),
                                      (1, 256, 64, 256, 4), (2, 64, 384, 64, 24), (3, 64, 768, 96, 12),
                                      (4, 16, 1024, 64, 64), (2, 32, 96, 64, 8)]:
        codes = rng.integers(0, 1 << bits, (m0, k), dtype=np.uint8)
        scales = rng.random((m0, 1)).astype(np.float32)
        prev = _native.native.set_path("scalar")
        try:
            slow = tc.pack(codes, scales, bits=bits, bm=bm, kfactor=kfactor)
            _native.native.set_path(path)
            fast = tc.pack(codes, scales, bits=bits, bm=bm, kfactor=kfactor)
            bad = codes.copy()
            bad[m0 - 1, k - 1] = 1 << bits                                 # the range check sees every code
            with pytest.raises(Exception, match="code"):
                tc.pack(bad, scales, bits=bits, bm=bm, kfactor=kfactor)
        finally:
            _native.native.set_path(prev)
        assert np.array_equal(fast, slow), (path, bits, kfactor)


def test_an_unknown_pack_path_is_refused():
    from tmac_convert.layouts import _native

    if _native.native is None:
        pytest.skip("native layout not built")
    with pytest.raises(ValueError, match="not available"):
        _native.native.set_path("avx9")


def test_large_tensor_uses_threads_and_stays_exact(rng):
    """Above the parallel threshold the work is split over tiles; bytes do not depend on the split."""
    codes = rng.integers(0, 4, (1024, 4096), dtype=np.uint8)
    scales = rng.random((1024, 32)).astype(np.float16)
    one = tc.pack(codes, scales, scales, bits=2, bm=256, kfactor=16, threads=1)
    many = tc.pack(codes, scales, scales, bits=2, bm=256, kfactor=16, threads=3)
    assert np.array_equal(one, many)
    back = tc.unpack(many, m=1024, k=4096, bits=2, group_size=128, zero_point=True, bm=256, kfactor=16, threads=3)
    assert np.array_equal(back[0], codes)


@pytest.mark.parametrize("zp", [False, True])
def test_pack_into_a_reused_buffer_writes_every_byte(rng, zp):
    """A buffer handed back for reuse holds the previous tensor's bytes: packing into it must leave none of
    them (the blob equals a fresh pack), and a buffer of the wrong length or type is refused."""
    from tmac_convert.errors import LayoutError

    codes = rng.integers(0, 4, (64, 256), dtype=np.uint8)
    scales = rng.random((64, 2)).astype(np.float16)
    zeros = rng.random((64, 2)).astype(np.float16) if zp else None
    fresh = tc.pack(codes, scales, zeros, bits=2, bm=128, kfactor=16)
    for garbage in (0x00, 0xFF, 0xA5):
        out = np.full(fresh.shape, garbage, np.uint8)
        got = tc.pack(codes, scales, zeros, bits=2, bm=128, kfactor=16, out=out)
        assert got is out and np.array_equal(out, fresh)
    for bad in (np.empty(fresh.size + 1, np.uint8), np.empty(fresh.size, np.int8),
                np.empty(2 * fresh.size, np.uint8)[::2]):
        with pytest.raises(LayoutError, match="output buffer"):
            tc.pack(codes, scales, zeros, bits=2, bm=128, kfactor=16, out=bad)
