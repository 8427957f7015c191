"""Every rule of section 1.5 is checked up front, and the error says which rule and what would fit."""

import numpy as np
import pytest

import tmac_convert as tc
from tmac_convert import LayoutError, TmacError


def _pack(m0=64, k=256, bits=2, bm=128, kfactor=16, gs=128, zeros=False, name="blk.0.attn_q.weight"):
    codes = np.zeros((m0, k), dtype=np.uint8)
    scales = np.ones((m0, k // gs), dtype=np.float16)
    return tc.pack(codes, scales, scales if zeros else None, bits=bits, bm=bm, kfactor=kfactor, name=name)


@pytest.mark.parametrize("kwargs, rule, hint", [
    (dict(bits=5), "bits in {1,2,3,4}", "(1, 2, 3, 4)"),
    (dict(bits=8), "bits in {1,2,3,4}", "(1, 2, 3, 4)"),
    (dict(m0=60, gs=128), "M0 % 8 == 0", "blocks of 8"),
    (dict(bm=48), "bm % 32 == 0", "[32, 64, 128]"),
    (dict(bits=3, m0=128, bm=128), "bm % (8*bits) == 0", "[96, 192, 384]"),
    (dict(bm=256), "(M0*bits) % bm == 0", "[32, 64, 128]"),
    (dict(k=96, gs=96, kfactor=16), "K % (4*kfactor) == 0", "[1, 2, 4, 8]"),
    (dict(gs=32, kfactor=16), "group_size % (4*kfactor) == 0", "[1, 2, 4, 8]"),
])
def test_broken_layout_rule_is_named_with_a_fix(kwargs, rule, hint):
    with pytest.raises(LayoutError) as e:
        _pack(**kwargs)
    assert e.value.rule == rule
    assert hint in str(e.value)
    assert "blk.0.attn_q.weight" in str(e.value)


def test_codes_out_of_range_are_rejected_on_both_paths():
    codes = np.zeros((64, 256), dtype=np.uint8)
    codes[3, 5] = 4
    with pytest.raises(LayoutError, match=r"\[0, 4\).*max 4") as e:
        tc.pack(codes, np.ones((64, 2), np.float16), bits=2, bm=128, kfactor=16, name="w")
    assert e.value.rule == "code range"
    with pytest.raises(LayoutError, match="code range|lie in"):
        tc.pack(codes.astype(np.int32) - 1, np.ones((64, 2), np.float16), bits=2, bm=128, kfactor=16)


def test_scales_that_do_not_fit_the_codes_are_rejected():
    codes = np.zeros((64, 256), dtype=np.uint8)
    with pytest.raises(LayoutError, match="scales shape"):
        tc.pack(codes, np.ones((32, 2), np.float16), bits=2, bm=128, kfactor=16)
    with pytest.raises(LayoutError, match="scales shape"):
        tc.pack(codes, np.ones((64, 3), np.float16), bits=2, bm=128, kfactor=16)
    with pytest.raises(LayoutError, match="per-tensor scale must have shape"):
        tc.pack(codes, np.ones(3, np.float32), bits=2, bm=128, kfactor=16)
    with pytest.raises(LayoutError, match="zero offsets are not supported"):
        tc.pack(codes, np.ones(1, np.float32), np.ones(1, np.float32), bits=2, bm=128, kfactor=16)
    with pytest.raises(LayoutError, match="zeros must be float"):
        tc.pack(codes, np.ones((64, 2), np.float16), np.ones((64, 1), np.float16), bits=2, bm=128, kfactor=16)
    with pytest.raises(LayoutError, match="floating point"):
        tc.pack(codes, np.ones((64, 2), np.int32), bits=2, bm=128, kfactor=16)


def test_unpack_checks_the_blob_length_exactly():
    blob = _pack(zeros=True)
    kw = dict(m=64, k=256, bits=2, group_size=128, bm=128, kfactor=16)
    tc.unpack(blob, zero_point=True, **kw)
    for bad in (blob[:-1], np.concatenate([blob, blob[:4]])):
        with pytest.raises(LayoutError, match="blob is .* bytes") as e:
            tc.unpack(bad, zero_point=True, **kw)
        assert e.value.rule == "blob length"
    with pytest.raises(LayoutError, match="needs 4608 bytes for group scales or 4100"):
        tc.unpack(blob, zero_point=False, **kw)


def test_per_tensor_scale_is_told_apart_from_per_channel_by_length():
    codes = np.random.default_rng(0).integers(0, 4, (64, 256), dtype=np.uint8)
    per_tensor = tc.pack(codes, np.array([0.5], np.float32), bits=2, bm=128, kfactor=16)
    per_channel = tc.pack(codes, np.full((64, 1), 0.5, np.float32), bits=2, bm=128, kfactor=16)
    kw = dict(m=64, k=256, bits=2, group_size=256, zero_point=False, bm=128, kfactor=16)
    assert tc.unpack(per_tensor, **kw)[1].shape == (1,)
    assert tc.unpack(per_channel, **kw)[1].shape == (64, 1)


def test_layout_errors_are_the_tools_own_error_type():
    assert issubclass(LayoutError, TmacError)
    with pytest.raises(TmacError):
        _pack(bm=7)
