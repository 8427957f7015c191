"""kcfg.ini: T-MAC's own files parse, write back identically, and look-ups respect bits."""

from pathlib import Path

import pytest

import tmac_convert as tc
from tmac_convert import TmacError
from tmac_convert.layouts import Kcfg, KernelConfig, TileConfig, default_tiles, load_preset, preset_names
from tmac_convert.layouts.kcfg import FIELDS

PRESET_DIR = Path(tc.__file__).parent / "presets"


def test_every_published_preset_parses_and_round_trips_byte_for_byte():
    names = preset_names()
    assert {"aarch64-llama-3-8b-2bit", "aarch64-hf-bitnet-3b", "legacy-q4_0-gs32"} <= set(names)
    for name in names:
        text = (PRESET_DIR / f"{name}.ini").read_text()
        cfg = load_preset(name)
        assert len(cfg) >= 3
        assert cfg.to_ini() == text


def test_llama3_preset_fields_are_consistent_with_the_shapes():
    cfg = load_preset("aarch64-llama-3-8b-2bit")
    q = cfg.lookup(4096, 4096, 2)
    assert (q.bm, q.kfactor, q.group_size, q.scales_size, q.n_tile_num, q.lut_scales_size) == (128, 16, 128, 262144, 64, 64)
    assert q.problems(4096, 4096, 2, group_size=128, zero_point=True, per_tensor=False) == []
    down = cfg.lookup(4096, 14336, 2)
    assert down.lut_scales_size == 14336 // 64


def test_computed_sections_equal_the_published_ones():
    """scales_size, n_tile_num and lut_scales_size are computed as T-MAC's compile.py does."""
    for name, zp, per_tensor in [("aarch64-llama-3-8b-2bit", True, False), ("aarch64-llama-2-7b-4bit", True, False),
                                 ("aarch64-hf-bitnet-3b", False, True), ("legacy-q4_0-gs32", False, False)]:
        for e in load_preset(name):
            ags = 32 if name.startswith("legacy") else 64
            mine = KernelConfig.for_tensor(e.m0, e.k, e.bits, group_size=e.group_size, zero_point=zp,
                                           per_tensor=per_tensor, tiles=e.tiles, act_group_size=ags)
            assert mine == e, name


def test_lookup_requires_matching_bits():
    """m16384_k4096 is both a 4096x4096 4-bit and an 8192x4096 2-bit shape; T-MAC would mix them up."""
    cfg = load_preset("aarch64-llama-2-7b-4bit")
    assert cfg.lookup(4096, 4096, 4).bits == 4
    with pytest.raises(TmacError, match="same m and k but other bits") as e:
        cfg.lookup(8192, 4096, 2)
    assert "qgemm_lut_t1_int8_m16384_k4096_n1_b4" in str(e.value)
    with pytest.raises(TmacError, match="no section"):
        cfg.lookup(1024, 4096, 2)


def test_problems_list_group_size_and_zero_point_mismatches():
    e = load_preset("aarch64-llama-3-8b-2bit").lookup(4096, 4096, 2)
    probs = e.problems(4096, 4096, 2, group_size=64, zero_point=True, per_tensor=False)
    assert any("group_size 128" in p for p in probs)
    assert any("scales_size 262144" in p and "needs 524288" in p for p in probs)
    no_zp = e.problems(4096, 4096, 2, group_size=128, zero_point=False, per_tensor=False)
    assert len(no_zp) == 1 and "without zero points" in no_zp[0]
    # gs 64 without zero points has the same scales_size as gs 128 with them: group_size still tells
    assert e.problems(4096, 4096, 2, group_size=64, zero_point=False, per_tensor=False) == [
        "group_size 128 in qgemm_lut_t1_int8_m8192_k4096_n1_b2, the tensor has 64"]


def test_written_kcfg_reads_back():
    cfg = Kcfg()
    for m0, k in [(4096, 4096), (14336, 4096), (4096, 14336)]:
        cfg.add(KernelConfig.for_tensor(m0, k, 2, group_size=128, zero_point=True, per_tensor=False,
                                        tiles=default_tiles(m0, k, 2, 128)))
    again = Kcfg.parse(cfg.to_ini())
    assert again.entries == cfg.entries
    assert all(f"{f} = " in cfg.to_ini() for f in FIELDS)


@pytest.mark.parametrize("text, rule", [
    ("[qgemm_lut_t1_int8_m64_k64_n1_b2]\nbm = 64\n", "kcfg fields"),
    ("[bogus]\n" + "".join(f"{f} = 1\n" for f in FIELDS), "kcfg section name"),
    ("[qgemm_lut_t1_int8_m64_k64_n1_b2]\n" + "".join(f"{f} = -3\n" for f in FIELDS), "kcfg field value"),
    ("[qgemm_lut_t1_int8_m64_k64_n1_b2]\n" + "".join(f"{f} = 99999999999999999999\n" for f in FIELDS), "kcfg field value"),
    ("[qgemm_lut_t1_int8_m64_k64_n1_b9]\n" + "".join(f"{f} = 1\n" for f in FIELDS), "kcfg section name"),
    ("no section header", "ini syntax"),
])
def test_malformed_kcfg_is_a_clear_error(text, rule):
    with pytest.raises(TmacError) as e:
        Kcfg.parse(text, source="bad.ini")
    assert e.value.rule == rule and "bad.ini" in str(e.value)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(TmacError, match="aarch64-llama-3-8b-2bit"):
        load_preset("nope")


@pytest.mark.parametrize("m0, k, bits, gs, want", [
    (4096, 4096, 2, 128, TileConfig(256, 32)),
    (4096, 4096, 3, 128, TileConfig(192, 32)),
    (4096, 4096, 2, 64, TileConfig(256, 16)),    # a group of 64 activations: chunks of at most 64
    (1024, 4096, 4, 32, TileConfig(256, 8)),
    (64, 256, 1, 64, TileConfig(64, 16)),       # no tuned bm fits M0*b = 64: the largest admissible
    (3200, 8640, 2, None, TileConfig(256, 16)),  # per-tensor scale: no group rule; K is not a multiple of 128
])
def test_default_tiles_are_deterministic_and_admissible(m0, k, bits, gs, want):
    got = default_tiles(m0, k, bits, gs)
    assert got == want
    tc.layouts.check_layout(m0, k, bits, got.bm, got.kfactor, gs)


def test_default_tiles_explain_impossible_shapes():
    with pytest.raises(TmacError, match="M0 must be a multiple of 8"):
        default_tiles(100, 256, 2, 128)
