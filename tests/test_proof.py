"""The converter's per-tensor proof: kernel on the blob vs float64 math on the source's own weights.

Two judgements (see :mod:`tmac_convert.proof`): the layout proof with exact (float) tables, judged
against the float32 rounding bound; and the int8 tables' error, judged against what their rounding
explains.  No correct blob may fail either; a layout error must fail the first on every bit width."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tmac_convert as tc
from tmac_convert import proof as verify
from tmac_convert.errors import LayoutError, VerificationError
from tmac_convert.kernels import _native, reference

from .test_kernels_cases import golden_cases, layouts, make_case

GOLDEN = golden_cases()


@pytest.mark.parametrize("name,case", GOLDEN, ids=[n for n, _ in GOLDEN])
def test_golden_blobs_verify(name, case):
    ags = 32 if case.kfactor == 8 else 64
    r = verify.verify_tensor(case.qt, case.blob, bm=case.bm, kfactor=case.kfactor, act_group_size=ags)
    assert r.ok and r.exact_ok and r.int8_ok and r.name == name and r.rows == 2
    assert r.exact_error < r.exact_limit / 20 and r.exact_nmse < 1e-12     # float tables: float32 rounding only
    assert abs(r.int8_ratio - 1) < 1e-3                                      # int8: exactly the tables' rounding
    verify.check(r)


@settings(max_examples=20)
@given(layout=layouts(), seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 5))
def test_reference_output_is_float64_math_on_the_dequantised_weights(layout, seed, rows):
    bits, m0, k, bm, kfactor, gs, zp, per_tensor, ags = layout
    case = make_case(np.random.default_rng(seed), bits, m0, k, bm, kfactor, gs, zp, per_tensor)
    a, x = verify.activations(k, rows, seed)
    assert np.array_equal(np.ldexp(a.astype(np.float64), -10), x)       # the float32 activations are exact
    want = x.astype(np.float64) @ case.dense().T
    got = verify.reference_output(case.qt, a)
    assert np.allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())


def test_native_and_numpy_references_agree(monkeypatch):
    if _native.native is None:
        pytest.skip("native kernels not built")
    rng = np.random.default_rng(0)
    for zp, per_tensor, gs in ((True, False, 128), (False, False, 40), (False, True, 512)):
        case = make_case(rng, 2, 256, 640 if gs == 40 else 512, 128, 2 if gs == 40 else 16, gs, zp, per_tensor)
        a, _ = verify.activations(case.qt.shape[1], 3, 1)
        fast = verify.reference_output(case.qt, a, threads=2)
        monkeypatch.setattr(_native, "native", None)
        slow = verify.reference_output(case.qt, a)
        monkeypatch.undo()
        assert np.allclose(fast, slow, rtol=1e-13, atol=1e-13 * np.abs(slow).max())


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("k,gs", [(4096, 4096), (8192, 8192), (640, 40), (384, 128), (96, 32)])
def test_every_native_reference_path_gives_the_same_bits_at_the_int16_extremes(n, k, gs):
    """The SIMD reference sums groups in int32 lanes: at the largest codes and activations int16 holds
    (a group of 4096 codes of 15 times ±32767 is within 7% of 2^31) it must still agree bit for bit with the
    scalar statement, for every number of activation rows and whether or not the groups batch by four."""
    native = _native.native
    if native is None or "avx2" not in tc.kernels.available_paths():
        pytest.skip("no native AVX2 reference on this machine")
    rng = np.random.default_rng(n * 1000 + k + gs)
    m0, g = 16, k // gs
    codes = np.full((m0, k), 15, np.uint8)
    codes[1::2] = rng.integers(0, 16, (m0 // 2, k), dtype=np.uint8)
    a = np.where(rng.random((n, k)) < 0.5, -32768, 32767).astype(np.int16)
    a[n // 2:] = 32767                                                     # some rows all at the maximum
    s, z = rng.random((m0, g)), rng.random((m0, g))
    sums = np.ascontiguousarray(a.astype(np.int64).reshape(n, g, gs).sum(axis=2).T.astype(np.float64))
    ys = []
    for path in (1, 2):                                                    # PATH_SCALAR, PATH_AVX2
        y = np.empty((n, m0))
        native.reference(codes, a, s, z, sums, y, m0, k, n, gs, 4, path, 1)
        ys.append(y)
    assert np.array_equal(ys[0], ys[1])
    exact = np.einsum("mgi,ngi->nmg", codes.astype(np.int64).reshape(m0, g, gs), a.astype(np.int64).reshape(n, g, gs))
    want = ((s[None] * (exact - 8.0 * sums.T[:, None, :]) - z[None] * sums.T[:, None, :])).sum(axis=2)
    assert np.allclose(ys[1], want, rtol=1e-12)


def _swap_tiles(case) -> np.ndarray:
    """The blob with the weight bytes of its first two tiles exchanged (tiles whose bytes differ)."""
    m0, k = case.qt.shape
    tile = k * case.bm // 8
    assert m0 * case.qt.bits // case.bm >= 2, "the case needs two tiles"
    bad = case.blob.copy()
    bad[:tile], bad[tile:2 * tile] = case.blob[tile:2 * tile], case.blob[:tile]
    assert not np.array_equal(bad, case.blob)
    return bad


def _negate_one_zero(case) -> np.ndarray:
    """The blob packed with the largest zero offset negated (one value of one row and group)."""
    z = case.qt.zeros.astype(np.float32)
    r, g = np.unravel_index(np.argmax(np.abs(z)), z.shape)
    assert z[r, g] != 0
    z[r, g] = -z[r, g]
    return tc.pack(case.qt.codes, case.qt.scales, z, bits=case.qt.bits, bm=case.bm, kfactor=case.kfactor)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("fault", ["swapped tile", "negated zero offset"])
def test_a_layout_error_fails_the_exact_proof_on_every_bit_width(bits, fault):
    # a large tensor, so that one wrong tile or one wrong zero offset is a small part of its output
    case = make_case(np.random.default_rng(bits), bits, 512, 1024, 128 if bits != 3 else 96, 16, 128, True, False)
    assert verify.verify_tensor(case.qt, case.blob, bm=case.bm, kfactor=case.kfactor).ok
    bad = _swap_tiles(case) if fault == "swapped tile" else _negate_one_zero(case)
    r = verify.verify_tensor(case.qt, bad, bm=case.bm, kfactor=case.kfactor)
    assert not r.ok and not r.exact_ok and r.exact_error > 100 * r.exact_limit
    with pytest.raises(VerificationError, match="with exact \\(float\\) tables") as e:
        verify.check(r)
    assert e.value.tensor == case.qt.name and e.value.exit_code == 1
    assert f"{r.exact_error:.3g}" in str(e.value)


def test_a_scrambled_layout_fails_with_the_tensor_name_and_figures():
    case = make_case(np.random.default_rng(1), 2, 256, 512, 128, 16, 128, True, False)
    r = verify.verify_tensor(case.qt, _swap_tiles(case), bm=case.bm, kfactor=case.kfactor)
    assert not r.ok and r.exact_error > 1e-2 and r.nmse > 1e-2
    assert "layout error" in r.summary() and f"{r.exact_error:.2g}" in r.summary()


def test_a_slightly_wrong_scale_fails_the_exact_proof():
    # scales off by 0.1 %: hidden under int8 noise by any NMSE threshold, caught by exact tables
    case = make_case(np.random.default_rng(2), 4, 128, 256, 256, 16, 64, False, False)
    wrong = tc.pack(case.qt.codes, (case.qt.scales.astype(np.float32) * 1.001), None, bits=4, bm=256, kfactor=16)
    r = verify.verify_tensor(case.qt, wrong, bm=256, kfactor=16)
    assert not r.exact_ok and r.exact_error > 10 * r.exact_limit and r.nmse < 1e-3


def test_an_int8_table_fault_fails_the_int8_judgement_only(monkeypatch):
    """A kernel whose int8 tables are one unit too high on positive entries (a rounding bug) keeps the
    layout exact but is caught: its error is far beyond what rounding the tables explains."""
    case = make_case(np.random.default_rng(7), 2, 128, 512, 128, 16, 128, True, False)
    build = reference.build_lut

    def off_by_one(x, ags, bias_group, lut="int8"):
        table, scale, bias = build(x, ags, bias_group, lut)
        if lut == "int8":
            table = np.where((table > 0) & (table < 127), table + 1, table).astype(np.int8)
        return table, scale, bias

    monkeypatch.setattr(reference, "build_lut", off_by_one)
    r = verify.verify_tensor(case.qt, case.blob, bm=case.bm, kfactor=case.kfactor, path="reference")
    assert r.exact_ok and not r.int8_ok and r.int8_ratio > 2
    with pytest.raises(VerificationError, match="what table rounding explains"):
        verify.check(r)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("ags", [32, 64, -1])
def test_the_int8_error_is_what_rounding_the_tables_explains(bits, ags):
    case = make_case(np.random.default_rng(10 + bits), bits, 256, 512, 128 if bits != 3 else 96, 16, 128,
                     bits > 1, False)
    r = verify.verify_tensor(case.qt, case.blob, bm=case.bm, kfactor=case.kfactor, act_group_size=ags)
    assert r.ok and abs(r.int8_ratio - 1) < 1e-3 and r.act_group_size == (512 if ags == -1 else ags)


def test_the_rounding_model_gives_the_average_int8_error():
    """Averaged over activation seeds, the measured int8 error of random (uncorrelated) codes is the
    model's ``sum lut_scale²/12·W_j`` (per seed it fluctuates; the judgement does not rely on it)."""
    for bits in (1, 2, 3, 4):
        case = make_case(np.random.default_rng(bits), bits, 256, 512, 128 if bits != 3 else 96, 16, 64, True, False)
        ratios = []
        for seed in range(12):
            r = verify.verify_tensor(case.qt, case.blob, bm=case.bm, kfactor=case.kfactor, seed=seed)
            ratios.append(r.nmse / r.expected_nmse)
        assert 0.85 < np.mean(ratios) < 1.15, (bits, ratios)


def test_plane_weights_follow_the_code_agreement_of_bit_planes():
    # 2 bits, one table: planes equal (+), complementary (-) or unrelated codes; alpha = 1/2, 1
    codes = np.array([[0, 0, 0, 0], [3, 3, 3, 3], [1, 1, 1, 1], [1, 0, 3, 2]], np.uint8)   # rows
    qt = tc.QuantTensor("t", codes, np.ones((4, 1), np.float32), None, 2, 4)
    both = 0.25 + 1.0
    assert verify.plane_weights(qt).tolist() == [(both + 1.0) + (both + 1.0) + (both - 1.0) + both]


def test_tiles_that_do_not_match_the_blob_are_reported():
    case = make_case(np.random.default_rng(3), 2, 256, 512, 128, 16, 128, False, False)
    r = verify.verify_tensor(case.qt, case.blob, bm=256, kfactor=16)   # laid out with bm=128
    assert not r.ok and not r.exact_ok
    with pytest.raises(LayoutError, match="blob is"):
        verify.verify_tensor(case.qt, case.blob[:-4], bm=128, kfactor=16)
    with pytest.raises(LayoutError, match="activation group"):
        verify.verify_tensor(case.qt, case.blob, bm=128, kfactor=16, act_group_size=96)


def test_verification_is_reproducible_and_reports_its_run():
    case = make_case(np.random.default_rng(4), 1, 256, 512, 256, 16, 128, False, False)
    r1 = verify.verify_tensor(case.qt, case.blob, bm=256, kfactor=16, seed=5, rows=3)
    r2 = verify.verify_tensor(case.qt, case.blob, bm=256, kfactor=16, seed=5, rows=3)
    assert (r1.nmse, r1.max_abs_err, r1.exact_error) == (r2.nmse, r2.max_abs_err, r2.exact_error)
    d = r1.as_dict()
    assert d["rows"] == 3 and d["int8_factor"] == verify.INT8_FACTOR and d["bits"] == 1
    assert d["exact_limit"] == verify.exact_limit(512, 1, 16, 64, False) and d["int8_rows_checked"] == 256
    assert d["path"] in ("avx512", "avx2", "neon", "scalar", "reference") and d["seconds"] >= 0


def test_large_tensors_judge_int8_on_evenly_spread_rows():
    rows = verify._sample_rows(4096, 14336, 4)
    assert 64 <= len(rows) < 4096 and rows[0] == 0 and rows[-1] == 4095 and np.all(np.diff(rows) > 0)
    assert len(verify._sample_rows(512, 256, 4)) == 512


def test_reference_kernel_is_used_without_the_native_module(monkeypatch):
    case = make_case(np.random.default_rng(6), 2, 64, 256, 128, 16, 128, True, False)
    monkeypatch.setattr(_native, "native", None)
    monkeypatch.setattr("tmac_convert.kernels.native", None)
    r = verify.verify_tensor(case.qt, case.blob, bm=128, kfactor=16)
    assert r.ok and r.path == "reference"


def test_all_zero_weights_are_judged_against_the_scale_energy():
    # every code at the implicit zero: the reference is 0 and the int8 LUT leaves noise proportional to x·s
    qt = tc.QuantTensor("z", np.full((64, 256), 2, np.uint8), np.ones((64, 2), np.float16), None, 2, 128)
    blob = tc.pack(qt.codes, qt.scales, None, bits=2, bm=128, kfactor=16)
    r = verify.verify_tensor(qt, blob, bm=128, kfactor=16)
    assert r.ok and r.normaliser == "scale" and r.ref_rms == 0 and 0 < r.nmse < 1e-3
    wrong = tc.pack(np.full((64, 256), 3, np.uint8), qt.scales, None, bits=2, bm=128, kfactor=16)
    assert not verify.verify_tensor(qt, wrong, bm=128, kfactor=16).ok
