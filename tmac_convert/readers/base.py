"""What every reader produces: a :class:`SourceModel` whose ``tensors()`` streams the intermediate form.

Readers register themselves by subclassing :class:`Reader` with a ``name`` (the same pattern as the
``gguf`` package's quant classes), so adding a source format touches one module.  Readers never know
about layouts: they yield :class:`~tmac_convert.format.tensor.QuantTensor` (codes, scales, zero offsets) and
:class:`FloatTensor` (weights that pass through), in GGUF naming and GGUF row order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Iterator

from ..format.model import SourceModel
from ..format.tensor import FloatTensor, QuantTensor, Tensor, TensorInfo

__all__ = ["Reader", "SourceModel", "FloatTensor", "QuantTensor", "Tensor", "TensorInfo"]


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
