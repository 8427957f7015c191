"""Hyper-parameters from an HF ``config.json``, typed and range-checked, written with the ``gguf`` package's keys.

What llama.cpp's converter writes for the Llama family, Qwen2 and BitNet (sizes, heads, norms, RoPE),
the typed reads every architecture class uses, and Llama 3.1's RoPE frequency factors.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ..errors import TmacError
from ..format.model import SourceModel

#: Largest vocabulary accepted (real ones are under 300k); the vocabulary is padded up to ``vocab_size``
#: in memory, so an absurd value is refused instead of allocating millions of tokens.
MAX_VOCAB = 1 << 22


def _first(cfg: dict, *keys: str) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return None


_U32 = 2**32
_F32_MAX = float(np.finfo(np.float32).max)


class _Hparams:
    """Typed reads of an HF config's hyper-parameters: a value of the wrong type or out of range is a
    :class:`TmacError` naming the config file and the key (not a TypeError/OverflowError from ``int()``/``float()``
    or from the GGUF writer's ``struct.pack``)."""

    def __init__(self, cfg: dict, file: str, prefix: str = "") -> None:
        self.cfg = cfg
        self.file = file
        self.prefix = prefix  # "rope_scaling." for the nested object

    def _key(self, keys: tuple[str, ...]) -> str | None:
        return next((k for k in keys if self.cfg.get(k) is not None), None)

    def _fail(self, key: str, v: Any, want: str) -> TmacError:
        return TmacError(f"config.json: {self.prefix}{key} = {str(v)[:60]!r} is not {want}", file=self.file,
                         rule="hyper-parameter types")

    def int(self, *keys: str, lo: int = 0, hi: int = _U32) -> int | None:
        """The first present key as an int in ``[lo, hi)`` (an integral float such as 2048.0 is accepted)."""
        key = self._key(keys)
        if key is None:
            return None
        v = self.cfg[key]
        if isinstance(v, float) and math.isfinite(v) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v < hi:
            raise self._fail(key, self.cfg[key], f"an integer in [{lo}, {hi})")
        return v

    def float(self, *keys: str, positive: bool = False) -> float | None:
        """The first present key as a finite float that fits float32 (``positive``: > 0)."""
        key = self._key(keys)
        if key is None:
            return None
        v = self.cfg[key]
        if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v))
                or abs(float(v)) > _F32_MAX or (positive and not float(v) > 0)):
            raise self._fail(key, v, "a finite" + (" positive" if positive else "") + " number")
        return float(v)

    def dict(self, key: str) -> dict:
        v = self.cfg.get(key)
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise self._fail(key, v, "an object")
        return v

    def str(self, key: str) -> str | None:
        v = self.cfg.get(key)
        if v is not None and not isinstance(v, str):
            raise self._fail(key, v, "a string")
        return v


def text_config(config: dict) -> dict:
    """The language-model part of an HF config (multimodal configs nest it under ``text_config``)."""
    return {**config, **config["text_config"]} if isinstance(config.get("text_config"), dict) else config


def _rope_scaling(h: _Hparams) -> tuple[str | None, _Hparams]:
    """The RoPE scaling type and its (typed) parameters."""
    s = _Hparams(h.dict("rope_scaling"), h.file, "rope_scaling.")
    rtype = s.str("rope_type") if s.cfg.get("rope_type") is not None else s.str("type")
    return rtype, s


def add_hparams(w: gguf.GGUFWriter, config: dict, arch: str, notes: list[str], file: str = "config.json") -> None:
    """Write llama.cpp's common hyper-parameter keys from an HF config (what llama.cpp's converter writes
    for every decoder: sizes, heads, norms, RoPE); an architecture class adds its own on top
    (:meth:`tmac_convert.archs.base.Architecture.add_hparams`).  ``file`` names the config in errors: a
    hyper-parameter of the wrong type or out of range is a :class:`TmacError`."""
    h = _Hparams(text_config(config), file)
    n_layers = h.int("num_hidden_layers", "n_layer", "num_layers")
    hidden = h.int("hidden_size", "n_embd", "d_model", lo=1)
    heads = h.int("num_attention_heads", "n_head")
    if n_layers is None or hidden is None:
        raise TmacError("config.json lacks num_hidden_layers or hidden_size", file=file,
                        rule="hyper-parameters present")
    w.add_block_count(n_layers)
    w.add_embedding_length(hidden)
    if (v := h.int("max_position_embeddings", "n_ctx", "n_positions", "max_length")) is not None:
        w.add_context_length(v)
    if (v := h.int("intermediate_size", "n_inner")) is not None:
        w.add_feed_forward_length(v)
    if heads:
        w.add_head_count(heads)
        w.add_head_count_kv(h.int("num_key_value_heads", "n_head_kv") or heads)
    if (v := h.float("rope_theta", positive=True)) is not None:
        w.add_rope_freq_base(v)
    if (v := h.float("rms_norm_eps")) is not None:
        w.add_layer_norm_rms_eps(v)
    if (v := h.float("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon")) is not None:
        w.add_layer_norm_eps(v)
    if (v := h.int("vocab_size", hi=MAX_VOCAB + 1)) is not None:
        w.add_vocab_size(v)
    head_dim = h.int("head_dim")
    if heads:
        rope_dim = head_dim if head_dim else hidden // heads
        if head_dim and head_dim != hidden // heads:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        w.add_rope_dimension_count(rope_dim)
    rtype, scaling = _rope_scaling(h)
    factor = scaling.float("factor", positive=True)
    if rtype == "linear" and factor:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(factor)
    elif rtype == "yarn" and factor:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(factor)
        if orig := scaling.int("original_max_position_embeddings"):
            w.add_rope_scaling_orig_ctx_len(orig)
    elif rtype == "llama3":
        notes.append("rope scaling llama3: factors written as rope_freqs.weight")
    elif rtype not in (None, "default"):
        notes.append(f"rope scaling {rtype!r} is not written; long-context behaviour may differ")


def llama3_rope_factors(config: dict, file: str = "config.json") -> np.ndarray | None:
    """float32 ``[head_dim/2]`` frequency factors of Llama 3.1-style RoPE scaling, or None.

    Wavelengths shorter than ``original/high_freq_factor`` keep factor 1, longer than
    ``original/low_freq_factor`` get ``factor``, and those between are interpolated smoothly.
    """
    h = _Hparams(text_config(config), file)
    rtype, s = _rope_scaling(h)
    if rtype != "llama3":
        return None
    base = h.float("rope_theta", positive=True) or 10000.0
    heads = h.int("num_attention_heads", lo=1)
    hidden = h.int("hidden_size", lo=1)
    dim = h.int("head_dim", lo=1) or (hidden // heads if heads and hidden else None)
    if not dim:
        raise TmacError("llama3 rope scaling needs head_dim or hidden_size and num_attention_heads", file=file,
                        rule="hyper-parameters present")
    factor = s.float("factor", positive=True) or 8.0
    low = s.float("low_freq_factor", positive=True) or 1.0
    high = s.float("high_freq_factor", positive=True) or 4.0
    old_ctx = float(s.int("original_max_position_embeddings", lo=1) or 8192)
    if high == low:
        raise TmacError("rope_scaling high_freq_factor equals low_freq_factor", file=file,
                        rule="hyper-parameter types")
    freqs = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    wavelen = 2 * math.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    mid = 1.0 / ((1 - smooth) / factor + smooth)
    out = np.where(wavelen < old_ctx / high, 1.0, np.where(wavelen > old_ctx / low, factor, mid))
    return out.astype(np.float32)


def config_file(model: SourceModel) -> str:
    """The path of the source's config.json for error messages (``config.json`` when it has no folder)."""
    p = Path(str(model.path)) if model.path is not None else None
    return str(p / "config.json") if p is not None and p.is_dir() else "config.json"
