"""What every Hugging Face-folder reader shares: config, tokenizer files, expected shapes, naming.

The GPTQ, float and BitNet readers all start from an HF model folder (``config.json`` + safetensors
+ tokenizer files); this module reads the folder-level facts once and answers the per-tensor
questions (llama.cpp name, q/k permutation, expected ``(M0, K)``, whether a bias is expected).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ..errors import TmacError
from ..archs import Architecture, architecture_for, naming

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json")

# Tensors llama.cpp's converter skips on purpose (precomputed RoPE tables).
_SKIP = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


def load_json(path: Path) -> dict[str, Any]:
    """Read a JSON object, raising :class:`TmacError` naming the file when it is unreadable."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise TmacError(f"cannot read: {e.strerror or e}", file=str(path), rule="readable file") from None
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
        raise TmacError(f"not valid JSON ({str(e)[:200]})", file=str(path), rule="valid JSON") from None
    if not isinstance(obj, dict):
        raise TmacError("expected a JSON object", file=str(path), rule="valid JSON")
    return obj


# Sizes the readers take from config.json, with bounds far above any real model: a hostile value is
# refused here instead of failing later (or making the gguf name tables build a million blocks).
_SIZE_KEYS: dict[str, int] = {"num_hidden_layers": 1024, "n_layer": 1024, "num_layers": 1024,
                              "hidden_size": 1 << 20, "num_attention_heads": 1 << 16, "num_key_value_heads": 1 << 16,
                              "head_dim": 1 << 16, "intermediate_size": 1 << 22, "vocab_size": 1 << 21}


def _check_sizes(cfg: dict[str, Any], file: str) -> None:
    for key, most in _SIZE_KEYS.items():
        v = cfg.get(key)
        if v is not None and (type(v) is not int or not 0 < v <= most):
            raise TmacError(f"{key} = {v!r:.40} is not an integer in 1..{most}", file=file,
                            rule="config values in range")


def model_folder(path: Path) -> Path:
    """The folder holding ``config.json`` for a source that is a folder or one file inside it."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def tokenizer_files(folder: Path) -> dict[str, Path]:
    """Tokenizer (and generation config) files present in ``folder``: file name -> path."""
    return {n: folder / n for n in TOKENIZER_FILES if (folder / n).is_file()}


def natural_key(name: str) -> list[Any]:
    """Sort key treating digit runs as numbers (``blk.2`` before ``blk.10``)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def file_order_key(name: str) -> tuple[int, list[Any]]:
    """The order of GGUF tensors in an output converted from an HF checkpoint: the model-level tensors
    (``token_embd``, ``output``, ``output_norm``) first, then the blocks, each in :func:`natural_key` order.
    The embedding and output matrices are the largest tensors and usually pass through unchanged, copied file
    to file on a background thread: first in the file, their copies overlap the blocks' conversion instead
    of running after it.  (llama.cpp finds tensors by name; the order is free.)"""
    return (1 if name.startswith("blk.") else 0, natural_key(name))


@dataclass
class HFModel:
    """Folder-level facts of an HF checkpoint and per-tensor naming/shape rules derived from them."""

    folder: Path
    config: dict[str, Any]
    architecture: str
    spec: Architecture  # the registered architecture class (names, permutation, shapes, biases)
    n_layers: int
    skipped: list[str] = field(default_factory=list)

    @property
    def arch(self) -> gguf.MODEL_ARCH:
        return self.spec.gguf

    @property
    def gguf_arch(self) -> str:
        return self.spec.name

    @classmethod
    def open(cls, path: Path) -> "HFModel":
        """Read ``config.json`` beside ``path``; :class:`TmacError` when missing or without an architecture."""
        folder = model_folder(path)
        cfg_path = folder / "config.json"
        if not cfg_path.is_file():
            raise TmacError("no config.json beside the weights (an HF model folder is needed)", file=str(cfg_path),
                            rule="config.json present")
        cfg = load_json(cfg_path)
        archs = cfg.get("architectures") or []
        if not archs or not isinstance(archs, list):
            raise TmacError("config.json has no 'architectures' entry", file=str(cfg_path), rule="architecture")
        cfg = {**cfg, "architectures": [str(archs[0])] + list(archs[1:])}
        _check_sizes(cfg, str(cfg_path))
        spec = architecture_for(cfg, str(cfg_path))
        n_layers = int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or cfg.get("num_layers") or 0)
        return cls(folder, cfg, str(archs[0]), spec, n_layers)

    @property
    def config_path(self) -> str:
        return str(self.folder / "config.json")

    def skip(self, hf_name: str) -> bool:
        """True for tensors llama.cpp does not store (RoPE frequency tables)."""
        return bool(_SKIP.search(hf_name))

    def gguf_name(self, hf_name: str, file: str | None = None) -> str:
        """llama.cpp name of an HF tensor (``...q_proj.weight`` -> ``blk.0.attn_q.weight``)."""
        name = self.spec.tensor_name(hf_name, self.n_layers)
        if name is None:
            raise TmacError(f"no llama.cpp name for this tensor in architecture {self.gguf_arch!r}", tensor=hf_name,
                            file=file, rule="known tensor name")
        return name

    def permute_heads(self, gguf_name: str) -> int | None:
        """Heads to permute rows by (Llama-family q/k), or None."""
        return self.spec.permute_heads(gguf_name)

    def permute(self, gguf_name: str, rows: np.ndarray) -> np.ndarray:
        """Apply the q/k permutation to ``rows`` (axis 0) when ``gguf_name`` needs it."""
        n = self.permute_heads(gguf_name)
        return rows if n is None else naming.permute_qk(rows, n)

    def expected_shape(self, gguf_name: str) -> tuple[int, int] | None:
        """``(M0, K)`` the HF config implies for a projection, or None when unknown."""
        return self.spec.expected_shape(gguf_name)

    def check_shape(self, gguf_name: str, m0: int, k: int, *, file: str, tensor: str, hint: str = "") -> None:
        """Raise when a tensor's ``(M0, K)`` contradicts config.json."""
        want = self.expected_shape(gguf_name)
        if want is not None and want != (m0, k):
            raise TmacError(f"shape (M0, K) = ({m0}, {k}) contradicts config.json, which implies {want}{hint}",
                            file=file, tensor=tensor, rule="config matches tensors")

    def bias_expected(self, gguf_name: str) -> bool:
        """True when the architecture declares this bias (so it is kept even if all zero)."""
        return self.spec.bias_expected(gguf_name)
