"""Qwen2: llama.cpp's ``qwen2`` architecture (NEOX RoPE, no permutation; q/k/v always have biases)."""

from __future__ import annotations

import gguf

from .base import Architecture


class Qwen2(Architecture, hf_names=("Qwen2ForCausalLM",)):
    gguf = gguf.MODEL_ARCH.QWEN2
    declared_biases = frozenset({"attn_q", "attn_k", "attn_v"})
