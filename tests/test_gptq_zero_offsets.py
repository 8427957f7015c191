"""T-MAC zero offsets from GPTQ zeros equal float16 arithmetic bit for bit (what T-MAC's reference does)."""

import numpy as np
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


@given(bits=st.sampled_from([1, 2, 3, 4]), seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(["f2", "f4"]),
       zero_frac=st.sampled_from([0.0, 0.5, 1.0]), sym=st.booleans())
def test_zero_offset_facts_agree_with_computing_every_offset(bits, seed, dtype, zero_frac, sym):
    # open() decides "all z' are 0" and "all z' are finite" without computing z'; the answers must be
    # those of the computed offsets, for every finite scale (zero, subnormal, huge) and every stored zero
    from tmac_convert.readers.gptq import _zero_offset_facts

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
    zero, finite = _zero_offset_facts(stored, s, bits)
    for fmt in ("v1", "v2"):
        with np.errstate(all="ignore"):
            z = _zero_offsets(stored, s, bits, fmt)
        assert zero[fmt] == (not np.any(z)), fmt
        assert finite[fmt] == bool(np.all(np.isfinite(z))), fmt
