"""GGUF input: llama.cpp files read with the ``gguf`` package (memory-mapped), tensor by tensor.

Exact mappings to T-MAC's value convention ``W = (q - 2**(b-1)) * s - z'`` (no re-quantisation):

* ``Q4_0`` (block 32: fp16 ``d``, 16 bytes of nibbles, ``W = (q - 8) * d``): 4-bit codes ``q``,
  scales ``d``, group 32, no zero point.  Bit-exact (``d * (q - 8)`` is exact in float32).
* ``Q4_1`` (block 32: fp16 ``d``, fp16 ``m``, nibbles, ``W = d * q + m``): 4-bit codes ``q``,
  scales ``d`` and zero offsets ``z' = -(m + 8 d)``, group 32.  ``z'`` is computed in float64 and
  stored in float32: it is exact whenever ``m`` and ``8d`` are within 2**13 of each other in
  magnitude (always so for blocks gguf/llama.cpp quantise), otherwise rounded to nearest (half an
  ulp of ``|m + 8d|``).  gguf evaluates ``d*q + m`` in float32 with two roundings, so the two
  dequantisations agree within ``2 * eps32 * (|d q| + |m|)``.
* ``TQ2_0`` / ``TQ1_0`` (block 256, fp16 ``d``, ternary ``t`` in {0, 1, 2}, ``W = (t - 1) * d``):
  2-bit codes ``t + 1`` in {1, 2, 3} (implicit zero 2), scales ``d``, group 256, no zero point.
  Bit-exact.

Everything else that ``gguf.quants.dequantize`` understands (F32, F16, BF16, Q8_0, Q5_x, the
K-quants, IQ types...) is dequantised to float32; attention/MLP projections are then re-quantised
by round-to-nearest (:func:`~tmac_convert.readers.quantize.quantize_rtn`) at the requested
``bits`` / ``group_size`` / ``zero_point`` (defaults as the HF float reader: 4-bit, group 128,
asymmetric) and the model's ``notes`` say so, with each tensor's error.  Other tensors
(embeddings, norms, output) pass through as float (F16/F32 as stored, everything else float32).

GGUF rows are already in llama.cpp order: no q/k permutation is applied.

Files written by tmac-convert itself (T-MAC ``I1..I4`` types, ``tmac.*`` metadata) are not
claimed here (:func:`is_tmac_gguf`): the T-MAC reader takes them.

Robustness: before ``GGUFReader`` sees a file, :func:`scan_gguf_header` walks the header with
bounds checks (counts, string and array lengths, dimensions, types, alignment, every tensor's data
inside the file and not overlapping another), so truncated or lying files fail with a
:class:`TmacError` naming the file, tensor and rule instead of an arbitrary exception or a hang.
"""

from __future__ import annotations

import mmap
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import gguf
import numpy as np

from ..errors import TmacError
from ..tensor import SUPPORTED_BITS, QuantTensor
from .base import FloatTensor, Reader, SourceModel, Tensor, TensorInfo
from .hf_float import DEFAULTS as RTN_DEFAULTS
from .naming import is_projection
from .quantize import quantize_rtn

GGUF_MAGIC = b"GGUF"
TMAC_KEY_PREFIX = "tmac."
# GGML type ids T-MAC forks give I1..I4 that the gguf package does not know: 36-38 in the
# rebased fork (I1=36, I2=37, I3=38; I4=39 collides with upstream MXFP4) and 31-33 in the
# Aug-2024 fork (I1=31, I3=32, I4=33; I2=30 collides with BF16).  See tmac-format.md section 3.1.
# Ids 30 and 39 are told apart only by the ``tmac.`` metadata our writer adds.
TMAC_TYPE_IDS = frozenset({31, 32, 33, 36, 37, 38})

_Q = gguf.GGMLQuantizationType
_EXACT_TYPES = frozenset({_Q.Q4_0, _Q.Q4_1, _Q.TQ1_0, _Q.TQ2_0})
_PLAIN_FLOAT_TYPES = frozenset({_Q.F32, _Q.F16, _Q.F64})
_INT_TYPES = frozenset({_Q.I8, _Q.I16, _Q.I32, _Q.I64})

# GGUF metadata value types: fixed sizes in bytes (STRING = 8 and ARRAY = 9 are variable).
_VT = gguf.GGUFValueType
_VALUE_SIZES = {_VT.UINT8: 1, _VT.INT8: 1, _VT.UINT16: 2, _VT.INT16: 2, _VT.UINT32: 4, _VT.INT32: 4,
                _VT.FLOAT32: 4, _VT.BOOL: 1, _VT.UINT64: 8, _VT.INT64: 8, _VT.FLOAT64: 8}
_MAX_DIMS = 4  # GGML_MAX_DIMS


# ----------------------------------------------------------------------------------------------
# Header scan (pure python, bounds-checked)
# ----------------------------------------------------------------------------------------------

@dataclass
class GGUFTensorRecord:
    """One tensor info of a GGUF header.  ``dims`` in GGUF order (``ne``: ``[K, M0, ...]``)."""

    name: str
    type_id: int
    dims: tuple[int, ...]
    offset: int  # relative to the data section
    nbytes: int | None = None  # None for types this scan does not size (T-MAC / unknown)

    @property
    def np_shape(self) -> tuple[int, ...]:
        """numpy (row-major) shape: ``dims`` reversed, e.g. ``(M0, K)``."""
        return tuple(reversed(self.dims))


@dataclass
class GGUFHeader:
    """What :func:`scan_gguf_header` learnt about a file without trusting it."""

    path: Path
    version: int
    big_endian: bool
    keys: list[str]
    tensors: list[GGUFTensorRecord]
    alignment: int
    data_start: int
    file_size: int
    scalars: dict[str, Any] = field(default_factory=dict)  # scalar and string values only

    @property
    def is_tmac(self) -> bool:
        """True for a file in T-MAC's format (``tmac.*`` keys or T-MAC-only type ids)."""
        return (any(k.startswith(TMAC_KEY_PREFIX) for k in self.keys)
                or any(t.type_id in TMAC_TYPE_IDS for t in self.tensors))


class _Cursor:
    """Bounds-checked little/big-endian reads from a buffer; every failure is a TmacError."""

    def __init__(self, buf: Any, size: int, file: str, endian: str) -> None:
        self.buf, self.size, self.file, self.endian, self.pos = buf, size, file, endian, 0

    def fail(self, message: str, rule: str, tensor: str | None = None) -> TmacError:
        return TmacError(message, file=self.file, tensor=tensor, rule=rule)

    def need(self, n: int, what: str, tensor: str | None = None) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"truncated header: {what} needs {n} bytes at offset {self.pos}, file has "
                            f"{self.size}", "header within file", tensor)

    def unpack(self, fmt: str, what: str, tensor: str | None = None) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what, tensor)
        vals = struct.unpack_from(self.endian + fmt, self.buf, self.pos)
        self.pos += n
        return vals[0] if len(vals) == 1 else vals

    def string(self, what: str, tensor: str | None = None) -> bytes:
        n = self.unpack("Q", f"length of {what}", tensor)
        self.need(n, what, tensor)
        s = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return s

    def name(self, what: str) -> str:
        """A key or tensor name: must be UTF-8 (GGUFReader decodes them strictly)."""
        at = self.pos
        raw = self.string(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} at offset {at} is not UTF-8: {raw[:40]!r}", "UTF-8 names") from None

    def skip_value(self, vtype: int, key: str, depth: int = 0) -> Any:
        """Skip one metadata value; returns it when it is a scalar or string (else None)."""
        if vtype == _VT.STRING:
            raw = self.string(f"value of {key!r}")
            return raw.decode("utf-8", "replace")
        if vtype == _VT.ARRAY:
            if depth >= 3:
                raise self.fail(f"metadata {key!r}: arrays nested too deep", "metadata value type")
            itype = self.unpack("I", f"array type of {key!r}")
            count = self.unpack("Q", f"array length of {key!r}")
            if itype in _VALUE_SIZES:
                self.need(count * _VALUE_SIZES[itype], f"array {key!r} of {count} items")
                self.pos += count * _VALUE_SIZES[itype]
                return None
            if itype not in (_VT.STRING, _VT.ARRAY):
                raise self.fail(f"metadata {key!r}: unknown array item type {itype}", "metadata value type")
            # every string/array item takes at least 8 bytes: refuse absurd counts before looping
            self.need(count * 8, f"array {key!r} of {count} items")
            for _ in range(count):
                self.skip_value(itype, key, depth + 1)
            return None
        size = _VALUE_SIZES.get(vtype)  # type: ignore[call-overload]
        if size is None:
            raise self.fail(f"metadata {key!r}: unknown value type {vtype}", "metadata value type")
        fmt = {_VT.UINT8: "B", _VT.INT8: "b", _VT.UINT16: "H", _VT.INT16: "h", _VT.UINT32: "I",
               _VT.INT32: "i", _VT.FLOAT32: "f", _VT.BOOL: "?", _VT.UINT64: "Q", _VT.INT64: "q",
               _VT.FLOAT64: "d"}[_VT(vtype)]
        return self.unpack(fmt, f"value of {key!r}")


def _type_sizes(type_id: int) -> tuple[int, int] | None:
    try:
        return gguf.GGML_QUANT_SIZES[_Q(type_id)]
    except (ValueError, KeyError):
        return None


def scan_gguf_header(path: str | Path) -> GGUFHeader:
    """Walk a GGUF header with bounds checks; raise :class:`TmacError` for anything malformed.

    Checks: magic, version (2 or 3), key/tensor counts against the file size, every string and
    array length, metadata value types, ``general.alignment`` (power of two), tensor dimensions
    (1..4, row length a multiple of the type's block), type ids (known to gguf, or T-MAC's), data
    offsets (aligned, inside the file, no two tensors overlapping) and duplicate names.  T-MAC
    files are scanned but their tensor sizes are not checked (their size depends on kcfg).
    """
    path = Path(path)
    file = str(path)
    try:
        size = path.stat().st_size
        fh = open(path, "rb")
    except OSError as e:
        raise TmacError(f"cannot open: {e.strerror or e}", file=file, rule="readable file") from None
    with fh:
        if size < 24:
            raise TmacError(f"only {size} bytes; a GGUF header needs at least 24", file=file,
                            rule="header within file")
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            return _scan(buf, size, path)
        finally:
            buf.close()


def _scan(buf: Any, size: int, path: Path) -> GGUFHeader:
    file = str(path)
    if bytes(buf[:4]) != GGUF_MAGIC:
        raise TmacError(f"not a GGUF file (magic {bytes(buf[:4])!r})", file=file, rule="GGUF magic")
    (version_le,) = struct.unpack_from("<I", buf, 4)
    big = (version_le & 0xFFFF) == 0
    cur = _Cursor(buf, size, file, ">" if big else "<")
    cur.pos = 4
    version = cur.unpack("I", "version")
    if version not in (2, 3):
        raise cur.fail(f"GGUF version {version} is not supported (2 or 3)", "GGUF version")
    n_tensors = cur.unpack("Q", "tensor count")
    n_kv = cur.unpack("Q", "metadata count")
    # a key/value pair takes at least 8 + 1 + 4 + 1 bytes and a tensor info at least 8 + 1 + 4 + 8 + 4 + 8
    if n_kv * 14 > size or n_tensors * 33 > size:
        raise cur.fail(f"header claims {n_kv} metadata entries and {n_tensors} tensors; the file has only "
                       f"{size} bytes", "header counts within file")
    keys: list[str] = []
    seen: set[str] = set()
    scalars: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.name("metadata key")
        vtype = cur.unpack("I", f"type of {key!r}")
        if key in seen:
            raise cur.fail(f"metadata key {key!r} appears twice", "unique metadata keys")
        value = cur.skip_value(vtype, key)
        keys.append(key)
        seen.add(key)
        if value is not None:
            scalars[key] = value
    records: list[GGUFTensorRecord] = []
    for _ in range(n_tensors):
        name = cur.name("tensor name")
        n_dims = cur.unpack("I", "dimension count", name)
        if not 1 <= n_dims <= _MAX_DIMS:
            raise cur.fail(f"{n_dims} dimensions (1..{_MAX_DIMS} allowed)", "tensor dimensions", name)
        cur.need(8 * n_dims, "dimensions", name)
        dims = tuple(int(d) for d in struct.unpack_from(f"{cur.endian}{n_dims}Q", buf, cur.pos))
        cur.pos += 8 * n_dims
        type_id = cur.unpack("I", "tensor type", name)
        offset = cur.unpack("Q", "tensor data offset", name)
        records.append(GGUFTensorRecord(name, int(type_id), dims, int(offset)))
    alignment = scalars.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 \
            or alignment & (alignment - 1):
        raise cur.fail(f"general.alignment {alignment!r} is not a power of two", "alignment")
    data_start = -(-cur.pos // alignment) * alignment
    header = GGUFHeader(path, int(version), big, keys, records, alignment, data_start, size, scalars)
    _check_tensors(header)
    return header


def _check_tensors(h: GGUFHeader) -> None:
    file = str(h.path)
    seen: set[str] = set()
    tmac = h.is_tmac
    spans: list[tuple[int, int, str]] = []
    for t in h.tensors:
        if t.name in seen:
            raise TmacError("tensor name appears twice", file=file, tensor=t.name, rule="unique tensor names")
        seen.add(t.name)
        if t.offset % h.alignment:
            raise TmacError(f"data offset {t.offset} is not a multiple of the alignment {h.alignment}",
                            file=file, tensor=t.name, rule="aligned tensor data")
        sizes = _type_sizes(t.type_id)
        if sizes is None:
            if tmac:
                continue  # T-MAC blobs: the T-MAC reader sizes them from kcfg
            raise TmacError(f"GGML type id {t.type_id} is unknown to the gguf package (and not a T-MAC type)",
                            file=file, tensor=t.name, rule="supported GGML type")
        block, type_size = sizes
        if t.dims[0] % block:
            raise TmacError(f"row length {t.dims[0]} is not a multiple of the {_Q(t.type_id).name} block size "
                            f"{block}", file=file, tensor=t.name, rule="row length % block size == 0")
        n = 1
        for d in t.dims:
            n *= d
        t.nbytes = n // block * type_size
        end = h.data_start + t.offset + t.nbytes
        if end > h.file_size:
            raise TmacError(f"data [{h.data_start + t.offset}, {end}) runs past the end of the file "
                            f"({h.file_size} bytes): truncated", file=file, tensor=t.name,
                            rule="tensor data within file")
        spans.append((t.offset, t.offset + t.nbytes, t.name))
    spans.sort()
    for (a0, a1, an), (b0, _b1, bn) in zip(spans, spans[1:]):
        if b0 < a1:
            raise TmacError(f"data overlaps tensor {an} ([{a0}, {a1}) vs [{b0}, ...))", file=file, tensor=bn,
                            rule="non-overlapping tensor data")


def is_tmac_gguf(path: str | Path) -> bool:
    """True for a GGUF file in T-MAC's own format (written by tmac-convert or a T-MAC fork).

    Malformed files answer False (the GGUF reader then reports what is wrong with them).
    """
    try:
        return scan_gguf_header(path).is_tmac
    except TmacError:
        return False


# ----------------------------------------------------------------------------------------------
# Block decoders (vectorised; raw block bytes [rows, n_blocks * type_size] -> codes and scales)
# ----------------------------------------------------------------------------------------------

def _blocks(raw: np.ndarray, type_size: int) -> np.ndarray:
    rows = raw.shape[0]
    return np.ascontiguousarray(raw).reshape(rows, -1, type_size)


def _f16(b: np.ndarray) -> np.ndarray:
    """Two little-endian bytes (last axis) -> float32 (exact)."""
    return np.ascontiguousarray(b).view("<f2")[..., 0].astype(np.float32)


def _nibbles32(qs: np.ndarray) -> np.ndarray:
    """``[..., 16]`` bytes -> ``[..., 32]`` nibbles: element e < 16 is the low nibble of byte e,
    element e >= 16 the high nibble of byte e - 16 (ggml's Q4_0/Q4_1 order)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def decode_q4_0(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0 rows -> ``(codes uint8 [M0, K], d float32 [M0, K/32])`` with ``W = (codes - 8) * d``.

    Block (18 bytes): fp16 ``d``, then 16 bytes ``qs``.
    """
    b = _blocks(raw, 18)
    codes = _nibbles32(b[..., 2:])
    return codes.reshape(b.shape[0], -1), _f16(b[..., 0:2])


def decode_q4_1(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1 rows -> ``(codes uint8 [M0, K], d float32 [M0, G], m float32 [M0, G])``, ``W = d*q + m``.

    Block (20 bytes): fp16 ``d``, fp16 ``m``, then 16 bytes ``qs``.
    """
    b = _blocks(raw, 20)
    codes = _nibbles32(b[..., 4:])
    return codes.reshape(b.shape[0], -1), _f16(b[..., 0:2]), _f16(b[..., 2:4])


def decode_tq2_0(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TQ2_0 rows -> ``(t uint8 [M0, K] in 0..3, d float32 [M0, K/256])``, ``W = (t - 1) * d``.

    Block (66 bytes): 64 bytes ``qs`` then fp16 ``d``.  Element ``128 j + 32 l + m`` is bits
    ``2l..2l+1`` of byte ``32 j + m`` (j < 2, l < 4, m < 32).  A field of 3 is not ternary; the
    caller rejects it.
    """
    b = _blocks(raw, 66)
    qs = b[..., :64].reshape(b.shape[0], b.shape[1], 2, 1, 32)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 1, 4, 1)
    t = (qs >> shifts) & 0x03
    return t.reshape(b.shape[0], -1), _f16(b[..., 64:66])


_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint16)


def _trits(b: np.ndarray, n: int) -> np.ndarray:
    """Base-3 bytes ``[..., B]`` -> trits ``[..., n, B]`` (most significant first).

    A byte stores ``v`` = five (or four) trits as ``ceil(v * 256 / 243)``; multiplying by ``3**i``
    modulo 256 moves trit ``i`` to the top, where ``(x * 3) >> 8`` reads it.
    """
    x = (b[..., None, :].astype(np.uint16) * _POW3[:n, None]) & 0xFF
    return ((x * 3) >> 8).astype(np.uint8)


def decode_tq1_0(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TQ1_0 rows -> ``(t uint8 [M0, K] in 0..2, d float32 [M0, K/256])``, ``W = (t - 1) * d``.

    Block (54 bytes): 48 bytes ``qs`` (5 trits each), 4 bytes ``qh`` (4 trits each), fp16 ``d``.
    Elements 0..159: trit ``i`` of ``qs[m]`` at ``32 i + m`` (m < 32); 160..239: trit ``i`` of
    ``qs[32 + m]`` at ``160 + 16 i + m`` (m < 16); 240..255: trit ``i`` of ``qh[m]`` at
    ``240 + 4 i + m`` (m < 4).
    """
    b = _blocks(raw, 54)
    r, nb = b.shape[:2]
    parts = [_trits(b[..., 0:32], 5), _trits(b[..., 32:48], 5), _trits(b[..., 48:52], 4)]
    t = np.concatenate([p.reshape(r, nb, -1) for p in parts], axis=-1)
    return t.reshape(r, -1), _f16(b[..., 52:54])


# ----------------------------------------------------------------------------------------------
# The reader
# ----------------------------------------------------------------------------------------------

_DEQUANT_OK: dict[int, bool] = {}


def _can_dequantize(qtype: gguf.GGMLQuantizationType) -> bool:
    """Whether ``gguf.quants.dequantize`` implements ``qtype`` (probed once on a zero block)."""
    if qtype not in _DEQUANT_OK:
        _block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        try:
            gguf.quants.dequantize(np.zeros((1, type_size), dtype=np.uint8), qtype)
            _DEQUANT_OK[qtype] = True
        except Exception:  # noqa: BLE001 - a probe: NotImplementedError or anything else means "cannot"
            _DEQUANT_OK[qtype] = False
    return _DEQUANT_OK[qtype]


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _field_value(f: Any) -> Any:
    """A GGUFReader field as a plain python value (int/float/bool/str/bytes or a list of them)."""
    try:
        value = f.contents()
    except UnicodeDecodeError:
        # not UTF-8: give the raw bytes instead of failing
        if f.types[0] == _VT.STRING:
            return bytes(f.parts[-1])
        return [bytes(f.parts[i]) for i in f.data]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return _plain(value)


@dataclass
class _Plan:
    """How one tensor is read: ``exact`` (Q4_0/Q4_1/TQ*), ``rtn`` (re-quantised) or ``float``."""

    record: GGUFTensorRecord
    qtype: gguf.GGMLQuantizationType
    mode: str
    index: int  # position in GGUFReader.tensors


class GGUFSourceReader(Reader, name="gguf", priority=40):
    """GGUF files (not T-MAC's own).

    Options (only for projections stored in a type that needs re-quantising): ``bits``,
    ``group_size`` (-1 = per row) and ``zero_point``; unset ones take the float reader's defaults
    (``hf_float.DEFAULTS``: 4-bit, group 128, asymmetric); ``quantize=False`` passes such projections
    through as float instead (for stock llama.cpp outputs).
    """

    @classmethod
    def detect(cls, path: Path) -> bool:
        path = Path(path)
        if not path.is_file():
            return False
        try:
            with open(path, "rb") as fh:
                if fh.read(4) != GGUF_MAGIC:
                    return False
        except OSError:
            return False
        return not is_tmac_gguf(path)

    # -- options ---------------------------------------------------------------------------------

    def _rtn_params(self, file: str | None = None) -> tuple[int, int, bool]:
        """``(bits, group_size, zero_point)`` for re-quantised projections: options, else the float
        reader's defaults (:data:`hf_float.DEFAULTS`), so GGUF and HF float sources behave alike."""
        o = self.options
        bits = o.get("bits")
        gs = o.get("group_size")
        zp = o.get("zero_point")
        bits = RTN_DEFAULTS["bits"] if bits is None else bits
        gs = RTN_DEFAULTS["group_size"] if gs is None else gs
        zp = RTN_DEFAULTS["zero_point"] if zp is None else zp
        try:
            bits, gs = int(bits), int(gs)
        except (TypeError, ValueError):
            raise TmacError(f"bits {bits!r} and group_size {gs!r} must be integers", file=file,
                            rule="quantisation options") from None
        if bits not in SUPPORTED_BITS:
            raise TmacError(f"cannot quantise to {bits} bits: T-MAC kernels take 1, 2, 3 or 4 bits", file=file,
                            rule="bits in 1..4")
        if gs == 0 or gs < -1:
            raise TmacError(f"group_size {gs} is invalid (use -1 for per channel)", file=file, rule="group size")
        return bits, gs, bool(zp)

    # -- open ------------------------------------------------------------------------------------

    def open(self, path: Path) -> SourceModel:
        path = Path(path)
        file = str(path)
        header = scan_gguf_header(path)
        if header.is_tmac:
            raise TmacError("this GGUF file is in T-MAC's own format (I1..I4 tensors or tmac.* metadata); "
                            "it is read by the T-MAC reader, not the plain GGUF reader", file=file,
                            rule="plain GGUF input")
        if header.big_endian:
            raise TmacError("big-endian GGUF files are not supported", file=file, rule="little-endian GGUF")
        try:
            reader = gguf.GGUFReader(path, "r")
        except Exception as e:  # noqa: BLE001 - GGUFReader raises anything on a bad file
            raise TmacError(f"the gguf package cannot parse the file: {type(e).__name__}: {e}", file=file,
                            rule="valid GGUF") from None
        by_name = {t.name: i for i, t in enumerate(reader.tensors)}
        metadata: dict[str, Any] = {}
        value_types: dict[str, tuple[int, ...]] = {}
        for key, f in reader.fields.items():
            if key.startswith("GGUF."):
                continue
            metadata[key] = _field_value(f)
            value_types[key] = tuple(int(t) for t in f.types)
        arch = metadata.get("general.architecture")
        if not isinstance(arch, str) or not arch:
            raise TmacError("metadata general.architecture is missing", file=file, rule="general.architecture")

        plans: list[_Plan] = []
        counts: Counter[str] = Counter()
        exact_types: Counter[str] = Counter()
        rtn_types: Counter[str] = Counter()
        float_other: Counter[str] = Counter()
        for rec in header.tensors:
            qtype = _Q(rec.type_id)
            counts[qtype.name] += 1
            if rec.name not in by_name:  # cannot happen after the scan; belt and braces
                raise TmacError("tensor missing from the gguf package's view", file=file, tensor=rec.name,
                                rule="valid GGUF")
            if qtype in _INT_TYPES or (qtype not in _PLAIN_FLOAT_TYPES and not _can_dequantize(qtype)):
                raise TmacError(f"tensor type {qtype.name} cannot be dequantised by the gguf package",
                                file=file, tensor=rec.name, rule="supported GGML type")
            proj = is_projection(rec.name) and len(rec.dims) == 2
            if proj and qtype in _EXACT_TYPES:
                mode = "exact"
                exact_types[qtype.name] += 1
            elif proj and self.options.get("quantize", True):
                mode = "rtn"
                rtn_types[qtype.name] += 1
            else:
                mode = "float"
                if qtype not in _PLAIN_FLOAT_TYPES:
                    float_other[qtype.name] += 1
            plans.append(_Plan(rec, qtype, mode, by_name[rec.name]))

        bits, gs, zp = self._rtn_params(file) if rtn_types else (0, 0, False)
        for p in plans:
            if p.mode == "rtn" and gs != -1 and p.record.dims[0] % gs:
                raise TmacError(f"group size {gs} does not divide K = {p.record.dims[0]}", file=file,
                                tensor=p.record.name, rule="K % group_size == 0")

        notes: list[str] = []
        if exact_types:
            notes.append("GGUF " + ", ".join(f"{n} ({c})" for n, c in sorted(exact_types.items()))
                         + " projections map exactly to T-MAC codes (Q4_0: 4-bit g32; Q4_1: 4-bit g32 with "
                         "zero offsets; TQ1_0/TQ2_0: ternary 2-bit g256), no re-quantisation")
        if rtn_types:
            notes.append("GGUF " + ", ".join(f"{n} ({c})" for n, c in sorted(rtn_types.items()))
                         + f" projections are dequantised with gguf.quants.dequantize and re-quantised by "
                         f"round-to-nearest to {bits}-bit, group {gs}, "
                         f"{'asymmetric' if zp else 'symmetric'} (per-tensor error in each tensor's meta)")
        given = [k for k in ("bits", "group_size", "zero_point") if self.options.get(k) is not None]
        if given and not rtn_types:
            notes.append(f"option(s) {', '.join(given)} not used: every projection of this GGUF maps exactly "
                         "to T-MAC codes without re-quantisation")
        if float_other:
            notes.append("GGUF " + ", ".join(f"{n} ({c})" for n, c in sorted(float_other.items()))
                         + " non-projection tensors pass through dequantised to float32")
        quant: dict[str, Any] = {
            "gguf_file_type": metadata.get("general.file_type"),
            "tensor_types": dict(counts),
        }
        if rtn_types:
            quant.update({"bits": bits, "group_size": gs, "zero_point": zp, "method": "rtn"})
        model = SourceModel(path=path, format="gguf", architecture=arch, gguf_arch=arch, config={},
                            quantization=quant, tokenizer_files={}, gguf_metadata=metadata, notes=notes,
                            _reader=self)
        self._state = {"header": header, "reader": reader, "plans": plans, "value_types": value_types,
                       "rtn": (bits, gs, zp)}
        return model

    def metadata_types(self, model: SourceModel) -> dict[str, tuple[int, ...]]:
        """GGUF value types of each metadata key (``(type,)`` or ``(ARRAY, item type)``), for writers
        that re-emit ``model.gguf_metadata`` with the source's exact types."""
        return dict(self._state["value_types"])

    # -- tensors ---------------------------------------------------------------------------------

    def tensor_infos(self, model: SourceModel) -> list[TensorInfo]:
        bits, gs, zp = self._state["rtn"]
        infos = []
        for p in self._state["plans"]:
            rec = p.record
            shape = rec.np_shape
            if p.mode == "exact":
                infos.append(TensorInfo(rec.name, shape, bits=4 if p.qtype in (_Q.Q4_0, _Q.Q4_1) else 2,
                                        group_size=32 if p.qtype in (_Q.Q4_0, _Q.Q4_1) else 256,
                                        zero_point=p.qtype == _Q.Q4_1, nbytes=rec.nbytes or 0))
            elif p.mode == "rtn":
                infos.append(TensorInfo(rec.name, shape, bits=bits, group_size=shape[1] if gs in (-1, 0) else gs,
                                        zero_point=zp, nbytes=rec.nbytes or 0))
            else:
                infos.append(TensorInfo(rec.name, shape, nbytes=rec.nbytes or 0))
        return infos

    def iter_tensors(self, model: SourceModel) -> Iterator[Tensor]:
        reader: gguf.GGUFReader = self._state["reader"]
        file = str(model.path)
        for p in self._state["plans"]:
            rt = reader.tensors[p.index]
            try:
                tensor = self._load(p, rt.data, file)
            except TmacError as e:
                raise _with_file(e, file) from None
            if isinstance(tensor, QuantTensor) and "quant_stats" in tensor.meta:
                stats = tensor.meta["quant_stats"]
                model.notes.append(f"{tensor.name}: {p.qtype.name} re-quantised RTN {stats['bits']}-bit, nmse "
                                   f"{stats['nmse']:.3e}, max abs error {stats['max_abs_err']:.3e}")
            yield tensor

    def _load(self, p: _Plan, data: np.ndarray, file: str) -> Tensor:
        name = p.record.name
        if p.mode == "exact":
            return _exact(name, p.qtype, data, file)
        if p.mode == "float":
            return FloatTensor(name, _as_float(p.qtype, data), quantizable=is_projection(name))
        bits, gs, zp = self._state["rtn"]
        w = _as_float(p.qtype, data)
        qt, stats = quantize_rtn(name, w, bits=bits, group_size=gs, zero_point=zp)
        qt.meta.update({"source_type": p.qtype.name, "quant_stats": stats})
        return qt


def _with_file(e: TmacError, file: str) -> TmacError:
    """``e`` naming ``file`` too (errors raised by QuantTensor/quantize_rtn know only the tensor)."""
    if e.file:
        return e
    message = str(e)
    prefix = f"tensor {e.tensor}: " if e.tensor else ""
    if prefix and message.startswith(prefix):
        message = message[len(prefix):]
    return type(e)(message, tensor=e.tensor, file=file, rule=e.rule)


def _as_float(qtype: gguf.GGMLQuantizationType, data: np.ndarray) -> np.ndarray:
    """Tensor data as float in numpy shape: F32/F16 as stored (memory-mapped), others float32."""
    if qtype in (_Q.F32, _Q.F16):
        return data
    if qtype == _Q.F64:
        return data.astype(np.float32)
    return np.asarray(gguf.quants.dequantize(data, qtype), dtype=np.float32)


def _exact(name: str, qtype: gguf.GGMLQuantizationType, raw: np.ndarray, file: str) -> QuantTensor:
    """Q4_0 / Q4_1 / TQ1_0 / TQ2_0 rows ``[M0, bytes]`` -> a QuantTensor without re-quantising."""
    if qtype == _Q.Q4_0:
        codes, d = decode_q4_0(raw)
        return QuantTensor(name, codes, d, None, bits=4, group_size=32, meta={"source_type": qtype.name})
    if qtype == _Q.Q4_1:
        codes, d, m = decode_q4_1(raw)
        zeros = (-(m.astype(np.float64) + 8.0 * d.astype(np.float64))).astype(np.float32)
        return QuantTensor(name, codes, d, zeros, bits=4, group_size=32, meta={"source_type": qtype.name})
    t, d = decode_tq2_0(raw) if qtype == _Q.TQ2_0 else decode_tq1_0(raw)
    if t.size and int(t.max()) > 2:
        row, col = (int(v) for v in np.argwhere(t > 2)[0])
        raise TmacError(f"TQ2_0 field value 3 at row {row}, column {col} is not a ternary code (0, 1 or 2)",
                        file=file, tensor=name, rule="ternary codes in range")
    return QuantTensor(name, t + np.uint8(1), d, None, bits=2, group_size=256, meta={"source_type": qtype.name})
