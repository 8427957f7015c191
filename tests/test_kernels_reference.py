"""The numpy reference of T-MAC's LUT GEMM, read from the blob itself, against float64 math on the source weights.

Bars (issue 6): NMSE below 1e-9 with float tables and below 3e-4 with the int8 LUT, on Gaussian activations.
"""

import ctypes
import ctypes.util

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tmac_convert import kernels
from tmac_convert.errors import LayoutError, TmacError
from tmac_convert.kernels import reference

from .test_kernels_cases import admissible_ags, golden_cases, layouts, make_case, nmse

GOLDEN = golden_cases()


def run_ref(case, x, **kw):
    return kernels.gemm(case.blob, x, **case.kw, path="reference", **kw)


_LIBM = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
_LIBM.fmaf.restype, _LIBM.fmaf.argtypes = ctypes.c_float, [ctypes.c_float] * 3


def libm_fmaf(a, b, c) -> np.ndarray:
    """C's fmaf, element by element (broadcast): the definition the reference's fma32 must meet."""
    a, b, c = np.broadcast_arrays(*(np.asarray(v, dtype=np.float32) for v in (a, b, c)))
    out = [_LIBM.fmaf(float(x), float(y), float(z)) for x, y, z in zip(a.ravel(), b.ravel(), c.ravel())]
    return np.array(out, dtype=np.float32).reshape(a.shape)


# ---------------------------------------------------------------------------------------------
# fused multiply-add

_F32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(max_examples=300)
@given(a=_F32, b=_F32, c=_F32)
def test_fma32_rounds_once_like_c_fmaf(a, b, c):
    with np.errstate(over="ignore"):
        assert libm_fmaf(a, b, c).view(np.int32) == reference.fma32(np.float32(a), np.float32(b), np.float32(c)).view(np.int32)


def test_fma32_is_fmaf_where_mul_then_add_rounds_differently():
    rng = np.random.default_rng(7)
    a = rng.standard_normal(4000).astype(np.float32)
    b = rng.standard_normal(4000).astype(np.float32)
    c = (-(a.astype(np.float64) * b) * rng.choice([1.0, 1.0 + 2.0**-20], 4000)).astype(np.float32)  # cancellation
    want = libm_fmaf(a, b, c)
    assert np.array_equal(reference.fma32(a, b, c).view(np.int32), want.view(np.int32))
    assert np.count_nonzero((a * b + c) != want) > 1000   # the cases where fusing matters are well represented


# ---------------------------------------------------------------------------------------------
# tables

@given(seed=st.integers(0, 2**32 - 1), k=st.sampled_from([64, 128, 256]), ags=st.sampled_from([32, 64, -1]))
def test_float_tables_hold_every_signed_sum_and_mirror(seed, k, ags):
    x = np.random.default_rng(seed).standard_normal((2, k)).astype(np.float32)
    ags = k if ags == -1 else ags
    table, scale, bias = reference.build_lut(x, ags, ags, "float")
    c = np.arange(16)
    signs = 2.0 * ((c[:, None] >> np.arange(4)) & 1) - 1.0                          # [16, 4]
    exact = np.einsum("njt,ct->njc", x.reshape(2, k // 4, 4).astype(np.float64), signs)
    assert np.allclose(table, exact, rtol=0, atol=1e-5)
    assert np.array_equal(table[..., ::-1], -table)                                # LUT[15 - c] = -LUT[c]
    assert np.all(scale == 1)
    assert np.allclose(bias, -x.reshape(2, -1, ags).sum(-1), atol=1e-4)


@given(seed=st.integers(0, 2**32 - 1), ags=st.sampled_from([32, 64, 256]))
def test_int8_tables_round_half_even_within_each_act_group(seed, ags):
    x = (np.random.default_rng(seed).standard_normal((3, 256)) * 3).astype(np.float32)
    q, scale, _ = reference.build_lut(x, ags, ags, "int8")
    fl, _, _ = reference.build_lut(x, ags, ags, "float")
    amax = np.abs(x).reshape(3, -1, ags // 4, 4).sum(-1).max(-1)                   # largest |entry| per group
    assert np.allclose(scale, amax / 127, rtol=1e-6)
    s = np.repeat(scale, ags // 4, axis=1)[:, :, None].astype(np.float64)
    assert q.dtype == np.int8 and np.abs(q).max() <= 127
    assert np.all(np.abs(q - fl / s) <= 0.5 + 1e-4)                               # nearest integer
    assert np.array_equal(q[..., ::-1], -q)
    assert np.abs(q.reshape(3, -1, ags // 4 * 16)).max(-1).min() == 127         # each group reaches full scale


def test_int8_rounding_is_half_to_even():
    # table 0 sets the group's scale to exactly 2^-6 (amax 127/64); tables 1 and 2 then sit on ties
    x = np.zeros((1, 32), dtype=np.float32)
    x[0, 0], x[0, 4], x[0, 8] = 127 / 64, 2.5 / 64, 3.5 / 64
    q, scale, _ = reference.build_lut(x, 32, 32, "int8")
    assert scale[0, 0] == np.float32(2.0 ** -6)
    assert list(q[0, 1, [15, 0]]) == [2, -2]      # 2.5 -> 2
    assert list(q[0, 2, [15, 0]]) == [4, -4]      # 3.5 -> 4
    assert q[0, 0, 15] == 127


def test_all_zero_activations_give_zero_tables_and_output():
    case = make_case(np.random.default_rng(0), 2, 64, 256, 128, 16, 128, True, False)
    y = run_ref(case, np.zeros((2, 256), dtype=np.float32))
    assert np.array_equal(y, np.zeros((2, 64), dtype=np.float32))


# ---------------------------------------------------------------------------------------------
# the GEMM against float64 math

@pytest.mark.parametrize("name,case", GOLDEN, ids=[n for n, _ in GOLDEN])
def test_golden_blobs_compute_the_source_product(name, case):
    m0, k = case.qt.shape
    x = np.random.default_rng(7).standard_normal((3, k)).astype(np.float32)
    ref = x.astype(np.float64) @ case.dense().T
    for ags in admissible_ags(k, case.kfactor):
        assert nmse(run_ref(case, x, act_group_size=ags, lut="float"), ref) < 1e-9
        assert nmse(run_ref(case, x, act_group_size=ags, lut="int8"), ref) < 3e-4


@settings(max_examples=25)
@given(layout=layouts(), seed=st.integers(0, 2**32 - 1))
def test_reference_meets_the_bars_on_random_layouts(layout, seed):
    bits, m0, k, bm, kfactor, gs, zp, per_tensor, ags = layout
    rng = np.random.default_rng(seed)
    case = make_case(rng, bits, m0, k, bm, kfactor, gs, zp, per_tensor)
    x = rng.standard_normal((2, k)).astype(np.float32)
    ref = x.astype(np.float64) @ case.dense().T
    assert nmse(run_ref(case, x, act_group_size=ags, lut="float"), ref) < 1e-9
    assert nmse(run_ref(case, x, act_group_size=ags, lut="int8"), ref) < 3e-4


def _spec_output(codes, s, z, x, bits, gs, kfactor, ags):
    """The int8 kernel's result written per output from the source codes, in reference.py's order of operations:
    per act sub-group the exact integer sums S_i of each bit-plane's lookups, combined as sum_i 2^i S_i before any
    float operation; per chunk the accumulator starts at the sub-groups' biases summed in order and takes
    fma(comb, table scale, acc) per sub-group; then C = fma(acc, s, C) (and C = fma(z', 2*bsum, C)) per chunk in K
    order, and y = C/2.  fma is C's fmaf, not the reference's emulation."""
    f32 = np.float32
    m0, k = codes.shape
    actk = min(ags // 4, kfactor)
    table, lscale, lbias = reference.build_lut(x, ags, 4 * actk)
    w4 = codes.reshape(m0, k // 4, 4).astype(np.int64)
    idx = [sum(((w4[:, :, t] >> i) & 1) << t for t in range(4)) for i in range(bits)]  # [M0, K/4] per plane
    y = np.empty((x.shape[0], m0), dtype=f32)
    for n in range(x.shape[0]):
        c = np.zeros(m0, dtype=f32)
        for ko in range(k // (4 * kfactor)):
            subs = range(ko * kfactor // actk, (ko + 1) * kfactor // actk)
            bsum = lbias[n, subs[0]]
            for sg in subs[1:]:
                bsum = bsum + lbias[n, sg]
            acc = np.full(m0, bsum, dtype=f32)
            for sg in subs:
                j = np.arange(sg * actk, (sg + 1) * actk)
                planes = [table[n, j, idx[i][:, j]].astype(np.int64).sum(axis=1) for i in range(bits)]
                comb = sum(planes[i] << i for i in range(bits))
                acc = libm_fmaf(comb.astype(f32), lscale[n, 4 * j[0] // ags], acc)
            g = 4 * ko * kfactor // gs
            c = libm_fmaf(acc, s[:, g], c)
            if z is not None:
                c = libm_fmaf(z[:, g], f32(2) * bsum, c)
        y[n] = f32(0.5) * c
    return y


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("zp", [False, True])
def test_int8_output_is_the_float_stage_of_each_outputs_planes_combined_in_integers(bits, zp):
    rng = np.random.default_rng(10 * bits + zp)
    m0, k, gs, kfactor, ags = 32, 256, 64, 16, 32  # two act sub-groups per chunk
    case = make_case(rng, bits, m0, k, 32 * bits, kfactor, gs, zp, False)
    x = rng.standard_normal((2, k)).astype(np.float32)
    z = None if case.qt.zeros is None else np.asarray(case.qt.zeros, dtype=np.float32)
    want = _spec_output(case.qt.codes, np.asarray(case.qt.scales, dtype=np.float32), z, x, bits, gs, kfactor, ags)
    assert np.array_equal(run_ref(case, x, act_group_size=ags, lut="int8"), want)


@pytest.mark.parametrize("ags", [64, -1])
def test_ternary_per_tensor_weights_meet_the_int8_bar(ags):
    rng = np.random.default_rng(3)
    case = make_case(rng, 2, 320, 1024, 320, 16, 1024, False, True, ternary=True)
    x = rng.standard_normal((4, 1024)).astype(np.float32)
    err = nmse(run_ref(case, x, act_group_size=ags), x.astype(np.float64) @ case.dense().T)
    assert err < 3e-4


def test_fast_aggregation_is_close_and_its_bias_correction_centres_the_error():
    rng = np.random.default_rng(11)
    case = make_case(rng, 2, 256, 1024, 256, 16, 128, False, False)
    x = rng.standard_normal((8, 1024)).astype(np.float32)
    ref = x.astype(np.float64) @ case.dense().T
    y = run_ref(case, x, fast_aggregation=True)
    assert nmse(y, ref) < 5e-3                        # rounding-halving adds lose about 1 bit per level
    # without the correction the halving adds are high by actk*L/4 per sub-group on every bit-plane
    p, flat = kernels.resolve(case.blob, **case.kw, act_group_size=64)
    orig = reference.fast_aggregation_bias_factor
    try:
        reference.fast_aggregation_bias_factor = lambda actk, bits: 0.0
        y0 = reference.gemm(flat[:p.wbytes], flat[p.wbytes:].view("<f4"), x, p, fast_aggregation=True)
    finally:
        reference.fast_aggregation_bias_factor = orig
    assert abs(np.mean(y - ref)) < 0.2 * abs(np.mean(y0 - ref))


def test_one_dimensional_activations_give_one_dimensional_output():
    case = make_case(np.random.default_rng(1), 4, 64, 256, 256, 8, 32, False, False)
    x = np.random.default_rng(2).standard_normal(256).astype(np.float32)
    y = kernels.gemm(case.blob, x, **case.kw, act_group_size=32, path="reference")
    assert y.shape == (64,)
    assert np.array_equal(y, kernels.gemm(case.blob, x[None], **case.kw, act_group_size=32, path="reference")[0])


# ---------------------------------------------------------------------------------------------
# errors

def test_an_act_group_the_tiles_do_not_admit_is_a_layout_error():
    case = make_case(np.random.default_rng(0), 4, 64, 256, 256, 8, 32, False, False)   # 4*kfactor = 32
    with pytest.raises(LayoutError, match="activation group size 64") as e:
        kernels.gemm(case.blob, np.zeros((1, 256), np.float32), **case.kw, act_group_size=64)
    assert e.value.rule == "(4*kfactor) % act_group_size == 0"


def test_a_blob_of_the_wrong_length_is_a_layout_error_naming_the_tensor():
    case = make_case(np.random.default_rng(0), 2, 64, 256, 128, 16, 128, True, False)
    with pytest.raises(LayoutError, match="blob is 5119 bytes") as e:
        kernels.gemm(case.blob[:-1], np.zeros((1, 256), np.float32), **case.kw, name="blk.3.ffn_up.weight")
    assert e.value.rule == "blob length" and e.value.tensor == "blk.3.ffn_up.weight"


def test_the_same_problem_checked_again_gives_the_same_answer_with_this_calls_tensor_name():
    """The checks are remembered per shape (decode calls the same shapes again and again): a good blob after a
    bad one of the same shape still runs, a bad one is refused every time, each error naming its own call."""
    case = make_case(np.random.default_rng(0), 2, 64, 256, 128, 16, 128, True, False)
    x = np.zeros((1, 256), np.float32)
    for name in ("blk.0.attn_q.weight", "blk.1.attn_q.weight", "blk.0.attn_q.weight"):
        with pytest.raises(LayoutError, match="blob is 5119 bytes") as e:
            kernels.gemm(case.blob[:-1], x, **case.kw, name=name)
        assert e.value.tensor == name
        assert kernels.gemm(case.blob, x, **case.kw, name=name).shape == (1, 64)
    with pytest.raises(LayoutError, match="bits must be"):
        kernels.gemm(case.blob, x, **{**case.kw, "bits": 5})


def test_per_tensor_scale_is_recognised_from_the_blob_length():
    case = make_case(np.random.default_rng(0), 2, 160, 256, 320, 16, 256, False, True)
    kw = dict(case.kw, group_size=128)   # the group size given is irrelevant for a per-tensor blob
    x = np.random.default_rng(1).standard_normal((1, 256)).astype(np.float32)
    assert nmse(kernels.gemm(case.blob, x, **kw, path="reference", lut="float"), x @ case.dense().T) < 1e-9


@pytest.mark.parametrize("x,match", [(np.zeros((1, 100), np.float32), "activations must be float32"),
                                     (np.zeros((1, 256), np.int32), "floating point"),
                                     (np.full((1, 256), np.nan, np.float32), "NaN")])
def test_bad_activations_are_named_errors(x, match):
    case = make_case(np.random.default_rng(0), 2, 64, 256, 128, 16, 128, False, False)
    with pytest.raises(TmacError, match=match):
        kernels.gemm(case.blob, x, **case.kw)


def test_bad_options_are_named_errors():
    case = make_case(np.random.default_rng(0), 2, 64, 256, 128, 16, 128, False, False)
    x = np.zeros((1, 256), np.float32)
    with pytest.raises(TmacError, match="lut must be"):
        kernels.gemm(case.blob, x, **case.kw, lut="int4")
    with pytest.raises(TmacError, match="unknown kernel path"):
        kernels.gemm(case.blob, x, **case.kw, path="sse9")
    with pytest.raises(TmacError, match="threads must be"):
        kernels.gemm(case.blob, x, **case.kw, threads=0)
    with pytest.raises(LayoutError, match="kfactor"):
        kernels.gemm(case.blob, x, **dict(case.kw, kfactor=3))


def test_reference_in_many_small_passes_gives_the_same_bits(monkeypatch):
    rng = np.random.default_rng(12)
    case = make_case(rng, 3, 128, 1024, 192, 16, 128, True, False)
    x = rng.standard_normal((3, 1024)).astype(np.float32)
    whole = run_ref(case, x)
    monkeypatch.setattr(reference, "_PASS_VALUES", 1)       # one chunk per pass
    assert np.array_equal(run_ref(case, x), whole)
