"""Numerical edge cases: each gives a defined result or a clear error, asserted here.

* zero, negative-zero, subnormal, tiny, huge, NaN and infinite scales (and zero offsets);
* weights that are zero, constant (all-equal groups), subnormal, huge, NaN or infinite;
* codes at the ends of the range (0 and 2**bits - 1) and one past it;

at every level: the intermediate form, the layout (pack/unpack, native and numpy), the kernel check,
round-to-nearest quantisation, each reader (GPTQ, BitNet packed/float, GGUF Q4_0/Q4_1/TQ2_0, float
pass-through) and whole conversions (which must leave no output when they refuse).
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

import tmac_convert
from tmac_convert import QuantTensor, pack, unpack
from tmac_convert.convert import convert
from tmac_convert.errors import LayoutError, TmacError, VerificationError
from tmac_convert.format import parse
from tmac_convert.layouts import default_tiles
from tmac_convert.layouts.format_a import pack_weights_numpy
from tmac_convert.quantize import quantize_rtn
from tmac_convert.proof import check, verify_tensor

from .conftest import layout_native

FIX = Path(__file__).resolve().parents[1] / "fixtures"
F32 = np.finfo(np.float32)
M0, K, GS = 64, 256, 64

SCALES_OK = {  # value -> what the scales are filled with; all of these must convert and verify exactly
    "zero": 0.0, "negative zero": -0.0, "f32 subnormal": 1e-40, "f16 subnormal": float(np.float16(6e-8)),
    "tiny normal": 1e-30, "large": 1e30, "negative": -0.25,
}


def _tiles(bits: int):
    return default_tiles(M0, K, bits, GS)


def _codes(bits: int, kind: str, seed: int = 0) -> np.ndarray:
    top = (1 << bits) - 1
    if kind == "min":
        return np.zeros((M0, K), np.uint8)
    if kind == "max":
        return np.full((M0, K), top, np.uint8)
    if kind == "alternating":
        return np.where((np.arange(M0)[:, None] + np.arange(K)) % 2, top, 0).astype(np.uint8)
    return np.random.default_rng(seed).integers(0, top + 1, (M0, K), dtype=np.uint8)


def _blob_scales(blob: np.ndarray, bits: int) -> np.ndarray:
    return blob[M0 * K * bits // 8:].view("<u4")


# ---------------------------------------------------------------------------------------------
# the intermediate form

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["scales", "zeros", "per-tensor scale"])
def test_non_finite_scales_or_zeros_are_refused_by_the_intermediate_form(bad, where):
    s = np.full((M0, K // GS), 0.5, np.float32)
    z = np.zeros_like(s)
    if where == "scales":
        s[3, 1] = bad
    elif where == "zeros":
        z[3, 1] = bad
    else:
        s = np.array([bad], np.float32)
        z = None
    with pytest.raises(TmacError) as e:
        QuantTensor("t", _codes(2, "random"), s, z, bits=2, group_size=GS if s.ndim == 2 else K)
    assert e.value.rule == ("finite zeros" if where == "zeros" else "finite scales") and e.value.tensor == "t"


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_a_code_one_past_the_range_is_refused_everywhere(bits):
    codes = _codes(bits, "max")
    codes[5, 7] = 1 << bits
    s = np.ones((M0, K // GS), np.float32)
    with pytest.raises(TmacError) as e:
        QuantTensor("t", codes, s, None, bits=bits, group_size=GS)
    assert e.value.rule == "code range"
    t = _tiles(bits)
    for native in (True, False):
        with layout_native(native), pytest.raises(LayoutError) as e:
            pack(codes, s, bits=bits, bm=t.bm, kfactor=t.kfactor, name="t")
        assert e.value.rule == "code range" and e.value.tensor == "t"
    with pytest.raises(LayoutError, match="code range|lie in"):
        pack(codes.astype(np.int16) - 2 * (1 << bits), s, bits=bits, bm=t.bm, kfactor=t.kfactor)


# ---------------------------------------------------------------------------------------------
# the layout and the kernel check

@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", ["min", "max", "alternating"])
def test_codes_at_the_ends_of_the_range_pack_exactly_and_compute_right(bits, kind):
    codes = _codes(bits, kind)
    rng = np.random.default_rng(bits)
    s = rng.uniform(0.01, 0.1, (M0, K // GS)).astype(np.float32)
    z = rng.uniform(-0.1, 0.1, (M0, K // GS)).astype(np.float32)
    t = _tiles(bits)
    blobs = []
    for native in (True, False):
        with layout_native(native):
            blobs.append(pack(codes, s, z, bits=bits, bm=t.bm, kfactor=t.kfactor))
    assert np.array_equal(blobs[0], blobs[1])
    assert np.array_equal(blobs[0][:M0 * K * bits // 8], pack_weights_numpy(codes, bits, t.bm, t.kfactor))
    c2, s2, z2 = unpack(blobs[0], m=M0, k=K, bits=bits, group_size=GS, zero_point=True, bm=t.bm, kfactor=t.kfactor)
    assert np.array_equal(c2, codes) and np.array_equal(s2, s) and np.array_equal(z2, z)
    r = verify_tensor(QuantTensor("t", codes, s, z, bits=bits, group_size=GS), blobs[0], bm=t.bm,
                      kfactor=t.kfactor, act_group_size=64)
    assert r.ok, r


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("name", list(SCALES_OK))
def test_zero_subnormal_tiny_and_large_scales_are_stored_bit_exactly_and_verify(bits, name):
    """Scales are copied as float32 bit patterns (no flush of subnormals, -0.0 keeps its sign), and the
    kernel check agrees with float64 on them (zero scales: an exactly zero output, NMSE 0)."""
    codes = _codes(bits, "random", seed=bits)
    s = np.full((M0, K // GS), SCALES_OK[name], np.float32)
    for zeros in (None, np.full_like(s, SCALES_OK[name])):
        t = _tiles(bits)
        blob = pack(codes, s, zeros, bits=bits, bm=t.bm, kfactor=t.kfactor)
        stored = _blob_scales(blob, bits)
        assert set(stored.tolist()) == {int(s.view("<u4")[0, 0])}
        r = verify_tensor(QuantTensor("t", codes, s, zeros, bits=bits, group_size=GS), blob, bm=t.bm,
                          kfactor=t.kfactor, act_group_size=64)
        assert r.ok and np.isfinite(r.nmse), (name, r)
        if SCALES_OK[name] == 0.0:
            assert r.nmse == 0.0 and r.max_abs_err == 0.0


def test_a_per_tensor_subnormal_or_zero_scale_verifies():
    codes = _codes(2, "random")
    for v in (0.0, 1e-40):
        s = np.array([v], np.float32)
        t = default_tiles(M0, K, 2, None)
        blob = pack(codes, s, bits=2, bm=t.bm, kfactor=t.kfactor)
        assert blob[-4:].view("<f4")[0] == np.float32(v)
        r = verify_tensor(QuantTensor("t", codes, s, bits=2, group_size=K), blob, bm=t.bm, kfactor=t.kfactor,
                          act_group_size=64)
        assert r.ok, r


def test_scales_near_the_float32_maximum_fail_verification_instead_of_passing_silently():
    """A scale of 3e38 makes the kernel's float32 sums overflow: the check reports NMSE inf (not ok)."""
    codes = _codes(2, "random")
    s = np.full((M0, K // GS), 3e38, np.float32)
    t = _tiles(2)
    blob = pack(codes, s, bits=2, bm=t.bm, kfactor=t.kfactor)
    r = verify_tensor(QuantTensor("t", codes, s, bits=2, group_size=GS), blob, bm=t.bm, kfactor=t.kfactor,
                      act_group_size=64)
    assert not r.ok and r.nmse == float("inf")
    with pytest.raises(VerificationError, match="NMSE inf"):
        check(r)


# ---------------------------------------------------------------------------------------------
# round-to-nearest quantisation (float sources, act-order requantisation)

@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("value", [0.0, 0.5, -0.5, 1e-42, 65504.0, float(F32.max)])
def test_all_equal_groups_are_exact_with_zero_points(bits, value):
    """Asymmetric: scale 0, code 0, z' = -value, so the group dequantises to exactly ``value``."""
    w = np.full((8, 64), value, np.float32)
    qt, stats = quantize_rtn("t", w, bits=bits, group_size=32, zero_point=True)
    assert np.all(qt.scales == 0) and np.all(qt.codes == 0)
    assert np.array_equal(qt.dequantize(np.float32), w) and stats["max_abs_err"] == 0.0


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("value", [0.5, -0.5])
def test_all_equal_groups_symmetric_follow_the_gptq_rule(bits, value):
    """Symmetric: s = 2|v|/(2^b - 1) and q = clamp(rint(v/s) + 2^(b-1)): a defined, bounded error."""
    w = np.full((8, 64), value, np.float32)
    qt, _ = quantize_rtn("t", w, bits=bits, group_size=32, zero_point=False)
    maxq, half = (1 << bits) - 1, 1 << (bits - 1)
    s = np.float32(2 * abs(value) / maxq)
    q = int(np.clip(np.rint(np.float64(value) / np.float64(s)) + half, 0, maxq))
    assert np.all(qt.scales == s) and np.all(qt.codes == q)
    assert np.all(np.abs(qt.dequantize() - w) <= s / 2 + 1e-12)


def test_one_bit_symmetric_cannot_represent_positive_weights():
    """With the implicit zero 2^(b-1) = 1 the 1-bit symmetric grid is {-s, 0}: positive weights become 0
    (defined, and reported by the error statistics the reader records)."""
    qt, stats = quantize_rtn("t", np.full((8, 64), 0.5, np.float32), bits=1, group_size=32, zero_point=False)
    assert np.all(qt.dequantize() == 0.0) and stats["nmse"] == 1.0


@pytest.mark.parametrize("zp", [True, False])
def test_zero_groups_give_zero_scales_and_exact_zeros(zp):
    qt, stats = quantize_rtn("t", np.zeros((8, 64), np.float16), bits=2, group_size=32, zero_point=zp)
    assert np.all(qt.scales == 0) and np.all(qt.dequantize() == 0) and stats["nmse"] == 0.0


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_subnormal_weights_quantise_to_finite_scales_within_half_a_step(bits):
    w = (np.random.default_rng(1).standard_normal((8, 64)) * 1e-42).astype(np.float32)
    qt, stats = quantize_rtn("t", w, bits=bits, group_size=32, zero_point=True)
    assert np.all(np.isfinite(qt.scales)) and np.all(qt.scales >= 0)
    step = np.repeat(qt.scales.astype(np.float64), 32, axis=1)
    # half a step, plus the float32 rounding of subnormal scales and offsets (absolute, ~1e-45 each)
    assert np.all(np.abs(qt.dequantize() - w.astype(np.float64)) <= step / 2 + 4e-45)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_naming_the_row(bad):
    w = np.ones((8, 64), np.float32)
    w[5, 9] = bad
    with pytest.raises(TmacError) as e:
        quantize_rtn("blk.0.attn_q.weight", w, bits=2, group_size=32, zero_point=True)
    assert e.value.rule == "finite weights" and "row 5" in str(e.value) and e.value.tensor == "blk.0.attn_q.weight"


@pytest.mark.parametrize("zp", [True, False])
def test_a_range_too_wide_for_a_float32_scale_is_a_clear_error(zp):
    """1-bit over [-3e38, 3e38]: the scale (range / 1) overflows float32 -- refused by name and row."""
    w = np.where(np.arange(64) % 2, 3e38, -3e38).astype(np.float32)[None].repeat(4, 0)
    with pytest.raises(TmacError) as e:
        quantize_rtn("t", w, bits=1, group_size=32, zero_point=zp)
    assert e.value.rule == "scales fit float32" and "row 0" in str(e.value)
    qt, _ = quantize_rtn("t", w, bits=2, group_size=32, zero_point=zp)  # 2 bits: range / 3 fits
    assert np.all(np.isfinite(qt.scales))


# ---------------------------------------------------------------------------------------------
# readers: edited copies of the fixtures

def _patch_tensor(file: Path, name: str, edit) -> None:
    """Edit one tensor of a safetensors file in place; ``edit`` gets a writable typed view of its data."""
    raw = bytearray(file.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    e = json.loads(raw[8:8 + n])[name]
    dt = {"F16": "<f2", "F32": "<f4", "BF16": "<u2", "I32": "<i4", "U8": "u1"}[e["dtype"]]
    lo, hi = e["data_offsets"]
    view = np.frombuffer(raw, dtype=np.uint8)[8 + n + lo:8 + n + hi].view(dt).reshape(e["shape"])
    edit(view)
    file.write_bytes(bytes(raw))


def _copy(tmp: Path, name: str) -> Path:
    dst = tmp / name.replace("/", "_")
    (shutil.copytree if (FIX / name).is_dir() else shutil.copy2)(FIX / name, dst)
    return dst


def _read_all(path: Path, **opts) -> dict:
    return {t.name: t for t in tmac_convert.read(path, **opts).tensors()}


def _refused(path: Path, rule: str, tmp: Path, **opts) -> TmacError:
    """Reading and converting both refuse with ``rule``; the conversion leaves nothing behind."""
    with pytest.raises(TmacError) as e:
        _read_all(path, **opts)
    assert e.value.rule == rule, e.value
    assert e.value.file, "the error must name the file"
    out = tmp / "refused"
    out.mkdir(exist_ok=True)
    with pytest.raises(TmacError) as e2:
        convert(path, out / "model.gguf", **opts)
    assert e2.value.rule == rule and not list(out.iterdir())
    return e.value


def _converts_and_verifies(path: Path, tmp: Path, **opts) -> None:
    out = tmp / "converted"
    out.mkdir(exist_ok=True)
    convert(path, out / "model.gguf", verify=True, **opts)
    from tmac_convert.verify_file import verify_file

    r = verify_file(out / "model.gguf", path, reader_options={k: v for k, v in opts.items()
                                                              if k in ("gptq_format", "act_order")},
                    max_error=opts.get("max_error"))
    assert r.ok, r.failures


SCALE = "model.layers.0.self_attn.q_proj.scales"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_gptq_non_finite_scales_are_refused(tmp_path, bad):
    d = _copy(tmp_path, "gptq_3bit")
    _patch_tensor(d / "model.safetensors", SCALE, lambda v: v.__setitem__((1, 7), bad))
    e = _refused(d, "finite scales", tmp_path)
    assert e.tensor == SCALE


@pytest.mark.parametrize("value", [0.0, -0.0, float(np.float16(6e-8)), 4096.0])
def test_gptq_zero_subnormal_and_large_fp16_scales_convert_exactly(tmp_path, value):
    d = _copy(tmp_path, "gptq_3bit")
    _patch_tensor(d / "model.safetensors", SCALE, lambda v: v.__setitem__(slice(None), value))
    qt = _read_all(d)["blk.0.attn_q.weight"]
    # z' = (z - 4) * s in float16 arithmetic, as T-MAC's reference does: zero, subnormal or large, all finite
    assert np.all(qt.scales == np.float32(np.float16(value))) and np.all(np.isfinite(qt.zeros))
    _converts_and_verifies(d, tmp_path)


def test_gptq_zero_offsets_overflowing_float16_are_refused_at_open(tmp_path):
    """s = 65504 (the float16 maximum) with asymmetric zeros: (z - 4) * s overflows float16."""
    d = _copy(tmp_path, "gptq_3bit")
    _patch_tensor(d / "model.safetensors", SCALE, lambda v: v.__setitem__(slice(None), 65504.0))
    with pytest.raises(TmacError) as e:
        tmac_convert.read(d)  # at open, before any tensor is streamed or any byte written
    assert e.value.rule == "zero offsets fit the scale dtype" and e.value.tensor == "blk.0.attn_q.weight"
    _refused(d, "zero offsets fit the scale dtype", tmp_path)


@pytest.mark.parametrize("bits,value", [(0x0000, "zero"), (0x7FC0, "NaN"), (0x7F80, "infinity"),
                                         (0x0001, "1/weight_scale overflows float32")])
def test_bitnet_weight_scale_zero_nan_inf_or_reciprocal_overflow_is_refused(tmp_path, bits, value):
    d = _copy(tmp_path, "bitnet_packed")
    name = "model.layers.0.self_attn.q_proj.weight_scale"
    _patch_tensor(d / "model.safetensors", name, lambda v: v.__setitem__(0, bits))
    e = _refused(d, "weight_scale", tmp_path)
    assert e.tensor == name


def test_bitnet_packed_field_three_is_refused_with_its_position(tmp_path):
    d = _copy(tmp_path, "bitnet_packed")
    name = "model.layers.0.self_attn.k_proj.weight"
    _patch_tensor(d / "model.safetensors", name, lambda v: v.__setitem__((3, 9), v[3, 9] | 0b11000000))
    e = _refused(d, "ternary codes in range", tmp_path)
    assert e.tensor == name and "column 9" in str(e)


def test_bitnet_float_all_zero_projection_ternarises_to_zero_codes(tmp_path):
    """mean|W| = 0 is clamped to 1e-5 (as llama.cpp does): every code is the implicit zero 2."""
    d = _copy(tmp_path, "bitnet_float")
    _patch_tensor(d / "model.safetensors", "model.layers.0.mlp.up_proj.weight", lambda v: v.__setitem__(slice(None), 0))
    qt = _read_all(d)["blk.0.ffn_up.weight"]
    assert np.all(qt.codes == 2) and qt.scales[0] == np.float32(np.float16(1e-5))
    _converts_and_verifies(d, tmp_path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_bitnet_float_non_finite_weight_is_refused(tmp_path, bad):
    d = _copy(tmp_path, "bitnet_float")
    _patch_tensor(d / "model.safetensors", "model.layers.1.mlp.down_proj.weight",
                  lambda v: v.__setitem__((2, 3), bad))
    _refused(d, "finite weights", tmp_path)


def _gguf_block(path: Path, tensor: str, block: int, size: int) -> tuple[bytearray, int]:
    raw = bytearray(path.read_bytes())
    rec = parse(path).tensor(tensor)
    return raw, rec.offset + block * size


@pytest.mark.parametrize("value,ok", [(0.0, True), (float(np.float16(6e-8)), True), (65504.0, True),
                                      (np.nan, False), (np.inf, False)])
def test_gguf_q4_0_block_scale_edges(tmp_path, value, ok):
    p = _copy(tmp_path, "gguf_q4_0/model.gguf")
    raw, at = _gguf_block(p, "blk.0.attn_v.weight", 5, 18)
    raw[at:at + 2] = np.float16(value).tobytes()
    p.write_bytes(bytes(raw))
    if ok:
        qt = _read_all(p)["blk.0.attn_v.weight"]
        assert qt.scales.ravel()[5] == np.float32(np.float16(value))
        _converts_and_verifies(p, tmp_path)
    else:
        e = _refused(p, "finite scales", tmp_path)
        assert e.tensor == "blk.0.attn_v.weight"


@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_gguf_q4_1_non_finite_minimum_is_refused(tmp_path, value):
    p = _copy(tmp_path, "gguf_q4_1/model.gguf")
    raw, at = _gguf_block(p, "blk.1.ffn_down.weight", 0, 20)
    raw[at + 2:at + 4] = np.float16(value).tobytes()
    p.write_bytes(bytes(raw))
    _refused(p, "finite zeros", tmp_path)


def test_gguf_q4_1_extreme_minimum_and_scale_stay_finite(tmp_path):
    """d = m = 65504 (the float16 maximum): z' = -(m + 8d) = -589536 is finite in float32."""
    p = _copy(tmp_path, "gguf_q4_1/model.gguf")
    raw, at = _gguf_block(p, "blk.1.ffn_down.weight", 0, 20)
    raw[at:at + 4] = np.array([65504, 65504], np.float16).tobytes()
    p.write_bytes(bytes(raw))
    qt = _read_all(p)["blk.1.ffn_down.weight"]
    assert qt.zeros.ravel()[0] == np.float32(-(65504.0 + 8 * 65504.0))


def test_gguf_tq2_0_field_three_is_refused(tmp_path):
    p = _copy(tmp_path, "gguf_tq2_0/model.gguf")
    raw, at = _gguf_block(p, "blk.0.ffn_gate.weight", 2, 66)
    raw[at + 10] |= 0b11
    p.write_bytes(bytes(raw))
    _refused(p, "ternary codes in range", tmp_path)


# ---------------------------------------------------------------------------------------------
# float pass-through tensors and whole conversions

def test_nan_and_inf_in_a_norm_pass_through_unchanged(tmp_path):
    """Float tensors are carried, not judged: NaN and +-inf in a norm arrive in the file as stored."""
    d = _copy(tmp_path, "llama_f16")
    vals = np.array([np.nan, np.inf, -np.inf, 6e-8], np.float16)
    _patch_tensor(d / "model.safetensors", "model.norm.weight", lambda v: v.__setitem__(slice(0, 4), vals))
    out = tmp_path / "o.gguf"
    convert(d, out, bits=2, group_size=64, verify=False, max_error=1.0)
    got = {t.name: t for t in tmac_convert.read(out).tensors()}["output_norm.weight"].data[:4]
    assert np.array_equal(got, vals.astype(got.dtype), equal_nan=True)


def _float_folder(tmp: Path, edit) -> Path:
    """A copy of llama_f16 stored as F32 with ``edit(name -> array)`` applied (for values beyond float16)."""
    from safetensors.numpy import load_file, save_file

    d = _copy(tmp, "llama_f16")
    t = {k: v.astype(np.float32) for k, v in load_file(str(d / "model.safetensors")).items()}
    edit(t)
    save_file(t, str(d / "model.safetensors"))
    return d


def test_an_f32_value_beyond_float16_in_a_float_tensor_is_refused_with_no_output(tmp_path):
    d = _float_folder(tmp_path, lambda t: t["model.embed_tokens.weight"].__setitem__((3, 3), 1e6))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(TmacError) as e:
        convert(d, out / "m.gguf", bits=2, group_size=64, verify=False, max_error=1.0)
    assert e.value.tensor == "token_embd.weight" and "overflows f16" in str(e.value)
    assert not list(out.iterdir())


@pytest.mark.parametrize("fill", ["zero", "constant", "subnormal"])
def test_degenerate_projections_convert_and_verify(tmp_path, fill):
    def edit(t):
        w = t["model.layers.1.mlp.gate_proj.weight"]
        w[...] = {"zero": 0.0, "constant": 0.125, "subnormal": 1e-41}[fill]
        if fill == "subnormal":
            w[::3] = -2e-41
    d = _float_folder(tmp_path, edit)
    for zp in (True, False):
        (tmp_path / f"zp{zp}").mkdir()
        _converts_and_verifies(d, tmp_path / f"zp{zp}", bits=2, group_size=64, zero_point=zp, max_error=1.0)


def test_a_nan_weight_in_a_float_projection_fails_the_conversion_with_no_output(tmp_path):
    d = _float_folder(tmp_path, lambda t: t["model.layers.0.self_attn.o_proj.weight"].__setitem__((7, 1), np.nan))
    _refused(d, "finite weights", tmp_path, bits=4, group_size=64)
