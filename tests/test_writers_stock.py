"""Stock llama.cpp encodings (Q4_0, Q4_1, TQ1_0, TQ2_0, dequantised F16/F32): exact where the codes
fit, bit-identical to ``gguf.quants.quantize`` where that quantiser is itself exact, lossy requests
refused unless allowed, and every written tensor checked by decoding it with ``gguf``."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tmac_convert import read
from tmac_convert.errors import TmacError, VerificationError
from tmac_convert.readers.base import FloatTensor, TensorInfo
from tmac_convert.format.tensor import QuantTensor
from tmac_convert.format.encodings import TensorPlan, get_encoding
from tmac_convert.writers.plan import plan_stock

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
_Q = gguf.GGMLQuantizationType


def f16_scales(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Positive scales that float16 holds exactly (as GPTQ checkpoints store them)."""
    return rng.uniform(1e-3, 5e-2, shape).astype(np.float16).astype(np.float32)


def gptq_like(rng: np.random.Generator, *, m0: int, k: int, bits: int, group: int | None, zeros: bool,
              name: str = "blk.0.attn_q.weight") -> QuantTensor:
    """A QuantTensor as the GPTQ reader yields it (``group=None``: one scale per tensor)."""
    codes = rng.integers(0, 1 << bits, (m0, k), dtype=np.uint8)
    if group is None:
        return QuantTensor(name, codes, f16_scales(rng, (1,)), None, bits=bits, group_size=k)
    s = f16_scales(rng, (m0, k // group))
    z = None
    if zeros:
        zi = rng.integers(0, 1 << bits, s.shape)
        z = ((zi - (1 << (bits - 1))) * s).astype(np.float32)  # T-MAC's z' = (z - 2^(b-1)) * s
    return QuantTensor(name, codes, s, z, bits=bits, group_size=group)


def ternary(rng: np.random.Generator, m0: int, k: int, scale: float = 0.0123) -> QuantTensor:
    codes = rng.integers(1, 4, (m0, k), dtype=np.uint8)  # BitNet: -1 -> 1, 0 -> 2, +1 -> 3
    return QuantTensor("blk.0.ffn_up.weight", codes, np.array([scale], np.float32), None, bits=2, group_size=k)


def plan_for(t: QuantTensor | FloatTensor, encoding: str) -> TensorPlan:
    shape = t.shape if isinstance(t, QuantTensor) else t.data.shape
    e = TensorPlan(t.name, encoding, tuple(shape))
    e.nbytes = get_encoding(encoding).nbytes(e)
    return e


def encode(t, encoding: str) -> tuple[np.ndarray, TensorPlan]:
    e = plan_for(t, encoding)
    data = get_encoding(encoding).encode(t, e)
    assert data.nbytes == e.nbytes
    return data, e


def decoded(data: np.ndarray, qtype: _Q, shape: tuple[int, int]) -> np.ndarray:
    return gguf.quants.dequantize(data.reshape(shape[0], -1), qtype).reshape(shape).astype(np.float64)


# ------------------------------------------------------------------------------ exact conversions


@settings(max_examples=25)
@given(bits=st.integers(1, 4), group=st.sampled_from([32, 64, 128, None]), seed=st.integers(0, 2**31))
def test_symmetric_codes_are_exact_in_q4_0(bits: int, group: int | None, seed: int) -> None:
    t = gptq_like(np.random.default_rng(seed), m0=8, k=256, bits=bits, group=group, zeros=False)
    data, e = encode(t, "q4_0")
    np.testing.assert_array_equal(decoded(data, _Q.Q4_0, t.shape), t.dequantize(np.float64))
    assert get_encoding("q4_0").check(t, data, e).max_abs_err == 0


@settings(max_examples=25)
@given(bits=st.integers(1, 4), group=st.sampled_from([32, 64, 128]), zeros=st.booleans(), seed=st.integers(0, 2**31))
def test_any_codes_fit_q4_1_within_float16_rounding_of_the_min(bits: int, group: int, zeros: bool, seed: int) -> None:
    t = gptq_like(np.random.default_rng(seed), m0=8, k=256, bits=bits, group=group, zeros=zeros)
    data, e = encode(t, "q4_1")
    w = t.dequantize(np.float64)
    got = decoded(data, _Q.Q4_1, t.shape)
    # the only change is m = -(2^(b-1) s + z') rounded to float16 (d = s is already float16)
    m = -(np.repeat(t.scales, group, axis=1).astype(np.float64) * (1 << (bits - 1))
          + (0 if t.zeros is None else np.repeat(t.zeros, group, axis=1)))
    assert np.all(np.abs(got - w) <= np.abs(m) * 2.0 ** -11 + 2.0 ** -24 * np.abs(w) + 1e-12)
    r = get_encoding("q4_1").check(t, data, e)
    assert r.exact and r.max_abs_err <= r.bound


@settings(max_examples=20)
@given(seed=st.integers(0, 2**31), blocks=st.integers(1, 3))
def test_q4_0_is_bit_identical_to_gguf_when_each_block_reaches_its_negative_extreme(seed: int, blocks: int) -> None:
    """gguf's Q4_0 sets d = -max/8 from the largest-magnitude weight: exact exactly when that is code 0."""
    rng = np.random.default_rng(seed)
    t = gptq_like(rng, m0=8, k=32 * blocks * 2, bits=4, group=32, zeros=False)
    t.codes.reshape(8, -1, 32)[:, :, 0] = 0  # every block holds -8 * s, its largest magnitude
    data, _ = encode(t, "q4_0")
    theirs = gguf.quants.quantize(t.dequantize(np.float32), _Q.Q4_0)
    np.testing.assert_array_equal(data, theirs)


@pytest.mark.parametrize("qtype", ["tq2_0", "tq1_0"])
@pytest.mark.parametrize("scale", [0.0123, 1 / 3.7])  # float16-exact after rounding, and not
def test_ternary_weights_are_gguf_bit_identical_in_tq_types(qtype: str, scale: float) -> None:
    t = ternary(np.random.default_rng(3), 16, 512, scale)
    t.codes[0, :256] = 2  # an all-zero block: gguf writes d = 0, still exact
    data, e = encode(t, qtype)
    np.testing.assert_array_equal(data, gguf.quants.quantize(t.dequantize(np.float32), _Q[qtype.upper()]))
    got = decoded(data, _Q[qtype.upper()], t.shape)
    s16 = float(np.float16(t.scales[0]))
    np.testing.assert_array_equal(got, (t.codes.astype(np.float64) - 2) * s16)  # codes kept, d = fp16(s)
    r = get_encoding(qtype).check(t, data, e)
    assert r.exact and r.max_abs_err == pytest.approx(abs(s16 - float(t.scales[0])), abs=1e-12)


def test_one_bit_codes_are_ternary_too() -> None:
    rng = np.random.default_rng(5)
    t = QuantTensor("blk.0.attn_k.weight", rng.integers(0, 2, (8, 256), dtype=np.uint8), np.array([0.5], np.float32),
                    None, bits=1, group_size=256)
    data, _ = encode(t, "tq2_0")
    np.testing.assert_array_equal(decoded(data, _Q.TQ2_0, t.shape), t.dequantize(np.float64))


def test_output_never_less_exact_than_the_codes_allow_and_keeps_gguf_blocks_where_gguf_is_exact() -> None:
    """On the symmetric 4-bit GPTQ fixture (codes 1..15, so most blocks lack -8 s) gguf's Q4_0 quantiser
    is lossy in most blocks; the output is exact everywhere and equal to gguf's bytes where gguf is exact."""
    model = read(FIXTURES / "gptq_v1_sym_4bit")
    kept = total = 0
    for t in model.tensors():
        if not isinstance(t, QuantTensor):
            continue
        data, _ = encode(t, "q4_0")
        w32 = t.dequantize(np.float32)
        np.testing.assert_array_equal(decoded(data, _Q.Q4_0, t.shape), w32.astype(np.float64))
        theirs = gguf.quants.quantize(w32, _Q.Q4_0)
        exact = (gguf.quants.dequantize(theirs, _Q.Q4_0) == w32).reshape(t.shape[0], -1, 32).all(axis=2).ravel()
        same = (data.reshape(-1, 18) == theirs.reshape(-1, 18)).all(axis=1)
        np.testing.assert_array_equal(same[exact], True)
        kept += int(exact.sum())
        total += exact.size
    assert 0 < kept < total  # both kinds of blocks occur, so both branches ran


@pytest.mark.parametrize("name, qtype", [("gguf_q4_0", "q4_0"), ("gguf_q4_1", "q4_1"), ("gguf_tq2_0", "tq2_0"),
                                         ("gguf_tq1_0", "tq1_0")])
def test_gguf_source_round_trips_to_its_own_bytes(name: str, qtype: str) -> None:
    path = FIXTURES / name / "model.gguf"
    src = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(path).tensors}
    n = 0
    for t in read(path).tensors():
        if isinstance(t, QuantTensor):
            data, _ = encode(t, qtype)
            np.testing.assert_array_equal(data.reshape(-1), src[t.name].reshape(-1))
            n += 1
    assert n == 14


def test_dequantised_f16_rounds_each_weight_once() -> None:
    t = gptq_like(np.random.default_rng(9), m0=16, k=128, bits=4, group=32, zeros=True)
    data, e = encode(t, "f16:dequant")
    np.testing.assert_array_equal(data.view("<f2").reshape(t.shape), t.dequantize(np.float64).astype(np.float16))
    r = get_encoding("f16:dequant").check(t, data, e)
    assert r.max_abs_err <= 2.0 ** -11 * r.max_abs_weight
    data32, e32 = encode(t, "f32:dequant")
    assert get_encoding("f32:dequant").check(t, data32, e32).max_abs_err <= 2.0 ** -24 * r.max_abs_weight


# ------------------------------------------------------------------------------ refusals and checks


def _info(name="blk.0.attn_q.weight", shape=(64, 256), **kw) -> TensorInfo:
    return TensorInfo(name, shape, **kw)


@pytest.mark.parametrize("info, stock, why", [
    (_info(bits=4, group_size=128, zero_point=True), "q4_0", "zero points"),
    (_info(bits=3, group_size=256), "tq2_0", "not ternary"),
    (_info(bits=2, group_size=256, zero_point=True), "tq1_0", "zero points"),
    (_info(bits=2, group_size=128), "tq1_0", "group size 128"),
    (_info(bits=4, group_size=48, shape=(64, 288)), "q4_1", "group size 48"),
    (_info(), "q4_0", "float weights"),
])
def test_lossy_requests_are_refused_before_writing(info: TensorInfo, stock: str, why: str) -> None:
    with pytest.raises(TmacError) as exc:
        plan_stock([info, _info("token_embd.weight", (512, 256))], stock)
    assert exc.value.rule == "exact stock type" and why in str(exc.value) and info.name in str(exc.value)
    plan = plan_stock([info], stock, allow_lossy=True)
    assert plan.entries[0].encoding == f"{stock}:lossy"


def test_a_block_that_does_not_divide_k_cannot_be_written_even_lossily() -> None:
    with pytest.raises(TmacError) as exc:
        plan_stock([_info(shape=(64, 128), bits=2, per_tensor_scale=True, group_size=128)], "tq2_0",
                   allow_lossy=True)
    assert exc.value.rule == "block size divides K" and "K = 128" in str(exc.value)


def test_plan_keeps_other_tensors_float_and_types_projections() -> None:
    infos = [_info("token_embd.weight", (512, 256)), _info("blk.0.attn_norm.weight", (256,)),
             _info(bits=4, group_size=32)]
    assert [e.encoding for e in plan_stock(infos, "q4_0").entries] == ["f16", "f32", "q4_0"]
    assert [e.encoding for e in plan_stock(infos, "f16").entries] == ["f16", "f32", "f16:dequant"]
    assert [e.nbytes for e in plan_stock(infos, "q4_0").entries] == [512 * 256 * 2, 256 * 4, 64 * 8 * 18]


def test_non_ternary_codes_found_while_encoding_are_refused_or_requantised() -> None:
    t = gptq_like(np.random.default_rng(1), m0=8, k=256, bits=2, group=256, zeros=False)  # codes 0..3
    with pytest.raises(TmacError) as exc:
        encode(t, "tq2_0")
    assert exc.value.rule == "exact stock type" and "not ternary" in str(exc.value)
    data, e = encode(t, "tq2_0:lossy")
    np.testing.assert_array_equal(data, gguf.quants.quantize(t.dequantize(np.float32), _Q.TQ2_0))
    r = get_encoding("tq2_0:lossy").check(t, data, e)
    assert not r.exact and r.nmse > 1e-3  # the error is reported, not hidden


def test_float_weights_requantised_only_when_allowed() -> None:
    w = np.random.default_rng(2).standard_normal((8, 64)).astype(np.float32)
    t = FloatTensor("blk.0.attn_v.weight", w, quantizable=True)
    with pytest.raises(TmacError):
        encode(t, "q4_1")
    data, e = encode(t, "q4_1:lossy")
    np.testing.assert_array_equal(data, gguf.quants.quantize(w, _Q.Q4_1))
    assert 0 < get_encoding("q4_1:lossy").check(t, data, e).nmse < 1e-2


def test_check_catches_a_corrupted_block() -> None:
    t = gptq_like(np.random.default_rng(4), m0=8, k=64, bits=4, group=32, zeros=False)
    data, e = encode(t, "q4_0")
    bad = data.copy()
    bad[0, 5] ^= 0x10  # one code of the first block
    with pytest.raises(VerificationError) as exc:
        get_encoding("q4_0").check(t, bad, e)
    assert exc.value.tensor == t.name and exc.value.rule == "exact stock type within float16 rounding"


def test_a_scale_beyond_float16_is_a_clear_error() -> None:
    t = gptq_like(np.random.default_rng(4), m0=8, k=64, bits=4, group=32, zeros=False)
    t.scales[0, 0] = 1e6
    with pytest.raises(TmacError) as exc:
        encode(t, "q4_0")
    assert exc.value.rule == "block constants fit float16" and exc.value.tensor == t.name


# ------------------------------------------------------------------------------ through convert()


def _kv_and_types(path: Path) -> tuple[dict, dict[str, str]]:
    r = gguf.GGUFReader(path)
    return ({k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")},
            {t.name: t.tensor_type.name for t in r.tensors})


def test_convert_writes_the_same_file_with_stock_projections(tmp_path: Path) -> None:
    from tmac_convert.convert import convert

    tmac = convert(FIXTURES / "gptq_v1_sym_4bit", tmp_path / "t.gguf", threads=1)
    stock = convert(FIXTURES / "gptq_v1_sym_4bit", tmp_path / "s.gguf", out_type="q4_0", threads=1)
    kv_t, types_t = _kv_and_types(tmp_path / "t.gguf")
    kv_s, types_s = _kv_and_types(tmp_path / "s.gguf")
    assert list(types_s) == list(types_t)  # same tensors, same order
    assert {n: t for n, t in types_s.items() if t != "Q4_0"} == {n: t for n, t in types_t.items()
                                                                 if n in types_s and types_s[n] != "Q4_0"}
    assert sum(t == "Q4_0" for t in types_s.values()) == 14
    # the metadata is the T-MAC file's, minus the tmac.* keys and with Q4_0's file type
    assert {k: v for k, v in kv_t.items() if not k.startswith("tmac.") and k != "general.file_type"} == \
           {k: v for k, v in kv_s.items() if k != "general.file_type"}
    assert kv_s["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q4_0)
    assert not (tmp_path / "s.kcfg.ini").exists() and (tmp_path / "t.kcfg.ini").exists()
    assert {t.type for t in stock.tensors} == {"Q4_0", "F16", "F32"} and stock.runtime == "stock llama.cpp"
    assert all(t.nmse == 0 for t in stock.tensors if t.type == "Q4_0") and tmac.kcfg_out


def test_convert_of_a_gguf_source_keeps_its_bytes(tmp_path: Path) -> None:
    from tmac_convert.convert import convert

    src = FIXTURES / "gguf_tq2_0" / "model.gguf"
    convert(src, tmp_path / "o.gguf", out_type="tq2_0", threads=1)
    before = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(src).tensors}
    after = {t.name: (t.tensor_type.name, np.asarray(t.data)) for t in gguf.GGUFReader(tmp_path / "o.gguf").tensors}
    proj = [n for n, (ty, _) in after.items() if ty == "TQ2_0"]
    assert len(proj) == 14
    for n in proj:
        np.testing.assert_array_equal(after[n][1], before[n])


@pytest.mark.parametrize("kw, rule", [
    ({"out_type": "q4_0", "bits": 4}, "options apply to the output type"),
    ({"out_type": "q4_0", "preset": "x"}, "options apply to the output type"),
    ({"allow_lossy": True}, "options apply to the output type"),
    ({"out_type": "q4_0", "format": "npz"}, "stock types are GGUF"),
    ({"out_type": "q8_0"}, "output type"),
])
def test_convert_refuses_options_that_do_not_apply(tmp_path: Path, kw: dict, rule: str) -> None:
    from tmac_convert.convert import convert

    with pytest.raises(TmacError) as exc:
        convert(FIXTURES / "gptq_v1_sym_4bit", tmp_path / "o.gguf", threads=1, **kw)
    assert exc.value.rule == rule
    assert not list(tmp_path.iterdir())


def test_non_ternary_codes_refused_while_writing_leave_no_file(tmp_path: Path) -> None:
    """A symmetric 2-bit GPTQ checkpoint looks ternary-compatible to the plan (2-bit, no zeros, group 256)
    but holds code 0 (= -2 s): the conversion stops with nothing written; --allow-lossy re-quantises."""
    from tests.test_readers_gptq import write_gptq
    from tmac_convert.convert import convert

    src = write_gptq(tmp_path / "src", bits=2, group_size=256, sym=True)
    out = tmp_path / "out" / "o.gguf"
    out.parent.mkdir()
    with pytest.raises(TmacError) as exc:
        convert(src, out, out_type="tq2_0", threads=1)
    assert exc.value.rule == "exact stock type" and "not ternary" in str(exc.value)
    assert not list(out.parent.iterdir())
    with pytest.raises(VerificationError) as lossy:  # allowed, but beyond the default --max-error
        convert(src, out, out_type="tq2_0", allow_lossy=True, threads=1)
    assert lossy.value.exit_code == 1 and "lossy" in str(lossy.value) and not list(out.parent.iterdir())
    rep = convert(src, out, out_type="tq2_0", allow_lossy=True, threads=1, max_error=10.0)
    assert all(t.nmse > 0 and t.lossy_nmse == t.nmse for t in rep.tensors if t.type == "TQ2_0")


@pytest.mark.parametrize("encoding, make", [
    ("q4_0", lambda rng: gptq_like(rng, m0=24, k=256, bits=4, group=64, zeros=False)),
    ("q4_1", lambda rng: gptq_like(rng, m0=24, k=256, bits=3, group=128, zeros=True)),
    ("tq2_0", lambda rng: ternary(rng, 24, 512)),
    ("f16:dequant", lambda rng: gptq_like(rng, m0=24, k=256, bits=2, group=32, zeros=True)),
    ("q4_0:lossy", lambda rng: gptq_like(rng, m0=24, k=256, bits=4, group=32, zeros=True)),
])
def test_row_chunks_change_nothing(monkeypatch: pytest.MonkeyPatch, encoding: str, make) -> None:
    """Big tensors are encoded and checked in row chunks (bounded memory): same bytes, same figures."""
    import tmac_convert.format.encodings.stock as stock

    t = make(np.random.default_rng(11))
    whole, e = encode(t, encoding)
    r_whole = get_encoding(encoding).check(t, whole, e)
    monkeypatch.setattr(stock, "CHUNK_VALUES", 5 * t.shape[1])  # 5 rows at a time, a ragged last chunk
    chunked, _ = encode(t, encoding)
    np.testing.assert_array_equal(chunked.view(np.uint8), whole.view(np.uint8))
    r = get_encoding(encoding).check(t, chunked, e)
    assert r.max_abs_err == r_whole.max_abs_err and r.nmse == pytest.approx(r_whole.nmse, rel=1e-12, abs=1e-30)


def test_float_source_passes_through_for_f16_and_is_requantised_only_when_allowed(tmp_path: Path) -> None:
    from tmac_convert.convert import convert

    src = FIXTURES / "llama_f16"
    assert not any(isinstance(t, QuantTensor) for t in read(src, quantize=False).tensors())
    rep = convert(src, tmp_path / "f.gguf", out_type="f16", threads=1)
    st_w = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(tmp_path / "f.gguf").tensors}
    assert {t.type for t in rep.tensors} == {"F16", "F32"} and len(st_w) == len(rep.tensors)
    with pytest.raises(TmacError) as exc:
        convert(src, tmp_path / "q.gguf", out_type="q4_0", threads=1)
    assert exc.value.rule == "exact stock type" and "float weights" in str(exc.value)
    rep = convert(src, tmp_path / "q.gguf", out_type="q4_0", allow_lossy=True, threads=1)
    q = [t for t in rep.tensors if t.type == "Q4_0"]
    assert len(q) == 14 and all(0 < t.nmse < 2e-2 for t in q)
