"""Model metadata for a GGUF file: hyper-parameters, tokenizer, carried-over keys, T-MAC keys.

* Hyper-parameters come from the HF ``config.json`` and are written with the ``gguf`` package's own
  writer methods and key names (``{arch}.context_length``...), as llama.cpp's converter does.
* The vocabulary is read with the ``gguf`` package's vocab helpers (:class:`gguf.vocab.BpeVocab`,
  :class:`gguf.vocab.SentencePieceVocab`, :class:`gguf.vocab.SpecialVocab`); ``tokenizer.ggml.pre``
  is chosen from the pre-tokenizer in ``tokenizer.json`` and an unknown one is an error, since a
  wrong or missing value silently degrades tokenisation.
* For a GGUF source every key/value carries over with its type (parsed by :mod:`tmac_convert.format.runtime`).
* The ``tmac.*`` keys make the file self-describing (see :class:`TmacMeta`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from .. import __version__
from ..errors import TmacError
from ..format.runtime import KV, parse as parse_gguf, is_gguf
from ..readers.base import FloatTensor, SourceModel

log = logging.getLogger(__name__)

CONVERTER = f"tmac-convert {__version__}"

# ---------------------------------------------------------------------------------------------
# T-MAC keys

TMAC_FORMAT_VERSION = 1


class TmacKeys:
    """Names of the ``tmac.*`` keys (one place; the reader and ``inspect`` use the same names)."""

    FORMAT_VERSION = "tmac.format_version"   # u32: version of this key set
    CONVERTER = "tmac.converter"             # str: tool and version that wrote the file
    LAYOUT = "tmac.layout"                   # str: "A" (pre-permuted blobs, section 1 of the notes)
    RUNTIME = "tmac.runtime"                 # str: type-id numbering: "tmac" (36-39) or "aug2024" (30-33)
    BITS = "tmac.bits"                       # u32: weight bits of every I-type tensor
    GROUP_SIZE = "tmac.group_size"           # i32: weights per scale along K (-1: per row, 0: one scale per tensor)
    ZERO_POINT = "tmac.zero_point"           # bool: zero offsets interleaved with the scales
    ONE_SCALE = "tmac.one_scale"             # bool: one scale per tensor (BitNet)
    ACT_GROUP_SIZE = "tmac.act_group_size"   # i32: activation (LUT) group size, -1 = the whole K
    TENSOR_NAMES = "tmac.tensor_names"       # [str]: the I-type tensors, in file order
    TENSOR_BM = "tmac.tensor_bm"             # [u32]: bm of each, same order
    TENSOR_KFACTOR = "tmac.tensor_kfactor"   # [u32]: kfactor of each, same order
    KCFG = "tmac.kcfg"                       # str: the kcfg.ini text the runtime must use


@dataclass
class TmacMeta:
    """What the ``tmac.*`` keys say about a file (the same facts go into an npz manifest)."""

    runtime: str
    bits: int
    group_size: int
    zero_point: bool
    one_scale: bool
    act_group_size: int
    tiles: dict[str, tuple[int, int]]  # tensor name -> (bm, kfactor)
    kcfg: str
    converter: str = CONVERTER
    format_version: int = TMAC_FORMAT_VERSION
    layout: str = "A"

    def add_to(self, w: gguf.GGUFWriter) -> None:
        w.add_uint32(TmacKeys.FORMAT_VERSION, self.format_version)
        w.add_string(TmacKeys.CONVERTER, self.converter)
        w.add_string(TmacKeys.LAYOUT, self.layout)
        w.add_string(TmacKeys.RUNTIME, self.runtime)
        w.add_uint32(TmacKeys.BITS, self.bits)
        w.add_int32(TmacKeys.GROUP_SIZE, self.group_size)
        w.add_bool(TmacKeys.ZERO_POINT, self.zero_point)
        w.add_bool(TmacKeys.ONE_SCALE, self.one_scale)
        w.add_int32(TmacKeys.ACT_GROUP_SIZE, self.act_group_size)
        names = list(self.tiles)
        if names:
            w.add_key_value(TmacKeys.TENSOR_NAMES, names, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING)
            w.add_key_value(TmacKeys.TENSOR_BM, [self.tiles[n][0] for n in names], gguf.GGUFValueType.ARRAY,
                            gguf.GGUFValueType.UINT32)
            w.add_key_value(TmacKeys.TENSOR_KFACTOR, [self.tiles[n][1] for n in names], gguf.GGUFValueType.ARRAY,
                            gguf.GGUFValueType.UINT32)
        w.add_string(TmacKeys.KCFG, self.kcfg)

    def to_json(self) -> dict[str, Any]:
        return {"format_version": self.format_version, "converter": self.converter, "layout": self.layout,
                "runtime": self.runtime, "bits": self.bits, "group_size": self.group_size,
                "zero_point": self.zero_point, "one_scale": self.one_scale, "act_group_size": self.act_group_size,
                "kcfg": self.kcfg}

    @classmethod
    def from_kv(cls, kv: dict[str, KV], file: str) -> "TmacMeta | None":
        """Read the keys back; None when the file has none; :class:`TmacError` when they are inconsistent."""
        if TmacKeys.FORMAT_VERSION not in kv:
            return None

        def get(key: str, types: tuple[type, ...], default: Any = ...) -> Any:
            if key not in kv:
                if default is not ...:
                    return default
                raise TmacError(f"key {key} is missing", file=file, rule="tmac keys complete")
            v = kv[key].value
            if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
                raise TmacError(f"key {key} has a value of the wrong type ({type(v).__name__})", file=file,
                                rule="tmac key types")
            return v

        version = get(TmacKeys.FORMAT_VERSION, (int,))
        if version > TMAC_FORMAT_VERSION:
            raise TmacError(f"tmac.format_version {version} is newer than this tool reads ({TMAC_FORMAT_VERSION}); "
                            "upgrade tmac-convert", file=file, rule="tmac format version")
        names = get(TmacKeys.TENSOR_NAMES, (list,), [])
        bms = get(TmacKeys.TENSOR_BM, (np.ndarray, list), np.zeros(0, dtype=np.uint32))
        kfs = get(TmacKeys.TENSOR_KFACTOR, (np.ndarray, list), np.zeros(0, dtype=np.uint32))
        if not (len(names) == len(bms) == len(kfs)):
            raise TmacError(f"tmac.tensor_names ({len(names)}), tmac.tensor_bm ({len(bms)}) and tmac.tensor_kfactor "
                            f"({len(kfs)}) differ in length", file=file, rule="tmac keys consistent")
        if not all(isinstance(n, str) for n in names):
            raise TmacError("tmac.tensor_names holds a non-string", file=file, rule="tmac key types")
        return cls(runtime=get(TmacKeys.RUNTIME, (str,)), bits=get(TmacKeys.BITS, (int,)),
                   group_size=get(TmacKeys.GROUP_SIZE, (int,)), zero_point=get(TmacKeys.ZERO_POINT, (bool,)),
                   one_scale=get(TmacKeys.ONE_SCALE, (bool,)), act_group_size=get(TmacKeys.ACT_GROUP_SIZE, (int,)),
                   tiles={n: (int(b), int(k)) for n, b, k in zip(names, bms, kfs)}, kcfg=get(TmacKeys.KCFG, (str,)),
                   converter=get(TmacKeys.CONVERTER, (str,), ""), format_version=version,
                   layout=get(TmacKeys.LAYOUT, (str,), "A"))


# ---------------------------------------------------------------------------------------------
# hyper-parameters from an HF config

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
    """Write llama.cpp's hyper-parameter keys for ``arch`` from an HF config (what llama.cpp's converter
    writes for the Llama family, Qwen2 and BitNet: sizes, heads, norms, RoPE).  ``file`` names the config
    in errors: a hyper-parameter of the wrong type or out of range is a :class:`TmacError`."""
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
    if arch == "bitnet" and not rtype:
        # llama.cpp's converter marks BitNet's RoPE as linear with factor 1
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(1.0)
    act = h.str("hidden_act")
    if arch == "bitnet" and act not in (None, "silu"):
        # llama.cpp's bitnet graph defaults to SiLU; newer builds read {arch}.hidden_activation.  "silu"
        # itself is not written: some builds map that string to a fused-gate SwiGLU.
        w.add_string(f"{arch}.hidden_activation", act)
        notes.append(f"BitNet hidden_act {act!r} written as {arch}.hidden_activation; llama.cpp builds that do not "
                     "read it (up to at least the one in llama-cpp-python 0.3.36) run SiLU instead and compute "
                     "a different model")


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


def extra_tensors(model: SourceModel, existing: set[str]) -> list[FloatTensor]:
    """Tensors llama.cpp expects that a checkpoint does not store (Llama 3.1 ``rope_freqs.weight``)."""
    out = []
    if model.gguf_arch == "llama" and model.config and "rope_freqs.weight" not in existing:
        f = llama3_rope_factors(model.config, config_file(model))
        if f is not None:
            out.append(FloatTensor("rope_freqs.weight", f))
    return out


# ---------------------------------------------------------------------------------------------
# tokenizer

# llama.cpp ``tokenizer.ggml.pre`` names by the Split regex in tokenizer.json (ByteLevel BPE).
_PRE_BY_REGEX: dict[str, str] = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+": "gpt-2",
}
KNOWN_PRE = sorted(set(_PRE_BY_REGEX.values()) | {"default"})


def detect_pre(tokenizer_json: dict, file: str) -> str:
    """llama.cpp's pre-tokenizer name for a byte-level BPE ``tokenizer.json`` (raises for an unknown one)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    regexes: list[Any] = []
    byte_level: list[dict] = []
    if isinstance(pre, dict):
        steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
        steps = [st for st in steps if isinstance(st, dict)] if isinstance(steps, list) else []
        for st in steps:
            if st.get("type") == "Split":
                pattern = st.get("pattern")
                regexes.append(pattern.get("Regex") if isinstance(pattern, dict) else None)
        byte_level = [st for st in steps if st.get("type") == "ByteLevel"]
    if not regexes and byte_level and byte_level[0].get("use_regex", True):
        return "gpt-2"
    if len(regexes) == 1 and isinstance(regexes[0], str) and regexes[0] in _PRE_BY_REGEX:
        return _PRE_BY_REGEX[regexes[0]]
    shown = regexes[0] if regexes else json.dumps(pre)[:120]
    raise TmacError(f"unknown pre-tokenizer {shown!r}; llama.cpp would tokenise wrongly without the right "
                    f"tokenizer.ggml.pre: name it with --tokenizer-pre (e.g. {', '.join(KNOWN_PRE)})",
                    file=file, rule="known tokenizer.ggml.pre")


#: Largest vocabulary accepted (real ones are under 300k); the vocabulary is padded up to ``vocab_size``
#: in memory, so an absurd value is refused instead of allocating millions of tokens.
MAX_VOCAB = 1 << 22

#: Exceptions the ``gguf`` package's vocab helpers raise on malformed files they read themselves.
_GGUF_VOCAB_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError)


def _read_json(path: Path, rule: str = "tokenizer files readable") -> Any:
    """A JSON file, or a :class:`TmacError` naming it (bad UTF-8, bad JSON, nesting too deep)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise TmacError(f"cannot read {path.name}: {e}", file=str(path), rule=rule) from None
    except RecursionError:
        raise TmacError(f"{path.name} is nested too deeply to read", file=str(path), rule=rule) from None


def _check_bpe_json(tj: Any, file: str) -> None:
    """The parts of a byte-level BPE ``tokenizer.json`` that the ``gguf`` vocab helpers and the GGUF
    writer use, checked up front: ``model.vocab`` maps strings to the ids 0..n-1 (each once),
    ``model.merges`` is all strings or all ``[str, str]`` pairs, ``added_tokens`` is a list of
    ``{"content": str, "id": int}`` objects."""
    def bad(what: str) -> TmacError:
        return TmacError(f"tokenizer.json: {what}", file=file, rule="tokenizer.json schema")

    model = tj["model"]
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise bad("model.vocab is not a non-empty object")
    if len(vocab) > MAX_VOCAB:
        raise bad(f"model.vocab has {len(vocab)} tokens, more than the {MAX_VOCAB} accepted")
    ids = list(vocab.values())
    if not all(type(i) is int for i in ids):
        raise bad("model.vocab holds an id that is not an integer")
    if min(ids) < 0 or max(ids) >= len(ids) or np.unique(np.asarray(ids, dtype=np.int64)).size != len(ids):
        raise bad(f"model.vocab ids are not 0..{len(ids) - 1}, each once (ids from {min(ids)} to {max(ids)})")
    merges = model.get("merges")
    if merges is not None:
        if not isinstance(merges, list):
            raise bad("model.merges is not a list")
        strings = all(isinstance(m, str) for m in merges)
        pairs = all(isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m) for m in merges)
        if not (strings or pairs):
            raise bad("model.merges is neither all strings nor all [string, string] pairs")
    added = tj.get("added_tokens", [])
    if not isinstance(added, list) or not all(
            isinstance(t, dict) and isinstance(t.get("content"), str) and type(t.get("id")) is int
            and 0 <= t["id"] < MAX_VOCAB for t in added):
        raise bad("added_tokens is not a list of {\"content\": string, \"id\": integer} objects")


def _check_side_files(d: Path) -> None:
    """tokenizer_config.json / special_tokens_map.json / chat_template.json, when present, are JSON objects."""
    for name in ("tokenizer_config.json", "special_tokens_map.json", "chat_template.json", "config.json"):
        if (d / name).is_file() and not isinstance(_read_json(d / name), dict):
            raise TmacError(f"{name} is not a JSON object", file=str(d / name), rule="tokenizer files readable")


def _tokenizer_dir(files: dict[str, Path], stack: list) -> Path | None:
    """One folder holding all tokenizer files (a temporary folder of links when they are spread out)."""
    if not files:
        return None
    parents = {Path(p).parent for p in files.values()}
    if len(parents) == 1:
        return parents.pop()
    tmp = tempfile.TemporaryDirectory(prefix="tmac-tok-")
    stack.append(tmp)
    for name, p in files.items():
        os.symlink(Path(p).resolve(), Path(tmp.name) / name)
    return Path(tmp.name)


@dataclass
class TokenizerData:
    """A vocabulary ready to write: ``model`` (``gpt2``/``llama``/``none``), ``pre``, tokens and specials."""

    model: str
    pre: str | None = None
    tokens: list[bytes] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    special: gguf.SpecialVocab | None = None

    def add_to(self, w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model(self.model)
        if self.model == "none":
            return
        if self.pre:
            w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        if self.model == "llama":
            w.add_token_scores(self.scores)
        w.add_token_types(self.types)
        if self.special is not None:
            self.special.add_to_gguf(w, quiet=True)


def load_tokenizer(model: SourceModel, *, pre_override: str | None = None, notes: list[str]) -> TokenizerData:
    """Read the source's tokenizer with the ``gguf`` package's vocab helpers.

    * ``tokenizer.json`` with a byte-level BPE model -> ``gpt2`` vocabulary, merges, ``pre`` by regex;
    * ``tokenizer.model`` (SentencePiece) -> ``llama`` vocabulary with scores (needs ``sentencepiece``);
    * nothing -> ``none`` and a note (llama.cpp then loads the model but cannot tokenise).
    The vocabulary is padded with unused ``[PAD{i}]`` tokens up to the config's ``vocab_size``.
    """
    stack: list = []
    try:
        d = _tokenizer_dir(model.tokenizer_files, stack)
        if d is None or not ((d / "tokenizer.json").is_file() or (d / "tokenizer.model").is_file()):
            notes.append("no tokenizer files: the GGUF has no vocabulary (tokenizer.ggml.model = none)")
            return TokenizerData("none")
        n_vocab = (_Hparams(text_config(model.config), config_file(model)).int("vocab_size", hi=MAX_VOCAB + 1)
                   if model.config else None)
        _check_side_files(d)
        tj_path = d / "tokenizer.json"
        tj = _read_json(tj_path) if tj_path.is_file() else None
        if tj is not None and not isinstance(tj, dict):
            raise TmacError("tokenizer.json is not a JSON object", file=str(tj_path), rule="tokenizer.json schema")
        tm = tj.get("model", {}) if tj is not None else {}
        if not isinstance(tm, dict):
            raise TmacError("tokenizer.json: model is not an object", file=str(tj_path), rule="tokenizer.json schema")
        if tj is not None and tm.get("type") == "BPE" and not tm.get("byte_fallback", False):
            _check_bpe_json(tj, str(tj_path))
            try:
                vocab = gguf.vocab.BpeVocab(d)
                tokens = list(vocab.all_tokens())
            except _GGUF_VOCAB_ERRORS as e:
                raise TmacError(f"not a byte-level BPE tokenizer the gguf package reads: {type(e).__name__}: {e}",
                                file=str(tj_path), rule="tokenizer readable") from None
            pre = pre_override or detect_pre(tj, str(tj_path))
            data = TokenizerData("gpt2", pre=pre)
            for text, score, ttype in tokens:
                data.tokens.append(text if isinstance(text, bytes) else str(text).encode("utf-8"))
                data.types.append(int(ttype))
            _mark_added_specials(tj, data)
            load_merges = True
        elif (d / "tokenizer.model").is_file():
            try:
                vocab = gguf.vocab.SentencePieceVocab(d)
                tokens = list(vocab.all_tokens())
            except RuntimeError:
                raise TmacError("reading tokenizer.model needs the sentencepiece package (pip install sentencepiece)",
                                file=str(d / "tokenizer.model"), rule="tokenizer readable") from None
            except _GGUF_VOCAB_ERRORS as e:
                raise TmacError(f"cannot read tokenizer.model: {type(e).__name__}: {e}",
                                file=str(d / "tokenizer.model"), rule="tokenizer readable") from None
            data = TokenizerData("llama", pre=pre_override or "default")
            for text, score, ttype in tokens:
                data.tokens.append(text)
                data.scores.append(float(score))
                data.types.append(int(ttype))
            load_merges = False
        else:
            kind = tm.get("type", "unknown")
            raise TmacError(f"tokenizer.json holds a {kind!r} model with byte_fallback={tm.get('byte_fallback')!r}, "
                            "which needs tokenizer.model (SentencePiece) beside it", file=str(tj_path),
                            rule="tokenizer readable")
        if n_vocab is not None and n_vocab > len(data.tokens):
            first = len(data.tokens)
            data.tokens.extend(f"[PAD{i}]".encode("utf-8") for i in range(first, n_vocab))
            data.scores.extend([-1000.0] * (n_vocab - first))
            data.types.extend([int(gguf.TokenType.UNUSED)] * (n_vocab - first))
        if data.model == "gpt2":
            data.scores = []
        try:
            data.special = gguf.SpecialVocab(d, load_merges=load_merges, n_vocab=len(data.tokens))
        except _GGUF_VOCAB_ERRORS as e:
            raise TmacError(f"cannot read special tokens: {type(e).__name__}: {e}", file=str(d),
                            rule="tokenizer readable") from None
        if load_merges and not data.special.merges:
            raise TmacError("BPE tokenizer without merges (llama.cpp refuses such a vocabulary)", file=str(tj_path),
                            rule="BPE merges present")
        _check_special(data.special, str(d))
        return data
    finally:
        for s in stack:
            s.cleanup()


def _check_special(special: gguf.SpecialVocab, file: str) -> None:
    """What SpecialVocab passes through unchecked must still be writable: merges (from merges.txt too) as
    strings and a chat template as a string or a list of {name, template} strings."""
    if not all(isinstance(m, str) for m in special.merges):
        raise TmacError("a BPE merge is not a string", file=file, rule="tokenizer.json schema")
    t = special.chat_template
    if isinstance(t, list) and not all(isinstance(x, dict) and isinstance(x.get("name"), str)
                                       and isinstance(x.get("template"), str) for x in t):
        raise TmacError("chat_template is a list whose entries are not {name, template} strings", file=file,
                        rule="tokenizer files readable")


def _mark_added_specials(tj: dict, data: TokenizerData) -> None:
    """Added tokens flagged ``special`` in tokenizer.json are CONTROL tokens (as llama.cpp's converter marks them)."""
    for t in tj.get("added_tokens") or []:
        i = t.get("id")
        if isinstance(i, int) and 0 <= i < len(data.types):
            data.types[i] = int(gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED)


# ---------------------------------------------------------------------------------------------
# carrying over a GGUF source's metadata

# Keys the writer sets itself (or that describe the source file's own layout).
_NOT_CARRIED = ("general.architecture", "general.file_type", "general.alignment", "split.")


def carried_kv(model: SourceModel) -> list[KV]:
    """Every key/value of a GGUF source, typed as in the source file (minus layout keys and ``tmac.*``)."""
    kvs: list[KV] = []
    typed = getattr(model._reader, "gguf_kv", None)
    if typed is not None:
        kvs = list(typed(model))
    elif model.path is not None and is_gguf(model.path):
        kvs = list(parse_gguf(model.path).kv.values())
    elif model.gguf_metadata:
        for k, v in model.gguf_metadata.items():
            kvs.append(_guess_kv(k, v))
    return [kv for kv in kvs if not kv.key.startswith("tmac.") and not any(
        kv.key == p or (p.endswith(".") and kv.key.startswith(p)) for p in _NOT_CARRIED)]


def _guess_kv(key: str, v: Any) -> KV:
    T = gguf.GGUFValueType
    if isinstance(v, bool):
        return KV(key, T.BOOL, v)
    if isinstance(v, int):
        return KV(key, T.UINT32 if 0 <= v < 2**32 else T.INT64, v)
    if isinstance(v, float):
        return KV(key, T.FLOAT32, v)
    if isinstance(v, (str, bytes)):
        return KV(key, T.STRING, v)
    if isinstance(v, np.ndarray):
        sub = {"u1": T.UINT8, "i1": T.INT8, "u2": T.UINT16, "i2": T.INT16, "u4": T.UINT32, "i4": T.INT32,
               "f4": T.FLOAT32, "u8": T.UINT64, "i8": T.INT64, "f8": T.FLOAT64, "b1": T.BOOL}[v.dtype.str[1:]]
        return KV(key, T.ARRAY, v, sub)
    if isinstance(v, (list, tuple)):
        sub = _guess_kv(key, v[0]).vtype if len(v) else T.UINT32
        return KV(key, T.ARRAY, list(v), sub)
    raise TmacError(f"metadata key {key}: a value of type {type(v).__name__} cannot be written to GGUF",
                    rule="metadata types")


def add_kv(w: gguf.GGUFWriter, kv: KV) -> None:
    """Add one typed key/value to a writer (arrays as lists; numpy scalars as Python numbers)."""
    value = kv.value
    if isinstance(value, np.ndarray):
        value = value.tolist()
    w.add_key_value(kv.key, value, gguf.GGUFValueType(kv.vtype),
                    None if kv.sub_type is None else gguf.GGUFValueType(kv.sub_type))


def kv_to_json(kv: KV) -> dict[str, Any]:
    """A typed key/value as JSON (for the npz manifest); bytes become latin-1 text with a flag."""
    v = kv.value
    if isinstance(v, np.ndarray):
        v = v.tolist()
    out: dict[str, Any] = {"key": kv.key, "type": int(kv.vtype)}
    if kv.sub_type is not None:
        out["sub_type"] = int(kv.sub_type)
    if isinstance(v, bytes):
        out["bytes"] = True
        v = v.decode("latin-1")
    elif isinstance(v, list) and any(isinstance(x, bytes) for x in v):
        out["bytes"] = True
        v = [x.decode("latin-1") if isinstance(x, bytes) else x for x in v]
    out["value"] = v
    return out


def kv_from_json(d: dict[str, Any]) -> KV:
    """Inverse of :func:`kv_to_json` (numeric arrays come back as lists)."""
    v = d["value"]
    if d.get("bytes"):
        v = v.encode("latin-1") if isinstance(v, str) else [x.encode("latin-1") for x in v]
    vt = int(d["type"])
    sub = None if d.get("sub_type") is None else int(d["sub_type"])
    key = d["key"]
    if not isinstance(key, str) or not _value_fits(vt, v, sub):
        raise TmacError(f"metadata {key!r}: value {str(v)[:60]!r} does not fit value type {vt}/{sub}",
                        rule="manifest schema")
    return KV(key, vt, v, sub)


_INT_RANGES = {0: (0, 2**8), 1: (-2**7, 2**7), 2: (0, 2**16), 3: (-2**15, 2**15), 4: (0, 2**32), 5: (-2**31, 2**31),
               10: (0, 2**64), 11: (-2**63, 2**63)}


def _value_fits(vt: int, v: Any, sub: int | None, depth: int = 0) -> bool:
    """Whether ``v`` can be written as GGUF value type ``vt`` (arrays: every element as ``sub``)."""
    if vt in _INT_RANGES:
        lo, hi = _INT_RANGES[vt]
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v < hi
    if vt in (6, 12):
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if vt == 7:
        return isinstance(v, bool)
    if vt == 8:
        return isinstance(v, (str, bytes))
    if vt == 9:
        return (depth < 2 and isinstance(v, list) and sub is not None and sub != 9
                and all(_value_fits(sub, x, None, depth + 1) for x in v))
    return False
