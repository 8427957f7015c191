"""The kernel problem: one Format A blob and its shape, checked once and shared by every kernel path.

Section 4 of the format notes fixes the derived sizes used by the numpy reference and the native
kernels alike:

* ``ags`` activations share one int8 LUT scale (``ags == K`` is the "whole K" case);
* a kfactor chunk of ``4·kfactor`` activations is summed in sub-groups of ``actk = min(ags/4, kfactor)``
  tables, each sub-group with the scale and bias of its act group;
* tile ``t`` holds ``bm`` bit-rows = ``P = bm/bits`` outputs, ``K·bm/8`` weight bytes and, for group
  scales, ``P·(K/gs)`` scales (twice that with zero points).
"""

from __future__ import annotations

import collections.abc
import functools
from dataclasses import dataclass

import numpy as np

from ..errors import LayoutError, TmacError
from ..layouts.constraints import check_act_group, check_layout
from ..layouts.format_a import is_per_tensor_blob, weight_nbytes

LUT_MODES = ("int8", "float")


@dataclass(frozen=True)
class Problem:
    """A checked kernel problem: ``y[N, M0] = x[N, K] @ W.T`` with W read from a Format A blob."""

    m0: int
    k: int
    bits: int
    group_size: int  # K for a per-tensor scale
    zero_point: bool
    per_tensor: bool
    bm: int
    kfactor: int
    ags: int  # resolved activation group size (K for "whole K")

    @property
    def actk(self) -> int:
        """Tables summed in int16 before one float conversion (T-MAC's ActK)."""
        return min(self.ags // 4, self.kfactor)

    @property
    def wbytes(self) -> int:
        return weight_nbytes(self.m0, self.k, self.bits)

    @property
    def tiles(self) -> int:
        return self.m0 * self.bits // self.bm

    @property
    def outputs_per_tile(self) -> int:
        return self.bm // self.bits

    @property
    def groups(self) -> int:
        """Weight groups along K (1 for a per-tensor scale)."""
        return 1 if self.per_tensor else self.k // self.group_size


def resolve(blob: np.ndarray, *, m: int, k: int, bits: int, group_size: int, zero_point: bool, bm: int,
            kfactor: int, act_group_size: int | None = 64, name: str | None = None) -> tuple[Problem, np.ndarray]:
    """Check a blob against its shape and tiles; return the problem and the blob as a flat uint8 view.

    The per-tensor (BitNet) scale is recognised from the blob's length, as :func:`tmac_convert.unpack`
    does.  ``act_group_size`` of -1 or None means the whole K.  Raises :class:`LayoutError` naming the rule.
    """
    try:
        flat = np.frombuffer(memoryview(np.ascontiguousarray(blob)).cast("B"), dtype=np.uint8)
    except (TypeError, ValueError) as e:
        raise LayoutError(f"blob must be a contiguous byte buffer: {e}", tensor=name, rule="blob bytes") from None
    args = (flat.size, m, k, bits, group_size, zero_point, bm, kfactor, act_group_size, name)
    try:
        return _problem(*args), flat
    except TypeError:
        if all(isinstance(a, collections.abc.Hashable) for a in args):
            raise
        return _problem.__wrapped__(*args), flat  # an unhashable argument: checked without the cache


@functools.lru_cache(maxsize=1024, typed=True)
def _problem(nbytes: int, m: int, k: int, bits: int, group_size: int, zero_point: bool, bm: int, kfactor: int,
             act_group_size: int | None, name: str | None) -> Problem:
    """The checks of :func:`resolve` for a blob of ``nbytes`` bytes.  Cached: a model's decode calls the same
    few shapes again and again, and the checks cost several times a small GEMV's native call (a failed check
    raises, and is not cached)."""
    if bits not in (1, 2, 3, 4):
        raise LayoutError(f"bits must be 1, 2, 3 or 4, got {bits}", tensor=name, rule="bits in {1,2,3,4}")
    if m <= 0 or k <= 0 or group_size <= 0 or k % group_size:
        raise LayoutError(f"group size {group_size} does not divide K = {k} (M0 = {m})", tensor=name,
                          rule="K % group_size == 0")
    per_tensor = is_per_tensor_blob(nbytes, m, k, bits, group_size, zero_point, name)
    check_layout(m, k, bits, bm, kfactor, None if per_tensor else group_size, tensor=name)
    ags = k if act_group_size in (-1, None) else int(act_group_size)
    check_act_group(k, kfactor, ags, tensor=name)
    actk = min(ags // 4, kfactor)
    if kfactor // actk > 32:
        raise LayoutError(f"kfactor {kfactor} holds {kfactor // actk} act groups of {ags}; the kernels allow at most "
                          "32 per chunk", tensor=name, rule="kfactor / act sub-group <= 32")
    gs = k if per_tensor else group_size
    return Problem(m, k, bits, gs, bool(zero_point) and not per_tensor, per_tensor, bm, kfactor, ags)


def as_activations(x: np.ndarray, k: int, name: str | None = None) -> tuple[np.ndarray, bool]:
    """``x`` as C-contiguous float32 ``[N, K]``; the flag tells whether a 1-D ``[K]`` was given."""
    x = np.asarray(x)
    one_d = x.ndim == 1
    if one_d:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != k or x.shape[0] == 0:
        raise TmacError(f"activations must be float32 [N, {k}] (N >= 1), got shape {x.shape}", tensor=name,
                        rule="activation shape")
    if x.dtype.kind != "f":
        raise TmacError(f"activations must be floating point, got {x.dtype}", tensor=name, rule="activation dtype")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise TmacError("activations contain NaN or infinity", tensor=name, rule="finite activations")
    return x, one_d


def check_fast_aggregation(p: Problem, name: str | None = None) -> None:
    """Fast aggregation halves pairs of tables in a tree: it needs a power-of-two ``actk``."""
    if p.actk & (p.actk - 1):
        raise LayoutError(f"fast aggregation needs a power-of-two number of tables per act sub-group, got "
                          f"min(ags/4, kfactor) = {p.actk}", tensor=name, rule="fast aggregation actk power of 2")


def fast_aggregation_bias_factor(actk: int, bits: int) -> float:
    """``E·(2^bits − 1)``: the plane-0 bias correction, in units of the fast-aggregation scale.

    A rounding-halving add ``(a + b + 1) >> 1`` of integers of random parity is high by 1/4 on average,
    and averaging keeps the bias its inputs already had, so after ``L = log2(actk)`` levels the result is
    high by ``E = L/4``.  Every bit-plane carries that bias with weight ``alpha_i``; since
    ``sum(alpha) = (2^b − 1)/2`` and plane 0's bias has weight ``alpha_0 = 1/2``, subtracting
    ``E·(2^b − 1)·scale`` from plane 0's bias removes it for all planes at once.  T-MAC writes
    ``E = (L div 4)`` with integer division, which is the same for ``actk = 16`` but drops the correction
    for ``actk = 8``; this uses ``L/4``.  The value is an exact small dyadic fraction.
    """
    levels = actk.bit_length() - 1
    e = levels / 4
    return e * ((1 << bits) - 1)
