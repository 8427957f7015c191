"""Output encodings of one tensor, registered by name (the pattern of the ``gguf`` package's quant classes).

An encoding turns a tensor of the intermediate form into the bytes a file stores, says how many
bytes and which GGUF type id that is, and turns the bytes back (for reading our own files).  A
later stock-type encoder (``Q4_0``, ``TQ2_0``...) is one more subclass here::

    class Q4_0Encoding(Encoding, name="q4_0"):
        ...

Built in: ``tmac`` (T-MAC ``I1..I4``: the Format A blob), ``f16`` and ``f32``.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import TYPE_CHECKING, ClassVar

import gguf
import numpy as np

from ..errors import TmacError
from ..layouts import TileConfig, blob_nbytes, pack, unpack
from .tensor import FloatTensor, Tensor
from .tensor import QuantTensor

if TYPE_CHECKING:
    from .runtime import Runtime


@dataclass
class TensorPlan:
    """How one tensor is written.

    Attributes:
        name: GGUF tensor name.
        encoding: registered :class:`Encoding` name.
        shape: numpy (row-major) shape; ``(M0, K)`` for quantised tensors.
        nbytes: bytes the encoding writes.
        src_nbytes: bytes the source stores for it (for the compression ratio).
        bits, group_size, zero_point, per_tensor_scale: quantisation (quantised tensors only;
            ``group_size`` is ``K`` for a per-tensor scale).
        tiles: bm and kfactor (quantised tensors only).
        generated: True for a tensor the converter adds (e.g. Llama 3 ``rope_freqs.weight``).
    """

    name: str
    encoding: str
    shape: tuple[int, ...]
    nbytes: int = 0
    src_nbytes: int = 0
    bits: int | None = None
    group_size: int | None = None
    zero_point: bool = False
    per_tensor_scale: bool = False
    tiles: TileConfig | None = None
    generated: bool = False

    @property
    def quantized(self) -> bool:
        return self.bits is not None


class Encoding:
    """Base of output encodings; subclasses register with ``class X(Encoding, name="...")``."""

    registry: ClassVar[dict[str, type["Encoding"]]] = {}
    name: ClassVar[str] = ""
    quantized: ClassVar[bool] = False

    def __init_subclass__(cls, name: str = "", **kw) -> None:
        super().__init_subclass__(**kw)
        if name:
            cls.name = name
            Encoding.registry[name] = cls

    def nbytes(self, plan: TensorPlan) -> int:
        """Bytes written for a tensor planned as ``plan``."""
        raise NotImplementedError

    def gguf_type(self, plan: TensorPlan, runtime: "Runtime") -> int:
        """The GGUF/ggml type id stored in the tensor info."""
        raise NotImplementedError

    def encode(self, tensor: Tensor, plan: TensorPlan) -> np.ndarray:
        """The stored bytes: a C-contiguous array whose ``nbytes`` equals ``self.nbytes(plan)``."""
        raise NotImplementedError

    def decode(self, data: np.ndarray, plan: TensorPlan) -> Tensor:
        """Inverse of :meth:`encode`: uint8 bytes -> the intermediate form."""
        raise NotImplementedError

    def check(self, tensor: Tensor, data: np.ndarray, plan: TensorPlan):
        """Prove ``data`` computes what ``tensor`` does; raise :class:`VerificationError` if not.

        Returns an object with ``nmse`` and ``max_abs_err`` (for the report), or None when the encoding
        has nothing to prove (a float cast).  T-MAC blobs are checked by the kernel instead (the
        pipeline calls :func:`tmac_convert.proof.verify_tensor`, which needs the activation group).
        """
        return None


def get_encoding(name: str) -> Encoding:
    """An instance of the encoding registered as ``name``."""
    try:
        return Encoding.registry[name]()
    except KeyError:
        raise TmacError(f"unknown output encoding {name!r}; known: {', '.join(sorted(Encoding.registry))}",
                        rule="encoding name") from None


class TmacEncoding(Encoding, name="tmac"):
    """T-MAC ``I{bits}``: the Format A blob (permuted weights, then float32 scales and zero offsets)."""

    quantized = True

    def nbytes(self, plan: TensorPlan) -> int:
        m0, k = plan.shape
        return blob_nbytes(m0, k, plan.bits, plan.group_size or k, plan.zero_point, plan.per_tensor_scale)

    def gguf_type(self, plan: TensorPlan, runtime: "Runtime") -> int:
        return runtime.type_ids[plan.bits]

    def encode(self, tensor: Tensor, plan: TensorPlan) -> np.ndarray:
        if not isinstance(tensor, QuantTensor):
            raise TmacError("expected a quantised tensor", tensor=plan.name, rule="tensor kind matches plan")
        assert plan.tiles is not None
        return pack(tensor.codes, tensor.scales, tensor.zeros, bits=tensor.bits, bm=plan.tiles.bm,
                    kfactor=plan.tiles.kfactor, threads=1, name=plan.name)

    def decode(self, data: np.ndarray, plan: TensorPlan) -> QuantTensor:
        assert plan.tiles is not None
        m0, k = plan.shape
        gs = k if plan.per_tensor_scale else plan.group_size
        codes, scales, zeros = unpack(data, m=m0, k=k, bits=plan.bits, group_size=gs, zero_point=plan.zero_point,
                                      bm=plan.tiles.bm, kfactor=plan.tiles.kfactor, threads=1, name=plan.name)
        if plan.per_tensor_scale != (scales.ndim == 1):
            raise TmacError("the blob length says " + ("per-tensor" if scales.ndim == 1 else "group") +
                            " scales, the file's metadata says otherwise", tensor=plan.name, rule="blob length")
        return QuantTensor(plan.name, codes, scales, zeros, bits=plan.bits, group_size=gs)


class _FloatEncoding(Encoding):
    dtype: ClassVar[np.dtype]
    ggml: ClassVar[gguf.GGMLQuantizationType]

    def nbytes(self, plan: TensorPlan) -> int:
        return prod(plan.shape) * self.dtype.itemsize

    def gguf_type(self, plan: TensorPlan, runtime: "Runtime") -> int:
        return int(self.ggml)

    def encode(self, tensor: Tensor, plan: TensorPlan) -> np.ndarray:
        if not isinstance(tensor, FloatTensor):
            raise TmacError(f"a quantised tensor cannot be written as {self.name}", tensor=plan.name,
                            rule="tensor kind matches plan")
        data = np.asarray(tensor.data)
        if tuple(data.shape) != tuple(plan.shape):
            raise TmacError(f"shape {tuple(data.shape)} differs from the planned {tuple(plan.shape)}",
                            tensor=plan.name, rule="tensor shape matches plan")
        if data.dtype.kind != "f":
            raise TmacError(f"float tensor has dtype {data.dtype}", tensor=plan.name, rule="float tensor dtype")
        with np.errstate(over="ignore"):
            out = np.ascontiguousarray(data, dtype=self.dtype)
        if out.dtype.itemsize < data.dtype.itemsize and not np.isfinite(out).all() and np.isfinite(data).all():
            big = float(np.abs(data).max())
            raise TmacError(f"value {big:g} overflows {self.name} (max {float(np.finfo(self.dtype).max):g})",
                            tensor=plan.name, rule=f"fits in {self.name}")
        return out

    def decode(self, data: np.ndarray, plan: TensorPlan) -> FloatTensor:
        arr = np.frombuffer(memoryview(np.ascontiguousarray(data)).cast("B"), dtype=self.dtype)
        if arr.size != prod(plan.shape):
            raise TmacError(f"{arr.nbytes} bytes do not hold a {self.name} tensor of shape {plan.shape}",
                            tensor=plan.name, rule="tensor size")
        return FloatTensor(plan.name, arr.reshape(plan.shape))


class F16Encoding(_FloatEncoding, name="f16"):
    """IEEE half precision, little-endian (GGML ``F16``)."""

    dtype = np.dtype("<f2")
    ggml = gguf.GGMLQuantizationType.F16


class F32Encoding(_FloatEncoding, name="f32"):
    """IEEE single precision, little-endian (GGML ``F32``)."""

    dtype = np.dtype("<f4")
    ggml = gguf.GGMLQuantizationType.F32


def encoding_for_type(type_id: int, runtime: "Runtime") -> str | None:
    """The registered encoding that writes GGUF type ``type_id`` under ``runtime`` (None if none does)."""
    if runtime.bits_of(type_id) is not None:
        return "tmac"
    for name, cls in Encoding.registry.items():
        if issubclass(cls, _FloatEncoding) and int(cls.ggml) == type_id:
            return name
    return None
