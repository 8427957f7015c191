"""T-MAC zero offsets from GPTQ zeros equal float16 arithmetic bit for bit (what T-MAC's reference does)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tmac_convert.readers.gptq import _zero_offsets


@given(bits=st.sampled_from([1, 2, 3, 4]), fmt=st.sampled_from(["v1", "v2"]), seed=st.integers(0, 2**32 - 1))
def test_zero_offsets_equal_numpy_float16_arithmetic(bits, fmt, seed):
    rng = np.random.default_rng(seed)
    stored = rng.integers(0, 1 << bits, (16, 64)).astype(np.uint8)
    bits16 = rng.integers(0, 1 << 16, (16, 64), dtype=np.uint16)   # every float16, NaN/inf included
    s = bits16.view(np.float16)
    z = stored.astype(np.float16) + (np.float16(1) if fmt == "v1" else np.float16(0))
    with np.errstate(all="ignore"):
        want = (z - np.float16(1 << (bits - 1))) * s
        got = _zero_offsets(stored, s, bits, fmt)
    assert got.dtype == np.float16
    same = (got.view(np.uint16) == want.view(np.uint16)) | (np.isnan(got) & np.isnan(want))
    assert same.all()


@pytest.mark.parametrize("facts", ["numpy", "scan"])
@given(bits=st.sampled_from([1, 2, 3, 4]), seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(["f2", "f4"]),
       zero_frac=st.sampled_from([0.0, 0.5, 1.0]), sym=st.booleans(), bad=st.sampled_from([None, "inf", "nan"]))
def test_zero_offset_facts_agree_with_computing_every_offset(facts, bits, seed, dtype, zero_frac, sym, bad):
    # open() decides "all z' are 0" and "all z' are finite" without computing z'; the answers must be
    # those of the computed offsets, for every finite scale (zero, subnormal, huge) and every stored zero;
    # "scan" is what open() calls (one native pass for float16 scales), "numpy" its fallback
    from tmac_convert.readers.gptq import _scale_facts, _zero_offset_facts

    rng = np.random.default_rng(seed)
    half = 1 << (bits - 1)
    if sym:  # one stored value everywhere, as symmetric checkpoints write (v1: half - 1, v2: half)
        stored = np.full((8, 32), rng.choice([half - 1, half]), np.uint8)
    else:
        stored = rng.integers(0, 1 << bits, (8, 32)).astype(np.uint8)
    width = 16 if dtype == "f2" else 32
    raw = rng.integers(0, 1 << width, (8, 32), dtype=np.uint64).astype(f"u{width // 8}")
    s = raw.view(dtype)
    s = np.where(np.isfinite(s), s, s.dtype.type(1))
    s[rng.random(s.shape) < zero_frac] = 0
    if facts == "numpy":
        if bad is not None:
            return
        zero, finite = _zero_offset_facts(stored, s, bits)
    else:
        if bad is not None:
            s[rng.integers(0, 8), rng.integers(0, 32)] = -np.inf if bad == "inf" else np.nan
        ok, zero, finite = _scale_facts(stored, s, bits)
        assert ok == (bad is None)
        if not ok:
            return
    for fmt in ("v1", "v2"):
        with np.errstate(all="ignore"):
            z = _zero_offsets(stored, s, bits, fmt)
        assert zero[fmt] == (not np.any(z)), fmt
        assert finite[fmt] == bool(np.all(np.isfinite(z))), fmt


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("fmt", ["v1", "v2"])
def test_native_offsets_are_numpys_float16_arithmetic_for_every_scale(bits, fmt):
    """The F16C path gives, bit for bit, numpy's float16 ``(z - 2**(b-1))·s`` and the transposed scales,
    for every finite float16 scale (zeros, subnormals and those whose offset overflows to infinity
    included) times every stored zero field, and for a column count that is not a multiple of 8."""
    from tmac_convert.readers.gptq import _zero_offsets
    from tmac_convert.readers.gptq_bits import transpose_scales_and_offsets

    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    s = every[np.isfinite(every)]
    fields = np.arange(1 << bits, dtype=np.uint8)
    m0 = 4093                                                             # 7 groups of all the scales
    s = np.resize(s, (len(s) * len(fields) // m0 + 1) * m0).reshape(-1, m0)
    stored = np.resize(np.repeat(fields, 7), s.size).reshape(s.shape)
    got = transpose_scales_and_offsets(stored, s, bits, 1 if fmt == "v1" else 0, True)
    if got is None:
        pytest.skip("no native F16C path here")
    with np.errstate(over="ignore"):
        want = _zero_offsets(stored, s, bits, fmt).T
    assert np.array_equal(got[0].view(np.uint16), s.T.view(np.uint16))
    assert np.array_equal(got[1].view(np.uint16), want.view(np.uint16))
    assert np.isinf(want).any() == (bits > 1)                            # |z - 2**(b-1)| >= 2 can overflow
    scales_only = transpose_scales_and_offsets(stored, s, bits, 0, False)
    assert scales_only[1] is None and np.array_equal(scales_only[0], s.T)
