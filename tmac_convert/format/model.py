"""A model opened by a reader: metadata plus a lazy stream of tensors (what writers are given)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

from .gguf_file import KV
from .tensor import Tensor, TensorInfo


class TensorSource(Protocol):
    """What streams a model's tensors (a reader); writers never see it."""

    def tensor_infos(self, model: "SourceModel") -> list[TensorInfo]: ...

    def iter_tensors(self, model: "SourceModel") -> Iterator[Tensor]: ...


@dataclass
class SourceModel:
    """A model opened by a reader.

    Attributes:
        path: the local folder or file it was read from.
        format: the reader's name (``gptq``, ``bitnet``, ``gguf``, ``hf-float``, ``tmac-npz``).
        architecture: HF architecture (``LlamaForCausalLM``) or GGUF arch for GGUF sources.
        gguf_arch: llama.cpp architecture name (``llama``, ``qwen2``, ``bitnet``).
        config: the HF ``config.json`` as a dict (empty for GGUF sources).
        quantization: quantisation facts (``bits``, ``group_size``, ``sym``, ``checkpoint_format``...).
        tokenizer_files: tokenizer file name -> local path.
        gguf_metadata: for GGUF sources, every key/value of the source file.
        gguf_kv: for GGUF and T-MAC sources, the typed key/values to carry over (``tmac.*`` excluded).
        notes: human-readable decisions the reader made (e.g. why v1 or v2 zeros were chosen).
    """

    path: Path
    format: str
    architecture: str
    gguf_arch: str
    config: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)
    tokenizer_files: dict[str, Path] = field(default_factory=dict)
    gguf_metadata: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    gguf_kv: list[KV] | None = None
    _reader: "TensorSource | None" = None

    def tensor_infos(self) -> list[TensorInfo]:
        """Every tensor ``tensors()`` will yield, in the same order, without loading data."""
        assert self._reader is not None
        return self._reader.tensor_infos(self)

    def tensors(self) -> Iterator[Tensor]:
        """Stream the tensors one at a time (memory-mapped sources; never the whole model in RAM)."""
        assert self._reader is not None
        return self._reader.iter_tensors(self)
