"""GPTQ integer packing, both ways, by the packing rule itself.

GPTQ (AutoGPTQ, GPTQModel, EfficientQAT) packs ``b``-bit integers into words of ``W`` bits
(``W`` = 32 for ``int32``; GPTQModel's ``pack_dtype`` also allows int8/int16/int64) along one axis
as **one little-endian bit stream**: value ``i`` of a run occupies stream bits ``[i*b, (i+1)*b)``,
and stream bit ``t`` is bit ``t % W`` of word ``t // W``.  For ``b`` dividing ``W`` this is the
familiar ``(word >> (b*j)) & mask``; for 3 bits a field can straddle two words (32 values in three
int32 words).  The stream repeats every ``lcm(b, W)`` bits: ``wp`` words hold ``vp`` values.

* ``qweight``: ``[K*b/W, M0]``, values along K (axis 0).
* ``qzeros``: ``[K/gs, M0*b/W]``, values along M0 (axis 1).

Everything is vectorised: since the stream and the words are both little-endian, the stream is the
words' bytes in memory order, so fields are cut from bytes (or 3-byte runs for 3 bits) and bytes are
viewed as words; the only Python loops run over the (at most 8) field positions of a byte run.
"""

from __future__ import annotations

import os
import sys
from math import lcm

import numpy as np

from ..errors import TmacError
from ..buffer_pool import BufferPool
from ..format.rules import bits_supported

try:
    if os.environ.get("TMAC_CONVERT_NO_NATIVE"):
        raise ImportError("disabled by TMAC_CONVERT_NO_NATIVE")
    from .. import _gptq_native as _native
except ImportError:  # pragma: no cover - depends on the build
    _native = None

PACK_DTYPES: dict[str, type] = {"int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64}
_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def word_dtype(pack_dtype: str | np.dtype | type) -> np.dtype:
    """The signed word dtype named by GPTQModel's ``pack_dtype`` (``"int32"``, ``torch.int32``...)."""
    if isinstance(pack_dtype, str):
        key = pack_dtype.rsplit(".", 1)[-1]
        if key not in PACK_DTYPES:
            raise TmacError(f"pack_dtype {pack_dtype!r} is not one of {sorted(PACK_DTYPES)}", rule="pack_dtype")
        return np.dtype(PACK_DTYPES[key])
    dt = np.dtype(pack_dtype)
    if dt.kind not in "iu" or dt.itemsize not in _UNSIGNED:
        raise TmacError(f"pack dtype {dt} is not an 8/16/32/64-bit integer", rule="pack_dtype")
    return dt


def period(bits: int, word_bits: int) -> tuple[int, int]:
    """``(words, values)`` in one repeat of the bit stream: ``lcm(bits, word_bits)`` bits."""
    p = lcm(bits, word_bits)
    return p // word_bits, p // bits


def _check_bits(bits: int) -> None:
    if not bits_supported(bits):
        raise TmacError(f"GPTQ bits must be 1, 2, 3 or 4, got {bits}", rule="bits in 1..4")


def _byte_group(bits: int) -> tuple[int, int]:
    """``(bytes, values)`` in one repeat of the stream at byte granularity: ``lcm(bits, 8)`` bits."""
    p = lcm(bits, 8)
    return p // 8, p // bits


def _unpack_last(words: np.ndarray, bits: int) -> np.ndarray:
    """Fields of a C-contiguous word array along its last axis -> uint8 ``[..., n*W/bits]``.

    Because both the stream and the words are little-endian, the stream is simply the words'
    bytes in memory order; fields are cut from bytes (1, 2, 4 bits) or from 3-byte runs (3 bits).
    """
    byts = np.ascontiguousarray(words).astype(words.dtype.newbyteorder("<"), copy=False).view(np.uint8)
    lead = byts.shape[:-1]
    nb, nv = _byte_group(bits)
    mask = (1 << bits) - 1
    if nb == 1:
        out = np.empty((*lead, byts.shape[-1], nv), dtype=np.uint8)
        for i in range(nv):  # field positions within a byte
            np.bitwise_and(np.right_shift(byts, i * bits), mask, out=out[..., i])
        return out.reshape(*lead, -1)
    runs = byts.reshape(*lead, -1, nb).astype(np.uint32)
    run = runs[..., 0] | (runs[..., 1] << 8) | (runs[..., 2] << 16)  # 24-bit run of eight 3-bit fields
    out = np.empty((*lead, run.shape[-1], nv), dtype=np.uint8)
    for i in range(nv):
        out[..., i] = (run >> (i * bits)) & mask
    return out.reshape(*lead, -1)


def _pack_last(values: np.ndarray, bits: int, wdt: np.dtype) -> np.ndarray:
    """Inverse of :func:`_unpack_last`: uint8 fields along the last axis -> words of ``wdt``."""
    v = np.ascontiguousarray(values, dtype=np.uint8)
    lead = v.shape[:-1]
    nb, nv = _byte_group(bits)
    g = v.reshape(*lead, -1, nv)
    if nb == 1:
        byts = g[..., 0].copy()
        for i in range(1, nv):
            byts |= g[..., i] << (i * bits)
    else:
        run = g[..., 0].astype(np.uint32)
        for i in range(1, nv):
            run |= g[..., i].astype(np.uint32) << (i * bits)
        byts = np.empty((*lead, run.shape[-1], 3), dtype=np.uint8)
        for i in range(3):
            byts[..., i] = run >> (8 * i)
    byts = byts.reshape(*lead, -1)
    return byts.view(wdt.newbyteorder("<")).astype(wdt, copy=False)


def _check_words(words: np.ndarray) -> None:
    if words.dtype.kind not in "iu" or words.dtype.itemsize not in _UNSIGNED:
        raise TmacError(f"packed words must be 8/16/32/64-bit integers, got {words.dtype}", rule="pack_dtype")


def unpack_fields(words: np.ndarray, bits: int, axis: int = 0) -> np.ndarray:
    """Unpack ``bits``-wide fields from integer ``words`` along ``axis``.

    Args:
        words: int8/16/32/64 (or unsigned) array; the word width is its itemsize.
        bits: field width, 1..4.
        axis: the packed axis; its length must be a whole number of stream periods.

    Returns:
        uint8 array, same shape except ``axis`` grows to ``len * W / bits``; values in ``[0, 2**bits)``.
    """
    _check_bits(bits)
    words = np.asarray(words)
    _check_words(words)
    wb = words.dtype.itemsize * 8
    wp, _ = period(bits, wb)
    n = words.shape[axis]
    if n % wp:
        raise TmacError(f"{n} words along the packed axis is not a multiple of {wp} ({bits}-bit fields in "
                        f"{wb}-bit words repeat every {wp} words)", rule="packed length")
    last = np.moveaxis(words, axis, -1)
    return np.moveaxis(_unpack_last(last, bits), -1, axis)


def pack_fields(values: np.ndarray, bits: int, axis: int = 0,
                dtype: str | np.dtype | type = np.int32) -> np.ndarray:
    """Inverse of :func:`unpack_fields`: pack integers in ``[0, 2**bits)`` along ``axis`` into words.

    Args:
        values: integer array; its length along ``axis`` must be a multiple of the period's values.
        bits: field width, 1..4.
        axis: axis to pack along.
        dtype: the word dtype (``np.int32`` or a ``pack_dtype`` name); signed words are returned as
            the two's-complement view of the bit pattern, as GPTQ stores them.

    Returns:
        words, same shape except ``axis`` shrinks to ``len * bits / W``.
    """
    _check_bits(bits)
    wdt = word_dtype(dtype)
    wb = wdt.itemsize * 8
    values = np.asarray(values)
    if values.size and (values.min() < 0 or values.max() >= (1 << bits)):
        raise TmacError(f"values must lie in [0, {1 << bits}) to pack as {bits}-bit fields",
                        rule="code range")
    _, vp = period(bits, wb)
    n = values.shape[axis]
    if n % vp:
        raise TmacError(f"{n} values along the packed axis is not a multiple of {vp} ({bits}-bit fields in "
                        f"{wb}-bit words)", rule="packed length")
    last = np.moveaxis(values, axis, -1)
    return np.moveaxis(_pack_last(last, bits, wdt), -1, axis)


def unpack_qweight(qweight: np.ndarray, bits: int, pool: BufferPool | None = None) -> np.ndarray:
    """GPTQ ``qweight`` ``[K*b/W, M0]`` -> codes uint8 ``[M0, K]`` (C-contiguous).

    The native module unpacks and transposes in one pass; :func:`unpack_fields` is the numpy path.
    ``pool``: where the codes array comes from (a reused buffer when one is idle).
    """
    qweight = np.asarray(qweight)
    if _native is None or qweight.ndim != 2 or sys.byteorder != "little":
        return unpack_fields(qweight.T, bits, axis=1)
    _check_bits(bits)
    _check_words(qweight)
    r, m0 = qweight.shape
    wb = qweight.dtype.itemsize * 8
    if r % period(bits, wb)[0]:
        return unpack_fields(qweight.T, bits, axis=1)  # raises the packed-length error
    q = np.ascontiguousarray(qweight)
    shape = (m0, r * wb // bits)
    out = pool.empty(shape) if pool is not None else np.empty(shape, dtype=np.uint8)
    _native.unpack_qweight(q, out, r, m0, q.dtype.itemsize, bits, 0, m0)
    return out


def pack_qweight(codes: np.ndarray, bits: int, dtype: str | np.dtype | type = np.int32) -> np.ndarray:
    """Codes ``[M0, K]`` in ``[0, 2**b)`` -> GPTQ ``qweight`` ``[K*b/W, M0]`` (C-contiguous)."""
    return np.ascontiguousarray(pack_fields(codes, bits, axis=1, dtype=dtype).T)


def unpack_qzeros(qzeros: np.ndarray, bits: int) -> np.ndarray:
    """GPTQ ``qzeros`` ``[G, M0*b/W]`` -> stored zero fields uint8 ``[G, M0]``."""
    return np.ascontiguousarray(unpack_fields(qzeros, bits, axis=1))


def transpose_scales_and_offsets(stored: np.ndarray, s: np.ndarray, bits: int, add: int, with_zeros: bool,
                                 ) -> tuple[np.ndarray, np.ndarray | None] | None:
    """float16 scales ``s`` ``[G, M0]`` -> ``(scales [M0, G], zero offsets [M0, G] or None)``, natively (F16C):
    ``z' = f16((stored + add - 2**(b-1))·s)``, exactly numpy's float16 arithmetic.  None when the native
    module, the CPU or the dtypes do not allow it (the caller computes it with numpy then).

    Args:
        stored: uint8 ``[G, M0]`` stored zero fields; s: float16 ``[G, M0]``; add: 1 for GPTQ v1 zeros, else 0.
    """
    if (_native is None or sys.byteorder != "little" or s.dtype != np.float16 or stored.dtype != np.uint8
            or s.ndim != 2 or stored.shape != s.shape):
        return None
    g, m0 = s.shape
    sc = np.empty((m0, g), np.float16)
    zt = np.empty((m0, g), np.float16) if with_zeros else None
    if not _native.offsets_f16(np.ascontiguousarray(stored), np.ascontiguousarray(s).view(np.uint16), g, m0, add,
                               1 << (bits - 1), sc.view(np.uint16), None if zt is None else zt.view(np.uint16)):
        return None
    return sc, zt


def scale_facts_f16(stored: np.ndarray, s: np.ndarray, at: tuple[int, int]) -> tuple[bool, int, bool, bool] | None:
    """One native pass over float16 scales ``s`` and stored zero fields (uint8, the same shape):
    ``(every scale finite, max |s| as float16 bits, every field equals at[0] or has a zero scale, the same for
    at[1])``.  None without the native module or for other dtypes (the caller uses numpy then)."""
    if (_native is None or sys.byteorder != "little" or s.dtype != np.float16 or stored.dtype != np.uint8
            or stored.shape != s.shape):
        return None
    return _native.scale_facts_f16(np.ascontiguousarray(stored), np.ascontiguousarray(s).view(np.uint16), s.size,
                                   int(at[0]), int(at[1]))


def pack_qzeros(zeros: np.ndarray, bits: int, dtype: str | np.dtype | type = np.int32) -> np.ndarray:
    """Stored zero fields ``[G, M0]`` in ``[0, 2**b)`` -> GPTQ ``qzeros`` ``[G, M0*b/W]``."""
    return np.ascontiguousarray(pack_fields(zeros, bits, axis=1, dtype=dtype))
