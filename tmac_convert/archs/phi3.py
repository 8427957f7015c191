"""Phi-3 (``Phi3ForCausalLM``): llama.cpp's ``phi3`` architecture.

Phi-3 stores q, k and v as one fused ``qkv_proj`` and gate and up as one fused ``gate_up_proj``.
The T-MAC fork's llama.cpp (``LLM_ARCH_PHI3`` in its ``src/llama.cpp``) loads exactly those fused
matrices: ``blk.N.attn_qkv`` of ``[n_embd + 2·n_embd_gqa, n_embd]`` (the separate ``attn_q/k/v``
are listed but never created) and ``blk.N.ffn_up`` of ``[2·n_ff, n_embd]`` (gate rows first; the
graph splits it, there is no ``ffn_gate``).  So the fused tensors are mapped, not split: the
``gguf`` package's name tables already give ``qkv_proj -> attn_qkv`` and ``gate_up_proj ->
ffn_up``, and a GPTQ checkpoint's codes, scales and zeros pass through whole (rows = outputs).
llama.cpp runs Phi-3 with NEOX RoPE: no q/k permutation.

Hyper-parameters are those llama.cpp's ``Phi3MiniModel`` converter writes (context length and the
original one, rotary dimension ``n_embd / n_head``, RMS epsilon, sliding window).  Long-context
models (``rope_scaling`` of type ``longrope``/``su``) also get ``rope_factors_long/short.weight``
and the attention factor, as that converter computes them.
"""

from __future__ import annotations

import math

import gguf

from ..errors import TmacError
from ..format.tensor import FloatTensor
from .base import Architecture, float32_vector
from .hparams import _Hparams, add_hparams, text_config


class Phi3(Architecture, hf_names=("Phi3ForCausalLM",)):
    gguf = gguf.MODEL_ARCH.PHI3

    def projection_shapes(self, d: dict[str, int]) -> dict[str, tuple[int, int]]:
        return {"attn_qkv": (d["q"] + 2 * d["kv"], d["h"]), "attn_output": (d["h"], d["q"]),
                "ffn_up": (2 * d["inter"], d["h"]), "ffn_down": (d["h"], d["inter"])}

    def _scaling(self) -> dict | None:
        s = self.config.get("rope_scaling")
        if s is None:
            return None
        if not isinstance(s, dict):
            raise TmacError("rope_scaling is not an object", file=self.file, rule="hyper-parameter types")
        kind = str(s.get("type") or s.get("rope_type") or "").lower()
        if kind not in ("su", "longrope"):
            raise TmacError(f"Phi-3 rope_scaling type {kind!r} is not supported (llama.cpp's phi3 takes su/longrope)",
                            file=self.file, rule="supported rope scaling")
        return s

    def add_hparams(self, w: gguf.GGUFWriter, notes: list[str]) -> None:
        cfg = {k: v for k, v in self.config.items() if k != "rope_scaling"}
        add_hparams(w, cfg, self.name, notes, self.file)
        h = _Hparams(text_config(self.config), self.file)
        ctx = h.int("max_position_embeddings", "n_positions")
        orig = h.int("original_max_position_embeddings") or ctx
        if orig is not None:
            w.add_rope_scaling_orig_ctx_len(orig)
        if (win := h.int("sliding_window")) is not None:
            w.add_sliding_window(win)
        if self._scaling() is not None and ctx and orig:
            scale = ctx / orig
            attn = math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0
            w.add_rope_scaling_attn_factors(attn)

    def extra_tensors(self, existing: set[str]) -> list[FloatTensor]:
        s = self._scaling()
        if s is None:
            return []
        h = _Hparams(text_config(self.config), self.file)
        hidden, heads = h.int("hidden_size", lo=1), h.int("num_attention_heads", lo=1)
        if not hidden or not heads:
            raise TmacError("Phi-3 rope factors need hidden_size and num_attention_heads", file=self.file,
                            rule="hyper-parameters present")
        n = hidden // heads // 2
        out = []
        for key, name in (("long_factor", "rope_factors_long.weight"), ("short_factor", "rope_factors_short.weight")):
            if name not in existing:
                out.append(FloatTensor(name, float32_vector(s.get(key), n, f"rope_scaling.{key}", self.file)))
        return out
