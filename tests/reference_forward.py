"""A numpy forward pass of the decoder architectures we convert, from HF-named float weights.

It is the oracle of the end-to-end tests: llama.cpp's logits for a converted file are compared with
this pass over the *source's own* dequantised weights, in HF naming and HF row order (rotate-half
RoPE), so nothing of the converter (names, q/k permutation, layout) is shared with what it checks.

Covers Llama 1/2/3 and Mistral (``LlamaForCausalLM``/``MistralForCausalLM``), Qwen2 (q/k/v biases)
and BitNet b1.58 (``BitnetForCausalLM``/``BitNetForCausalLM``: sub-norms before o_proj and down_proj,
squared-ReLU or SiLU MLP as configured), computed in float64.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope(x: np.ndarray, theta: float) -> np.ndarray:
    """HF rotate-half RoPE on ``x`` [T, heads, head_dim]."""
    t, _, d = x.shape
    inv = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    ang = np.arange(t, dtype=np.float64)[:, None] * inv[None, :]           # [T, d/2]
    cos = np.concatenate([np.cos(ang)] * 2, axis=-1)[:, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, axis=-1)[:, None, :]
    rot = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], axis=-1)
    return x * cos + rot * sin


def _act(name: str, x: np.ndarray) -> np.ndarray:
    if name == "silu":
        return x / (1.0 + np.exp(-x))
    if name == "relu2":
        return np.maximum(x, 0.0) ** 2
    raise ValueError(f"activation {name!r} not covered by the reference")


def _first(w: Mapping[str, np.ndarray], prefix: str, *names: str) -> np.ndarray:
    """The first of several HF spellings of a tensor (BitNet releases name their sub-norms differently)."""
    for n in names:
        if prefix + n + ".weight" in w:
            return w[prefix + n + ".weight"]
    raise KeyError(f"none of {names} under {prefix}")


def forward(config: Mapping, weights: Mapping[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    """Logits float64 ``[len(tokens), vocab]`` for ``tokens`` (no KV cache, causal attention).

    ``weights`` maps HF tensor names (``model.layers.0.self_attn.q_proj.weight``...) to float arrays in
    HF shape ``[out, in]``; a missing ``lm_head.weight`` means tied embeddings.
    """
    w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    arch = config["architectures"][0]
    bitnet = arch.lower().startswith("bitnet")
    eps = float(config.get("rms_norm_eps", 1e-6))
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads", n_head))
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // n_head)
    theta = float(config.get("rope_theta", 10000.0))
    if config.get("rope_scaling"):
        raise ValueError("rope_scaling is not covered by the reference forward pass")
    act = config.get("hidden_act", "silu")
    x = w["model.embed_tokens.weight"][np.asarray(tokens)]
    t = len(tokens)
    mask = np.triu(np.full((t, t), -np.inf), 1)
    for i in range(int(config["num_hidden_layers"])):
        p = f"model.layers.{i}."

        def lin(name: str, h: np.ndarray) -> np.ndarray:
            y = h @ w[p + name + ".weight"].T
            bias = w.get(p + name + ".bias")
            return y if bias is None else y + bias

        h = _rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = _rope(lin("self_attn.q_proj", h).reshape(t, n_head, head_dim), theta)
        k = _rope(lin("self_attn.k_proj", h).reshape(t, n_kv, head_dim), theta)
        v = lin("self_attn.v_proj", h).reshape(t, n_kv, head_dim)
        rep = n_head // n_kv
        k = np.repeat(k, rep, axis=1)
        v = np.repeat(v, rep, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(head_dim) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        att = np.einsum("hqk,khd->qhd", scores, v).reshape(t, n_head * head_dim)
        if bitnet:
            att = _rms_norm(att, _first(w, p, "self_attn.attn_sub_norm", "self_attn.inner_attn_ln"), eps)
        x = x + lin("self_attn.o_proj", att)
        h = _rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        g = _act(act, lin("mlp.gate_proj", h)) * lin("mlp.up_proj", h)
        if bitnet:
            g = _rms_norm(g, _first(w, p, "mlp.ffn_sub_norm", "mlp.ffn_layernorm"), eps)
        x = x + lin("mlp.down_proj", g)
    x = _rms_norm(x, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return x @ head.T
