"""Vectorised decoders of llama.cpp quant blocks that map exactly to T-MAC codes.

Raw block bytes ``uint8 [rows, n_blocks * type_size]`` -> codes and scales (see
:mod:`tmac_convert.readers.gguf_source` for how each maps to T-MAC's value convention).
"""

from __future__ import annotations

import numpy as np


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
