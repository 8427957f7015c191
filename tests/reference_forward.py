"""A numpy forward pass of the decoder architectures we convert, from HF-named float weights.

It is the oracle of the end-to-end tests: llama.cpp's logits for a converted file are compared with
this pass over the *source's own* dequantised weights, in HF naming and HF row order (rotate-half
RoPE), so nothing of the converter (names, q/k permutation, layout) is shared with what it checks.
Computed in float64.

Covered (what each computes, per layer, with ``norm`` = RMSNorm ``x / sqrt(mean(x^2) + eps) * w``):

* Llama 1/2/3, Mistral (``LlamaForCausalLM``/``MistralForCausalLM``)::

      h = x + o_proj(attn(rope(q_proj(norm(x))), rope(k_proj(.)), v_proj(.)))
      x = h + down_proj(act(gate_proj(norm(h))) * up_proj(norm(h)))

  with grouped-query attention, causal mask, scale ``1/sqrt(head_dim)``, HF rotate-half RoPE of
  base ``rope_theta``, Llama 3.1 ``rope_scaling`` (``rope_type: llama3``) and linear scaling.
  Mistral's sliding window is not applied: the tests' sequences are far shorter than any window.
* Qwen2 (``Qwen2ForCausalLM``): the same plus q/k/v biases (any ``<proj>.bias`` present is added).
* BitNet b1.58 (``BitnetForCausalLM`` of 1bitLLM, ``BitNetForCausalLM`` of transformers) as HF and
  llama.cpp's ``bitnet`` architecture compute it: an RMSNorm (``attn_sub_norm`` / ``inner_attn_ln``)
  on the attention output before ``o_proj`` and one (``ffn_sub_norm`` / ``ffn_layernorm``) on
  ``act(gate) * up`` before ``down_proj``; rotate-half RoPE (llama.cpp runs ``bitnet`` with NEOX
  RoPE, so its q/k rows are not permuted); activation ``hidden_act`` (``silu`` or ``relu2`` =
  squared ReLU).  BitNet's per-token 8-bit activation quantisation (inside HF's BitLinear) is not
  applied: this is the float model of the dequantised weights, which is what llama.cpp computes.

``lm_head.weight`` is the output head when present, else the tied embeddings.

``matmul_input`` lets a test emulate a runtime's activation quantisation: it is applied to the
input ``[T, K]`` of every projection (q, k, v, o, gate, up, down) and nothing else;
:func:`q8_blocks` gives llama.cpp's 8-bit block quantisers (``Q8_0``/``Q8_1`` for Q4_0/Q4_1
weights, ``Q8_K`` for TQ1_0/TQ2_0 weights).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np

MatmulInput = Callable[[np.ndarray], np.ndarray]

_SUB_NORMS = {"attn": ("self_attn.attn_sub_norm", "self_attn.inner_attn_ln"),
              "ffn": ("mlp.ffn_sub_norm", "mlp.ffn_layernorm")}


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm over the last axis."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_inv_freq(config: Mapping, head_dim: int) -> np.ndarray:
    """float64 ``[head_dim/2]`` inverse frequencies, with HF's ``rope_scaling`` applied."""
    theta = float(config.get("rope_theta", 10000.0))
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    s = config.get("rope_scaling") or {}
    kind = s.get("rope_type", s.get("type"))
    if kind in (None, "default"):
        return inv
    if kind == "linear":
        return inv / float(s["factor"])
    if kind == "llama3":
        factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
        old = float(s["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        smooth = (old / wavelen - low) / (high - low)
        mid = (1 - smooth) * inv / factor + smooth * inv
        return np.where(wavelen < old / high, inv, np.where(wavelen > old / low, inv / factor, mid))
    raise ValueError(f"rope_scaling {kind!r} is not covered by the reference forward pass")


def rope(x: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """HF rotate-half RoPE on ``x`` ``[T, heads, head_dim]`` at positions ``0..T-1``."""
    t, _, d = x.shape
    ang = np.arange(t, dtype=np.float64)[:, None] * inv_freq[None, :]      # [T, d/2]
    cos = np.concatenate([np.cos(ang)] * 2, axis=-1)[:, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, axis=-1)[:, None, :]
    rot = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], axis=-1)
    return x * cos + rot * sin


def activation(name: str, x: np.ndarray) -> np.ndarray:
    if name in ("silu", "swish"):
        return x / (1.0 + np.exp(-x))
    if name in ("relu2", "relu_squared"):
        return np.maximum(x, 0.0) ** 2
    raise ValueError(f"activation {name!r} not covered by the reference")


def _first(w: Mapping[str, np.ndarray], prefix: str, names: tuple[str, ...]) -> np.ndarray:
    """The first of several HF spellings of a tensor (BitNet releases name their sub-norms differently)."""
    for n in names:
        if prefix + n + ".weight" in w:
            return w[prefix + n + ".weight"]
    raise KeyError(f"none of {names} under {prefix}")


def is_bitnet(config: Mapping) -> bool:
    return config["architectures"][0].lower().startswith("bitnet")


def forward(config: Mapping, weights: Mapping[str, np.ndarray], tokens: list[int], *,
            matmul_input: MatmulInput | None = None,
            linear: Callable[[str, np.ndarray], np.ndarray | None] | None = None) -> np.ndarray:
    """Logits float64 ``[len(tokens), vocab]`` for ``tokens`` (no KV cache, causal attention).

    Args:
        config: the HF ``config.json``.
        weights: HF tensor names (``model.layers.0.self_attn.q_proj.weight``...) to float arrays in
            HF shape ``[out, in]``; a missing ``lm_head.weight`` means tied embeddings.
        tokens: token ids.
        matmul_input: applied to the input of every projection (see the module docstring).
        linear: ``linear(module, x)`` computes projection ``module`` (HF name without ``.weight``, e.g.
            ``model.layers.0.self_attn.q_proj``) of ``x`` ``[T, in]`` as ``[T, out]`` (a runtime's kernel
            emulated), or returns None for the plain ``x @ W.T``; biases are added after it.
    """
    w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    bitnet = is_bitnet(config)
    eps = float(config.get("rms_norm_eps", 1e-6))
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // n_head)
    inv_freq = rope_inv_freq(config, head_dim)
    act = config.get("hidden_act", "silu")
    feed = matmul_input or (lambda a: a)
    x = w["model.embed_tokens.weight"][np.asarray(tokens)]
    t = len(tokens)
    mask = np.triu(np.full((t, t), -np.inf), 1)
    for i in range(int(config["num_hidden_layers"])):
        p = f"model.layers.{i}."

        def lin(name: str, h: np.ndarray) -> np.ndarray:
            y = linear(p + name, feed(h)) if linear is not None else None
            y = feed(h) @ w[p + name + ".weight"].T if y is None else np.asarray(y, dtype=np.float64)
            bias = w.get(p + name + ".bias")
            return y if bias is None else y + bias

        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = rope(lin("self_attn.q_proj", h).reshape(t, n_head, head_dim), inv_freq)
        k = rope(lin("self_attn.k_proj", h).reshape(t, n_kv, head_dim), inv_freq)
        v = lin("self_attn.v_proj", h).reshape(t, n_kv, head_dim)
        rep = n_head // n_kv
        k = np.repeat(k, rep, axis=1)
        v = np.repeat(v, rep, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(head_dim) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        att = np.einsum("hqk,khd->qhd", scores, v).reshape(t, n_head * head_dim)
        if bitnet:
            att = rms_norm(att, _first(w, p, _SUB_NORMS["attn"]), eps)
        x = x + lin("self_attn.o_proj", att)
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        g = activation(act, lin("mlp.gate_proj", h)) * lin("mlp.up_proj", h)
        if bitnet:
            g = rms_norm(g, _first(w, p, _SUB_NORMS["ffn"]), eps)
        x = x + lin("mlp.down_proj", g)
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return x @ head.T


# ---------------------------------------------------------------------------------------------
# llama.cpp's activation quantisers (the vec_dot types of Q4_0/Q4_1 and TQ1_0/TQ2_0 weights)

def _q8_0(x: np.ndarray) -> np.ndarray:
    """``Q8_0``/``Q8_1`` of rows ``[T, K]``: blocks of 32, ``d = max|x| / 127`` stored in float16, ``q = round(x / d)``."""
    t, k = x.shape
    b = x.astype(np.float32).reshape(t, k // 32, 32)
    d = np.abs(b).max(axis=-1, keepdims=True) / np.float32(127)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype(np.float32)
    q = np.rint(b * inv)
    return (q * d.astype(np.float16).astype(np.float32)).reshape(t, k).astype(np.float64)


def _q8_k(x: np.ndarray) -> np.ndarray:
    """``Q8_K`` of rows ``[T, K]``: blocks of 256, ``iscale = -128 / x[argmax|x|]``, ``q = min(127, round(iscale*x))``."""
    t, k = x.shape
    b = x.astype(np.float32).reshape(t, k // 256, 256)
    top = np.take_along_axis(b, np.abs(b).argmax(axis=-1)[..., None], axis=-1)
    iscale = np.where(top != 0, np.float32(-128) / np.where(top != 0, top, 1), 0).astype(np.float32)
    q = np.minimum(np.rint(b * iscale), 127)
    d = np.where(iscale != 0, np.float32(1) / np.where(iscale != 0, iscale, 1), 0).astype(np.float32)
    return (q * d).reshape(t, k).astype(np.float64)


def q8_blocks(weight_type: str) -> MatmulInput:
    """llama.cpp's activation quantiser for projections of ``weight_type`` (``q4_0``, ``q4_1``, ``tq1_0``, ``tq2_0``)."""
    if weight_type in ("q4_0", "q4_1"):
        return _q8_0
    if weight_type in ("tq1_0", "tq2_0"):
        return _q8_k
    raise ValueError(f"no 8-bit activation quantiser for {weight_type!r}")
