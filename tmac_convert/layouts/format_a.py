"""Format A: T-MAC's pre-permuted weight blob (sections 1.2 to 1.4 of the format notes).

A blob is the permuted weight bytes (``M0·K·bits/8``) followed, with no padding, by the permuted
scales (and interleaved zero offsets) as float32 little-endian.  :func:`pack` builds it and
:func:`unpack` inverts it exactly.
"""

from __future__ import annotations

import numpy as np

from ..errors import LayoutError
from ..format.rules import scales_size
from .constraints import check_layout
from ..parallel import cpu_count
from ._native import native

_LE_F32 = np.dtype("<f4")
# Below this many weight bytes a tensor is packed on one thread: starting threads costs more.
_PARALLEL_MIN_BYTES = 1 << 20


def weight_nbytes(m0: int, k: int, bits: int) -> int:
    """Bytes of the permuted weight part of a blob."""
    return m0 * k * bits // 8


#: Float32 values after the weights: T-MAC's ``scales_size`` (1 for a per-tensor scale).
scales_count = scales_size


def blob_nbytes(m0: int, k: int, bits: int, group_size: int, zero_point: bool, per_tensor: bool = False) -> int:
    """Total length of a Format A blob in bytes."""
    return weight_nbytes(m0, k, bits) + 4 * scales_count(m0, k, group_size, zero_point, per_tensor)


def is_per_tensor_blob(nbytes: int, m0: int, k: int, bits: int, group_size: int, zero_point: bool,
                       name: str | None = None) -> bool:
    """Whether a blob of ``nbytes`` bytes carries one per-tensor scale (True) or group scales (False).

    The two are told apart by length only; a per-tensor scale has no zero offset.  Raises
    :class:`LayoutError` (rule ``blob length``) when ``nbytes`` fits neither.
    """
    per_tensor_len = blob_nbytes(m0, k, bits, group_size, False, per_tensor=True)
    grouped = blob_nbytes(m0, k, bits, group_size, zero_point)
    if nbytes == per_tensor_len and not zero_point:
        return True
    if nbytes == grouped:
        return False
    alts = f"{grouped} bytes for group scales" + ("" if zero_point else f" or {per_tensor_len} for a per-tensor scale")
    raise LayoutError(f"blob is {nbytes} bytes; M0={m0}, K={k}, {bits}-bit, group size {group_size}, "
                      f"zero point {zero_point} needs {alts}", tensor=name, rule="blob length")


# ---------------------------------------------------------------------------------------------
# weights: numpy reference (the reshape/transpose sequence of section 1.2) and its inverse

def pack_weights_numpy(codes: np.ndarray, bits: int, bm: int, kfactor: int) -> np.ndarray:
    """uint8 ``[M0, K]`` codes -> uint8 ``[M0·K·bits/8]`` permuted weights, by section 1.2 step by step."""
    m0, k = codes.shape
    m = m0 * bits
    w4 = codes.reshape(m0, k // 4, 4)
    c = np.stack([sum(((w4[:, :, t] >> i) & 1) << t for t in range(4)) for i in range(bits)], axis=1)
    c = c.astype(np.uint8)                                                          # [M0, b, K/4] codes
    c = c.reshape(m0 // 8, 8, bits, k // 4).transpose(0, 2, 1, 3)                   # [M0/8, b, 8, K/4]
    c = c.reshape(m // 32, 2, 16, k // 4).transpose(0, 2, 1, 3)                     # [M/32, 16, 2, K/4]
    c = c.reshape(m // bm, bm // 32, 16, 2, k // 4 // kfactor, kfactor).transpose(0, 4, 1, 5, 2, 3)
    return (c[..., 0] | (c[..., 1] << 4)).reshape(-1)


def unpack_weights_numpy(weights: np.ndarray, m0: int, k: int, bits: int, bm: int, kfactor: int) -> np.ndarray:
    """Inverse of :func:`pack_weights_numpy`: uint8 permuted weights -> uint8 ``[M0, K]`` codes."""
    m = m0 * bits
    b = weights.reshape(m // bm, k // 4 // kfactor, bm // 32, kfactor, 16)
    c = np.stack([b & 0xF, b >> 4], axis=-1)                                        # [T, KO, B, kf, 16, 2]
    c = c.transpose(0, 2, 4, 5, 1, 3).reshape(m // 32, 16, 2, k // 4)
    c = c.transpose(0, 2, 1, 3).reshape(m0 // 8, bits, 8, k // 4)
    c = c.transpose(0, 2, 1, 3).reshape(m0, bits, k // 4)                           # [M0, b, K/4]
    p = (c[..., None] >> np.arange(4, dtype=np.uint8)) & 1                          # [M0, b, K/4, 4]
    w = (p << np.arange(bits, dtype=np.uint8)[None, :, None, None]).sum(axis=1, dtype=np.uint8)
    return w.reshape(m0, k)


# ---------------------------------------------------------------------------------------------
# scales and zeros (section 1.3)

def permute_scales(scales: np.ndarray, zeros: np.ndarray | None, bits: int, bm: int,
                   out: np.ndarray | None = None) -> np.ndarray:
    """Group scales ``[M0, G]`` (and zeros) -> float32 ``[scales_size]`` in tile order, 8 scales then 8 zeros.

    Written into ``out`` (float32, ``scales_size`` values) when given.
    """
    m0, g = scales.shape
    p = bm // bits  # outputs per tile
    if out is None:
        out = np.empty(m0 * g * (1 if zeros is None else 2), dtype=_LE_F32)
    if zeros is None:
        out.reshape(m0 // p, g, p)[...] = scales.reshape(m0 // p, p, g).transpose(0, 2, 1)
        return out
    both = out.reshape(m0 // p, g, p // 8, 2, 8)
    both[:, :, :, 0, :] = scales.reshape(m0 // p, p // 8, 8, g).transpose(0, 3, 1, 2)
    both[:, :, :, 1, :] = zeros.reshape(m0 // p, p // 8, 8, g).transpose(0, 3, 1, 2)
    return out


def unpermute_scales(flat: np.ndarray, m0: int, g: int, bits: int, bm: int, zero_point: bool):
    """Inverse of :func:`permute_scales`: float32 values -> (scales ``[M0, G]``, zeros ``[M0, G]`` or None)."""
    p = bm // bits
    t = m0 // p
    if not zero_point:
        return flat.reshape(t, g, p).transpose(0, 2, 1).reshape(m0, g).copy(), None
    both = flat.reshape(t, g, p // 8, 2, 8)
    s = both[:, :, :, 0, :].reshape(t, g, p).transpose(0, 2, 1).reshape(m0, g).copy()
    z = both[:, :, :, 1, :].reshape(t, g, p).transpose(0, 2, 1).reshape(m0, g).copy()
    return s, z


# ---------------------------------------------------------------------------------------------
# public API

def _threads(threads: int | None, nbytes: int) -> int:
    if nbytes < _PARALLEL_MIN_BYTES:
        return 1
    return max(1, cpu_count() if threads is None else int(threads))


def _run_tiles(fn, src: np.ndarray, dst: np.ndarray, m0: int, k: int, bits: int, bm: int, kfactor: int,
               threads: int) -> int:
    """Run a native tile function over all tiles, split across ``threads`` of the native pool; returns the OR of
    the codes it read."""
    return fn(src, dst, m0, k, bits, bm, kfactor, 0, m0 * bits // bm, threads)


def _range_error(codes: np.ndarray, bits: int, name: str | None) -> LayoutError:
    return LayoutError(f"codes must lie in [0, {1 << bits}) for {bits}-bit, found max {int(codes.max())}",
                       tensor=name, rule="code range")


def _as_codes(codes: np.ndarray, bits: int, name: str | None) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise LayoutError(f"codes must be 2-D [M0, K], got shape {codes.shape}", tensor=name, rule="codes shape")
    if codes.dtype != np.uint8:
        if codes.dtype.kind not in "iu":
            raise LayoutError(f"codes must be integers, got {codes.dtype}", tensor=name, rule="codes dtype")
        if codes.size and (codes.min() < 0 or codes.max() >= 1 << bits):
            raise LayoutError(f"codes must lie in [0, {1 << bits}) for {bits}-bit, found "
                              f"[{codes.min()}, {codes.max()}]", tensor=name, rule="code range")
        codes = codes.astype(np.uint8)
    return np.ascontiguousarray(codes)


def pack(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None = None, *, bits: int, bm: int,
         kfactor: int, threads: int | None = None, name: str | None = None,
         out: np.ndarray | None = None) -> np.ndarray:
    """Lay out one quantised tensor as a T-MAC Format A blob.

    Args:
        codes: integer ``[M0, K]`` in ``[0, 2**bits)`` (implicit zero ``2**(bits-1)``).
        scales: float ``[M0, K/group_size]`` group scales, or float ``[1]`` for a per-tensor scale.
        zeros: optional float ``[M0, K/group_size]`` T-MAC zero offsets ``z' = (z - 2**(bits-1))·s``.
        bits, bm, kfactor: bit width and tile configuration (checked against section 1.5).
        threads: worker threads for the native path (default: all cores; small tensors use one).
        name: tensor name used in error messages.
        out: optional C-contiguous uint8 buffer of exactly the blob's length to write into (every byte is
            written), for callers that reuse buffers.

    Returns:
        uint8 ``[M0·K·bits/8 + 4·scales_size]``: permuted weights, then the permuted scales (and zeros)
        as float32 little-endian (``out`` when given).
    """
    codes = _as_codes(codes, bits, name)
    m0, k = codes.shape
    scales = np.asarray(scales)
    if scales.dtype.kind != "f":
        raise LayoutError(f"scales must be floating point, got {scales.dtype}", tensor=name, rule="scales dtype")
    per_tensor = scales.ndim == 1
    if per_tensor:
        if scales.shape != (1,):
            raise LayoutError(f"a per-tensor scale must have shape (1,), got {scales.shape}", tensor=name,
                              rule="scales shape")
        if zeros is not None:
            raise LayoutError("zero offsets are not supported with a per-tensor scale (T-MAC kernels have none)",
                              tensor=name, rule="zeros with per-tensor scale")
        group_size = None
    else:
        if scales.ndim != 2 or scales.shape[0] != m0 or scales.shape[1] == 0 or k % scales.shape[1]:
            raise LayoutError(f"scales shape {scales.shape} does not fit codes {codes.shape}: expected "
                              f"[{m0}, K/group_size] with the group size dividing K", tensor=name,
                              rule="scales shape")
        group_size = k // scales.shape[1]
        if zeros is not None:
            zeros = np.asarray(zeros)
            if zeros.shape != scales.shape or zeros.dtype.kind != "f":
                raise LayoutError(f"zeros must be float with the scales' shape {scales.shape}, got "
                                  f"{zeros.dtype} {zeros.shape}", tensor=name, rule="zeros shape")
    check_layout(m0, k, bits, bm, kfactor, group_size, tensor=name)

    wbytes = weight_nbytes(m0, k, bits)
    nscales = 1 if per_tensor else scales_count(m0, k, group_size, zeros is not None)
    if out is None:
        blob = np.empty(wbytes + 4 * nscales, dtype=np.uint8)
    elif out.dtype != np.uint8 or out.shape != (wbytes + 4 * nscales,) or not out.flags.c_contiguous:
        raise LayoutError(f"output buffer {out.dtype} {out.shape} is not a contiguous uint8 "
                          f"[{wbytes + 4 * nscales}]", tensor=name, rule="blob length")
    else:
        blob = out
    if native is not None:
        # The native pack reports the OR of all codes it read: the range check costs nothing extra.
        seen = _run_tiles(native.pack_weights, codes, blob, m0, k, bits, bm, kfactor,
                          _threads(threads, wbytes))
        if seen >> bits:
            raise _range_error(codes, bits, name)
    else:
        if int(codes.max()) >> bits:
            raise _range_error(codes, bits, name)
        blob[:wbytes] = pack_weights_numpy(codes, bits, bm, kfactor)
    tail = blob[wbytes:].view(_LE_F32)
    if per_tensor:
        tail[:] = scales
    else:
        permute_scales(scales, zeros, bits, bm, out=tail)
    return blob


def unpack(blob: np.ndarray, *, m: int, k: int, bits: int, group_size: int, zero_point: bool, bm: int,
           kfactor: int, threads: int | None = None, name: str | None = None):
    """Invert :func:`pack`.

    Args:
        blob: uint8 Format A blob (any 1-D buffer of bytes).
        m, k: ``M0`` outputs and ``K`` inputs.
        group_size: weights per scale along K (``K`` for per-channel or per-tensor scales).
        zero_point: whether the blob interleaves zero offsets with the scales.

    Returns:
        ``(codes, scales, zeros)``: uint8 ``[M0, K]``; float32 ``[M0, K/group_size]`` or ``[1]`` for a
        per-tensor scale, told apart from per-channel by the blob's length; float32 zeros or None.
    """
    blob = np.frombuffer(memoryview(np.ascontiguousarray(blob)).cast("B"), dtype=np.uint8)
    if group_size <= 0 or k % group_size:
        raise LayoutError(f"group size {group_size} does not divide K = {k}", tensor=name, rule="K % group_size == 0")
    wbytes = weight_nbytes(m, k, bits)
    per_tensor = is_per_tensor_blob(blob.size, m, k, bits, group_size, zero_point, name)
    check_layout(m, k, bits, bm, kfactor, None if per_tensor else group_size, tensor=name)

    weights = blob[:wbytes]
    if native is not None:
        codes = np.zeros((m, k), dtype=np.uint8)
        _run_tiles(native.unpack_weights, weights, codes, m, k, bits, bm, kfactor,
                   _threads(threads, wbytes))
    else:
        codes = unpack_weights_numpy(weights, m, k, bits, bm, kfactor)
    tail = blob[wbytes:].view(_LE_F32).astype(np.float32)
    if per_tensor:
        return codes, tail, None
    scales, zeros = unpermute_scales(tail, m, k // group_size, bits, bm, zero_point)
    return codes, scales, zeros
