"""tmac-convert: low-bit LLM checkpoints to T-MAC's LUT-kernel weight layout, with proof.

Public surface (plain numpy arrays in and out):

* :func:`pack` / :func:`unpack` — one tensor to and from a Format A blob.
* :class:`QuantTensor` — the intermediate form every reader yields.
* :func:`load_kcfg`, :func:`load_preset`, :func:`default_tiles` — tile configurations.
"""

__version__ = "0.1.0"

from .errors import LayoutError, TmacError, VerificationError
from .layouts import (Kcfg, KernelConfig, TileConfig, blob_nbytes, default_tiles, load_kcfg, load_preset, pack,
                      preset_names, unpack)
from .format.tensor import QuantTensor
from .readers import read


__all__ = ["pack", "unpack", "blob_nbytes", "QuantTensor", "TmacError", "LayoutError", "VerificationError",
           "Kcfg", "KernelConfig", "TileConfig", "load_kcfg", "load_preset", "preset_names", "default_tiles"]
