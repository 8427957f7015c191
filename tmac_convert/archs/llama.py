"""Llama 1/2/3 and Mistral: llama.cpp's ``llama`` architecture (NORM RoPE: q/k rows permuted)."""

from __future__ import annotations

import gguf

from ..format.tensor import FloatTensor
from .base import Architecture
from .hparams import llama3_rope_factors


class Llama(Architecture, hf_names=("LlamaForCausalLM", "LLaMAForCausalLM", "MistralForCausalLM")):
    """HF's rotate-half q/k rows become llama.cpp's interleaved pairs; Llama 3.1 RoPE scaling becomes the
    ``rope_freqs.weight`` tensor llama.cpp's graph multiplies the frequencies by."""

    gguf = gguf.MODEL_ARCH.LLAMA
    permute_qk = True

    def extra_tensors(self, existing: set[str]) -> list[FloatTensor]:
        if "rope_freqs.weight" in existing:
            return []
        f = llama3_rope_factors(self.config, self.file)
        return [] if f is None else [FloatTensor("rope_freqs.weight", f)]
