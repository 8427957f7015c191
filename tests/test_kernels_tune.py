"""Tile tuning times only admissible (bm, kfactor) and returns a kcfg the layout and runtime accept."""

import pytest

from tmac_convert.errors import LayoutError
from tmac_convert.kernels import _native
from tmac_convert.kernels.tune import candidates, tune_tiles
from tmac_convert.layouts import check_act_group, check_layout


@pytest.mark.parametrize("shape", [(4096, 4096, 2, 128), (1024, 4096, 3, 128), (160, 256, 2, None), (64, 256, 4, 32)])
@pytest.mark.parametrize("ags", [32, 64, -1])
def test_candidates_are_admissible(shape, ags):
    m0, k, bits, gs = shape
    cands = candidates(m0, k, bits, gs, ags)
    for t in cands:
        check_layout(m0, k, bits, t.bm, t.kfactor, gs)
        check_act_group(k, t.kfactor, k if ags == -1 else ags)
    if ags == 64 and gs != 32:  # 4*kfactor a multiple of 64: T-MAC's 16, and the bundled kernels' 32
        assert {t.kfactor for t in cands} == {16, 32}
    if bits == 3:
        assert {t.bm for t in cands} <= {192, 384, 576, 768}


def test_no_admissible_kfactor_is_a_layout_error():
    if _native.native is None:
        pytest.skip("native kernels not built")
    with pytest.raises(LayoutError, match="no tile config"):
        tune_tiles([(64, 256, 4, 32, False, False)], act_group_size=64)   # gs 32 forces kfactor <= 8


@pytest.mark.skipif(_native.native is None, reason="native kernels not built")
def test_tune_returns_one_section_per_shape_with_the_fastest_tiles():
    timings = []
    shapes = [(256, 512, 2, 128, True, False), (160, 256, 2, 256, False, True), (256, 512, 2, 64, False, False)]
    kc = tune_tiles(shapes, act_group_size=64, threads=1, repeats=2, timings=timings)
    assert [e.section for e in kc] == ["qgemm_lut_t1_int8_m512_k512_n1_b2", "qgemm_lut_t1_int8_m320_k256_n1_b2"]
    first = kc.lookup(256, 512, 2)
    assert first.scales_size == 256 * 4 * 2 and first.lut_scales_size == 512 // 64
    assert kc.lookup(160, 256, 2).scales_size == 1
    mine = [t for t in timings if t.section == first.section]
    assert len(mine) == len(candidates(256, 512, 2, 128, 64))
    fastest = min(mine, key=lambda t: t.micros)
    assert (fastest.bm, fastest.kfactor) == (first.bm, first.kfactor)
    assert not first.problems(256, 512, 2, group_size=128, zero_point=True, per_tensor=False)
