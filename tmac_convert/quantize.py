"""Round-to-nearest group quantisation of float weights into T-MAC's value convention.

Used for float checkpoints (HF safetensors, GGUF F16/BF16/F32 and other GGUF types that need
re-quantising) and for re-quantising act-order GPTQ checkpoints to contiguous groups.

Convention (see :class:`~tmac_convert.format.tensor.QuantTensor`): codes ``q`` in ``[0, 2**b)``, implicit
zero ``2**(b-1)``, ``W ~= (q - 2**(b-1)) * s - z'``.

* Symmetric (``zero_point=False``), GPTQ's symmetric rule: ``s = 2*max|w| / (2**b - 1)``,
  ``q = clamp(round(w/s) + 2**(b-1), 0, 2**b - 1)``, no ``z'``.
* Asymmetric (``zero_point=True``), min-max: ``s = (max - min) / (2**b - 1)``,
  ``q = clamp(round((w - min)/s), 0, 2**b - 1)`` and ``z' = -min - 2**(b-1)*s``, i.e. the group's
  grid is exactly ``min + q*s``.  The zero offset is a float (T-MAC stores ``z'`` as a float), so it
  is not rounded to an integer zero point the way GPTQ does; this is never less accurate.

Scales and zero offsets are float32.  A constant group gets ``s = 0`` (its values are then exact).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import TmacError
from .format.rules import SUPPORTED_BITS, bits_supported
from .format.tensor import QuantTensor

_CHUNK_ELEMS = 1 << 19  # rows are processed in blocks of about this many weights (bounded memory)


def _resolve_group(name: str, k: int, group_size: int) -> int:
    gs = k if group_size in (-1, 0, None) else int(group_size)
    if gs <= 0 or k % gs:
        raise TmacError(f"group size {group_size} does not divide K = {k}", tensor=name,
                        rule="K % group_size == 0")
    return gs


def _quantize_block(w: np.ndarray, bits: int, gs: int, zero_point: bool
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """float64 ``[R, K]`` -> codes uint8 ``[R, K]``, scales f32 ``[R, G]``, zeros f32 ``[R, G]`` or None."""
    r, k = w.shape
    g = w.reshape(r, k // gs, gs)
    maxq = (1 << bits) - 1
    half = float(1 << (bits - 1))
    if zero_point:
        lo = g.min(axis=2)
        s = ((g.max(axis=2) - lo) / maxq).astype(np.float32)
        s64 = s.astype(np.float64)
        inv = np.divide(1.0, s64, out=np.zeros_like(s64), where=s64 > 0)
        q = g - lo[..., None]
        q *= inv[..., None]
        z = (-lo - half * s64).astype(np.float32)
    else:
        s = (2.0 * np.abs(g).max(axis=2) / maxq).astype(np.float32)
        s64 = s.astype(np.float64)
        inv = np.divide(1.0, s64, out=np.zeros_like(s64), where=s64 > 0)
        q = g * inv[..., None]
        z = None
    np.rint(q, out=q)
    if not zero_point:
        q += half
    np.clip(q, 0, maxq, out=q)
    return q.astype(np.uint8).reshape(r, k), s, z


def quantize_rtn(name: str, w: np.ndarray, *, bits: int, group_size: int, zero_point: bool
                 ) -> tuple[QuantTensor, dict[str, Any]]:
    """Quantise a float matrix by round-to-nearest per group.

    Args:
        name: tensor name (for the result and for errors).
        w: float array ``[M0, K]`` (float16/bfloat16-as-float32/float32/float64; any layout).
        bits: 1..4.
        group_size: weights per group along K; ``-1`` (or ``K``) for one group per row.
        zero_point: asymmetric (with ``z'``) when True, symmetric when False.

    Returns:
        ``(QuantTensor, stats)``: the tensor (codes uint8 ``[M0, K]``, scales/zeros float32
        ``[M0, K/gs]``) and ``stats = {"nmse", "max_abs_err", "rms", "bits", "group_size",
        "zero_point"}`` measured between ``w`` and the dequantised result in float64
        (``nmse = sum((w - w_q)^2) / sum(w^2)``, 0 for an all-zero ``w``).
    """
    if not bits_supported(bits):
        raise TmacError(f"cannot quantise to {bits} bits; supported: {SUPPORTED_BITS}", tensor=name,
                        rule="bits in 1..4")
    w = np.asarray(w)
    if w.ndim != 2 or w.dtype.kind != "f":
        raise TmacError(f"expected a 2-D float matrix, got {w.dtype} {w.shape}", tensor=name,
                        rule="quantisable matrix")
    m0, k = w.shape
    gs = _resolve_group(name, k, group_size)
    codes = np.empty((m0, k), dtype=np.uint8)
    scales = np.empty((m0, k // gs), dtype=np.float32)
    zeros = np.empty((m0, k // gs), dtype=np.float32) if zero_point else None
    err2 = ref2 = 0.0
    max_err = 0.0
    half = float(1 << (bits - 1))
    step = max(1, _CHUNK_ELEMS // max(k, 1))
    for r0 in range(0, m0, step):  # blocks of rows, each fully vectorised
        blk = np.asarray(w[r0:r0 + step], dtype=np.float64)
        if not np.all(np.isfinite(blk)):
            bad = int(np.argwhere(~np.isfinite(blk))[0][0]) + r0
            raise TmacError(f"weight row {bad} contains NaN or infinity", tensor=name, rule="finite weights")
        with np.errstate(over="ignore"):  # a float32 overflow is reported just below, by name
            q, s, z = _quantize_block(blk, bits, gs, zero_point)
        finite = np.isfinite(s) if z is None else np.isfinite(s) & np.isfinite(z)
        if not finite.all():
            bad = int(np.argwhere(~finite)[0][0]) + r0
            raise TmacError(f"weight row {bad} spans too wide a range for {bits}-bit round-to-nearest: its scale or "
                            "zero offset overflows float32", tensor=name, rule="scales fit float32")
        codes[r0:r0 + step] = q
        scales[r0:r0 + step] = s
        # error of the stored form, computed in place on one float64 block: w - ((q - half) * s - z')
        diff = q.reshape(len(blk), -1, gs).astype(np.float64)
        diff -= half
        diff *= s.astype(np.float64)[..., None]
        if z is not None:
            zeros[r0:r0 + step] = z
            diff -= z.astype(np.float64)[..., None]
        np.subtract(blk.reshape(diff.shape), diff, out=diff)
        err2 += float(np.einsum("ijk,ijk->", diff, diff))
        ref2 += float(np.einsum("ij,ij->", blk, blk))
        if diff.size:
            max_err = max(max_err, float(np.abs(diff).max()))
        del diff, q, blk
    qt = QuantTensor(name=name, codes=codes, scales=scales, zeros=zeros, bits=bits, group_size=gs)
    stats = {
        "nmse": err2 / ref2 if ref2 > 0 else 0.0,
        "max_abs_err": max_err,
        "rms": float(np.sqrt(err2 / max(w.size, 1))),
        "bits": bits,
        "group_size": gs,
        "zero_point": bool(zero_point),
    }
    return qt, stats
