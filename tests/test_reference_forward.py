"""The numpy reference forward pass (tests/reference_forward.py), checked on its own.

Its agreement with a real runtime is tested end to end in ``test_e2e_llamacpp.py`` (float
checkpoints round-tripped through F16/F32 GGUF into llama.cpp); here are the properties that hold
whatever the weights: RoPE equals llama.cpp's adjacent-pair rotation on the permuted q/k rows,
attention is causal, grouped-query attention equals repeated heads, tied heads, the BitNet variants,
the Llama 3 RoPE scaling and llama.cpp's 8-bit activation quantisers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, example
from hypothesis import strategies as st

from tests import reference_forward as rf
from tmac_convert.archs.hparams import llama3_rope_factors

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import gen_common  # noqa: E402

VOCAB = 64


def tiny(arch: str = "LlamaForCausalLM", seed: int = 0, **over) -> tuple[dict, dict[str, np.ndarray]]:
    cfg = gen_common.tiny_config(arch, vocab_size=VOCAB, **over)
    return cfg, gen_common.tiny_weights(cfg, seed)


def tokens(n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, VOCAB, n).tolist()


def llamacpp_permute(rows: np.ndarray, n_head: int) -> np.ndarray:
    """GGUF row h*d + 2i + p takes HF row h*d + p*d/2 + i (the converter's q/k permutation, as an index formula)."""
    d = rows.shape[-1] // n_head
    r = np.arange(rows.shape[-1])
    h, rem = np.divmod(r, d)
    i, p = np.divmod(rem, 2)
    return rows[..., h * d + p * (d // 2) + i]


@settings(max_examples=20)
@given(t=st.integers(1, 9), heads=st.integers(1, 3), half=st.sampled_from([1, 2, 8]), seed=st.integers(0, 2**31))
def test_rotate_half_rope_is_llamacpps_pair_rotation_on_permuted_rows(t: int, heads: int, half: int, seed: int) -> None:
    d = 2 * half
    x = np.random.default_rng(seed).standard_normal((t, heads, d))
    inv = rf.rope_inv_freq({"rope_theta": 10000.0}, d)
    want = llamacpp_permute(rf.rope(x, inv).reshape(t, heads * d), heads)
    # llama.cpp's LLAMA_ROPE_TYPE_NORM: rotate (x[2i], x[2i+1]) by pos * theta^(-2i/d), as complex numbers
    xp = llamacpp_permute(x.reshape(t, heads * d), heads).reshape(t, heads, half, 2)
    z = (xp[..., 0] + 1j * xp[..., 1]) * np.exp(1j * np.arange(t)[:, None, None] * inv[None, None, :])
    got = np.stack([z.real, z.imag], axis=-1).reshape(t, heads * d)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_attention_is_causal() -> None:
    cfg, w = tiny()
    a, b = tokens(7, 1), tokens(7, 1)
    b[5:] = [(x + 1) % VOCAB for x in b[5:]]
    la, lb = rf.forward(cfg, w, a), rf.forward(cfg, w, b)
    np.testing.assert_array_equal(la[:5], lb[:5])
    assert np.abs(la[5:] - lb[5:]).max() > 1e-3


def test_grouped_query_attention_equals_repeated_kv_heads() -> None:
    cfg, w = tiny()  # 4 query heads share 2 kv heads
    full = dict(cfg, num_key_value_heads=cfg["num_attention_heads"])
    wf = dict(w)
    hd = cfg["head_dim"]
    for i in range(cfg["num_hidden_layers"]):
        for m in ("k_proj", "v_proj"):
            k = w[f"model.layers.{i}.self_attn.{m}.weight"].reshape(2, hd, -1)
            wf[f"model.layers.{i}.self_attn.{m}.weight"] = np.repeat(k, 2, axis=0).reshape(4 * hd, -1)
    np.testing.assert_allclose(rf.forward(full, wf, tokens(6)), rf.forward(cfg, w, tokens(6)), rtol=1e-12, atol=1e-12)


def test_first_position_is_the_closed_form() -> None:
    """With one token attention returns v itself: logits = head(norm(x + o v + mlp)) by hand."""
    cfg, w = tiny(num_hidden_layers=1)
    w = {k: v.astype(np.float64) for k, v in w.items()}
    eps = cfg["rms_norm_eps"]
    x = w["model.embed_tokens.weight"][[5]]
    p = "model.layers.0."

    def norm(a, name):
        return a / np.sqrt((a ** 2).mean() + eps) * w[name]

    h = norm(x, p + "input_layernorm.weight")
    v = h @ w[p + "self_attn.v_proj.weight"].T
    x = x + np.tile(v.reshape(2, -1), (1, 2)).reshape(1, -1) @ w[p + "self_attn.o_proj.weight"].T  # GQA: q heads 0,1 -> kv 0
    h = norm(x, p + "post_attention_layernorm.weight")
    g = h @ w[p + "mlp.gate_proj.weight"].T
    x = x + (g / (1 + np.exp(-g)) * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
    want = norm(x, "model.norm.weight") @ w["lm_head.weight"].T
    np.testing.assert_allclose(rf.forward(cfg, w, [5]), want, rtol=1e-12, atol=1e-12)


def test_qwen2_biases_are_added() -> None:
    cfg, w = tiny("Qwen2ForCausalLM")
    assert any(k.endswith(".bias") for k in w)
    no_bias = {k: v for k, v in w.items() if not k.endswith(".bias")}
    assert np.abs(rf.forward(cfg, w, tokens(4)) - rf.forward(cfg, no_bias, tokens(4))).max() > 1e-4


def test_missing_lm_head_means_tied_embeddings() -> None:
    cfg, w = tiny()
    tied = {k: v for k, v in w.items() if k != "lm_head.weight"}
    also = dict(tied, **{"lm_head.weight": w["model.embed_tokens.weight"]})
    np.testing.assert_array_equal(rf.forward(cfg, tied, tokens(3)), rf.forward(cfg, also, tokens(3)))


def _bitnet(act: str) -> tuple[dict, dict[str, np.ndarray]]:
    cfg, w = tiny(architectures=["BitNetForCausalLM"], hidden_act=act)
    rng = np.random.default_rng(0)
    for i in range(cfg["num_hidden_layers"]):
        w[f"model.layers.{i}.self_attn.attn_sub_norm.weight"] = 1 + 0.1 * rng.standard_normal(cfg["hidden_size"])
        w[f"model.layers.{i}.mlp.ffn_sub_norm.weight"] = 1 + 0.1 * rng.standard_normal(cfg["intermediate_size"])
    return cfg, w


def test_bitnet_sub_norms_both_spellings_and_activation() -> None:
    cfg, w = _bitnet("relu2")
    one_bit_llm = {k.replace("attn_sub_norm", "inner_attn_ln").replace("ffn_sub_norm", "ffn_layernorm"): v
                   for k, v in w.items()}
    got = rf.forward(cfg, w, tokens(5))
    np.testing.assert_array_equal(rf.forward(dict(cfg, architectures=["BitnetForCausalLM"]), one_bit_llm, tokens(5)),
                                  got)
    # the sub-norms and the activation matter
    plain = {k: v for k, v in w.items() if "sub_norm" not in k}
    assert np.abs(rf.forward(dict(cfg, architectures=["LlamaForCausalLM"]), plain, tokens(5)) - got).max() > 1e-2
    assert np.abs(rf.forward(dict(cfg, hidden_act="silu"), w, tokens(5)) - got).max() > 1e-2
    with pytest.raises(KeyError):
        rf.forward(cfg, plain, tokens(2))


def test_llama3_rope_scaling_equals_the_converters_rope_freqs() -> None:
    """HF's llama3 formula (reference) and the rope_freqs.weight factors the writer stores are the same scaling."""
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    cfg = gen_common.tiny_config(vocab_size=VOCAB, rope_scaling=scaling)
    base = rf.rope_inv_freq({"rope_theta": cfg["rope_theta"]}, cfg["head_dim"])
    got = rf.rope_inv_freq(cfg, cfg["head_dim"])
    np.testing.assert_allclose(base / got, llama3_rope_factors(cfg), rtol=1e-6)
    assert (base / got).max() == pytest.approx(8.0) and (base / got).min() == pytest.approx(1.0)
    np.testing.assert_allclose(rf.rope_inv_freq({"rope_scaling": {"type": "linear", "factor": 2.0}}, 8),
                               rf.rope_inv_freq({}, 8) / 2)
    with pytest.raises(ValueError):
        rf.rope_inv_freq({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, 8)


@settings(max_examples=20)
@given(seed=st.integers(0, 2**31), scale=st.floats(1e-3, 1e3))
@example(seed=94835, scale=0.001)  # a float16 step in the subnormal range (d ~ 1.8e-5): 0.3% off d
def test_q8_0_quantiser(seed: int, scale: float) -> None:
    x = np.random.default_rng(seed).standard_normal((3, 64)) * scale
    y = rf.q8_blocks("q4_0")(x)
    xb = x.astype(np.float32).astype(np.float64).reshape(3, 2, 32)
    d32 = (np.abs(xb).max(axis=-1, keepdims=True).astype(np.float32) / np.float32(127)).astype(np.float64)
    d16 = d32.astype(np.float16).astype(np.float64)                         # the step as stored
    q = y.reshape(3, 2, 32) / d16
    np.testing.assert_allclose(q, np.rint(q), atol=1e-6)                 # on the int8 grid of the block
    assert np.abs(q).max() <= 127.5
    # rounding x / d32 to an integer (half a step), then the stored step's own rounding, |q|·|d16 − d32|
    bound = 0.5 * d32 * (1 + 1e-6) + np.abs(q) * np.abs(d16 - d32) + np.abs(xb) * 1e-6
    assert np.all(np.abs(y.reshape(3, 2, 32) - xb) <= bound)


@settings(max_examples=20)
@given(seed=st.integers(0, 2**31), scale=st.floats(1e-3, 1e3))
def test_q8_k_quantiser(seed: int, scale: float) -> None:
    x = np.random.default_rng(seed).standard_normal((2, 512)) * scale
    y = rf.q8_blocks("tq2_0")(x)
    b, yb = x.reshape(2, 2, 256), y.reshape(2, 2, 256)
    top = np.take_along_axis(b, np.abs(b).argmax(-1)[..., None], -1)
    d = top / -128
    np.testing.assert_allclose(yb / d, np.rint(yb / d), atol=1e-4)
    np.testing.assert_allclose(np.take_along_axis(yb, np.abs(b).argmax(-1)[..., None], -1), top, rtol=1e-6)
    q = np.rint(yb / d)
    err = np.abs(yb - b)
    assert np.all(err[np.abs(q) < 127] <= 0.5 * np.broadcast_to(np.abs(d), b.shape)[np.abs(q) < 127] * 1.01)
    assert np.all(err <= np.abs(d) * 1.01)  # +128 is clamped to 127: one step at most
    with pytest.raises(ValueError):
        rf.q8_blocks("f16")


def test_matmul_input_hook_reaches_every_projection_and_nothing_else() -> None:
    cfg, w = tiny(num_hidden_layers=1)
    seen: list[int] = []

    def spy(a: np.ndarray) -> np.ndarray:
        seen.append(a.shape[1])
        return a

    np.testing.assert_array_equal(rf.forward(cfg, w, tokens(3), matmul_input=spy), rf.forward(cfg, w, tokens(3)))
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    assert seen == [h, h, h, h, h, h, i]  # q k v o gate up down
