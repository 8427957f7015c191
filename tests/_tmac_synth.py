"""A synthetic source format for the writer/convert/CLI tests: a folder with ``synth.json``.

Importing this module registers :class:`SynthReader` (reader name ``synth-test``), which yields a
small Llama-shaped model whose tensors are generated deterministically from the spec, so tests
exercise the writers and the pipeline without depending on other readers.  The folder also gets
an HF ``config.json`` and a real (tiny) byte-level BPE ``tokenizer.json`` with Llama 3's
pre-tokenizer, so tokenizer metadata is written through the ``gguf`` package's vocab helpers.

Spec keys: ``layers``, ``hidden``, ``ffn``, ``vocab``, ``bits``, ``group_size``, ``zero_point``,
``per_tensor`` (BitNet-like one scale per tensor), ``seed``, ``sleep`` (seconds per tensor, for
interruption tests), ``fail_at`` (raise RuntimeError at that tensor index), ``rope_scaling``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from tmac_convert.errors import TmacError
from tmac_convert.readers.base import FloatTensor, Reader, SourceModel, Tensor, TensorInfo
from tmac_convert.format.tensor import QuantTensor

SPEC = "synth.json"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
DEFAULTS: dict[str, Any] = {"layers": 2, "hidden": 64, "ffn": 128, "vocab": 40, "bits": 2, "group_size": 32,
                            "zero_point": True, "per_tensor": False, "seed": 0, "sleep": 0.0, "fail_at": None,
                            "rope_scaling": None, "tokenizer": True, "pre_regex": LLAMA3_REGEX}
BASE_CHARS = "abcdefghijklmnopqrstuvwxyzĠ"
SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>")


def write_tokenizer(folder: Path, vocab_size: int, pre_regex: str = LLAMA3_REGEX) -> None:
    """A byte-level BPE tokenizer.json (+ tokenizer_config.json) with ``vocab_size`` tokens in all."""
    vocab = {c: i for i, c in enumerate(BASE_CHARS)}
    merges = []
    pairs = [(a, b) for a in "aeiost" for b in "nrtlse"]
    for a, b in pairs:
        if len(vocab) >= vocab_size - len(SPECIALS):
            break
        vocab[a + b] = len(vocab)
        merges.append(f"{a} {b}")
    added = [{"id": len(vocab) + i, "content": s, "special": True, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False} for i, s in enumerate(SPECIALS)]
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pre_regex}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": merges},
    }
    (folder / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": SPECIALS[0], "eos_token": SPECIALS[1], "add_bos_token": True,
        "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}))


def write_synth(folder: Path, **spec: Any) -> Path:
    """Create a synthetic model folder; returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    s = {**DEFAULTS, **spec}
    (folder / SPEC).write_text(json.dumps(s))
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": s["hidden"],
           "num_hidden_layers": s["layers"], "intermediate_size": s["ffn"], "num_attention_heads": 4,
           "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
           "max_position_embeddings": 512, "vocab_size": s["vocab"], "bos_token_id": 0}
    if s["rope_scaling"]:
        cfg["rope_scaling"] = s["rope_scaling"]
    (folder / "config.json").write_text(json.dumps(cfg))
    if s["tokenizer"]:
        write_tokenizer(folder, s["vocab"], s["pre_regex"])
    return folder


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed] + [ord(c) for c in name])


def quant_tensor(name: str, m0: int, k: int, s: dict) -> QuantTensor:
    """The deterministic quantised tensor ``name`` of a spec (also used by tests as the expectation)."""
    r = _rng(s["seed"], name)
    bits = s["bits"]
    codes = r.integers(0, 1 << bits, size=(m0, k), dtype=np.uint8)
    if s["per_tensor"]:
        return QuantTensor(name, codes, np.array([r.uniform(0.01, 0.1)], dtype=np.float32), None, bits=bits,
                           group_size=k)
    g = k // s["group_size"]
    scales = r.uniform(0.001, 0.05, size=(m0, g)).astype(np.float16)
    zeros = None
    if s["zero_point"]:
        z = r.integers(0, 1 << bits, size=(m0, g)).astype(np.float16)
        zeros = ((z - np.float16(1 << (bits - 1))) * scales).astype(np.float16)
    return QuantTensor(name, codes, scales, zeros, bits=bits, group_size=s["group_size"])


def float_tensor(name: str, shape: tuple[int, ...], s: dict) -> FloatTensor:
    r = _rng(s["seed"], name)
    dtype = np.float16 if len(shape) == 2 else np.float32
    return FloatTensor(name, (r.standard_normal(shape) * 0.05).astype(dtype))


def layout(s: dict) -> list[tuple[str, tuple[int, ...], bool]]:
    """``(name, shape, quantised)`` of every tensor, in yield order."""
    h, f, v = s["hidden"], s["ffn"], s["vocab"]
    kv = h // 2
    out: list[tuple[str, tuple[int, ...], bool]] = [("token_embd.weight", (v, h), False)]
    for i in range(s["layers"]):
        b = f"blk.{i}."
        out += [(b + "attn_norm.weight", (h,), False), (b + "attn_q.weight", (h, h), True),
                (b + "attn_k.weight", (kv, h), True), (b + "attn_v.weight", (kv, h), True),
                (b + "attn_output.weight", (h, h), True), (b + "ffn_norm.weight", (h,), False),
                (b + "ffn_gate.weight", (f, h), True), (b + "ffn_up.weight", (f, h), True),
                (b + "ffn_down.weight", (h, f), True)]
    out += [("output_norm.weight", (h,), False), ("output.weight", (v, h), False)]
    return out


def expected_tensors(folder: Path) -> Iterator[Tensor]:
    """What the reader yields, generated directly (for assertions)."""
    s = json.loads((Path(folder) / SPEC).read_text())
    for name, shape, q in layout(s):
        yield quant_tensor(name, shape[0], shape[1], s) if q else float_tensor(name, shape, s)


class SynthReader(Reader, name="synth-test", priority=1):
    """Reads a :func:`write_synth` folder."""

    @classmethod
    def detect(cls, path: Path) -> bool:
        return (Path(path) / SPEC).is_file()

    def open(self, path: Path) -> SourceModel:
        path = Path(path)
        s = json.loads((path / SPEC).read_text())
        self.spec = s
        cfg = json.loads((path / "config.json").read_text())
        tok = {n: path / n for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
               if (path / n).is_file()}
        return SourceModel(path=path, format="synth-test", architecture="LlamaForCausalLM", gguf_arch="llama",
                           config=cfg, quantization={"bits": s["bits"], "group_size": s["group_size"]},
                           tokenizer_files=tok, notes=["synthetic test model"], _reader=self)

    def tensor_infos(self, model: SourceModel) -> list[TensorInfo]:
        s = self.spec
        out = []
        for name, shape, q in layout(s):
            if q:
                m0, k = shape
                pt = s["per_tensor"]
                out.append(TensorInfo(name, shape, bits=s["bits"], group_size=k if pt else s["group_size"],
                                      zero_point=bool(s["zero_point"]) and not pt, per_tensor_scale=pt,
                                      nbytes=m0 * k * s["bits"] // 8))
            else:
                out.append(TensorInfo(name, shape, nbytes=int(np.prod(shape)) * (2 if len(shape) == 2 else 4)))
        return out

    def iter_tensors(self, model: SourceModel) -> Iterator[Tensor]:
        s = self.spec
        for i, (name, shape, q) in enumerate(layout(s)):
            if s["fail_at"] is not None and i == s["fail_at"]:
                if s.get("fail_kind") == "tmac":
                    raise TmacError("synthetic failure", tensor=name, file=str(model.path), rule="test")
                raise RuntimeError(f"synthetic failure at {name}")
            if s["sleep"]:
                time.sleep(s["sleep"])
            yield quant_tensor(name, shape[0], shape[1], s) if q else float_tensor(name, shape, s)
