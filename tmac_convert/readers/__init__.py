"""What every reader produces: a :class:`SourceModel` whose ``tensors()`` streams the intermediate form.

Readers register themselves by subclassing :class:`Reader` with a ``name`` (the same pattern as the
``gguf`` package's quant classes), so adding a source format touches one module.  Readers never know
about layouts: they yield :class:`~tmac_convert.format.tensor.QuantTensor` (codes, scales, zero offsets) and
:class:`FloatTensor` (weights that pass through), in GGUF naming and GGUF row order.

:func:`read` is the entry point: it resolves the source (local folder, file or hub repo id), refuses
pickles, picks the reader by detection (lowest ``priority`` first) and opens the model lazily.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

from ..errors import TmacError
from .base import FloatTensor, Reader, SourceModel, Tensor, TensorInfo
from .source import refuse_pickles, resolve

__all__ = ["read", "detect", "load_readers", "Reader", "SourceModel", "FloatTensor", "Tensor", "TensorInfo"]

_loaded = False


def load_readers() -> dict[str, type[Reader]]:
    """Import every module of this package once so that each Reader subclass registers itself."""
    global _loaded
    if not _loaded:
        for mod in pkgutil.iter_modules(__path__):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{__name__}.{mod.name}")
        _loaded = True
    return Reader.registry


def detect(path: Path) -> type[Reader]:
    """The reader class for a local path: the first (by ``priority``) whose ``detect`` accepts it."""
    readers = sorted(load_readers().values(), key=lambda r: (r.priority, r.name))
    for cls in readers:
        if cls.detect(path):
            return cls
    raise TmacError(f"no reader recognises this source (known formats: {', '.join(r.name for r in readers)}); "
                    "expected an HF folder with config.json and safetensors, or a GGUF file", file=str(path),
                    rule="known source format")


def read(source: str | Path, *, format: str | None = None, cache_dir: str | Path | None = None,
         revision: str | None = None, **options: Any) -> SourceModel:
    """Open a model for conversion.

    Args:
        source: a local folder, a single file, or a Hugging Face repo id (``owner/name``; only
            safetensors, JSON and tokenizer files are downloaded; the cache and HF_HUB_OFFLINE are
            honoured).
        format: force a reader by name (``gptq``, ``hf-float``...) instead of detecting it.
        cache_dir, revision: passed to the hub download.
        options: reader options, e.g. ``gptq_format="v1"|"v2"``, ``act_order="requantize"``,
            ``bits``/``group_size``/``zero_point`` for float sources.

    Returns:
        A :class:`SourceModel` with metadata filled in; ``model.tensors()`` streams the tensors lazily.
    """
    path = resolve(source, cache_dir=cache_dir, revision=revision)
    refuse_pickles(path)
    if format is not None:
        readers = load_readers()
        if format not in readers:
            raise TmacError(f"unknown format {format!r}; known: {', '.join(sorted(readers))}", rule="known format")
        cls = readers[format]
    else:
        cls = detect(path)
    return cls(**options).open(path)
