"""HF -> llama.cpp naming: architectures, tensor names, and the Llama q/k row permutation.

Tensor names come from the ``gguf`` package's own tables (:class:`gguf.TensorNameMap`), so they
follow whatever llama.cpp version the installed ``gguf`` describes; nothing here lists tensor names.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import gguf
import numpy as np

from ..errors import TmacError

# HF ``architectures[0]`` values whose llama.cpp architecture is not simply the lower-cased class
# prefix (llama.cpp's converter registers these classes under another arch).
_ARCH_ALIASES: dict[str, gguf.MODEL_ARCH] = {
    "LLaMAForCausalLM": gguf.MODEL_ARCH.LLAMA,
    "MistralForCausalLM": gguf.MODEL_ARCH.LLAMA,
    "BitNetForCausalLM": gguf.MODEL_ARCH.BITNET,
}

# llama.cpp architectures whose converter permutes q/k rows (HF's rotate-half RoPE layout -> the
# rotate-adjacent-pairs layout llama.cpp's LLAMA graph uses).  Qwen2 uses NEOX RoPE: no permutation.
QK_PERMUTE_ARCHS: frozenset[str] = frozenset({"llama"})

_SUFFIXES: tuple[str, ...] = (".weight", ".bias", ".qweight", ".qzeros", ".scales", ".g_idx",
                              ".weight_scale")


def gguf_arch(architecture: str, *, file: str | None = None) -> tuple[gguf.MODEL_ARCH, str]:
    """Map an HF architecture class name (``config.json`` ``architectures[0]``) to llama.cpp's.

    Returns ``(gguf.MODEL_ARCH member, its name as in MODEL_ARCH_NAMES)``, e.g.
    ``("LlamaForCausalLM") -> (MODEL_ARCH.LLAMA, "llama")``.  Raises :class:`TmacError` for an
    architecture llama.cpp has no name for.
    """
    arch = _ARCH_ALIASES.get(architecture)
    if arch is None:
        stem = architecture
        for suffix in ("ForCausalLM", "LMHeadModel", "Model"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        by_name = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
        arch = by_name.get(stem.lower())
    if arch is None:
        raise TmacError(f"architecture {architecture!r} has no llama.cpp (gguf) architecture",
                        file=file, rule="supported architecture")
    return arch, gguf.MODEL_ARCH_NAMES[arch]


@lru_cache(maxsize=32)
def _name_map(arch: gguf.MODEL_ARCH, n_blocks: int) -> gguf.TensorNameMap:
    return gguf.get_tensor_name_map(arch, n_blocks)


def gguf_tensor_name(hf_name: str, arch: gguf.MODEL_ARCH | str, n_blocks: int, *,
                     suffixes: Sequence[str] = _SUFFIXES) -> str | None:
    """The llama.cpp name of an HF tensor, or None when the gguf tables do not know it.

    The suffix is kept: ``model.layers.0.self_attn.q_proj.weight`` -> ``blk.0.attn_q.weight``,
    ``...q_proj.qweight`` -> ``blk.0.attn_q.qweight``.  ``arch`` is a MODEL_ARCH or its name.
    """
    if isinstance(arch, str):
        arch = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch]
    return _name_map(arch, int(n_blocks)).get_name(hf_name, try_suffixes=tuple(suffixes))


def gguf_tensor_name_or_fail(hf_name: str, arch: gguf.MODEL_ARCH | str, n_blocks: int, *,
                             file: str | None = None) -> str:
    """:func:`gguf_tensor_name`, raising :class:`TmacError` for an unknown tensor."""
    name = gguf_tensor_name(hf_name, arch, n_blocks)
    if name is None:
        arch_name = arch if isinstance(arch, str) else gguf.MODEL_ARCH_NAMES[arch]
        raise TmacError(f"no llama.cpp name for this tensor in architecture {arch_name!r}", tensor=hf_name,
                        file=file, rule="known tensor name")
    return name


def is_projection(gguf_name: str) -> bool:
    """True for an attention or MLP projection matrix (the tensors a float source quantises).

    ``blk.N.attn_{q,k,v,output}.weight``, ``blk.N.attn_qkv.weight`` and
    ``blk.N.ffn_{gate,up,down}.weight`` (also their fused/expert-free variants by prefix).
    """
    parts = gguf_name.split(".")
    if len(parts) != 4 or parts[0] != "blk" or parts[3] != "weight":
        return False
    return parts[2] in {"attn_q", "attn_k", "attn_v", "attn_output", "attn_qkv",
                        "ffn_gate", "ffn_up", "ffn_down"}


def qk_permute_heads(gguf_name: str, gguf_arch_name: str, config: dict) -> int | None:
    """How many heads to permute a tensor's rows by, or None when no permutation applies.

    ``blk.N.attn_q.*`` -> ``num_attention_heads``; ``blk.N.attn_k.*`` -> ``num_key_value_heads``
    (defaulting to ``num_attention_heads``); only for architectures in :data:`QK_PERMUTE_ARCHS`.
    """
    if gguf_arch_name not in QK_PERMUTE_ARCHS:
        return None
    parts = gguf_name.split(".")
    if len(parts) < 3 or parts[0] != "blk":
        return None
    n_head = int(config["num_attention_heads"])
    if parts[2] == "attn_q":
        return n_head
    if parts[2] == "attn_k":
        return int(config.get("num_key_value_heads") or n_head)
    return None


def _half_head(rows: np.ndarray, n_head: int) -> int:
    """Half the rows of one head; the rows must split into ``n_head`` heads of an even size."""
    m0 = rows.shape[0]
    if n_head <= 0 or m0 % (2 * n_head):
        raise TmacError(f"{m0} rows cannot be split into {n_head} heads of an even size",
                        rule="q/k permutation: rows % (2 * n_head) == 0")
    return m0 // n_head // 2


def permute_qk(rows: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder rows (axis 0) from HF's rotate-half order to llama.cpp's interleaved-pairs order.

    ``rows`` is any array whose axis 0 runs over output features ``M0`` (weights, codes ``[M0, K]``,
    scales/zeros ``[M0, G]``, biases ``[M0]``).  Within each head of ``d = M0 / n_head`` rows, row
    ``h*d + p*(d/2) + i`` moves to ``h*d + 2*i + p``: reshape ``[n_head, 2, d/2, ...]``, swap
    axes 1 and 2, reshape back.  Dtype is kept; the result is a new contiguous array.
    """
    half = _half_head(rows, n_head)
    tail = rows.shape[1:]
    return np.ascontiguousarray(
        rows.reshape(n_head, 2, half, *tail).swapaxes(1, 2).reshape(rows.shape))


def unpermute_qk(rows: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of :func:`permute_qk` (llama.cpp order back to HF order)."""
    half = _half_head(rows, n_head)
    tail = rows.shape[1:]
    return np.ascontiguousarray(
        rows.reshape(n_head, half, 2, *tail).swapaxes(1, 2).reshape(rows.shape))
