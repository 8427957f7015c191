"""The converter's per-tensor proof: kernel on the blob vs float64 math on the source's own weights."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tmac_convert as tc
from tmac_convert import proof as verify
from tmac_convert.errors import LayoutError, VerificationError
from tmac_convert.kernels import _native

from .test_kernels_cases import golden_cases, layouts, make_case

GOLDEN = golden_cases()


@pytest.mark.parametrize("name,case", GOLDEN, ids=[n for n, _ in GOLDEN])
def test_golden_blobs_verify(name, case):
    ags = 32 if case.kfactor == 8 else 64
    r = verify.verify_tensor(case.qt, case.blob, bm=case.bm, kfactor=case.kfactor, act_group_size=ags)
    assert r.ok and r.name == name and r.nmse < 2e-4 and r.rows == 2
    exact = verify.verify_tensor(case.qt, case.blob, bm=case.bm, kfactor=case.kfactor, act_group_size=ags, lut="float")
    assert exact.ok and exact.nmse < 1e-9
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


def test_a_scrambled_layout_fails_with_the_tensor_name_and_figures():
    case = make_case(np.random.default_rng(1), 2, 256, 512, 128, 16, 128, True, False)
    bad = case.blob.copy()
    tile = 512 * 128 // 8
    bad[:tile], bad[tile:2 * tile] = case.blob[tile:2 * tile], case.blob[:tile]   # swap two tiles' weights
    r = verify.verify_tensor(case.qt, bad, bm=case.bm, kfactor=case.kfactor)
    assert not r.ok and r.nmse > 1e-2
    with pytest.raises(VerificationError) as e:
        verify.check(r)
    assert e.value.tensor == case.qt.name and e.value.exit_code == 1
    assert "NMSE" in str(e.value) and f"{r.nmse:.3g}" in str(e.value)


def test_a_slightly_wrong_scale_passes_int8_but_fails_the_exact_check():
    # scales written through bfloat16-like truncation: invisible under int8 LUT noise, caught by float tables
    case = make_case(np.random.default_rng(2), 4, 128, 256, 256, 16, 64, False, False)
    wrong = tc.pack(case.qt.codes, (case.qt.scales.astype(np.float32) * 1.001), None, bits=4, bm=256, kfactor=16)
    assert verify.verify_tensor(case.qt, wrong, bm=256, kfactor=16).ok
    assert not verify.verify_tensor(case.qt, wrong, bm=256, kfactor=16, lut="float").ok


def test_tiles_that_do_not_match_the_blob_are_reported():
    case = make_case(np.random.default_rng(3), 2, 256, 512, 128, 16, 128, False, False)
    r = verify.verify_tensor(case.qt, case.blob, bm=256, kfactor=16)   # laid out with bm=128
    assert not r.ok
    with pytest.raises(LayoutError, match="blob is"):
        verify.verify_tensor(case.qt, case.blob[:-4], bm=128, kfactor=16)
    with pytest.raises(LayoutError, match="activation group"):
        verify.verify_tensor(case.qt, case.blob, bm=128, kfactor=16, act_group_size=96)


def test_verification_is_reproducible_and_reports_its_run():
    case = make_case(np.random.default_rng(4), 1, 256, 512, 256, 16, 128, False, False)
    r1 = verify.verify_tensor(case.qt, case.blob, bm=256, kfactor=16, seed=5, rows=3)
    r2 = verify.verify_tensor(case.qt, case.blob, bm=256, kfactor=16, seed=5, rows=3)
    assert (r1.nmse, r1.max_abs_err) == (r2.nmse, r2.max_abs_err)
    d = r1.as_dict()
    assert d["rows"] == 3 and d["lut"] == "int8" and d["threshold"] == verify.DEFAULT_THRESHOLD["int8"]
    assert d["path"] in ("avx2", "neon", "scalar", "reference") and d["seconds"] >= 0


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
