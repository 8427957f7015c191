"""BitNet b1.58 (1bitLLM's ``BitnetForCausalLM`` and transformers' ``BitNetForCausalLM``): llama.cpp's ``bitnet``."""

from __future__ import annotations

import gguf

from .base import Architecture
from .hparams import _Hparams, _rope_scaling, text_config


class BitNet(Architecture, hf_names=("BitnetForCausalLM", "BitNetForCausalLM")):
    """llama.cpp runs ``bitnet`` with NEOX RoPE (no permutation); its converter marks the RoPE as linear
    with factor 1, and newer builds read a non-SiLU activation from ``bitnet.hidden_activation``."""

    gguf = gguf.MODEL_ARCH.BITNET

    def add_hparams(self, w: gguf.GGUFWriter, notes: list[str]) -> None:
        super().add_hparams(w, notes)
        h = _Hparams(text_config(self.config), self.file)
        rtype, _ = _rope_scaling(h)
        if not rtype:
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(1.0)
        act = h.str("hidden_act")
        if act not in (None, "silu"):
            # llama.cpp's bitnet graph defaults to SiLU; newer builds read {arch}.hidden_activation.  "silu"
            # itself is not written: some builds map that string to a fused-gate SwiGLU.
            w.add_string(f"{self.name}.hidden_activation", act)
            notes.append(f"BitNet hidden_act {act!r} written as {self.name}.hidden_activation; llama.cpp builds that "
                         "do not read it (up to at least the one in llama-cpp-python 0.3.36) run SiLU instead and "
                         "compute a different model")
