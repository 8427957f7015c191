"""The native LUT kernels (every path this machine runs) give the numpy reference's result bit for bit.

The reference fixes the order of every float32 operation and the native paths repeat it, so the documented
tolerance between them is zero: these tests compare with ``np.array_equal``.
"""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tmac_convert as tc
from tmac_convert import kernels
from tmac_convert.errors import TmacError
from tmac_convert.kernels import _native, reference

from .test_kernels_cases import admissible_ags, golden_cases, layouts, make_case, nmse

native = _native.native
pytestmark = pytest.mark.skipif(native is None, reason="native LUT kernels not built")
PATHS = [p for p in kernels.available_paths() if p != "reference"]
GOLDEN = golden_cases()


def test_auto_runs_the_widest_x86_path():
    # the project's machines have AVX2 (environment notes); on others this documents what ran
    if "avx2" not in PATHS:
        pytest.skip(f"no AVX2 here: paths {PATHS}")
    assert kernels.resolve_path() == ("avx512" if "avx512" in PATHS else "avx2")


@pytest.mark.parametrize("name,case", GOLDEN, ids=[n for n, _ in GOLDEN])
def test_golden_layouts_native_equals_reference(name, case):
    m0, k = case.qt.shape
    x = np.random.default_rng(5).standard_normal((3, k)).astype(np.float32)
    for ags in admissible_ags(k, case.kfactor):
        for lut, fa in (("int8", False), ("float", False), ("int8", True)):
            want = kernels.gemm(case.blob, x, **case.kw, act_group_size=ags, lut=lut, fast_aggregation=fa,
                                path="reference")
            for path in PATHS:
                got = kernels.gemm(case.blob, x, **case.kw, act_group_size=ags, lut=lut, fast_aggregation=fa,
                                   path=path, threads=2)
                assert np.array_equal(got, want), (path, ags, lut, fa)


@settings(max_examples=30)
@given(layout=layouts(), seed=st.integers(0, 2**32 - 1), n=st.integers(1, 5), fa=st.booleans(),
       lut=st.sampled_from(["int8", "float"]))
def test_random_layouts_every_path_equals_reference(layout, seed, n, fa, lut):
    bits, m0, k, bm, kfactor, gs, zp, per_tensor, ags = layout
    rng = np.random.default_rng(seed)
    case = make_case(rng, bits, m0, k, bm, kfactor, gs, zp, per_tensor)
    x = (rng.standard_normal((n, k)) * rng.uniform(0.01, 100)).astype(np.float32)
    p, _ = kernels.resolve(case.blob, **case.kw, act_group_size=ags)
    fa = fa and lut == "int8" and p.actk & (p.actk - 1) == 0
    want = kernels.gemm(case.blob, x, **case.kw, act_group_size=ags, lut=lut, fast_aggregation=fa, path="reference")
    for path in PATHS:
        for threads in (1, 3):
            got = kernels.gemm(case.blob, x, **case.kw, act_group_size=ags, lut=lut, fast_aggregation=fa, path=path,
                               threads=threads)
            assert np.array_equal(got, want), (path, threads)


@pytest.mark.parametrize("path", PATHS)
def test_native_meets_the_float64_bars(path):
    rng = np.random.default_rng(21)
    for bits in (1, 2, 3, 4):
        case = make_case(rng, bits, 384, 1024, 192 if bits == 3 else 128, 16, 128, bits % 2 == 0, False)
        x = rng.standard_normal((4, 1024)).astype(np.float32)
        ref = x.astype(np.float64) @ case.dense().T
        assert nmse(kernels.gemm(case.blob, x, **case.kw, lut="float", path=path), ref) < 1e-9
        assert nmse(kernels.gemm(case.blob, x, **case.kw, lut="int8", path=path), ref) < 3e-4


# (K, kfactor, act group) triples the kernels admit (K % (4 kfactor) == 0)
BUILD_SHAPES = [(k, kf, ags) for k in (100, 256, 1056, 2048) for kf in (1, 8, 16, 32) if k % (4 * kf) == 0
                for ags in admissible_ags(k, kf)]


@settings(max_examples=200)  # cheap examples, many combinations
@given(seed=st.integers(0, 2**32 - 1), shape=st.sampled_from(BUILD_SHAPES), lut=st.sampled_from(["int8", "float"]),
       scale=st.sampled_from([1e-40, 1e-20, 1.0, 1e20]), kind=st.sampled_from(["normal", "ties", "zero group"]))
def test_native_tables_equal_reference_tables(seed, shape, lut, scale, kind):
    """Every path's tables, scales and biases equal the reference's, for the act and bias groups the kernels admit
    (bias group 4*min(ags/4, kfactor)): bias group counts that are and are not multiples of 8, a whole-K act group
    that is not a multiple of 32 activations (K = 100, kfactor 1), halfway cases of the rounding, and act groups
    of zeros."""
    k, kfactor, ags = shape
    bias_group = 4 * min(ags // 4, kfactor)
    rng = np.random.default_rng(seed)
    if kind == "ties":
        # integers, and in every act group one table (127, 127, 0, 0): scale 254/127 = 2, so the odd sums land on
        # halves of the quantisation step and the half-to-even rounding decides them
        x = rng.integers(-40, 41, (2, k)).astype(np.float32)
        x[:, 0::ags], x[:, 1::ags], x[:, 2::ags], x[:, 3::ags] = 127, 127, 0, 0
    else:
        x = (rng.standard_normal((2, k)) * scale).astype(np.float32)
        if kind == "zero group":
            g = rng.integers(0, k // ags)
            x[:, g * ags:(g + 1) * ags] = 0
    want = reference.build_lut(x, ags, bias_group, lut)
    for path in PATHS:
        table = np.empty_like(want[0])
        ls, lb = np.empty_like(want[1]), np.empty_like(want[2])
        native.build_lut(x, table, ls, lb, k, ags, bias_group, {"int8": 0, "float": 1}[lut], kernels._PATH_IDS[path])
        assert np.array_equal(table, want[0]) and np.array_equal(ls, want[1]) and np.array_equal(lb, want[2]), path


def test_result_does_not_depend_on_the_thread_count():
    rng = np.random.default_rng(4)
    case = make_case(rng, 2, 1024, 512, 128, 16, 128, True, False)   # 16 tiles
    x = rng.standard_normal((3, 512)).astype(np.float32)
    ys = [kernels.gemm(case.blob, x, **case.kw, threads=t) for t in (1, 2, 5, 16, 64)]
    assert all(np.array_equal(y, ys[0]) for y in ys)


@pytest.mark.parametrize("path", PATHS + ["reference"])
def test_dequant_baseline_computes_the_same_product(path):
    rng = np.random.default_rng(8)
    for bits, zp, per_tensor in ((1, False, False), (2, True, False), (2, False, True), (3, True, False), (4, False, False)):
        bm = 192 if bits == 3 else 256
        case = make_case(rng, bits, 192 if bits == 3 else 256, 512, bm, 16, 128, zp, per_tensor)
        x = rng.standard_normal((3, 512)).astype(np.float32)
        y = kernels.dequant_gemm(case.blob, x, **case.kw, path=path, threads=2)
        assert nmse(y, x.astype(np.float64) @ case.dense().T) < 1e-10


def test_environment_variable_forces_a_path(monkeypatch):
    monkeypatch.setenv(kernels.ENV_PATH, "scalar")
    assert kernels.resolve_path() == "scalar"
    monkeypatch.setenv(kernels.ENV_PATH, "reference")
    assert kernels.resolve_path() == "reference"
    monkeypatch.setenv(kernels.ENV_PATH, "neon" if "neon" not in PATHS else "bogus")
    with pytest.raises(TmacError, match="kernel path"):
        kernels.resolve_path()


def test_extreme_activations_stay_finite_and_exact_zero_gives_zero():
    case = make_case(np.random.default_rng(0), 2, 64, 256, 128, 16, 128, True, False)
    x = np.zeros((3, 256), np.float32)
    x[1] = 1e-42          # subnormal: 1/scale overflows, the tables quantise to 0
    x[2, ::7] = 3e30
    for path in PATHS:
        y = kernels.gemm(case.blob, x, **case.kw, path=path)
        assert np.array_equal(y[0], np.zeros(64, np.float32)) and np.isfinite(y).all()


def test_native_module_refuses_inconsistent_arguments():
    case = make_case(np.random.default_rng(0), 2, 64, 256, 128, 16, 128, False, False)
    x = np.zeros((1, 256), np.float32)
    y = np.empty((1, 64), np.float32)
    args = [case.blob, x, y, 64, 256, 2, 128, 0, 0, 128, 16, 64, 0, 0, 0.0, 0, 1]
    native.gemm(*args)
    for i, bad in ((0, case.blob[:100]), (2, np.empty((1, 8), np.float32)), (9, 96), (10, 5), (11, 48), (5, 7),
                   (15, 9)):
        wrong = list(args)
        wrong[i] = bad
        with pytest.raises(ValueError):
            native.gemm(*wrong)


def test_gemv_of_a_1d_row_matches_the_gemm_row():
    rng = np.random.default_rng(9)
    case = make_case(rng, 3, 128, 512, 192, 16, 64, True, False)
    x = rng.standard_normal((4, 512)).astype(np.float32)
    y = kernels.gemm(case.blob, x, **case.kw)
    assert all(np.array_equal(kernels.gemm(case.blob, x[i], **case.kw), y[i]) for i in range(4))


@pytest.mark.skipif(os.cpu_count() == 1, reason="one core")
def test_threads_none_uses_all_cores_and_agrees():
    case = make_case(np.random.default_rng(2), 4, 256, 256, 256, 8, 32, False, False)
    x = np.random.default_rng(3).standard_normal((2, 256)).astype(np.float32)
    assert np.array_equal(kernels.gemm(case.blob, x, **case.kw, act_group_size=32),
                          kernels.gemm(case.blob, x, **case.kw, act_group_size=32, threads=1))


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("ags", [32, 64, 128])
def test_integer_sums_at_their_largest_magnitude_are_exact(bits, ags):
    # Every weight code all ones (or all zeros) and every activation equal: each table entry looked up is +127
    # (or -127), so every sub-group's integer sums reach the largest magnitude they can have, where a kernel that
    # combines bit-planes or tables in int16 would overflow first.  kfactor 32 lets act group 128 make sub-groups
    # of 32 tables.
    m0, k, gs = 96 if bits == 3 else 64, 512, 128
    bm = 96 * bits if bits == 3 else 64 * bits
    rng = np.random.default_rng(ags * 10 + bits)
    scales = rng.uniform(0.002, 0.03, (m0, k // gs)).astype(np.float16)
    zeros = (rng.standard_normal((m0, k // gs)) * 0.01).astype(np.float16)
    for code in (0, (1 << bits) - 1):
        codes = np.full((m0, k), code, dtype=np.uint8)
        blob = tc.pack(codes, scales, zeros, bits=bits, bm=bm, kfactor=32)
        kw = dict(m=m0, k=k, bits=bits, group_size=gs, zero_point=True, bm=bm, kfactor=32, act_group_size=ags)
        x = np.stack([np.full(k, 0.5, np.float32), np.full(k, -3.0, np.float32)])
        want = kernels.gemm(blob, x, **kw, path="reference")
        for path in PATHS:
            assert np.array_equal(kernels.gemm(blob, x, **kw, path=path), want), (path, code, "row block")
            for r in range(2):  # one row: the GEMV kernel, whose sums are laid out differently
                assert np.array_equal(kernels.gemm(blob, x[r:r + 1], **kw, path=path), want[r:r + 1]), (path, code, r)
