"""BitNet b1.58 reader: float checkpoints ternarised like llama.cpp, packed checkpoints unpacked from
four row slabs, and malformed checkpoints failing with a TmacError naming file, tensor and rule."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tmac_convert.errors import TmacError
from tmac_convert.readers.base import FloatTensor
from tmac_convert.readers.bitnet import (BitNetReader, pack_bitnet_slabs, round_to_dtype, ternarize,
                                         unpack_bitnet_slabs)
from tmac_convert.readers.safetensors_io import SafetensorsCheckpoint
from tmac_convert.format.tensor import QuantTensor

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import gen_bitnet  # noqa: E402
import gen_common  # noqa: E402

PROJ = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def read_all(folder: Path):
    model = BitNetReader().open(folder)
    return model, list(model.tensors())


def source(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every tensor of a fixture, read independently of the reader (BF16 widened exactly), and its dtype."""
    ck = SafetensorsCheckpoint(folder)
    return {n: ck.get(n) for n in ck.names()}, {n: ck.entry(n).dtype for n in ck.names()}


def reference_ternary(w: np.ndarray, st_dtype: str) -> tuple[np.ndarray, float, np.ndarray]:
    """Float64 BitNet weight_quant: ``(t, s64, near_tie)``; ``near_tie`` marks |W/s| within 1e-6 of 0.5."""
    w64 = np.asarray(w, dtype=np.float64)
    s = max(float(np.abs(w64).mean()), 1e-5)
    x = w64 / s
    t = np.clip(np.round(x), -1, 1)  # numpy rounds half to even, as torch.round
    near = np.abs(np.abs(x) - 0.5) < 1e-6
    return t.astype(np.int8), s, near


def assert_tmac_error(exc: pytest.ExceptionInfo, *, rule: str, file: Path | None = None,
                      tensor: str | None = None) -> None:
    e = exc.value
    assert isinstance(e, TmacError) and e.rule == rule, (getattr(e, "rule", None), str(e))
    if file is not None:
        assert e.file == str(file) and str(file) in str(e)
    if tensor is not None:
        assert e.tensor == tensor and tensor in str(e)


# ------------------------------------------------------------------------------------ fixtures


def _check_float_model(folder: Path, st_dtype: str) -> None:
    src, dtypes = source(folder)
    model, tensors = read_all(folder)
    assert model.format == "bitnet" and model.gguf_arch == "bitnet" and model.quantization["form"] == "float"
    n_quant = 0
    for t in tensors:
        if isinstance(t, QuantTensor):
            n_quant += 1
            w = src[t.meta["hf_name"]]
            assert t.name.split(".")[2] in PROJ
            assert t.bits == 2 and t.scales.shape == (1,) and t.group_size == t.shape[1] and t.zeros is None
            assert set(np.unique(t.codes)) <= {1, 2, 3}
            t_ref, s64, near = reference_ternary(w, st_dtype)
            mismatch = (t.codes.astype(np.int8) - 2) != t_ref
            assert not np.any(mismatch & ~near), "codes differ away from a rounding tie"
            s_ref = float(round_to_dtype(np.array([s64], np.float32), st_dtype)[0])
            ulp = float(np.spacing(np.float16(s_ref))) if st_dtype == "F16" else s_ref * 2.0 ** -7
            assert abs(float(t.scales[0]) - s_ref) <= ulp  # section 2.2 caveat: at most one ulp of the dtype
            w_ref = round_to_dtype((t_ref * s64).astype(np.float32), st_dtype).astype(np.float64)
            got = t.dequantize(np.float64)
            np.testing.assert_allclose(got[~mismatch], w_ref[~mismatch], rtol=2.0 ** -8 if st_dtype == "BF16"
                                       else 2.0 ** -10, atol=0)
        else:
            assert isinstance(t, FloatTensor) and not t.quantizable
            hf = next(n for n in src if src[n].shape == t.data.shape and np.array_equal(src[n], t.data))
            assert dtypes[hf] in ("F16", "BF16", "F32")
    assert n_quant == 7 * model.config["num_hidden_layers"]
    names = [t.name for t in tensors]
    assert "blk.0.attn_sub_norm.weight" in names and "blk.1.ffn_sub_norm.weight" in names
    assert [i.name for i in model.tensor_infos()] == names


def test_float_fixture_matches_float64_weight_quant() -> None:
    _check_float_model(FIXTURES / "bitnet_float", "F16")


def test_float_codes_and_scale_match_llamacpp_float32_rule() -> None:
    """The scale is exactly what llama.cpp's W_t holds for t = +-1 after the cast to float16."""
    model, tensors = read_all(FIXTURES / "bitnet_float")
    src, _ = source(FIXTURES / "bitnet_float")
    for t in tensors:
        if isinstance(t, QuantTensor):
            w32 = src[t.meta["hf_name"]].astype(np.float32)
            s = np.float32(np.float32(np.abs(w32).astype(np.float64).mean()))
            iscale = np.float32(1) / s
            w_t = (np.clip(np.rint(w32 * iscale), -1, 1) / iscale).astype(np.float16)  # llama.cpp's W_t
            np.testing.assert_array_equal(t.dequantize(np.float32), w_t.astype(np.float32))


def test_online_bf16_float_variant(tmp_path: Path) -> None:
    folder = gen_bitnet.float_dir(tmp_path / "online", dtype="BF16", online=True)
    model = BitNetReader().open(folder)
    assert model.architecture == "BitNetForCausalLM" and model.quantization["quantization_mode"] == "online"
    _check_float_model(folder, "BF16")


def test_packed_fixture_matches_independent_unpack() -> None:
    folder = FIXTURES / "bitnet_packed"
    src, dtypes = source(folder)
    model, tensors = read_all(folder)
    assert model.quantization["form"] == "packed" and model.quantization["scale_convention"] == "divide"
    n = 0
    for t in tensors:
        if not isinstance(t, QuantTensor):
            assert t.name.split(".")[-2] not in PROJ
            continue
        n += 1
        hf = t.meta["hf_name"]
        raw = src[hf]
        assert dtypes[hf] == "U8" and t.shape == (4 * raw.shape[0], raw.shape[1])
        bits = np.unpackbits(raw[..., None], axis=-1, bitorder="little")  # [R, K, 8]
        field = np.concatenate([bits[..., 2 * i] + 2 * bits[..., 2 * i + 1] for i in range(4)], axis=0)
        ws = float(src[hf[: -len("weight")] + "weight_scale"][0])
        want = (field.astype(np.float64) - 1.0) / ws  # W = t / weight_scale
        np.testing.assert_allclose(t.dequantize(np.float64), want, rtol=2.0 ** -24, atol=0)
        np.testing.assert_array_equal(t.codes, field + 1)
    assert n == 14


def test_autobitlinear_weight_scale_multiplies(tmp_path: Path) -> None:
    folder = gen_bitnet.packed_dir(tmp_path / "auto", linear_class="autobitlinear")
    src, _ = source(folder)
    model, tensors = read_all(folder)
    assert model.quantization["scale_convention"] == "multiply"
    for t in tensors:
        if isinstance(t, QuantTensor):
            hf = t.meta["hf_name"]
            ws = float(src[hf[: -len("weight")] + "weight_scale"][0])
            field = unpack_bitnet_slabs(src[hf]).astype(np.float64)
            np.testing.assert_array_equal(t.dequantize(np.float64), (field - 1.0) * np.float64(np.float32(ws)))


def test_untied_lm_head_passes_through_as_output(tmp_path: Path) -> None:
    folder = gen_bitnet.float_dir(tmp_path / "untied", tie=False)
    model, tensors = read_all(folder)
    out = next(t for t in tensors if t.name == "output.weight")
    assert isinstance(out, FloatTensor) and out.data.shape == (512, 128)
    assert any("lm_head.weight -> output.weight" in n and "refuses to load" in n for n in model.notes)


def test_detect() -> None:
    assert BitNetReader.detect(FIXTURES / "bitnet_float")
    assert BitNetReader.detect(FIXTURES / "bitnet_packed")
    assert BitNetReader.detect(FIXTURES / "bitnet_packed" / "model.safetensors")
    assert not BitNetReader.detect(FIXTURES / "gguf_q4_0" / "model.gguf")


def test_plain_llama_is_not_bitnet(tmp_path: Path) -> None:
    folder = gen_common.float_llama_dir(tmp_path / "llama", dtype="F16")
    assert not BitNetReader.detect(folder)


def test_fixtures_are_deterministic_and_committed(tmp_path: Path) -> None:
    gen_bitnet.generate(tmp_path)
    for folder in gen_bitnet.FIXTURES:
        committed = sorted(p.name for p in (FIXTURES / folder).iterdir())
        assert committed == sorted(p.name for p in (tmp_path / folder).iterdir())
        for name in committed:
            assert (tmp_path / folder / name).read_bytes() == (FIXTURES / folder / name).read_bytes(), name


# ---------------------------------------------------------------------------------- properties


@settings(max_examples=40)
@given(st.integers(1, 16), st.integers(1, 24), st.integers(0, 2**32 - 1))
def test_slab_unpack_inverts_transformers_pack(quarter: int, k: int, seed: int) -> None:
    """Row i*M/4 + r lives in bits 2i..2i+1 of packed row r; field = t + 1; T-MAC code = field + 1."""
    t = np.random.default_rng(seed).integers(-1, 2, size=(4 * quarter, k)).astype(np.int8)
    packed = gen_bitnet.pack_rows(t)
    assert packed.shape == (quarter, k)
    fields = unpack_bitnet_slabs(packed)
    np.testing.assert_array_equal(fields.astype(np.int8) - 1, t)
    np.testing.assert_array_equal(pack_bitnet_slabs(fields), packed)


@settings(max_examples=40)
@given(st.integers(1, 8), st.integers(1, 16), st.integers(0, 2**32 - 1))
def test_slab_unpack_of_arbitrary_bytes_follows_the_bit_rule(rows: int, k: int, seed: int) -> None:
    raw = np.random.default_rng(seed).integers(0, 256, size=(rows, k), dtype=np.uint8)
    fields = unpack_bitnet_slabs(raw)
    for i in range(4):
        np.testing.assert_array_equal(fields[i * rows:(i + 1) * rows], (raw >> (2 * i)) & 3)


@settings(max_examples=30)
@given(st.integers(1, 12), st.integers(1, 40), st.integers(0, 2**32 - 1), st.sampled_from(["F16", "BF16", "F32"]),
       st.floats(1e-3, 10.0))
def test_ternarize_matches_float64_reference(m: int, k: int, seed: int, dtype: str, spread: float) -> None:
    w = (np.random.default_rng(seed).standard_normal((m, k)) * spread).astype(np.float32)
    w = round_to_dtype(w, dtype)  # a value the checkpoint dtype can hold
    t, scale = ternarize(w, dtype)
    t_ref, s64, near = reference_ternary(w, dtype)
    assert not np.any((t != t_ref) & ~near)
    assert scale == float(round_to_dtype(np.array([scale], np.float32), dtype)[0])  # representable in dtype
    rel = {"F16": 2.0 ** -10, "BF16": 2.0 ** -7, "F32": 2.0 ** -22}[dtype]
    assert abs(scale - s64) <= rel * s64


def test_ternarize_all_zero_uses_the_floor() -> None:
    t, scale = ternarize(np.zeros((4, 8), np.float32), "F32")
    assert not t.any() and scale == pytest.approx(1e-5, rel=1e-6)


# ------------------------------------------------------------------------------------ malformed


def rewrite(folder: Path, mutate: Callable[[dict[str, np.ndarray], dict[str, str]], None],
            config: Callable[[dict], None] | None = None) -> Path:
    """Rewrite a model folder's safetensors (and config) after ``mutate(tensors, dtypes)``."""
    tensors, dtypes = source(folder)
    mutate(tensors, dtypes)
    gen_common.save_safetensors(folder / "model.safetensors", tensors,
                                dtypes={n: d for n, d in dtypes.items() if d in ("BF16", "F16", "F32")})
    if config:
        cfg = json.loads((folder / "config.json").read_text())
        config(cfg)
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder / "model.safetensors"


@pytest.fixture
def packed(tmp_path: Path) -> Path:
    return gen_bitnet.packed_dir(tmp_path / "packed")


@pytest.fixture
def floaty(tmp_path: Path) -> Path:
    return gen_bitnet.float_dir(tmp_path / "float")


Q = "model.layers.0.self_attn.q_proj"


def test_missing_weight_scale(packed: Path) -> None:
    f = rewrite(packed, lambda t, d: t.pop(f"{Q}.weight_scale"))
    with pytest.raises(TmacError) as exc:
        BitNetReader().open(packed)
    assert_tmac_error(exc, rule="required tensor", file=f, tensor=f"{Q}.weight")


def test_wrong_packed_shape(packed: Path) -> None:
    f = rewrite(packed, lambda t, d: t.__setitem__(f"{Q}.weight", t[f"{Q}.weight"][:-1]))
    with pytest.raises(TmacError) as exc:
        BitNetReader().open(packed)
    assert_tmac_error(exc, rule="config matches tensors", file=f, tensor=f"{Q}.weight")


def test_code_out_of_range(packed: Path) -> None:
    def poke(t, d):
        w = t[f"{Q}.weight"].copy()
        w[3, 5] = 0b11_00_10_01  # field 3 in slab 3 -> row 3*M/4 + 3
        t[f"{Q}.weight"] = w
    f = rewrite(packed, poke)
    model = BitNetReader().open(packed)
    with pytest.raises(TmacError) as exc:
        list(model.tensors())
    assert_tmac_error(exc, rule="ternary codes in range", file=f, tensor=f"{Q}.weight")
    assert f"row {3 * 64 + 3}, column 5" in str(exc.value)


@pytest.mark.parametrize("value", [[0.0], [float("nan")], [1.0, 2.0]])
def test_bad_weight_scale(packed: Path, value: list[float]) -> None:
    f = rewrite(packed, lambda t, d: t.__setitem__(f"{Q}.weight_scale", np.array(value, np.float32)))
    model = BitNetReader().open(packed)
    with pytest.raises(TmacError) as exc:
        list(model.tensors())
    assert_tmac_error(exc, rule="weight_scale", file=f, tensor=f"{Q}.weight_scale")


def test_config_contradicting_tensors(packed: Path, floaty: Path) -> None:
    # packed tensors, but the config has no bitnet quantization_config
    rewrite(packed, lambda t, d: None, config=lambda c: c.pop("quantization_config"))
    with pytest.raises(TmacError) as exc:
        BitNetReader().open(packed)
    assert_tmac_error(exc, rule="config matches tensors", tensor=f"{Q}.weight")
    # float tensors, but the config says packed (offline)
    rewrite(floaty, lambda t, d: None, config=lambda c: c.update(
        quantization_config={"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline"}))
    with pytest.raises(TmacError) as exc:
        BitNetReader().open(floaty)
    assert_tmac_error(exc, rule="config matches tensors", file=floaty / "model.safetensors", tensor=f"{Q}.weight")


def test_float_projection_with_wrong_shape_or_nan(floaty: Path) -> None:
    w = source(floaty)[0][f"{Q}.weight"]
    f = rewrite(floaty, lambda t, d: t.__setitem__(f"{Q}.weight", w[:, :64]))
    with pytest.raises(TmacError) as exc:
        BitNetReader().open(floaty)
    assert_tmac_error(exc, rule="config matches tensors", file=f, tensor=f"{Q}.weight")
    bad = w.copy()
    bad[7, 3] = np.nan
    rewrite(floaty, lambda t, d: t.__setitem__(f"{Q}.weight", bad))
    model = BitNetReader().open(floaty)
    with pytest.raises(TmacError) as exc:
        list(model.tensors())
    assert_tmac_error(exc, rule="finite weights", file=f, tensor=f"{Q}.weight")
    assert "row 7" in str(exc.value)


def test_truncated_safetensors(packed: Path) -> None:
    f = packed / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    with pytest.raises(TmacError) as exc:
        BitNetReader().open(packed)
    assert_tmac_error(exc, rule="complete file", file=f)
    assert exc.value.tensor


def test_unknown_tensor_and_unsupported_variant(floaty: Path, packed: Path) -> None:
    f = rewrite(floaty, lambda t, d: t.__setitem__("model.layers.0.mystery.weight", np.ones(4, np.float32)))
    with pytest.raises(TmacError) as exc:
        BitNetReader().open(floaty)
    assert_tmac_error(exc, rule="known tensor name", file=f, tensor="model.layers.0.mystery.weight")
    rewrite(packed, lambda t, d: None, config=lambda c: c["quantization_config"].update(use_rms_norm=True))
    with pytest.raises(TmacError) as exc:
        BitNetReader().open(packed)
    assert_tmac_error(exc, rule="supported BitNet variant", file=packed / "config.json")


@pytest.mark.parametrize("folder", ["bitnet_float", "bitnet_packed"])
def test_reading_is_lazy(folder: str) -> None:
    """Peak traced memory while streaming stays a few float32 copies of the largest tensor."""
    import tracemalloc

    model = BitNetReader().open(FIXTURES / folder)
    largest = max(int(np.prod(i.shape)) for i in model.tensor_infos())
    total = sum(int(np.prod(i.shape)) for i in model.tensor_infos())
    tracemalloc.start()
    try:
        for _ in model.tensors():
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * largest < 4 * total  # bytes; 4 * total would be the whole model in float32


def test_llama_with_bitnet_quantization_gets_llama_names_and_qk_permutation(tmp_path: Path) -> None:
    """A LlamaForCausalLM carrying quant_method bitnet: llama naming, q/k code rows permuted."""
    from tmac_convert.archs.naming import permute_qk

    folder = gen_bitnet.packed_dir(tmp_path / "llama158", architecture="LlamaForCausalLM")
    src, _ = source(folder)
    model, tensors = read_all(folder)
    assert model.gguf_arch == "llama" and model.format == "bitnet"
    heads = {"attn_q": model.config["num_attention_heads"], "attn_k": model.config["num_key_value_heads"]}
    seen = set()
    for t in tensors:
        if isinstance(t, QuantTensor):
            kind = t.name.split(".")[2]
            codes = unpack_bitnet_slabs(src[t.meta["hf_name"]]) + 1
            if kind in heads:
                seen.add(kind)
                codes = permute_qk(codes, heads[kind])
            np.testing.assert_array_equal(t.codes, codes)
    assert seen == {"attn_q", "attn_k"}


@pytest.mark.parametrize("folder", ["bitnet_float", "bitnet_packed"])
def test_tensor_infos_promise_what_is_yielded(folder: str) -> None:
    model = BitNetReader().open(FIXTURES / folder)
    infos = model.tensor_infos()
    tensors = list(model.tensors())
    assert [i.name for i in infos] == [t.name for t in tensors]
    for i, t in zip(infos, tensors):
        if isinstance(t, QuantTensor):
            assert (i.shape, i.bits, i.group_size, i.zero_point, i.per_tensor_scale) == \
                (t.shape, 2, t.shape[1], False, True) and t.per_tensor_scale
        else:
            assert i.bits is None and tuple(i.shape) == t.data.shape
