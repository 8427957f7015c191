"""Low-level GGUF parsing that understands T-MAC's type ids (the ``gguf`` package mislabels them).

The ``gguf`` package knows 30 as BF16, 39 as MXFP4 and nothing of 36-38, while T-MAC's forks use
these numbers for ``I1..I4`` (section 3.1 of the format notes).  This module parses a GGUF file's
header with the bounded parser of :mod:`tmac_convert.gguf_header` (re-exported here: ``parse``,
``GGUFFile``, ``TensorRecord``, ``KV``, ``is_gguf``), places each tensor in the file, and names
tensor types in the context of a :class:`Runtime`.  It is shared by the T-MAC file reader and
``tmac-convert inspect``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import gguf
import numpy as np

from .errors import TmacError
from .gguf_header import GGUF_MAGIC, KV, MAX_DIMS, GGUFFile, TensorRecord, is_gguf, parse_header

__all__ = ["GGUF_MAGIC", "KV", "MAX_DIMS", "GGUFFile", "TensorRecord", "Runtime", "RUNTIMES", "DEFAULT_RUNTIME",
           "get_runtime", "is_gguf", "parse", "standard_nbytes", "type_name", "gguf_type_label", "read_bytes"]


@dataclass(frozen=True)
class Runtime:
    """A T-MAC llama.cpp fork as a target: its ``GGML_TYPE_I{bits}`` ids and its ``general.file_type``."""

    name: str
    type_ids: dict[int, int]  # bits -> ggml type id
    file_type: int
    description: str

    def bits_of(self, type_id: int) -> int | None:
        """The bit width a type id stands for in this runtime, or None for a non-T-MAC type."""
        for b, t in self.type_ids.items():
            if t == type_id:
                return b
        return None


RUNTIMES: dict[str, Runtime] = {
    "tmac": Runtime("tmac", {1: 36, 2: 37, 3: 38, 4: 39}, 38,
                    "T-MAC's pinned llama.cpp fork (kaleid-liner master-rebased, Oct 2024 on): I1..I4 = 36..39, "
                    "file type 38 (INT_N)"),
    "aug2024": Runtime("aug2024", {1: 31, 2: 30, 3: 32, 4: 33}, 32,
                       "the August 2024 fork (kaleid-liner master@70c312d): I2 = 30, I1 = 31, I3 = 32, I4 = 33, "
                       "file type 32 (IN)"),
}
DEFAULT_RUNTIME = "tmac"


def get_runtime(name: str) -> Runtime:
    """The :class:`Runtime` called ``name`` (``tmac`` or ``aug2024``)."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise TmacError(f"unknown runtime {name!r}; runtimes: {', '.join(RUNTIMES)}", rule="runtime name") from None


def parse(path: str | os.PathLike, *, keys: Callable[[str], bool] | None = None) -> GGUFFile:
    """Parse the header, key/values and tensor infos of a GGUF file (data is not read).

    :func:`~tmac_convert.gguf_header.parse_header` with, on top, what reading T-MAC files needs:
    little-endian, the data section and every tensor's start inside the file, no two tensors at the
    same offset, and each tensor's ``span`` (bytes to the next tensor or the end of the file).
    Raises :class:`TmacError` for anything malformed.  ``keys``: decode only the key/values it accepts
    (see :func:`~tmac_convert.gguf_header.parse_header`).
    """
    f = parse_header(path, keys=keys)
    if f.big_endian:
        raise f.fail("big-endian GGUF files are not supported", "little-endian GGUF")
    _place_tensors(f)
    return f


def _place_tensors(f: GGUFFile) -> None:
    """Check that the data section and each tensor start inside the file and give each its ``span``."""
    size = f.file_size
    if f.data_offset > size:
        raise f.fail(f"the data section starts at byte {f.data_offset}, past the end of the file ({size} bytes)",
                     "GGUF structure")
    order = sorted(f.tensors, key=lambda t: t.rel_offset)
    for j, t in enumerate(order):
        if t.offset > size:
            raise f.fail(f"tensor {t.name!r} starts at byte {t.offset}, past the end of the file ({size} bytes)",
                         "GGUF structure", t.name)
        nxt = order[j + 1].offset if j + 1 < len(order) else size
        if nxt == t.offset and j + 1 < len(order):
            raise f.fail(f"tensors {t.name!r} and {order[j + 1].name!r} start at the same offset", "GGUF structure",
                         t.name)
        t.span = min(nxt, size) - t.offset


# ---------------------------------------------------------------------------------------------
# tensor types

def standard_nbytes(type_id: int, ne: tuple[int, ...]) -> int | None:
    """Bytes of a tensor of a type the ``gguf`` package knows (None if it does not know the id or the
    row length is not a whole number of blocks)."""
    try:
        qt = gguf.GGMLQuantizationType(type_id)
        block, tsize = gguf.GGML_QUANT_SIZES[qt]
    except (ValueError, KeyError):
        return None
    if ne[0] % block:
        return None
    n = 1
    for d in ne[1:]:
        n *= d
    return n * (ne[0] // block) * tsize


def type_name(type_id: int, runtime: Runtime | None) -> str:
    """A type id's name: ``I2`` for T-MAC types of ``runtime``, the ``gguf`` package's name otherwise."""
    if runtime is not None:
        b = runtime.bits_of(type_id)
        if b is not None:
            return f"I{b}"
    return gguf_type_label(type_id)


def gguf_type_label(type_id: int) -> str:
    """What the ``gguf`` package would call a type id (to show how stock tools mislabel T-MAC types)."""
    try:
        return gguf.GGMLQuantizationType(type_id).name
    except ValueError:
        return f"unknown({type_id})"


def read_bytes(path: str | os.PathLike, offset: int, nbytes: int) -> np.ndarray:
    """``nbytes`` bytes at ``offset`` as a read-only uint8 memory map (bounded by the file size)."""
    size = os.path.getsize(path)
    if offset < 0 or nbytes < 0 or offset + nbytes > size:
        raise TmacError(f"bytes [{offset}, {offset + nbytes}) lie outside the file ({size} bytes)", file=str(path),
                        rule="tensor data inside the file")
    if nbytes == 0:
        return np.zeros(0, dtype=np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(nbytes,))
