"""The intermediate form every reader yields and every layout consumes.

* :class:`QuantTensor`: codes, scales and zero offsets of a quantised matrix (T-MAC's value convention);
* :class:`FloatTensor`: a tensor that passes through unquantised;
* :class:`TensorInfo`: what is known of a tensor before it is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from ..errors import TmacError
from .rules import SUPPORTED_BITS, bits_supported

_F16_EXPONENT = np.uint16(0x7C00)


def all_finite(a: np.ndarray) -> bool:
    """Whether every value of float array ``a`` is finite.  float16 is tested on its bits (an all-ones
    exponent is infinity or NaN): numpy's float16 ``isfinite`` converts one value at a time, 8x slower on
    the millions of scales of a large checkpoint."""
    if a.dtype == np.float16:
        return not bool(np.any((a.view(np.uint16) & _F16_EXPONENT) == _F16_EXPONENT))
    return bool(np.all(np.isfinite(a)))


@dataclass
class QuantTensor:
    """A quantised weight matrix in T-MAC's value convention.

    Attributes:
        name: tensor name (GGUF naming once a reader has mapped it).
        codes: uint8 ``[M0, K]``, values in ``[0, 2**bits)``; the implicit zero is ``2**(bits-1)``.
        scales: float ``[M0, K // group_size]`` group scales, or float ``[1]`` for one
            scale per tensor (BitNet; then ``group_size == K``).
        zeros: optional float, same shape as a 2-D ``scales``: T-MAC zero offsets
            ``z' = (z - 2**(bits-1)) * s``.
        bits: 1, 2, 3 or 4.
        group_size: weights per scale along K (``K`` for per-channel and per-tensor scales).
        meta: what the reader records about the tensor (its source, a note for the report).
        codes_in_range: the producer vouches that every code is below ``2**bits`` (codes unpacked from
            ``bits``-bit fields cannot be larger), so :meth:`validate` skips scanning them; the layout's pack
            checks the range again on the way (:func:`tmac_convert.layouts.format_a.pack`).

    The dequantised weight is ``W[m, k] = (codes[m, k] - 2**(bits-1)) * s[m, g] - z'[m, g]`` with
    ``g = k // group_size`` (``s = scales[0]`` and no ``z'`` for a per-tensor scale).
    """

    name: str
    codes: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray | None = None
    bits: int = 2
    group_size: int = 128
    meta: dict = field(default_factory=dict)
    codes_in_range: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def shape(self) -> tuple[int, int]:
        """``(M0, K)``: output and input features."""
        return (int(self.codes.shape[0]), int(self.codes.shape[1]))

    @property
    def per_tensor_scale(self) -> bool:
        """True when one scale covers the whole tensor (the BitNet case)."""
        return self.scales.ndim == 1

    def _fail(self, message: str, rule: str) -> None:
        raise TmacError(message, tensor=self.name, rule=rule)

    def validate(self) -> None:
        """Check every invariant of the intermediate form; raise :class:`TmacError` naming the tensor."""
        if not bits_supported(self.bits):
            self._fail(f"bits must be one of {SUPPORTED_BITS}, got {self.bits}", "bits")
        codes = self.codes
        if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8 or codes.ndim != 2:
            self._fail(f"codes must be a 2-D uint8 array, got {getattr(codes, 'dtype', type(codes))} "
                       f"with shape {getattr(codes, 'shape', None)}", "codes dtype")
        m0, k = codes.shape
        if m0 == 0 or k == 0:
            self._fail(f"codes shape {codes.shape} is empty", "codes shape")
        if not self.codes_in_range and codes.size and int(codes.max()) >= (1 << self.bits):
            self._fail(f"code {int(codes.max())} out of range [0, {1 << self.bits}) for {self.bits}-bit",
                       "code range")
        s = self.scales
        if not isinstance(s, np.ndarray) or s.dtype.kind != "f":
            self._fail(f"scales must be a float array, got {getattr(s, 'dtype', type(s))}", "scales dtype")
        if s.ndim == 1:
            if s.shape != (1,):
                self._fail(f"a per-tensor scale must have shape (1,), got {s.shape}", "scales shape")
            if self.zeros is not None:
                self._fail("zero offsets are not supported with a per-tensor scale", "zeros with per-tensor scale")
            if self.group_size != k:
                self._fail(f"a per-tensor scale needs group_size == K ({k}), got {self.group_size}", "group size")
        elif s.ndim == 2:
            if self.group_size <= 0 or k % self.group_size:
                self._fail(f"group size {self.group_size} does not divide K = {k}", "K % group_size == 0")
            want = (m0, k // self.group_size)
            if s.shape != want:
                self._fail(f"scales shape {s.shape} != {want} for codes {codes.shape} and group size "
                           f"{self.group_size}", "scales shape")
        else:
            self._fail(f"scales must be 1-D or 2-D, got {s.ndim}-D", "scales shape")
        if not all_finite(s):
            self._fail("scales contain NaN or infinity", "finite scales")
        if self.zeros is not None:
            z = self.zeros
            if not isinstance(z, np.ndarray) or z.dtype.kind != "f" or z.shape != s.shape:
                self._fail(f"zeros must be a float array of shape {s.shape}, got "
                           f"{getattr(z, 'dtype', type(z))} {getattr(z, 'shape', None)}", "zeros shape")
            if not all_finite(z):
                self._fail("zeros contain NaN or infinity", "finite zeros")

    def dequantize(self, dtype: np.dtype = np.float32) -> np.ndarray:
        """The float weight ``[M0, K]`` this tensor stands for, computed in float64 and cast to ``dtype``."""
        q = self.codes.astype(np.float64) - float(1 << (self.bits - 1))
        m0, k = self.shape
        if self.per_tensor_scale:
            w = q * float(self.scales[0])
        else:
            s = np.repeat(self.scales.astype(np.float64), self.group_size, axis=1)
            w = q * s
            if self.zeros is not None:
                w -= np.repeat(self.zeros.astype(np.float64), self.group_size, axis=1)
        return w.astype(dtype, copy=False)


@dataclass(frozen=True)
class FileSpan:
    """A tensor's bytes stored verbatim in a file: ``nbytes`` bytes at ``offset`` of ``path``, C order, numpy
    dtype ``dtype`` (``"<f2"``, ``"<f4"``).  A writer can copy them file to file without reading them."""

    path: Path
    offset: int
    nbytes: int
    dtype: str

    def array(self, shape: tuple[int, ...]) -> np.ndarray:
        """The bytes as a read-only memory map of ``shape`` (pages are read only when touched)."""
        count = self.nbytes // np.dtype(self.dtype).itemsize
        if count == 0:
            return np.zeros(shape, self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=(count,)).reshape(shape)


@dataclass
class FloatTensor:
    """A tensor that passes through unquantised.

    Attributes:
        name: GGUF tensor name (e.g. ``token_embd.weight``, ``blk.0.attn_norm.weight``).
        data: float16 or float32 array in numpy (row-major, HF) shape, already in GGUF row order.
        quantizable: True for an attention/MLP projection that a float source may quantise.
        span: where ``data``'s exact bytes lie in the source file, when they are stored there verbatim
            (then ``data`` is a memory map of them and an unchanged tensor is copied file to file).
    """

    name: str
    data: np.ndarray
    quantizable: bool = False
    span: FileSpan | None = None


Tensor = Union[QuantTensor, FloatTensor]


@dataclass
class TensorInfo:
    """What a reader knows about a tensor before loading it (for planning, progress and kcfg checks).

    ``shape`` is ``(M0, K)`` for quantised tensors, the numpy shape otherwise; ``bits`` is None for float.
    """

    name: str
    shape: tuple[int, ...]
    bits: int | None = None
    group_size: int | None = None
    zero_point: bool = False
    per_tensor_scale: bool = False
    nbytes: int = 0  # bytes the source stores for it
