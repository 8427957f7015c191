"""Stock llama.cpp tensor types: ``Q4_0``, ``Q4_1``, ``TQ1_0``, ``TQ2_0`` and dequantised ``F16``/``F32``.

The same GGUF as the T-MAC output (names, metadata, tokenizer, float tensors), with the quantised
projections written in a block type that stock llama.cpp runs.  Only the tensor encoding differs.

**Exact conversions** carry the source's integer codes over unchanged; the only change is that
the per-block constants are stored in float16, as these formats store them.  With ``c`` a code,
``b`` the bits, ``s`` the group scale and ``z'`` T-MAC's zero offset (``W = (c - 2^(b-1))*s - z'``):

==========  ==============================================  =========================================
type        exact when                                      block
==========  ==============================================  =========================================
``q4_0``    no zero offsets, group a multiple of 32 (or     ``d = s``, ``q = c - 2^(b-1) + 8``
            one scale per tensor), any ``b <= 4``
``q4_1``    group a multiple of 32 (or one scale per        ``d = s``, ``m = -(2^(b-1)*s + z')``,
            tensor), any ``b <= 4``                         ``q = c``
``tq2_0``   no zero offsets, every ``c - 2^(b-1)`` in       ``d = s``, ``t = c - 2^(b-1) + 1``
``tq1_0``   {-1, 0, 1} (ternary), group a multiple of 256
``f16``     always (each weight rounded to float16)         dequantised weights
``f32``     always (each weight rounded to float32)         dequantised weights
==========  ==============================================  =========================================

So GPTQ 4-bit symmetric g32/g64/g128 -> ``q4_0``; GPTQ 2/3/4-bit asymmetric -> ``q4_1`` (float16
rounding of its min ``m``, reported); BitNet ternary -> ``tq2_0``/``tq1_0`` (and ``q4_0``).

**Bit-identical to gguf's quantiser where it is exact.**  Each block is also quantised by
``gguf.quants.quantize`` from the float32 dequantised weights; per block the output keeps gguf's
bytes whenever their error is not larger than the code-preserving block's, else the
code-preserving block.  So an exact source gives exactly ``gguf.quants.quantize``'s bytes wherever
that quantiser is itself exact (always for TQ types; for Q4_0 when a block's largest-magnitude
weight is its negative extreme), and the output is never less exact than the codes allow.

**Lossy requests** (asymmetric -> ``q4_0``, 3-bit -> ``tq2_0``, float weights -> any block type...)
are refused at planning (each class's :meth:`~StockEncoding.plan_problem`) unless ``allow_lossy``;
then those tensors are re-quantised by ``gguf.quants.quantize`` (llama.cpp's reference quantiser)
and the error is reported per tensor.  Each exact block type gets a ``<type>:lossy`` twin
(``q4_0:lossy``...), generated when the class registers: the plan says which tensors may lose
precision.

Every written tensor is checked by :meth:`StockEncoding.check`, which decodes the bytes with
``gguf.quants.dequantize`` (not with this module) and compares them with the source's float64
weights; an exact encoding whose error exceeds the float16-rounding bound raises
:class:`~tmac_convert.errors.VerificationError`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import gguf
import numpy as np

from ...errors import TmacError, VerificationError
from ..tensor import FloatTensor, QuantTensor, Tensor, TensorInfo
from .base import Encoding, TensorPlan, _FloatEncoding

if TYPE_CHECKING:
    from ..runtime import Runtime

_Q = gguf.GGMLQuantizationType
F16_EPS = 2.0 ** -11        # half an ulp of float16, relative
F16_TINY = 2.0 ** -25       # half the spacing of float16 subnormals (absolute)
F32_EPS = 2.0 ** -24

@dataclass
class StockCheck:
    """How far a written tensor is from the source's weights (decoded by ``gguf.quants.dequantize``).

    ``nmse = sum (W' - W)^2 / sum W^2``; ``max_abs_err = max |W' - W|``; ``bound``: the largest error
    float16 rounding of the block constants can cause (None for lossy encodings); ``exact``: the
    encoding promised no re-quantisation.
    """

    name: str
    type: str
    nmse: float
    max_abs_err: float
    max_abs_weight: float
    exact: bool
    bound: float | None
    ok: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


#: float64 values handled at once: tensors are encoded and checked in row chunks of about this many
#: weights, so the working memory is a few times 32 MB whatever the tensor's size.
CHUNK_VALUES = 1 << 22


def _weights(tensor: Tensor) -> np.ndarray:
    """The source's float64 weights ``[M0, K]``."""
    if isinstance(tensor, QuantTensor):
        return tensor.dequantize(np.float64)
    return np.asarray(tensor.data, dtype=np.float64)


def _row_chunks(tensor: Tensor) -> list[tuple[slice, Tensor]]:
    """``(rows, the tensor restricted to those rows)`` in chunks of about :data:`CHUNK_VALUES` weights."""
    if isinstance(tensor, QuantTensor):
        m0, k = tensor.shape
    else:
        m0, k = np.shape(tensor.data)
    step = max(1, CHUNK_VALUES // max(k, 1))
    out: list[tuple[slice, Tensor]] = []
    for r in range(0, m0, step):
        sl = slice(r, min(m0, r + step))
        if sl == slice(0, m0):
            return [(sl, tensor)]
        if isinstance(tensor, QuantTensor):
            t = tensor
            part: Tensor = QuantTensor(t.name, t.codes[sl], t.scales if t.per_tensor_scale else t.scales[sl],
                                       None if t.zeros is None else t.zeros[sl], bits=t.bits, group_size=t.group_size)
        else:
            part = FloatTensor(tensor.name, np.asarray(tensor.data)[sl])
        out.append((sl, part))
    return out


def _block_values(a: np.ndarray, group: int, block: int, m0: int, nb: int) -> np.ndarray:
    """Per-group values ``[M0, G]`` (or a per-tensor ``[1]``) repeated to per-block ``[M0, nb]``."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        return np.full((m0, nb), float(a[0]))
    return np.repeat(a, group // block, axis=1)


def _to_f16(x: np.ndarray, what: str, name: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = x.astype("<f2")
    if not np.isfinite(h).all():
        raise TmacError(f"a block {what} of {float(np.abs(x).max()):g} overflows float16", tensor=name,
                        rule="block constants fit float16")
    return h


class StockEncoding(Encoding):
    """A llama.cpp block type.  Subclasses set ``qtype``; ``lossy`` variants may re-quantise."""

    quantized = False  # planned without bits/tiles: no T-MAC kernel check, no kcfg section
    qtype: ClassVar[gguf.GGMLQuantizationType]
    ftype: ClassVar[gguf.LlamaFileType]  # general.file_type of a file whose projections are of this type

    def __init_subclass__(cls, name: str = "", out_type: str | None = None, **kw: Any) -> None:
        super().__init_subclass__(name=name, out_type=out_type, **kw)
        if name and not cls.lossy:
            # the twin that may re-quantise (planned only with allow_lossy)
            type(f"{cls.__name__}Lossy", (cls,), {"lossy": True, "__doc__": f"{cls.__doc__} (lossy twin)",
                                                   "__module__": cls.__module__},
                 name=f"{name}:lossy", out_type=out_type)

    def file_type(self, runtime: "Runtime") -> int:
        return int(self.ftype)

    def type_label(self, plan: TensorPlan) -> str:
        return self.type_name

    @classmethod
    def plan_problem(cls, info: TensorInfo) -> tuple[str | None, str | None]:
        block = gguf.GGML_QUANT_SIZES[cls.qtype][0]
        k = info.shape[-1]
        if len(info.shape) != 2 or k % block:
            return f"K = {k} is not a multiple of the {cls.qtype.name} block of {block} weights", None
        if info.bits is None:
            return None, "float weights would be quantised"
        if info.bits > 4:
            return None, f"{info.bits}-bit codes"
        gs = k if info.per_tensor_scale else (info.group_size or k)
        if gs % block:
            return None, f"group size {gs} is not a multiple of the {block}-weight block"
        return None, cls._plan_codes_problem(info)

    @classmethod
    def _plan_codes_problem(cls, info: TensorInfo) -> str | None:
        """What this type's blocks cannot hold of ``info``'s codes (zero points, more than ternary...)."""
        return None

    @property
    def type_name(self) -> str:
        return self.qtype.name

    @property
    def block(self) -> int:
        return gguf.GGML_QUANT_SIZES[self.qtype][0]

    @property
    def type_size(self) -> int:
        return gguf.GGML_QUANT_SIZES[self.qtype][1]

    def nbytes(self, plan: TensorPlan) -> int:
        m0, k = plan.shape
        return m0 * (k // self.block) * self.type_size

    def gguf_type(self, plan: TensorPlan, runtime: "Runtime") -> int:
        return int(self.qtype)

    # -- exactness -------------------------------------------------------------------------------

    def exact_problem(self, t: QuantTensor) -> str | None:
        """Why ``t``'s codes cannot be carried over unchanged (None when they can)."""
        raise NotImplementedError

    def code_blocks(self, t: QuantTensor, theirs: np.ndarray) -> np.ndarray:
        """The code-preserving blocks: uint8 ``[M0, K/block*type_size]`` (``theirs``: gguf's blocks of the
        same weights, returned as they are when they already preserve the codes)."""
        raise NotImplementedError

    def bound(self, t: QuantTensor) -> float:
        """The largest error the float16 block constants of :meth:`code_blocks` can cause."""
        raise NotImplementedError

    # -- encode / decode -------------------------------------------------------------------------

    def encode(self, tensor: Tensor, plan: TensorPlan) -> np.ndarray:
        m0, k = plan.shape
        if tuple(np.shape(tensor.codes if isinstance(tensor, QuantTensor) else tensor.data)) != (m0, k):
            raise TmacError(f"shape differs from the planned {plan.shape}", tensor=plan.name,
                            rule="tensor shape matches plan")
        if k % self.block:
            raise TmacError(f"K = {k} is not a multiple of the {self.type_name} block of {self.block}",
                            tensor=plan.name, rule="block size divides K")
        problem = self.exact_problem(tensor) if isinstance(tensor, QuantTensor) else "float weights"
        if problem is not None and not self.lossy:
            raise TmacError(f"{self.type_name} cannot hold this tensor exactly ({problem}); "
                            "--allow-lossy re-quantises it", tensor=plan.name, rule="exact stock type")
        out = np.empty((m0, k // self.block * self.type_size), dtype=np.uint8)
        for rows, part in _row_chunks(tensor):
            out[rows] = self._encode_rows(part, plan, exact=problem is None)
        return out

    def _encode_rows(self, part: Tensor, plan: TensorPlan, *, exact: bool) -> np.ndarray:
        """Blocks of some rows: gguf's, or (exact sources) per block the code-preserving one where gguf's
        is less exact."""
        w = _weights(part)
        m0, k = w.shape
        with np.errstate(over="ignore"):  # a constant beyond float16 is reported below, by name
            theirs = gguf.quants.quantize(w.astype(np.float32), self.qtype)
        if not exact:
            if not np.isfinite(gguf.quants.dequantize(theirs, self.qtype)).all():
                raise TmacError(f"a block constant overflows float16 (largest |weight| {float(np.abs(w).max()):g})",
                                tensor=plan.name, rule="block constants fit float16")
            return theirs
        assert isinstance(part, QuantTensor)
        ours = self.code_blocks(part, theirs)
        if ours is theirs:
            return theirs
        nb, ts = k // self.block, self.type_size
        keep = (self._block_errors(theirs, w, nb) <= self._block_errors(ours, w, nb))[..., None]
        return np.where(keep, theirs.reshape(m0, nb, ts), ours.reshape(m0, nb, ts)).reshape(m0, nb * ts)

    def _block_errors(self, blocks: np.ndarray, w: np.ndarray, nb: int) -> np.ndarray:
        got = gguf.quants.dequantize(blocks, self.qtype).astype(np.float64)
        return np.abs(got - w).reshape(w.shape[0], nb, self.block).max(axis=2)

    def decode(self, data: np.ndarray, plan: TensorPlan) -> FloatTensor:
        m0, k = plan.shape
        raw = np.ascontiguousarray(data, dtype=np.uint8).reshape(m0, -1)
        return FloatTensor(plan.name, gguf.quants.dequantize(raw, self.qtype).reshape(m0, k))

    def check(self, tensor: Tensor, data: np.ndarray, plan: TensorPlan) -> StockCheck:
        """Decode ``data`` with gguf and compare with the source (raises when an exact encoding is not)."""
        raw = np.ascontiguousarray(data, dtype=np.uint8).reshape(plan.shape[0], -1)
        return _check(lambda rows: gguf.quants.dequantize(raw[rows], self.qtype), tensor, plan, self.type_name,
                      None if self._is_lossy(tensor) else self.bound(tensor))

    def _is_lossy(self, tensor: Tensor) -> bool:
        return not isinstance(tensor, QuantTensor) or self.exact_problem(tensor) is not None


def _check(decoded: Callable[[slice], np.ndarray], tensor: Tensor, plan: TensorPlan, type_name: str,
           bound: float | None) -> StockCheck:
    """Compare ``decoded(rows)`` (the written values of those rows) with the source, chunk by chunk."""
    err2 = energy = err = top = 0.0
    for rows, part in _row_chunks(tensor):
        w = _weights(part)
        d = decoded(rows).astype(np.float64).reshape(w.shape) - w
        err2 += float(np.sum(d * d))
        energy += float(np.sum(w * w))
        if d.size:
            err = max(err, float(np.abs(d).max()))
            top = max(top, float(np.abs(w).max()))
    nmse = err2 / energy if energy > 0 else float(err2 > 0)
    res = StockCheck(plan.name, type_name, nmse, err, top, exact=bound is not None, bound=bound)
    if bound is not None and not err <= bound:
        res.ok = False
        raise VerificationError(f"the {type_name} tensor differs from the source by {err:.3g}, more than float16 "
                                f"rounding of its block constants allows ({bound:.3g})", tensor=plan.name,
                                rule="exact stock type within float16 rounding")
    return res


def _max_abs_weight(tensor: Tensor) -> float:
    return max((float(np.abs(_weights(p)).max(initial=0.0)) for _, p in _row_chunks(tensor)), default=0.0)


def _scale_bound(t: QuantTensor, extra: np.ndarray | float = 0.0) -> float:
    """``F16_EPS * max(code * |s| + |extra|)`` plus float16-subnormal and float32 slack: the largest error
    of blocks whose constants ``s`` (and ``extra``, per block) are rounded to float16 once."""
    s = np.abs(np.asarray(t.scales, dtype=np.float64))
    if np.ndim(extra) == 2:  # per block: compare with the largest scale of the tensor
        s = np.full(np.shape(extra), float(s.max()) if s.size else 0.0)
    cmax = float((1 << t.bits) - 1)
    mag = cmax * s + np.abs(extra)
    top = float(mag.max()) if mag.size else 0.0
    return F16_EPS * top + (cmax + 1) * F16_TINY + 4 * F32_EPS * top


class _Q4(StockEncoding):
    """Blocks of 32 along K: the source's groups must be whole numbers of blocks."""

    def _group(self, t: QuantTensor) -> int:
        return t.shape[1] if t.per_tensor_scale else t.group_size

    def exact_problem(self, t: QuantTensor) -> str | None:
        if t.bits > 4:
            return f"{t.bits}-bit codes"
        if not t.per_tensor_scale and t.group_size % 32:
            return f"group size {t.group_size} is not a multiple of the 32-weight block"
        return None

    def _constants(self, t: QuantTensor) -> tuple[np.ndarray, np.ndarray | None]:
        m0, k = t.shape
        nb = k // 32
        d = _block_values(t.scales, self._group(t), 32, m0, nb)
        if t.zeros is None:
            return d, None
        return d, _block_values(t.zeros, self._group(t), 32, m0, nb)

    @staticmethod
    def _pack(q: np.ndarray, consts: list[np.ndarray]) -> np.ndarray:
        """Blocks of ``consts`` (float16 each, in order) then 16 bytes: element e < 16 in the low nibble of
        byte e, element e >= 16 in the high nibble of byte e - 16."""
        m0, k = q.shape
        qb = q.reshape(m0, k // 32, 32)
        qs = qb[..., :16] | (qb[..., 16:] << np.uint8(4))
        parts = [c.reshape(m0, k // 32, 1).view(np.uint8) for c in consts] + [qs]
        return np.concatenate(parts, axis=-1).reshape(m0, -1)


class Q4_0Encoding(_Q4, name="q4_0", out_type="q4_0"):
    """``Q4_0``: 32 weights, float16 ``d``, ``W = (q - 8) * d``."""

    qtype = _Q.Q4_0
    ftype = gguf.LlamaFileType.MOSTLY_Q4_0

    @classmethod
    def _plan_codes_problem(cls, info: TensorInfo) -> str | None:
        return "zero points (asymmetric) do not fit Q4_0's symmetric blocks" if info.zero_point else None

    def exact_problem(self, t: QuantTensor) -> str | None:
        if t.zeros is not None and np.any(t.zeros != 0):
            return "zero points (asymmetric) do not fit Q4_0's symmetric blocks"
        return super().exact_problem(t)

    def code_blocks(self, t: QuantTensor, theirs: np.ndarray) -> np.ndarray:
        d, _ = self._constants(t)
        q = (t.codes.astype(np.int16) + (8 - (1 << (t.bits - 1)))).astype(np.uint8)
        return self._pack(q, [_to_f16(d, "scale", t.name)])

    def bound(self, t: QuantTensor) -> float:
        return _scale_bound(t)


class Q4_1Encoding(_Q4, name="q4_1", out_type="q4_1"):
    """``Q4_1``: 32 weights, float16 ``d`` and ``m``, ``W = q * d + m``."""

    qtype = _Q.Q4_1
    ftype = gguf.LlamaFileType.MOSTLY_Q4_1

    def _min(self, t: QuantTensor) -> np.ndarray:
        d, z = self._constants(t)
        m = -float(1 << (t.bits - 1)) * d
        return m if z is None else m - z

    def code_blocks(self, t: QuantTensor, theirs: np.ndarray) -> np.ndarray:
        d, _ = self._constants(t)
        return self._pack(t.codes, [_to_f16(d, "scale", t.name), _to_f16(self._min(t), "min", t.name)])

    def bound(self, t: QuantTensor) -> float:
        return _scale_bound(t, extra=self._min(t))


class _TQ(StockEncoding):
    """Ternary types: 256 weights, float16 ``d``, ``W = (t - 1) * d`` with ``t`` in {0, 1, 2}.

    gguf's quantiser sets ``d`` to the block's largest magnitude, which for ternary weights is the
    scale itself, so its blocks are the code-preserving ones (see :meth:`code_blocks`)."""

    def exact_problem(self, t: QuantTensor) -> str | None:
        if t.zeros is not None and np.any(t.zeros != 0):
            return "zero points do not fit ternary blocks"
        if not t.per_tensor_scale and t.group_size % 256:
            return f"group size {t.group_size} is not a multiple of the 256-weight block"
        off = t.codes.astype(np.int16) - (1 << (t.bits - 1))
        bad = np.argwhere((off < -1) | (off > 1))
        if len(bad):
            r, c = (int(x) for x in bad[0])
            return f"not ternary: code {int(t.codes[r, c])} of {t.bits}-bit weights at row {r}, column {c}"
        return None

    @classmethod
    def _plan_codes_problem(cls, info: TensorInfo) -> str | None:
        if info.zero_point:
            return "zero points do not fit ternary blocks"
        if info.bits > 2:
            return f"{info.bits}-bit codes are not ternary"
        return None

    def code_blocks(self, t: QuantTensor, theirs: np.ndarray) -> np.ndarray:
        # gguf's block of ternary weights: d = max|W| = s (0 for an all-zero block, which decodes to 0
        # either way) and t = round(W/d) + 1, i.e. the codes themselves; check() proves they survived.
        return theirs

    def bound(self, t: QuantTensor) -> float:
        return _scale_bound(t)


class TQ1_0Encoding(_TQ, name="tq1_0", out_type="tq1_0"):
    """``TQ1_0``: ternary, base-3 packed (1.6875 bits per weight)."""

    qtype = _Q.TQ1_0
    ftype = gguf.LlamaFileType.MOSTLY_TQ1_0


class TQ2_0Encoding(_TQ, name="tq2_0", out_type="tq2_0"):
    """``TQ2_0``: ternary, 2 bits per weight."""

    qtype = _Q.TQ2_0
    ftype = gguf.LlamaFileType.MOSTLY_TQ2_0


class _Dequant(_FloatEncoding):
    """A quantised tensor written as its dequantised float weights (float tensors pass as usual)."""

    ftype: ClassVar[gguf.LlamaFileType]

    @property
    def type_name(self) -> str:
        return self.ggml.name

    def file_type(self, runtime: "Runtime") -> int:
        return int(self.ftype)

    def encode(self, tensor: Tensor, plan: TensorPlan) -> np.ndarray:
        if not isinstance(tensor, QuantTensor):
            return super().encode(tensor, plan)
        if tensor.shape != tuple(plan.shape):
            raise TmacError(f"shape {tensor.shape} differs from the planned {tuple(plan.shape)}", tensor=plan.name,
                            rule="tensor shape matches plan")
        out = np.empty(tensor.shape, dtype=self.dtype)
        for rows, part in _row_chunks(tensor):
            out[rows] = super().encode(FloatTensor(plan.name, part.dequantize(np.float64)),
                                       TensorPlan(plan.name, plan.encoding, part.shape))
        return out

    def check(self, tensor: Tensor, data: np.ndarray, plan: TensorPlan) -> StockCheck:
        got = self.decode(data, plan).data
        eps = F16_EPS if self.dtype.itemsize == 2 else F32_EPS
        top = _max_abs_weight(tensor)
        return _check(lambda rows: got[rows], tensor, plan, self.type_name, eps * top + F16_TINY)


class DequantF16Encoding(_Dequant, name="f16:dequant", out_type="f16"):
    """Dequantised weights in float16 (each weight rounded once)."""

    dtype = np.dtype("<f2")
    ggml = _Q.F16
    ftype = gguf.LlamaFileType.MOSTLY_F16


class DequantF32Encoding(_Dequant, name="f32:dequant", out_type="f32"):
    """Dequantised weights in float32."""

    dtype = np.dtype("<f4")
    ggml = _Q.F32
    ftype = gguf.LlamaFileType.ALL_F32
