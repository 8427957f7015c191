"""Float HF checkpoints: projections quantised round-to-nearest (error bounded and reported), every
other tensor passed through bit for bit; and the RTN quantiser itself as a property."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open

from tmac_convert import read
from tmac_convert.errors import TmacError
from tmac_convert.readers.base import FloatTensor
from tmac_convert.archs.naming import permute_qk
from tmac_convert.quantize import quantize_rtn
from tmac_convert.format.tensor import QuantTensor

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import gen_common  # noqa: E402

PROJ = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj"}


def ref_permute(rows: np.ndarray, n_head: int) -> np.ndarray:
    m0 = rows.shape[0]
    d = m0 // n_head
    h, rem = np.divmod(np.arange(m0), d)
    i, p = np.divmod(rem, 2)
    return rows[h * d + p * (d // 2) + i]


def hf_weight(folder: Path, name: str) -> np.ndarray:
    with safe_open(str(folder / "model.safetensors"), "numpy") as f:
        return f.get_tensor(name)


def step_bound(t: QuantTensor) -> np.ndarray:
    """Half a quantisation step per element (+ float32 rounding of the stored scale/offset)."""
    s = np.repeat(t.scales.astype(np.float64), t.group_size, axis=1)
    return 0.5 * s * (1 + 1e-5) + 1e-6


def write_float(folder: Path, dtype: str, arch: str = "LlamaForCausalLM") -> dict[str, np.ndarray]:
    cfg = gen_common.tiny_config(arch, vocab_size=64)
    w = gen_common.tiny_weights(cfg, 3)
    gen_common.write_model_dir(folder, cfg, w, dtypes=dtype, tokenizer=False)
    return w


def test_f16_fixture_quantises_projections_and_passes_the_rest_through() -> None:
    folder = FIXTURES / "llama_f16"
    model = read(folder, bits=4, group_size=128, zero_point=True)
    assert model.format == "hf-float" and model.gguf_arch == "llama"
    assert model.quantization == {"method": "rtn", "bits": 4, "group_size": 128, "sym": False, "zero_point": True,
                                  "source_dtypes": ["F16"]}
    assert "tokenizer.json" in model.tokenizer_files
    cfg = model.config
    n_quant = 0
    for t in model.tensors():
        if isinstance(t, FloatTensor):
            assert not t.name.startswith("blk.") or "norm" in t.name
            continue
        layer, role = t.name.split(".")[1:3]
        src = hf_weight(folder, f"model.layers.{layer}.{PROJ[role]}.weight").astype(np.float64)
        if role == "attn_q":
            src = ref_permute(src, cfg["num_attention_heads"])
        elif role == "attn_k":
            src = ref_permute(src, cfg["num_key_value_heads"])
        err = t.dequantize(np.float64) - src
        assert np.all(np.abs(err) <= step_bound(t)), t.name
        stats = t.meta["quant_stats"]
        assert stats["nmse"] == pytest.approx((err ** 2).sum() / (src ** 2).sum(), rel=1e-6)
        assert stats["max_abs_err"] == pytest.approx(np.abs(err).max(), rel=1e-6)
        assert t.meta["note"].startswith(t.name + ": RTN 4-bit nmse")
        n_quant += 1
    assert n_quant == 14


def test_pass_through_tensors_are_bit_exact() -> None:
    folder = FIXTURES / "llama_f16"
    floats = {t.name: t for t in read(folder).tensors() if isinstance(t, FloatTensor)}
    assert floats["token_embd.weight"].data.dtype == np.float16
    assert np.array_equal(floats["token_embd.weight"].data, hf_weight(folder, "model.embed_tokens.weight"))
    assert np.array_equal(floats["output.weight"].data, hf_weight(folder, "lm_head.weight"))
    assert np.array_equal(floats["blk.1.ffn_norm.weight"].data,
                          hf_weight(folder, "model.layers.1.post_attention_layernorm.weight"))


@pytest.mark.parametrize("dtype", ["BF16", "F32"])
def test_bf16_and_f32_sources(tmp_path: Path, dtype: str) -> None:
    w = write_float(tmp_path, dtype)
    model = read(tmp_path, bits=2, group_size=64, zero_point=False)
    tensors = {t.name: t for t in model.tensors()}
    emb = tensors["token_embd.weight"].data
    assert emb.dtype == np.float32
    want = w["model.embed_tokens.weight"]
    if dtype == "BF16":  # widened exactly from the stored bfloat16 bit patterns
        want = gen_common.from_bf16_bits(gen_common.to_bf16_bits(want))
    assert np.array_equal(emb, want)
    t = tensors["blk.0.ffn_down.weight"]
    assert t.bits == 2 and t.group_size == 64 and t.zeros is None
    src = gen_common.from_bf16_bits(gen_common.to_bf16_bits(w["model.layers.0.mlp.down_proj.weight"])) \
        if dtype == "BF16" else w["model.layers.0.mlp.down_proj.weight"]
    assert np.all(np.abs(t.dequantize(np.float64) - src) <= step_bound(t))


def test_qwen2_biases_pass_through_unpermuted(tmp_path: Path) -> None:
    w = write_float(tmp_path, "F32", "Qwen2ForCausalLM")
    tensors = {t.name: t for t in read(tmp_path).tensors()}
    assert np.array_equal(tensors["blk.1.attn_k.bias"].data, w["model.layers.1.self_attn.k_proj.bias"])


def test_llama_q_bias_is_permuted_with_its_rows(tmp_path: Path) -> None:
    cfg = gen_common.tiny_config(vocab_size=64, attention_bias=True)
    w = gen_common.tiny_weights(cfg, 5)
    gen_common.write_model_dir(tmp_path, cfg, w, dtypes="F32", tokenizer=False)
    tensors = {t.name: t for t in read(tmp_path).tensors()}
    assert np.array_equal(tensors["blk.0.attn_q.bias"].data, ref_permute(w["model.layers.0.self_attn.q_proj.bias"], 4))


@pytest.mark.parametrize("opts, rule", [
    ({"bits": 8}, "bits in 1..4"),
    ({"group_size": 96}, "K % group_size == 0"),
    ({"group_size": 0}, "group size"),
])
def test_bad_options(tmp_path: Path, opts: dict, rule: str) -> None:
    write_float(tmp_path, "F16")
    with pytest.raises(TmacError) as e:
        read(tmp_path, **opts)
    assert e.value.rule == rule and e.value.file


def test_integer_tensor_in_a_float_checkpoint(tmp_path: Path) -> None:
    cfg = gen_common.tiny_config(vocab_size=64)
    w = gen_common.tiny_weights(cfg, 0)
    w["model.layers.0.mlp.up_proj.weight"] = np.zeros((512, 256), np.int32)
    gen_common.write_model_dir(tmp_path, cfg, w, dtypes={k: "F16" for k in w if k != "model.layers.0.mlp.up_proj.weight"},
                               tokenizer=False)
    with pytest.raises(TmacError) as e:
        read(tmp_path)
    assert e.value.rule == "float dtype" and e.value.tensor == "model.layers.0.mlp.up_proj.weight"


def test_other_quantisation_methods_are_refused(tmp_path: Path) -> None:
    cfg = gen_common.tiny_config(vocab_size=64, quantization_config={"quant_method": "awq", "bits": 4})
    gen_common.write_model_dir(tmp_path, cfg, gen_common.tiny_weights(cfg, 0), dtypes="F16", tokenizer=False)
    with pytest.raises(TmacError) as e:
        read(tmp_path)
    assert e.value.rule == "supported quantisation method" and "awq" in str(e.value)


def test_shape_contradicting_config(tmp_path: Path) -> None:
    cfg = gen_common.tiny_config(vocab_size=64)
    w = gen_common.tiny_weights(cfg, 0)
    cfg["intermediate_size"] = 768
    gen_common.write_model_dir(tmp_path, cfg, w, dtypes="F16", tokenizer=False)
    with pytest.raises(TmacError) as e:
        read(tmp_path)
    assert e.value.rule == "config matches tensors" and e.value.tensor == "model.layers.0.mlp.gate_proj.weight"


# ----------------------------------------------------------------------------- quantize_rtn


@given(bits=st.sampled_from([1, 2, 3, 4]), zp=st.booleans(), gs=st.sampled_from([32, 64, -1]),
       rows=st.integers(1, 6), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**32 - 1))
def test_rtn_error_is_at_most_half_a_step(bits: int, zp: bool, gs: int, rows: int, scale: float, seed: int) -> None:
    w = (np.random.default_rng(seed).standard_normal((rows, 128)) * scale).astype(np.float32)
    t, stats = quantize_rtn("w", w, bits=bits, group_size=gs, zero_point=zp)
    assert t.codes.dtype == np.uint8 and int(t.codes.max()) < (1 << bits)
    assert t.group_size == (128 if gs == -1 else gs) and (t.zeros is not None) == zp
    err = t.dequantize(np.float64) - w.astype(np.float64)
    bound = 0.5 * np.repeat(t.scales.astype(np.float64), t.group_size, axis=1) * (1 + 1e-5) + 1e-6 * scale
    assert np.all(np.abs(err) <= bound)
    assert stats["max_abs_err"] == pytest.approx(np.abs(err).max(), rel=1e-9, abs=1e-12)


def test_rtn_constant_and_zero_groups_are_exact() -> None:
    w = np.zeros((2, 64), np.float32)
    w[1, :32] = 0.75
    for zp in (True, False):
        t, stats = quantize_rtn("w", w, bits=2, group_size=32, zero_point=zp)
        deq = t.dequantize(np.float64)
        assert np.array_equal(deq[0], np.zeros(64))  # an all-zero row stays zero either way
        if zp:  # the asymmetric grid starts at the group minimum: constants are exact
            assert np.array_equal(deq, w.astype(np.float64)) and stats["nmse"] == 0.0


def test_rtn_asymmetric_grid_spans_min_to_max() -> None:
    w = np.linspace(-1.0, 3.0, 64, dtype=np.float32).reshape(1, 64)
    t, _ = quantize_rtn("w", w, bits=4, group_size=64, zero_point=True)
    deq = t.dequantize(np.float64)
    assert deq.min() == pytest.approx(-1.0, abs=1e-6) and deq.max() == pytest.approx(3.0, abs=1e-6)


def test_rtn_rejects_bad_input() -> None:
    with pytest.raises(TmacError, match="NaN"):
        quantize_rtn("w", np.full((2, 32), np.nan, np.float32), bits=2, group_size=32, zero_point=True)
    with pytest.raises(TmacError) as e:
        quantize_rtn("w", np.zeros((2, 32), np.float32), bits=5, group_size=32, zero_point=True)
    assert e.value.rule == "bits in 1..4"


def test_permute_then_quantise_equals_quantise_then_permute() -> None:
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    a, _ = quantize_rtn("w", permute_qk(w, 4), bits=3, group_size=32, zero_point=True)
    b, _ = quantize_rtn("w", w, bits=3, group_size=32, zero_point=True)
    assert np.array_equal(a.codes, permute_qk(b.codes, 4))
    assert np.array_equal(a.zeros, permute_qk(b.zeros, 4))


def test_float_reading_is_lazy(tmp_path: Path) -> None:
    import tracemalloc

    cfg = gen_common.tiny_config(vocab_size=64, hidden_size=1024, intermediate_size=4096, num_attention_heads=8,
                                 num_key_value_heads=8, head_dim=128)
    rng = np.random.default_rng(0)
    w = {"model.embed_tokens.weight": np.zeros((64, 1024), np.float32)}
    for mod in gen_common.projection_names(cfg):
        w[mod + ".weight"] = rng.standard_normal(gen_common.projection_shape(cfg, mod), dtype=np.float32)
    gen_common.write_model_dir(tmp_path, cfg, w, dtypes="F16", tokenizer=False)
    del w
    largest = 4096 * 1024 * 2  # bytes of the largest float16 tensor
    tracemalloc.start()
    try:
        model = read(tmp_path, bits=2, group_size=128)
        after_open = tracemalloc.get_traced_memory()[0]
        for t in model.tensors():
            del t
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert after_open < largest / 4
    assert peak < 4 * largest, (peak, largest)
