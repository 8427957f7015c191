"""tmac-convert: low-bit LLM checkpoints to T-MAC's LUT-kernel weight layout, with proof.

Public surface (plain numpy arrays in and out):

* :func:`pack` / :func:`unpack` — one tensor to and from a Format A blob.
* :class:`QuantTensor` — the intermediate form every reader yields.
* :func:`read` — open a checkpoint lazily (``model.tensors()`` streams it).
* :func:`load_kcfg`, :func:`load_preset`, :func:`default_tiles` — tile configurations.
* :func:`convert` — a whole conversion (read -> normalise -> layout -> verify -> write).
* :func:`verify_file` — re-check a written file (and, given its source, compare with it); the
  ``tmac-convert verify`` command.
* :mod:`kernels` — the bundled LUT kernels (``tc.kernels.gemm``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import LayoutError, TmacError, VerificationError
from .format.tensor import QuantTensor
from .layouts import (Kcfg, KernelConfig, TileConfig, blob_nbytes, default_tiles, load_kcfg, load_preset, pack,
                      preset_names, unpack)
from .readers import read
# Imported here, not lazily: the functions must shadow their modules' names (``tmac_convert.convert``
# and ``tmac_convert.verify_file``), which an import of the module would otherwise set on the package.
from .convert import ConversionReport, convert
from .verify_file import FileCheck, verify_file

if TYPE_CHECKING:
    from . import kernels

__all__ = ["__version__", "pack", "unpack", "blob_nbytes", "QuantTensor", "read", "convert", "ConversionReport",
           "verify_file", "FileCheck", "kernels", "TmacError", "LayoutError", "VerificationError", "Kcfg",
           "KernelConfig", "TileConfig", "load_kcfg", "load_preset", "preset_names", "default_tiles"]

def __getattr__(name: str) -> Any:
    """``tc.kernels`` on first use (the native kernels are not needed to pack a tensor)."""
    if name != "kernels":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .kernels import gemm  # noqa: F401 - loading the submodule binds it on this package

    return globals()["kernels"]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
