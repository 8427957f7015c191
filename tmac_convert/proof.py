"""Proof that a converted tensor computes what its source computes.

:func:`verify_tensor` runs seeded random activations through the LUT kernel on the Format A blob (the
native kernel, or the numpy reference when it is not built) and compares the result with float64 math
on the source's own dequantised weights, computed from ``qt.codes``, ``qt.scales`` and ``qt.zeros``
without any layout code.

The activations are integers ``|a| < 2^12`` times ``2^-10`` (Gaussian with standard deviation 1 before
rounding), so the reference splits exactly: per weight group ``g``,
``sum_k W[m,k] x[k] = 2^-10 · (s[m,g]·(P[m,g] − 2^(b−1)·A[g]) − z'[m,g]·A[g])`` with the integer dot
products ``P = sum codes·a`` and ``A = sum a`` computed exactly (int64), and only the short sum over
groups done in float64.  That keeps the reference cheap — one pass over the uint8 codes, no float
weight matrix — so verifying every tensor costs a fraction of converting it.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import kernels
from .errors import VerificationError
from .kernels import _native
from .format.tensor import QuantTensor

#: Default NMSE thresholds.  A faithful int8 LUT gives about 2e-5 to 1e-4 (ternary, whole-K act groups
#: near the top); any layout or scale mistake gives 1e-2 or more.  Float tables give about 1e-14.
DEFAULT_THRESHOLD = {"int8": 1e-3, "float": 1e-9}
_X_SHIFT = 10            # activations are a·2^-10
_X_LIMIT = (1 << 12) - 1
_CHUNK_VALUES = 1 << 22  # float64 values per pass of the numpy reference (32 MB): bounds its memory


@dataclass
class VerifyResult:
    """What verifying one tensor found.

    ``nmse = sum (y − y_ref)² / sum y_ref²`` over all outputs.  When the reference is (almost) zero — a
    tensor whose weights all dequantise to 0 — that ratio means nothing (the int8 LUT's noise scales with
    the activations, not with the weights), so the error is normalised instead by the output energy of
    weights of the tensor's scale, ``sum_m sum_g s[m,g]²·sum_{k in g} x_k²``, and ``normaliser`` says
    ``"scale"`` rather than ``"output"``.
    """

    name: str
    nmse: float
    max_abs_err: float
    ok: bool
    threshold: float
    ref_rms: float          # root mean square of the float64 reference outputs
    rows: int               # activation rows used
    lut: str
    path: str               # kernel path that ran: avx2, neon, scalar or reference
    seconds: float
    normaliser: str = "output"

    def as_dict(self) -> dict:
        return asdict(self)


def activations(k: int, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded integer activations ``a`` (int16 ``[rows, k]``) and ``x = a·2^-10`` (float32, exact)."""
    rng = np.random.default_rng(seed)
    a = np.clip(np.rint(rng.standard_normal((rows, k)) * (1 << _X_SHIFT)), -_X_LIMIT, _X_LIMIT).astype(np.int16)
    return a, np.ldexp(a.astype(np.float32), -_X_SHIFT)


def reference_output(qt: QuantTensor, a: np.ndarray, threads: int | None = None) -> np.ndarray:
    """float64 ``[N, M0]``: the source's weights times ``x = a·2^-10``, from codes, scales and zeros only.

    Per group ``g``: ``s·(P − 2^(b−1)·A) − z'·A`` with exact integer ``P = sum codes·a`` and ``A = sum a``,
    summed over groups in float64.  Native (one pass over the codes, pmaddwd) when built; otherwise
    float64 matmuls over row chunks, exact too because every partial sum is an integer below 2^53.
    """
    m0, k = qt.shape
    n = a.shape[0]
    gs = k if qt.per_tensor_scale else qt.group_size
    g = k // gs
    h = float(1 << (qt.bits - 1))
    a = np.ascontiguousarray(a, dtype=np.int16)
    sums = a.astype(np.int64).reshape(n, g, gs).sum(axis=2).T.astype(np.float64)            # [G, N]
    if qt.per_tensor_scale:
        s = np.full((m0, 1), float(qt.scales[0]), dtype=np.float64)
    else:
        s = np.ascontiguousarray(qt.scales, dtype=np.float64)
    z = None if qt.zeros is None else np.ascontiguousarray(qt.zeros, dtype=np.float64)
    y = np.empty((n, m0), dtype=np.float64)
    native = _native.native
    if native is not None:
        native.reference(np.ascontiguousarray(qt.codes), a, s, z, np.ascontiguousarray(sums), y, m0, k, n, gs,
                         qt.bits, 0, threads or os.cpu_count() or 1)
    else:
        ag = np.ascontiguousarray(a.astype(np.float64).reshape(n, g, gs).transpose(1, 2, 0))   # [G, gs, N]
        rows = max(8, _CHUNK_VALUES // k)
        for r0 in range(0, m0, rows):
            r1 = min(m0, r0 + rows)
            c = qt.codes[r0:r1].astype(np.float64).reshape(r1 - r0, g, gs).transpose(1, 0, 2)
            p = np.matmul(c, ag).transpose(1, 0, 2) - h * sums[None]                       # [R, G, N]
            part = np.einsum("rg,rgn->rn", s[r0:r1], p)
            if z is not None:
                part -= z[r0:r1] @ sums
            y[:, r0:r1] = part.T
    return np.ldexp(y, -_X_SHIFT)


def verify_tensor(qt: QuantTensor, blob: np.ndarray, *, bm: int, kfactor: int, act_group_size: int | None = 64,
                  seed: int = 0, threshold: float | None = None, rows: int = 2, lut: str = "int8",
                  threads: int | None = None, path: str | None = None) -> VerifyResult:
    """Run ``rows`` seeded activation rows through the kernel on ``blob`` and compare with float64 math.

    Args:
        qt: the source tensor (codes, scales, zeros as the reader produced them).
        blob: its Format A blob, as it will be written.
        bm, kfactor, act_group_size: the kernel configuration the blob is laid out for (``act_group_size``
            -1 or None: the whole K).
        seed: activation seed (the result is reproducible).
        threshold: largest acceptable NMSE; default :data:`DEFAULT_THRESHOLD` for the LUT mode.
        lut: ``"int8"`` (the runtime's tables) or ``"float"`` (exact tables).

    Raises:
        LayoutError: the blob does not fit the tensor's shape or the tiles (named and explained).
    """
    t0 = time.perf_counter()
    thr = DEFAULT_THRESHOLD[lut] if threshold is None else float(threshold)
    m0, k = qt.shape
    a, x = activations(k, rows, seed)
    chosen = kernels.resolve_path(path)
    y = kernels.gemm(blob, x, m=m0, k=k, bits=qt.bits, group_size=qt.group_size, zero_point=qt.zeros is not None,
                     bm=bm, kfactor=kfactor, act_group_size=act_group_size, lut=lut, threads=threads, path=chosen,
                     name=qt.name).astype(np.float64)
    ref = reference_output(qt, a, threads)
    err = y - ref
    energy = float(np.sum(ref * ref))
    sq = float(np.sum(err * err))
    normaliser, denom = "output", energy
    scale_energy = _scale_energy(qt, x)
    if energy <= 1e-12 * scale_energy:
        normaliser, denom = "scale", scale_energy
    nmse = sq / denom if denom > 0 else (0.0 if sq == 0 else float("inf"))
    finite = bool(np.isfinite(y).all())
    return VerifyResult(name=qt.name, nmse=nmse if finite else float("inf"),
                        max_abs_err=float(np.max(np.abs(err))) if finite else float("inf"),
                        ok=finite and nmse <= thr, threshold=thr, ref_rms=float(np.sqrt(energy / ref.size)),
                        rows=rows, lut=lut, path=chosen, seconds=time.perf_counter() - t0, normaliser=normaliser)


def _scale_energy(qt: QuantTensor, x: np.ndarray) -> float:
    """``sum_n sum_m sum_g s[m,g]²·sum_{k in g} x[n,k]²``: the output energy of weights of the tensor's scale."""
    k = qt.shape[1]
    gs = k if qt.per_tensor_scale else qt.group_size
    xsq = (x.astype(np.float64) ** 2).reshape(x.shape[0], k // gs, gs).sum(axis=2)          # [N, G]
    s2 = qt.scales.astype(np.float64) ** 2
    if qt.per_tensor_scale:
        return float(s2[0] * qt.shape[0] * xsq.sum())
    return float(np.sum(s2.sum(axis=0) * xsq))


def check(result: VerifyResult) -> None:
    """Raise :class:`VerificationError` naming the tensor and the figures when ``result`` is over threshold."""
    if not result.ok:
        what = "NMSE" if result.normaliser == "output" else "error normalised by the scale energy"
        raise VerificationError(
            f"the converted tensor does not compute what the source computes: {what} {result.nmse:.3g} > threshold "
            f"{result.threshold:.3g} (max abs error {result.max_abs_err:.3g}, reference RMS {result.ref_rms:.3g}, "
            f"{result.rows} seeded activation rows, {result.lut} LUT on the {result.path} kernel)",
            tensor=result.name, rule="verified NMSE <= threshold")
