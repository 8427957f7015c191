"""One registered class per model architecture (the pattern of llama.cpp's ``ModelBase.register``).

An architecture class knows, for checkpoints whose ``config.json`` ``architectures[0]`` it is
registered under: the llama.cpp architecture (and so the tensor names, from the ``gguf`` package's
tables), whether q/k rows are permuted, the ``(M0, K)`` each projection must have, which biases
it declares, the hyper-parameter keys llama.cpp reads and the tensors llama.cpp expects that a
checkpoint does not store.  Readers ask it about tensors; the GGUF writer asks it for metadata.
Adding an architecture is one module with one subclass::

    class Phi3(Architecture, hf_names=("Phi3ForCausalLM",)):
        gguf = gguf.MODEL_ARCH.PHI3
        ...

A checkpoint whose architecture is not registered but which llama.cpp names (``Foo`` ->
``foo``) gets :class:`Generic`: names from the gguf tables, no permutation, no shape checks.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gguf
import numpy as np

from ..errors import TmacError
from ..format.tensor import FloatTensor
from . import naming
from .hparams import add_hparams


def role(gguf_name: str) -> str:
    """The per-block role of a llama.cpp tensor name (``blk.0.attn_q.weight`` -> ``attn_q``; '' outside blocks)."""
    parts = gguf_name.split(".")
    return parts[2] if len(parts) >= 3 and parts[0] == "blk" else ""


class Architecture:
    """Base of architecture classes; subclasses register with ``class X(Architecture, hf_names=(...))``.

    Attributes (class level):
        gguf: the llama.cpp architecture (``gguf.MODEL_ARCH``).
        permute_qk: True when HF's rotate-half q/k rows are permuted to llama.cpp's interleaved pairs
            (architectures llama.cpp runs with NORM RoPE).
        declared_biases: roles whose bias the architecture always has (kept even when all zero).
    """

    registry: ClassVar[dict[str, type["Architecture"]]] = {}
    hf_names: ClassVar[tuple[str, ...]] = ()
    gguf: ClassVar[gguf.MODEL_ARCH]
    permute_qk: ClassVar[bool] = False
    declared_biases: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, hf_names: tuple[str, ...] = (), **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls.hf_names = tuple(hf_names)
        for n in hf_names:
            if n in Architecture.registry:
                raise TypeError(f"architecture {n!r} is registered twice")
            Architecture.registry[n] = cls

    def __init__(self, config: dict[str, Any], file: str = "config.json", hf_name: str = "") -> None:
        self.config = config
        self.file = file
        self.hf_name = hf_name or (self.hf_names[0] if self.hf_names else "")
        if self.permute_qk and config.get("num_attention_heads") is None:
            raise TmacError(f"config.json lacks num_attention_heads, which the {self.name} q/k row permutation needs",
                            file=file, rule="config values in range")

    @property
    def name(self) -> str:
        """The llama.cpp architecture name (``llama``, ``qwen2``, ``phi3``...)."""
        return gguf.MODEL_ARCH_NAMES[self.gguf]

    # -- tensors -----------------------------------------------------------------------------------

    def tensor_name(self, hf_name: str, n_blocks: int) -> str | None:
        """The llama.cpp name of an HF tensor (suffix kept), or None when the gguf tables do not know it."""
        return naming.gguf_tensor_name(hf_name, self.gguf, n_blocks)

    def permute_heads(self, gguf_name: str) -> int | None:
        """Heads to permute a tensor's rows by (q: attention heads, k: KV heads), or None."""
        if not self.permute_qk:
            return None
        return naming.qk_permute_heads(gguf_name, "llama", self.config)

    def dims(self) -> dict[str, int] | None:
        """``h`` (hidden), ``q`` (heads x head_dim), ``kv``, ``inter`` from the config, or None when unknown."""
        c = self.config
        try:
            h = int(c["hidden_size"])
            nh = int(c["num_attention_heads"])
            hd = int(c.get("head_dim") or h // nh)
            kv = int(c.get("num_key_value_heads") or nh)
            inter = int(c["intermediate_size"])
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return None
        return {"h": h, "q": nh * hd, "kv": kv * hd, "inter": inter}

    def projection_shapes(self, d: dict[str, int]) -> dict[str, tuple[int, int]]:
        """``role -> (M0, K)`` of every projection, from :meth:`dims` (separate q/k/v and gate/up)."""
        return {"attn_q": (d["q"], d["h"]), "attn_k": (d["kv"], d["h"]), "attn_v": (d["kv"], d["h"]),
                "attn_output": (d["h"], d["q"]), "ffn_gate": (d["inter"], d["h"]),
                "ffn_up": (d["inter"], d["h"]), "ffn_down": (d["h"], d["inter"])}

    def expected_shape(self, gguf_name: str) -> tuple[int, int] | None:
        """``(M0, K)`` the config implies for a projection, or None when unknown."""
        d = self.dims()
        return None if d is None else self.projection_shapes(d).get(role(gguf_name))

    def bias_expected(self, gguf_name: str) -> bool:
        """True when the architecture declares this bias (so it is kept even if all zero)."""
        r = role(gguf_name)
        if r in self.declared_biases:
            return True
        if r.startswith("attn_"):
            return bool(self.config.get("attention_bias"))
        if r.startswith("ffn_"):
            return bool(self.config.get("mlp_bias"))
        return True

    # -- metadata ----------------------------------------------------------------------------------

    def add_hparams(self, w: gguf.GGUFWriter, notes: list[str]) -> None:
        """Write the hyper-parameter keys llama.cpp reads for this architecture."""
        add_hparams(w, self.config, self.name, notes, self.file)

    def extra_tensors(self, existing: set[str]) -> list[FloatTensor]:
        """Tensors llama.cpp expects that the checkpoint does not store (none by default)."""
        return []


class Generic(Architecture):
    """An architecture llama.cpp names but no class describes: gguf names, separate q/k/v shapes, no permutation."""

    def __init__(self, config: dict[str, Any], file: str = "config.json", hf_name: str = "") -> None:
        self._arch, _ = naming.gguf_arch(hf_name, file=file)
        super().__init__(config, file, hf_name)

    @property
    def gguf(self) -> gguf.MODEL_ARCH:  # type: ignore[override]
        return self._arch



def architecture_class(hf_name: str, file: str | None = None) -> type[Architecture]:
    """The class registered for an HF architecture name; for an unregistered name, the class of the llama.cpp
    architecture it names (``LlamaModel`` -> the Llama class), else :class:`Generic`.

    Raises:
        TmacError: llama.cpp has no architecture of that name.
    """
    cls = Architecture.registry.get(hf_name)
    if cls is not None:
        return cls
    arch, _ = naming.gguf_arch(hf_name, file=file)
    same = sorted({c for c in Architecture.registry.values() if c.gguf == arch}, key=lambda c: c.__name__)
    return same[0] if same else Generic


def architecture_for(config: dict[str, Any], file: str = "config.json") -> Architecture:
    """The architecture of an HF config (its ``architectures[0]``).

    Raises:
        TmacError: no ``architectures`` entry, or one llama.cpp has no architecture for.
    """
    archs = config.get("architectures") or []
    if not archs or not isinstance(archs, list) or not isinstance(archs[0], str):
        raise TmacError("config.json has no 'architectures' entry", file=file, rule="architecture")
    return architecture_class(archs[0], file)(config, file, archs[0])


def float32_vector(values: Any, n: int, what: str, file: str) -> np.ndarray:
    """A config list of ``n`` finite numbers as float32 (for factor tensors such as RoPE factors)."""
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        a = np.zeros(0)
    if a.shape != (n,) or not np.isfinite(a).all():
        raise TmacError(f"{what} must be {n} finite numbers", file=file, rule="hyper-parameter types")
    return a.astype(np.float32)
