"""The intermediate form validates every invariant and dequantises in T-MAC's convention."""

import numpy as np
import pytest

from tmac_convert import QuantTensor, TmacError


def _qt(**kw):
    base = dict(name="blk.0.ffn_up.weight", codes=np.zeros((16, 64), np.uint8), scales=np.ones((16, 2), np.float16),
                zeros=None, bits=2, group_size=32)
    base.update(kw)
    return QuantTensor(**base)


def test_dequantize_follows_the_tmac_convention(rng):
    codes = rng.integers(0, 8, (16, 64), dtype=np.uint8)
    s = rng.random((16, 2)).astype(np.float16)
    z = rng.standard_normal((16, 2)).astype(np.float16)
    w = _qt(codes=codes, scales=s, zeros=z, bits=3).dequantize(np.float64)
    k = np.arange(64) // 32
    want = (codes.astype(np.float64) - 4) * s.astype(np.float64)[:, k] - z.astype(np.float64)[:, k]
    assert np.array_equal(w, want)


def test_per_tensor_scale_dequantizes_with_one_scale(rng):
    codes = rng.integers(1, 4, (16, 64), dtype=np.uint8)
    w = _qt(codes=codes, scales=np.array([0.25], np.float32), group_size=64).dequantize()
    assert np.array_equal(w, ((codes.astype(np.float32) - 2) * 0.25))


@pytest.mark.parametrize("kw, rule", [
    (dict(bits=8), "bits"),
    (dict(codes=np.full((16, 64), 4, np.uint8)), "code range"),
    (dict(codes=np.zeros((16, 64), np.int16)), "codes dtype"),
    (dict(scales=np.ones((16, 3), np.float16)), "scales shape"),
    (dict(group_size=48), "K % group_size == 0"),
    (dict(scales=np.array([1.0, np.nan] * 16, np.float32).reshape(16, 2)), "finite scales"),
    (dict(scales=np.full((16, 2), np.inf, np.float32)), "finite scales"),
    (dict(zeros=np.ones((16, 1), np.float16)), "zeros shape"),
    (dict(zeros=np.full((16, 2), np.nan, np.float16)), "finite zeros"),
    (dict(scales=np.ones(1, np.float32), group_size=32), "group size"),
    (dict(scales=np.ones(1, np.float32), group_size=64, zeros=np.ones(1, np.float32)), "zeros with per-tensor scale"),
])
def test_broken_invariant_names_tensor_and_rule(kw, rule):
    with pytest.raises(TmacError) as e:
        _qt(**kw)
    assert e.value.rule == rule
    assert "blk.0.ffn_up.weight" in str(e.value)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_all_finite_agrees_with_isfinite_on_every_float16_bit_pattern(dtype):
    """The bit test for float16 (an all-ones exponent is infinity or NaN) gives numpy's answer for every one
    of the 65536 float16 values, alone and among finite ones; other dtypes use isfinite itself."""
    from tmac_convert.format.tensor import all_finite

    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    with np.errstate(invalid="ignore", over="ignore"):
        values = every.astype(dtype)
    finite = np.isfinite(values)
    assert 0 < finite.sum() < len(values)
    assert not all_finite(values) and all_finite(values[finite])
    for v in values[~finite][:: 97]:
        assert not all_finite(np.concatenate([values[finite][:1000], [v]]).astype(dtype))
    assert all_finite(values[finite].reshape(-1, 2)[:, ::2])            # strided views too


def test_codes_out_of_range_are_refused_by_validate_or_else_by_the_pack():
    from tmac_convert.errors import LayoutError
    from tmac_convert.layouts.format_a import pack

    codes = np.zeros((32, 64), np.uint8)
    codes[5, 7] = 4  # out of range for 2 bits
    scales = np.ones((32, 1), np.float16)
    with pytest.raises(TmacError, match="code 4 out of range"):
        QuantTensor("t", codes, scales, bits=2, group_size=64)
    # a producer that vouches for its codes skips the scan; the layout still refuses to write them
    qt = QuantTensor("t", codes, scales, bits=2, group_size=64, codes_in_range=True)
    with pytest.raises(LayoutError, match=r"codes must lie in \[0, 4\)"):
        pack(qt.codes, qt.scales, bits=2, bm=32, kfactor=16, name=qt.name)
