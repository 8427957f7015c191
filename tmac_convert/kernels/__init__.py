"""Bundled T-MAC LUT kernels: the table-lookup GEMM over Format A blobs, and its baselines.

* :func:`gemm` — ``y = x @ W.T`` read from the blob as T-MAC's runtime reads it (section 4 of the format
  notes): int8 tables per 4 activations, int16 sums per kfactor chunk, float scales.  Native code
  (AVX-512 ``_mm512_shuffle_epi8``, AVX2 ``_mm256_shuffle_epi8``, NEON ``vqtbl1q_s8`` or portable C, chosen at
  run time) when the
  extension is built, else the numpy reference; both give the same bits.
* :func:`dequant_gemm` — the fair baseline: dequantise the same packed bits to float, then FMA.
* :mod:`.reference` — the numpy reference; :mod:`.tune` — tile tuning on this CPU.

The kernel path can be forced with ``path=`` or the environment variable ``TMAC_CONVERT_KERNEL_PATH``
(``auto``, ``scalar``, ``avx2``, ``avx512``, ``neon`` or ``reference``).
"""

from __future__ import annotations

import functools
import os

import numpy as np

from ..errors import TmacError
from ..layouts.format_a import unpack
from ..parallel import cpu_count
from . import reference
from ._native import native
from .spec import LUT_MODES, Problem, as_activations, check_fast_aggregation, fast_aggregation_bias_factor, resolve

ENV_PATH = "TMAC_CONVERT_KERNEL_PATH"
_PATH_IDS = {"auto": 0, "scalar": 1, "avx2": 2, "neon": 3, "avx512": 4}
_MODE_IDS = {"int8": 0, "float": 1}

__all__ = ["gemm", "dequant_gemm", "available_paths", "resolve_path", "Problem", "resolve", "LUT_MODES", "ENV_PATH"]


def available_paths() -> list[str]:
    """Kernel paths that run here: the native ones this build and CPU support, then ``"reference"``."""
    return list(_paths_of(native))


@functools.lru_cache(maxsize=8)
def _paths_of(module) -> tuple[str, ...]:
    """The paths a native module (or None) offers: fixed for a module on this CPU, so asked once."""
    return (tuple(module.paths()) if module is not None else ()) + ("reference",)


def resolve_path(path: str | None = None) -> str:
    """The concrete path a call runs on: ``path``, else ``$TMAC_CONVERT_KERNEL_PATH``, else the best one.

    ``"auto"`` picks AVX-512 (F, BW, VL), AVX2 or NEON when available, else scalar C, else the numpy reference.
    """
    return _resolve_path(path or os.environ.get(ENV_PATH) or "auto", _paths_of(native))


@functools.lru_cache(maxsize=64)
def _resolve_path(asked: str, have: tuple[str, ...]) -> str:
    want = asked.strip().lower()
    if want == "auto":
        return next((p for p in ("avx512", "avx2", "neon", "scalar") if p in have), "reference")
    if want not in _PATH_IDS and want != "reference":
        raise TmacError(f"unknown kernel path {want!r}; choose one of auto, scalar, avx2, avx512, neon, "
                        "reference", rule="kernel path")
    if want not in have:
        raise TmacError(f"kernel path {want!r} is not available here (available: {', '.join(have)})",
                        rule="kernel path")
    return want


def _default_threads() -> int:
    return cpu_count()  # asked once: the query reads /sys, tens of microseconds against a GEMV of ~100


def _threads(threads: int | None) -> int:
    if threads is None:
        return _default_threads()
    if int(threads) < 1:
        raise TmacError(f"threads must be at least 1, got {threads}", rule="threads >= 1")
    return int(threads)


def gemm(blob: np.ndarray, x: np.ndarray, *, m: int, k: int, bits: int, group_size: int, zero_point: bool, bm: int,
         kfactor: int, act_group_size: int | None = 64, lut: str = "int8", threads: int | None = None,
         fast_aggregation: bool = False, path: str | None = None, name: str | None = None) -> np.ndarray:
    """T-MAC's LUT matrix product over a Format A blob.

    Args:
        blob: uint8 Format A blob of a ``[m, k]`` weight (any contiguous byte buffer).
        x: float32 ``[N, k]`` activations (a 1-D ``[k]`` gives a 1-D result).
        m, k, bits, group_size, zero_point, bm, kfactor: the blob's shape and tiles; a per-tensor scale is
            recognised from the blob's length (as in :func:`tmac_convert.unpack`).
        act_group_size: activations per int8 LUT scale; -1 or None for the whole K.  Must satisfy
            ``(4·kfactor) % act_group_size == 0`` unless it equals K.
        lut: ``"int8"`` (T-MAC's runtime) or ``"float"`` (unquantised tables: the exact check).
        threads: threads of the package's native worker pool, over tiles (default: the cores this process may
            run on); the result does not depend on it.
        fast_aggregation: T-MAC's ``-fa`` (rounding-halving adds instead of int16 sums; approximate).
        path: force a kernel path (see :func:`resolve_path`).
        name: tensor name for error messages.

    Returns:
        float32 ``[N, m]`` (``[m]`` for a 1-D ``x``).
    """
    if lut not in LUT_MODES:
        raise TmacError(f"lut must be one of {LUT_MODES}, got {lut!r}", tensor=name, rule="lut mode")
    p, flat = resolve(blob, m=m, k=k, bits=bits, group_size=group_size, zero_point=zero_point, bm=bm,
                      kfactor=kfactor, act_group_size=act_group_size, name=name)
    fa = bool(fast_aggregation) and lut == "int8"
    if fa:
        check_fast_aggregation(p, name)
    xs, one_d = as_activations(x, k, name)
    nthreads = _threads(threads)
    chosen = resolve_path(path)
    if chosen == "reference":
        y = reference.gemm(flat[:p.wbytes], flat[p.wbytes:].view("<f4"), xs, p, lut=lut, fast_aggregation=fa)
    else:
        y = np.empty((xs.shape[0], m), dtype=np.float32)
        native.gemm(flat, xs, y, p.m0, p.k, p.bits, p.group_size, int(p.zero_point), int(p.per_tensor), p.bm,
                    p.kfactor, p.ags, _MODE_IDS[lut], int(fa), fast_aggregation_bias_factor(p.actk, p.bits),
                    _PATH_IDS[chosen], nthreads)
    return y[0] if one_d else y


def dequant_gemm(blob: np.ndarray, x: np.ndarray, *, m: int, k: int, bits: int, group_size: int, zero_point: bool,
                 bm: int, kfactor: int, threads: int | None = None, path: str | None = None,
                 name: str | None = None) -> np.ndarray:
    """Baseline ``y = x @ W.T``: dequantise the blob's packed bits to float weights, then multiply-add.

    Same arguments and result as :func:`gemm` (no LUT options).  Native code when built (AVX2, which the
    ``avx512`` path uses too, or scalar);
    otherwise it unpacks the blob and uses a numpy float32 product.
    """
    p, flat = resolve(blob, m=m, k=k, bits=bits, group_size=group_size, zero_point=zero_point, bm=bm,
                      kfactor=kfactor, act_group_size=-1, name=name)
    xs, one_d = as_activations(x, k, name)
    chosen = resolve_path(path)
    if chosen == "reference":
        codes, scales, zeros = unpack(flat, m=m, k=k, bits=bits, group_size=p.group_size, zero_point=p.zero_point,
                                      bm=bm, kfactor=kfactor, name=name)
        w = (codes.astype(np.float32) - np.float32(1 << (bits - 1))) * np.repeat(scales, p.group_size, axis=-1)
        if zeros is not None:
            w -= np.repeat(zeros, p.group_size, axis=1)
        y = xs @ np.broadcast_to(w, (m, k)).T
    else:
        y = np.empty((xs.shape[0], m), dtype=np.float32)
        native.dequant_gemm(flat, xs, y, p.m0, p.k, p.bits, p.group_size, int(p.zero_point), int(p.per_tensor), p.bm,
                            p.kfactor, _PATH_IDS["scalar" if chosen == "neon" else chosen], _threads(threads))
    return y[0] if one_d else y
