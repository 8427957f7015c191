"""The one bounded GGUF header parser (magic, version, key/values, tensor infos; no tensor data).

Files can be hostile: every count, length and offset is checked against the file size before
anything is allocated, and every failure is a :class:`TmacError` naming the file, the rule and,
where there is one, the tensor.  Callers add their own checks over the records
(:func:`parse` for T-MAC files, :func:`scan` for GGUF sources).  Every one of them starts from the same
cached parse, so a file is parsed once however many readers, detectors and checks look at it.

Layout of a GGUF v2/v3 file: magic ``GGUF``, u32 version, u64 tensor count, u64 kv count, the
key/values, the tensor infos (name, u32 n_dims, u64 ``ne[n_dims]``, u32 type, u64 offset relative
to the data section), padding to ``general.alignment`` (default 32), data.  Numbers are
little-endian; a big-endian file (told apart by its version) is parsed and flagged ``big_endian``.
"""

from __future__ import annotations

import mmap
from collections import OrderedDict
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gguf
import numpy as np

from ..errors import TmacError
from .runtime import TMAC_ONLY_TYPE_IDS

GGUF_MAGIC = b"GGUF"
MAX_DIMS = 4  # GGML_MAX_DIMS
DEFAULT_ALIGNMENT = 32
_MAX_NE = 1 << 40
_MAX_ALIGNMENT = 1 << 20

# Value types (gguf.GGUFValueType numbering): struct code and size of the fixed-size ones.
_SCALARS: dict[int, tuple[str, int]] = {
    0: ("B", 1), 1: ("b", 1), 2: ("H", 2), 3: ("h", 2), 4: ("I", 4), 5: ("i", 4), 6: ("f", 4),
    7: ("?", 1), 10: ("Q", 8), 11: ("q", 8), 12: ("d", 8),
}
_NUMPY: dict[int, str] = {0: "u1", 1: "i1", 2: "u2", 3: "i2", 4: "u4", 5: "i4", 6: "f4", 7: "u1",
                          10: "u8", 11: "i8", 12: "f8"}
_STRING, _ARRAY = 8, 9
# The fewest bytes one value of a type can take (arrays: type + count; strings: the length).
_MIN_SIZE = {**{t: s for t, (_, s) in _SCALARS.items()}, _STRING: 8, _ARRAY: 12}
# The fewest bytes of a key/value (empty key, 1-byte value) and of a tensor info (empty name, 1 dim).
_MIN_KV, _MIN_TENSOR_INFO = 8 + 4 + 1, 8 + 4 + 8 + 4 + 8


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
    nbytes: int | None = None  # bytes of data from the type (set by :func:`scan`; None for T-MAC / unknown types)

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
    """A parsed GGUF header: every key/value and tensor info (``offset`` = ``data_offset + rel_offset``)."""

    path: Path
    version: int
    kv: dict[str, KV]
    tensors: list[TensorRecord]
    alignment: int
    data_offset: int
    file_size: int
    big_endian: bool = False
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

    @property
    def is_tmac(self) -> bool:
        """True for a file in T-MAC's format: ``tmac.*`` keys or T-MAC-only type ids (36-38, or 31-33 of the
        2024 fork; 30 and 39 are also stock BF16 / MXFP4, not evidence alone)."""
        return (any(k.startswith("tmac.") for k in self.kv)
                or any(t.type_id in TMAC_ONLY_TYPE_IDS for t in self.tensors))


class _Cursor:
    """Bounds-checked reads from a buffer in one byte order; every failure names the file and position."""

    def __init__(self, buf: Any, path: str, endian: str = "<") -> None:
        self.buf = buf
        self.pos = 0
        self.end = len(buf)
        self.path = path
        self.endian = endian

    def fail(self, what: str, rule: str, tensor: str | None = None) -> TmacError:
        return TmacError(f"malformed GGUF at byte {self.pos}: {what}", file=self.path, tensor=tensor, rule=rule)

    def need(self, n: int, what: str, tensor: str | None = None) -> None:
        if n < 0 or self.pos + n > self.end:
            raise self.fail(f"{what} needs {n} bytes but only {self.end - self.pos} remain", "header within file",
                            tensor)

    def scalar(self, vtype: int, what: str, tensor: str | None = None) -> Any:
        code, size = _SCALARS[vtype]
        self.need(size, what, tensor)
        (v,) = struct.unpack_from(self.endian + code, self.buf, self.pos)
        self.pos += size
        return v

    def u32(self, what: str, tensor: str | None = None) -> int:
        return self.scalar(4, what, tensor)

    def u64(self, what: str, tensor: str | None = None) -> int:
        return self.scalar(10, what, tensor)

    def raw_string(self, what: str) -> bytes:
        n = self.u64(f"length of {what}")
        self.need(n, what)
        b = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return b

    def strings(self, count: int, what: str) -> list[str | bytes]:
        """``count`` strings (as :meth:`value` reads one each: UTF-8 decoded, else bytes), in one tight loop:
        vocabularies hold hundreds of thousands."""
        buf, pos, end = self.buf, self.pos, self.end
        unpack = struct.Struct(self.endian + "Q").unpack_from
        out: list[str | bytes] = []
        append = out.append
        for i in range(count):
            if pos + 8 > end:
                self.pos = pos
                self.need(8, f"length of element {i} of {what}")
            (n,) = unpack(buf, pos)
            pos += 8
            if n > end - pos:
                self.pos = pos
                self.need(n, f"element {i} of {what}")
            b = buf[pos:pos + n]
            pos += n
            try:
                append(b.decode("utf-8"))
            except UnicodeDecodeError:
                append(bytes(b))
        self.pos = pos
        return out

    def array_header(self, what: str) -> tuple[int, int]:
        """An array's element type and length, checked: a known type, and a length that fits in the file."""
        sub = self.u32(f"element type of {what}")
        if sub not in _MIN_SIZE:
            raise self.fail(f"{what}: unknown array element type {sub}", "metadata value type")
        count = self.u64(f"length of {what}")
        if count * _MIN_SIZE[sub] > self.end - self.pos:
            raise self.fail(f"{what}: {count} elements cannot fit in the {self.end - self.pos} bytes left",
                            "header within file")
        return sub, count

    def skip(self, vtype: int, what: str) -> None:
        """Move past one value without decoding it (bounds and types checked as :meth:`value` checks them)."""
        if vtype == _ARRAY:
            sub, count = self.array_header(what)
            if sub in _SCALARS:
                self.pos += _SCALARS[sub][1] * count
            elif sub == _STRING:
                buf, pos, end = self.buf, self.pos, self.end
                unpack = struct.Struct(self.endian + "Q").unpack_from
                for i in range(count):
                    if pos + 8 > end:
                        break
                    pos += 8 + unpack(buf, pos)[0]
                    if pos > end:
                        break
                else:
                    self.pos = pos
                    return
                raise self.fail(f"{what}: element {i} runs past the end of the file", "header within file")
            else:  # nested arrays: rare and small
                for i in range(count):
                    self.value(sub, f"element {i} of {what}", 1)
            return
        self.value(vtype, what)

    def name(self, what: str) -> str:
        """A key or tensor name: must be UTF-8 (the ``gguf`` package decodes them strictly)."""
        b = self.raw_string(what)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8: {b[:40]!r}", "UTF-8 names") from None

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
                raise self.fail(f"{what}: arrays nested deeper than 2", "metadata value type")
            sub, count = self.array_header(what)
            if sub in _NUMPY:
                size = _SCALARS[sub][1] * count
                arr = np.frombuffer(self.buf, dtype=self.endian + _NUMPY[sub], count=count, offset=self.pos)
                self.pos += size
                return (arr.astype(bool) if sub == 7 else arr.astype(arr.dtype.newbyteorder("="))), sub
            if sub == _STRING:
                return self.strings(count, what), sub
            return [self.value(sub, f"element {i} of {what}", depth + 1)[0] for i in range(count)], sub
        raise self.fail(f"{what}: unknown value type {vtype}", "metadata value type")


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


_CACHE: "OrderedDict[tuple, GGUFFile]" = OrderedDict()
_CACHE_SIZE = 8


def parse_header(path: str | os.PathLike, *, keys: Callable[[str], bool] | None = None) -> GGUFFile:
    """:func:`parse_header_uncached`, remembered per file identity (device, inode, size, mtime): a file that
    is detected, opened and checked by several parts of one conversion is parsed once.  A changed file
    (new size or mtime) is parsed again.  A parse restricted to some ``keys`` is not remembered."""
    p = Path(path)
    if keys is not None:
        return parse_header_uncached(p, keys=keys)
    try:
        st = os.stat(p)
    except OSError:
        return parse_header_uncached(p)
    key = (str(p.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, _head_crc(p))
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    f = parse_header_uncached(p)
    _CACHE[key] = f
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return f


def _head_crc(p: Path) -> int:
    """CRC of the first MiB: a file rewritten in place within one mtime tick is still told apart."""
    try:
        with open(p, "rb") as f:
            return zlib.crc32(f.read(1 << 20))
    except OSError:
        return -1


def parse_header_uncached(path: str | os.PathLike, *, keys: Callable[[str], bool] | None = None) -> GGUFFile:
    """Parse the header, key/values and tensor infos of a GGUF file (data is not read).

    Raises :class:`TmacError` for anything malformed: unreadable file (rule ``readable file``), bad
    magic or version (``GGUF magic`` / ``GGUF version``), counts that cannot fit in the file
    (``header counts within file``), strings, arrays or fields running past the end (``header within
    file``), non-UTF-8 names, unknown value types, duplicate keys or tensor names, 0 or more than 4
    dimensions or a dimension of 0 or >= 2**40 (``tensor dimensions``), an alignment that is not a
    power of two up to 1 MiB (``alignment``), tensor offsets not a multiple of it (``aligned tensor
    data``).  Whether tensor data lies inside the file is left to the caller (its size depends on
    the type).

    ``keys``: when given, only the key/values it accepts (and ``general.alignment``) are decoded and kept; the others are skipped
    (their structure is still checked) -- a vocabulary of a few hundred thousand strings is then not
    decoded when only other keys are needed.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise TmacError(f"{size} bytes is too short for a GGUF file (a header needs 24)", file=str(p),
                                rule="header within file")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                return _parse(mm, p, size, keys)
            finally:
                _close_map(mm)
    except OSError as e:
        raise TmacError(f"cannot read: {e.strerror or e}", file=str(p), rule="readable file") from None


def _close_map(mm: mmap.mmap) -> None:
    """Unmap now if nothing still points into the map.  An exception raised inside ``_parse`` (Ctrl-C or SIGTERM
    arriving mid-array) keeps that frame's array views alive in its traceback; ``mmap.close`` then raises
    ``BufferError``, which would replace the interrupt the user sent.  The map is freed with the last view."""
    try:
        mm.close()
    except BufferError:
        pass


def _parse(buf: Any, path: Path, size: int, keys: Callable[[str], bool] | None = None) -> GGUFFile:
    if bytes(buf[:4]) != GGUF_MAGIC:
        raise TmacError(f"not a GGUF file (no GGUF magic; starts {bytes(buf[:4])!r})", file=str(path),
                        rule="GGUF magic")
    (version_le,) = struct.unpack_from("<I", buf, 4)
    big = version_le != 0 and (version_le & 0xFFFF) == 0
    c = _Cursor(buf, str(path), ">" if big else "<")
    c.pos = 4
    version = c.u32("version")
    if version not in (2, 3):
        raise TmacError(f"GGUF version {version} is not supported (2 and 3 are)", file=str(path),
                        rule="GGUF version")
    n_tensors = c.u64("tensor count")
    n_kv = c.u64("key/value count")
    if n_tensors * _MIN_TENSOR_INFO > size or n_kv * _MIN_KV > size:
        raise c.fail(f"{n_tensors} tensors and {n_kv} key/values cannot fit in {size} bytes",
                     "header counts within file")
    kv: dict[str, KV] = {}
    skipped: set[str] = set()
    for i in range(n_kv):
        key = c.name(f"key {i}")
        vtype = c.u32(f"type of {key!r}")
        if key in kv or key in skipped:
            raise c.fail(f"key {key!r} appears twice", "unique metadata keys")
        if keys is not None and key != "general.alignment" and not keys(key):  # the alignment places tensors
            if key in skipped:
                raise c.fail(f"key {key!r} appears twice", "unique metadata keys")
            skipped.add(key)
            c.skip(vtype, repr(key))
            continue
        value, sub = c.value(vtype, repr(key))
        kv[key] = KV(key, vtype, value, sub)
    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in kv:
        a = kv["general.alignment"].value
        if not isinstance(a, int) or isinstance(a, bool) or a <= 0 or a & (a - 1) or a > _MAX_ALIGNMENT:
            raise c.fail(f"general.alignment {a!r} is not a power of two up to {_MAX_ALIGNMENT}", "alignment")
        alignment = a
    tensors: list[TensorRecord] = []
    seen: set[str] = set()
    for i in range(n_tensors):
        name = c.name(f"name of tensor {i}")
        if name in seen:
            raise c.fail(f"tensor {name!r} appears twice", "unique tensor names", name)
        seen.add(name)
        n_dims = c.u32(f"n_dims of {name!r}", name)
        if not 1 <= n_dims <= MAX_DIMS:
            raise c.fail(f"tensor {name!r} has {n_dims} dimensions (1..{MAX_DIMS} allowed)", "tensor dimensions",
                         name)
        ne = tuple(c.u64(f"dimension {j} of {name!r}", name) for j in range(n_dims))
        if any(not 0 < d < _MAX_NE for d in ne):
            raise c.fail(f"tensor {name!r} has dimensions {list(ne)}", "tensor dimensions", name)
        type_id = c.u32(f"type of {name!r}", name)
        rel = c.u64(f"offset of {name!r}", name)
        if rel % alignment:
            raise c.fail(f"tensor {name!r} offset {rel} is not a multiple of the alignment {alignment}",
                         "aligned tensor data", name)
        tensors.append(TensorRecord(name, ne, type_id, rel))
    data_offset = -(-c.pos // alignment) * alignment
    for t in tensors:
        t.offset = data_offset + t.rel_offset
    return GGUFFile(path, version, kv, tensors, alignment, data_offset, size, big)

# ---------------------------------------------------------------------------------------------
# the checks on top of the header: T-MAC files (parse) and GGUF sources (scan)

def parse(path: str | os.PathLike, *, keys: Callable[[str], bool] | None = None) -> GGUFFile:
    """Parse the header, key/values and tensor infos of a GGUF file (data is not read).

    :func:`~tmac_convert.format.gguf_file.parse_header` with, on top, what reading T-MAC files needs:
    little-endian, the data section and every tensor's start inside the file, no two tensors at the
    same offset, and each tensor's ``span`` (bytes to the next tensor or the end of the file).
    Raises :class:`TmacError` for anything malformed.  ``keys``: decode only the key/values it accepts
    (see :func:`parse_header`).
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


def scan(path: str | os.PathLike) -> GGUFFile:
    """:func:`parse_header` plus what reading a GGUF *source* needs: type ids known to the ``gguf`` package
    (or T-MAC's, in a T-MAC file), row lengths a multiple of the type's block, and every tensor's data
    inside the file and not overlapping another; each record gets its ``nbytes``.  T-MAC blobs are not
    sized (their size depends on the kcfg).  Raises :class:`TmacError` naming the file, tensor and rule.
    """
    f = parse_header(path)
    tmac = f.is_tmac
    spans: list[tuple[int, int, str]] = []
    for t in f.tensors:
        nbytes = _tensor_nbytes(f, t, tmac)
        if nbytes is None:
            continue
        t.nbytes = nbytes
        end = t.offset + nbytes
        if end > f.file_size:
            raise f.fail(f"data [{t.offset}, {end}) runs past the end of the file ({f.file_size} bytes): truncated",
                         "tensor data within file", t.name)
        spans.append((t.rel_offset, t.rel_offset + nbytes, t.name))
    spans.sort()
    for (a0, a1, an), (b0, _b1, bn) in zip(spans, spans[1:]):
        if b0 < a1:
            raise f.fail(f"data overlaps tensor {an} ([{a0}, {a1}) vs [{b0}, ...))", "non-overlapping tensor data", bn)
    return f


def _tensor_nbytes(f: GGUFFile, t: TensorRecord, tmac: bool) -> int | None:
    """Bytes of ``t``'s data from its type (None for a T-MAC file's unsized types)."""
    try:
        qt = gguf.GGMLQuantizationType(t.type_id)
        block, type_size = gguf.GGML_QUANT_SIZES[qt]
    except (ValueError, KeyError):
        if tmac:
            return None
        raise f.fail(f"GGML type id {t.type_id} is unknown to the gguf package (and not a T-MAC type)",
                     "supported GGML type", t.name) from None
    if t.ne[0] % block:
        raise f.fail(f"row length {t.ne[0]} is not a multiple of the {qt.name} block size {block}",
                     "row length % block size == 0", t.name)
    return t.n_elements // block * type_size


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


def read_bytes(path: str | os.PathLike, offset: int, nbytes: int) -> np.ndarray:
    """``nbytes`` bytes at ``offset`` as a read-only uint8 memory map (bounded by the file size)."""
    size = os.path.getsize(path)
    if offset < 0 or nbytes < 0 or offset + nbytes > size:
        raise TmacError(f"bytes [{offset}, {offset + nbytes}) lie outside the file ({size} bytes)", file=str(path),
                        rule="tensor data inside the file")
    if nbytes == 0:
        return np.zeros(0, dtype=np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(nbytes,))
