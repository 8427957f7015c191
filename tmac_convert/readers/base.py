"""What every reader produces: a :class:`SourceModel` whose ``tensors()`` streams the intermediate form.

Readers register themselves by subclassing :class:`Reader` with a ``name`` (the same pattern as the
``gguf`` package's quant classes), so adding a source format touches one module.  Readers never know
about layouts: they yield :class:`~tmac_convert.format.tensor.QuantTensor` (codes, scales, zero offsets) and
:class:`FloatTensor` (weights that pass through), in GGUF naming and GGUF row order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Union

import numpy as np

from ..format.tensor import QuantTensor


@dataclass
class FloatTensor:
    """A tensor that passes through unquantised.

    Attributes:
        name: GGUF tensor name (e.g. ``token_embd.weight``, ``blk.0.attn_norm.weight``).
        data: float16 or float32 array in numpy (row-major, HF) shape, already in GGUF row order.
        quantizable: True for an attention/MLP projection that a float source may quantise.
    """

    name: str
    data: np.ndarray
    quantizable: bool = False


Tensor = Union[QuantTensor, FloatTensor]


@dataclass
class TensorInfo:
    """What a reader knows about a tensor before loading it (for planning, progress and kcfg checks).

    ``shape`` is ``(M0, K)`` for quantised tensors, the numpy shape otherwise; ``bits`` is None for float.
    """

    name: str
    shape: tuple[int, ...]
    bits: int | None = None
    group_size: int | None = None
    zero_point: bool = False
    per_tensor_scale: bool = False
    nbytes: int = 0  # bytes the source stores for it


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
    _reader: "Reader | None" = None

    def tensor_infos(self) -> list[TensorInfo]:
        """Every tensor ``tensors()`` will yield, in the same order, without loading data."""
        assert self._reader is not None
        return self._reader.tensor_infos(self)

    def tensors(self) -> Iterator[Tensor]:
        """Stream the tensors one at a time (memory-mapped sources; never the whole model in RAM)."""
        assert self._reader is not None
        return self._reader.iter_tensors(self)


class Reader:
    """Base of source-format readers; subclasses register by name: ``class GPTQReader(Reader, name="gptq")``."""

    registry: ClassVar[dict[str, type["Reader"]]] = {}
    name: ClassVar[str] = ""
    priority: ClassVar[int] = 100  # lower is tried first during detection

    def __init_subclass__(cls, name: str = "", priority: int = 100, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if name:
            cls.name = name
            cls.priority = priority
            Reader.registry[name] = cls

    def __init__(self, **options: Any) -> None:
        self.options = options

    @classmethod
    def detect(cls, path: Path) -> bool:
        """True when ``path`` (a local folder or file) is in this reader's format."""
        raise NotImplementedError

    def open(self, path: Path) -> SourceModel:
        """Read metadata and validate the source; tensors are loaded lazily later."""
        raise NotImplementedError

    def tensor_infos(self, model: SourceModel) -> list[TensorInfo]:
        raise NotImplementedError

    def iter_tensors(self, model: SourceModel) -> Iterator[Tensor]:
        raise NotImplementedError
