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
