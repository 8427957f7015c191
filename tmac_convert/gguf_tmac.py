"""Low-level GGUF parsing that understands T-MAC's type ids (the ``gguf`` package mislabels them).

The ``gguf`` package knows 30 as BF16, 39 as MXFP4 and nothing of 36-38, while T-MAC's forks use
these numbers for ``I1..I4`` (section 3.1 of the format notes).  This module parses a GGUF file's
header, key/values and tensor infos itself, bounding every count, length and offset by the file
size before allocating anything (files can be hostile), and names tensor types in the context of
a :class:`Runtime`.  It is shared by the T-MAC file reader and ``tmac-convert inspect``.

Layout of a GGUF v2/v3 file (little-endian): magic ``GGUF``, u32 version, u64 tensor count,
u64 kv count, the key/values, the tensor infos (name, u32 n_dims, u64 ``ne[n_dims]``, u32 type,
u64 offset relative to the data section), padding to ``general.alignment`` (default 32), data.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from .errors import TmacError

GGUF_MAGIC = b"GGUF"
MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_NE = 1 << 40

# Value types (gguf.GGUFValueType numbering): struct code and size of the fixed-size ones.
_SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4), 6: ("<f", 4),
    7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
}
_NUMPY: dict[int, str] = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
                          10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9
# The fewest bytes one value of a type can take (arrays: type + count; strings: the length).
_MIN_SIZE = {**{t: s for t, (_, s) in _SCALARS.items()}, _STRING: 8, _ARRAY: 12}


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


@dataclass
class KV:
    """One key/value: ``vtype`` is a :class:`gguf.GGUFValueType` number; arrays carry ``sub_type``.

    Numeric arrays are numpy arrays, string arrays lists of ``str``; strings that are not UTF-8 are
    kept as ``bytes``.
    """

    key: str
    vtype: int
    value: Any
    sub_type: int | None = None


@dataclass
class TensorRecord:
    """One tensor info.  ``ne`` is in GGUF/ggml order (fastest dimension first)."""

    name: str
    ne: tuple[int, ...]
    type_id: int
    rel_offset: int  # from the start of the data section
    offset: int = 0  # absolute position in the file
    span: int = 0  # bytes from ``offset`` to the next tensor (or the end of the file)

    @property
    def shape(self) -> tuple[int, ...]:
        """The numpy (row-major) shape: ``ne`` reversed."""
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.ne:
            n *= d
        return n


@dataclass
class GGUFFile:
    """A parsed GGUF header: every key/value and tensor info, with absolute offsets checked."""

    path: Path
    version: int
    kv: dict[str, KV]
    tensors: list[TensorRecord]
    alignment: int
    data_offset: int
    file_size: int
    _by_name: dict[str, TensorRecord] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {t.name: t for t in self.tensors}

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when absent."""
        kv = self.kv.get(key)
        return default if kv is None else kv.value

    def tensor(self, name: str) -> TensorRecord:
        try:
            return self._by_name[name]
        except KeyError:
            raise TmacError("no such tensor in the file", tensor=name, file=str(self.path), rule="tensor present") from None

    def fail(self, message: str, rule: str, tensor: str | None = None) -> TmacError:
        return TmacError(message, file=str(self.path), tensor=tensor, rule=rule)


class _Cursor:
    """Bounds-checked little-endian reads from a buffer; every failure names the file and position."""

    def __init__(self, buf: Any, path: str) -> None:
        self.buf = buf
        self.pos = 0
        self.end = len(buf)
        self.path = path

    def fail(self, what: str) -> TmacError:
        return TmacError(f"malformed GGUF at byte {self.pos}: {what}", file=self.path, rule="GGUF structure")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.end:
            raise self.fail(f"{what} needs {n} bytes but only {self.end - self.pos} remain")

    def scalar(self, vtype: int, what: str) -> Any:
        code, size = _SCALARS[vtype]
        self.need(size, what)
        (v,) = struct.unpack_from(code, self.buf, self.pos)
        self.pos += size
        return v

    def u32(self, what: str) -> int:
        return self.scalar(4, what)

    def u64(self, what: str) -> int:
        return self.scalar(10, what)

    def raw_string(self, what: str) -> bytes:
        n = self.u64(f"length of {what}")
        self.need(n, what)
        b = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return b

    def string(self, what: str) -> str:
        b = self.raw_string(what)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None

    def value(self, vtype: int, what: str, depth: int = 0) -> tuple[Any, int | None]:
        if vtype in _SCALARS:
            v = self.scalar(vtype, what)
            return (bool(v) if vtype == 7 else v), None
        if vtype == _STRING:
            b = self.raw_string(what)
            try:
                return b.decode("utf-8"), None
            except UnicodeDecodeError:
                return b, None
        if vtype == _ARRAY:
            if depth > 2:
                raise self.fail(f"{what}: arrays nested deeper than 2")
            sub = self.u32(f"element type of {what}")
            if sub not in _MIN_SIZE:
                raise self.fail(f"{what}: unknown array element type {sub}")
            count = self.u64(f"length of {what}")
            if count * _MIN_SIZE[sub] > self.end - self.pos:
                raise self.fail(f"{what}: {count} elements cannot fit in the {self.end - self.pos} bytes left")
            if sub in _NUMPY:
                size = _SCALARS[sub][1] * count
                arr = np.frombuffer(self.buf, dtype=_NUMPY[sub], count=count, offset=self.pos).copy()
                self.pos += size
                return (arr.astype(bool) if sub == 7 else arr), sub
            return [self.value(sub, f"element {i} of {what}", depth + 1)[0] for i in range(count)], sub
        raise self.fail(f"{what}: unknown value type {vtype}")


def is_gguf(path: str | os.PathLike) -> bool:
    """True when ``path`` is a regular file starting with the GGUF magic."""
    p = Path(path)
    try:
        if not p.is_file():
            return False
        with open(p, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def parse(path: str | os.PathLike) -> GGUFFile:
    """Parse the header, key/values and tensor infos of a GGUF file (data is not read).

    Raises :class:`TmacError` (rule ``GGUF structure``) for anything malformed: bad magic or version,
    counts or lengths that cannot fit in the file, more than 4 dimensions, misaligned or overlapping
    tensor offsets, offsets past the end of the file.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise TmacError(f"{size} bytes is too short for a GGUF file", file=str(p), rule="GGUF structure")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _parse(mm, p, size)
    except OSError as e:
        raise TmacError(f"cannot read: {e.strerror}", file=str(p), rule="readable file") from None


def _parse(buf: Any, path: Path, size: int) -> GGUFFile:
    c = _Cursor(buf, str(path))
    if bytes(buf[:4]) != GGUF_MAGIC:
        raise TmacError("not a GGUF file (no GGUF magic)", file=str(path), rule="GGUF magic")
    c.pos = 4
    version = c.u32("version")
    if version not in (2, 3):
        raise TmacError(f"GGUF version {version} is not supported (2 and 3 are)", file=str(path),
                        rule="GGUF version")
    n_tensors = c.u64("tensor count")
    n_kv = c.u64("key/value count")
    # A tensor info takes at least 24 bytes and a key/value at least 13: bound both by the file size.
    if n_tensors * 24 > size or n_kv * 13 > size:
        raise c.fail(f"{n_tensors} tensors and {n_kv} key/values cannot fit in {size} bytes")
    kv: dict[str, KV] = {}
    for i in range(n_kv):
        key = c.string(f"key {i}")
        vtype = c.u32(f"type of {key!r}")
        value, sub = c.value(vtype, repr(key))
        if key in kv:
            raise c.fail(f"key {key!r} appears twice")
        kv[key] = KV(key, vtype, value, sub)
    alignment = 32
    if "general.alignment" in kv:
        a = kv["general.alignment"].value
        if not isinstance(a, int) or isinstance(a, bool) or a <= 0 or a & (a - 1) or a > (1 << 20):
            raise c.fail(f"general.alignment {a!r} is not a power of two")
        alignment = a
    tensors: list[TensorRecord] = []
    seen: set[str] = set()
    for i in range(n_tensors):
        name = c.string(f"name of tensor {i}")
        if name in seen:
            raise c.fail(f"tensor {name!r} appears twice")
        seen.add(name)
        n_dims = c.u32(f"n_dims of {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise c.fail(f"tensor {name!r} has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
        ne = tuple(c.u64(f"dimension {j} of {name!r}") for j in range(n_dims))
        if any(not 0 < d < _MAX_NE for d in ne):
            raise c.fail(f"tensor {name!r} has dimensions {list(ne)}")
        type_id = c.u32(f"type of {name!r}")
        rel = c.u64(f"offset of {name!r}")
        tensors.append(TensorRecord(name, ne, type_id, rel))
    data_offset = -(-c.pos // alignment) * alignment
    if data_offset > size:
        raise c.fail("the data section starts past the end of the file")
    order = sorted(tensors, key=lambda t: t.rel_offset)
    for j, t in enumerate(order):
        if t.rel_offset % alignment:
            raise c.fail(f"tensor {t.name!r} offset {t.rel_offset} is not a multiple of the alignment {alignment}")
        t.offset = data_offset + t.rel_offset
        if t.offset > size:
            raise c.fail(f"tensor {t.name!r} starts at byte {t.offset}, past the end of the file ({size} bytes)")
        nxt = data_offset + order[j + 1].rel_offset if j + 1 < len(order) else size
        if nxt == t.offset and j + 1 < len(order):
            raise c.fail(f"tensors {t.name!r} and {order[j + 1].name!r} start at the same offset")
        t.span = min(nxt, size) - t.offset
    return GGUFFile(path, version, kv, tensors, alignment, data_offset, size)


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
    try:
        return gguf.GGMLQuantizationType(type_id).name
    except ValueError:
        return f"unknown({type_id})"


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
