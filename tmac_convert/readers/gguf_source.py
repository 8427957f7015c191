"""GGUF input: llama.cpp files, memory-mapped, tensor by tensor (header: the core's one GGUF parser).

Exact mappings to T-MAC's value convention ``W = (q - 2**(b-1)) * s - z'`` (no re-quantisation):

* ``Q4_0`` (block 32: fp16 ``d``, 16 bytes of nibbles, ``W = (q - 8) * d``): 4-bit codes ``q``,
  scales ``d``, group 32, no zero point.  Bit-exact (``d * (q - 8)`` is exact in float32).
* ``Q4_1`` (block 32: fp16 ``d``, fp16 ``m``, nibbles, ``W = d * q + m``): 4-bit codes ``q``,
  scales ``d`` and zero offsets ``z' = -(m + 8 d)``, group 32.  ``z'`` is computed in float64 and
  stored in float32: it is exact whenever ``m`` and ``8d`` are within 2**13 of each other in
  magnitude (always so for blocks gguf/llama.cpp quantise), otherwise rounded to nearest (half an
  ulp of ``|m + 8d|``).  gguf evaluates ``d*q + m`` in float32 with two roundings, so the two
  dequantisations agree within ``2 * eps32 * (|d q| + |m|)``.
* ``TQ2_0`` / ``TQ1_0`` (block 256, fp16 ``d``, ternary ``t`` in {0, 1, 2}, ``W = (t - 1) * d``):
  2-bit codes ``t + 1`` in {1, 2, 3} (implicit zero 2), scales ``d``, group 256, no zero point.
  Bit-exact.

Everything else that ``gguf.quants.dequantize`` understands (F32, F16, BF16, Q8_0, Q5_x, the
K-quants, IQ types...) is dequantised to float32; attention/MLP projections are then re-quantised
by round-to-nearest (:func:`~tmac_convert.quantize.quantize_rtn`) at the requested
``bits`` / ``group_size`` / ``zero_point`` (defaults as the HF float reader: 4-bit, group 128,
asymmetric) and the model's ``notes`` say so, with each tensor's error.  Other tensors
(embeddings, norms, output) pass through as float (F16/F32 as stored, everything else float32).

GGUF rows are already in llama.cpp order: no q/k permutation is applied.

Files written by tmac-convert itself (T-MAC ``I1..I4`` types, ``tmac.*`` metadata) are not
claimed here (:func:`is_tmac_gguf`): the T-MAC reader takes them.

Robustness: :func:`tmac_convert.format.gguf_file.scan` walks the header with
the shared bounded parser (:mod:`tmac_convert.format.gguf_file`: counts, string and array lengths,
dimensions, alignment) and checks types and every tensor's data inside the file and not
overlapping another, so truncated or lying files fail with a
:class:`TmacError` naming the file, tensor and rule instead of an arbitrary exception or a hang.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import gguf
import numpy as np

from ..errors import TmacError
from ..format.gguf_file import KV, TensorRecord, is_gguf, scan
from ..format.tensor import FileSpan, QuantTensor
from .base import FloatTensor, Reader, SourceModel, Tensor, TensorInfo
from .gguf_blocks import decode_q4_0, decode_q4_1, decode_tq1_0, decode_tq2_0
from .hf_float import rtn_settings
from ..archs.naming import is_projection
from ..quantize import quantize_rtn

__all__ = ["is_tmac_gguf", "GGUFSourceReader", "decode_q4_0", "decode_q4_1", "decode_tq2_0", "decode_tq1_0"]

_Q = gguf.GGMLQuantizationType
_EXACT_TYPES = frozenset({_Q.Q4_0, _Q.Q4_1, _Q.TQ1_0, _Q.TQ2_0})
_PLAIN_FLOAT_TYPES = frozenset({_Q.F32, _Q.F16, _Q.F64})
_INT_TYPES = frozenset({_Q.I8, _Q.I16, _Q.I32, _Q.I64})

_VT = gguf.GGUFValueType


def is_tmac_gguf(path: str | Path) -> bool:
    """True for a GGUF file in T-MAC's own format (written by tmac-convert or a T-MAC fork).

    Malformed files answer False (the GGUF reader then reports what is wrong with them).
    """
    try:
        return scan(path).is_tmac
    except TmacError:
        return False


# ----------------------------------------------------------------------------------------------
# The reader
# ----------------------------------------------------------------------------------------------

_DEQUANT_OK: dict[int, bool] = {}


def _can_dequantize(qtype: gguf.GGMLQuantizationType) -> bool:
    """Whether ``gguf.quants.dequantize`` implements ``qtype`` (probed once on a zero block)."""
    if qtype not in _DEQUANT_OK:
        _block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        try:
            gguf.quants.dequantize(np.zeros((1, type_size), dtype=np.uint8), qtype)
            _DEQUANT_OK[qtype] = True
        except Exception:  # noqa: BLE001 - a probe: NotImplementedError or anything else means "cannot"
            _DEQUANT_OK[qtype] = False
    return _DEQUANT_OK[qtype]


def _plain_value(kv: KV) -> Any:
    """A key/value as plain Python (int/float/bool/str/bytes or a list of them); a string array with any
    element that is not UTF-8 comes back as bytes throughout."""
    v = kv.value
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, list) and any(isinstance(x, bytes) for x in v):
        return [x if isinstance(x, bytes) else x.encode("utf-8") for x in v]
    return v


_NP_DTYPES = {_Q.F32: np.float32, _Q.F16: np.float16, _Q.F64: np.float64, _Q.I8: np.int8, _Q.I16: np.int16,
              _Q.I32: np.int32, _Q.I64: np.int64}


def _tensor_data(mm: np.ndarray, rec: TensorRecord, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """A tensor's data as a read-only view of the file map: float/int types in their numpy dtype and shape,
    block types as uint8 rows ``[..., ne0 / block * type_size]`` (the shape ``gguf.quants`` takes)."""
    raw = mm[rec.offset:rec.offset + (rec.nbytes or 0)]
    shape = rec.shape
    if qtype in _NP_DTYPES:
        return raw.view(_NP_DTYPES[qtype]).reshape(shape)
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return raw.reshape(*shape[:-1], shape[-1] // block * type_size)


@dataclass
class _Plan:
    """How one tensor is read: ``exact`` (Q4_0/Q4_1/TQ*), ``rtn`` (re-quantised) or ``float``."""

    record: TensorRecord
    qtype: gguf.GGMLQuantizationType
    mode: str


class GGUFSourceReader(Reader, name="gguf", priority=40):
    """GGUF files (not T-MAC's own).

    Options (only for projections stored in a type that needs re-quantising): ``bits``,
    ``group_size`` (-1 = per row) and ``zero_point``; unset ones take the float reader's defaults
    (``hf_float.DEFAULTS``: 4-bit, group 128, asymmetric); ``quantize=False`` passes such projections
    through as float instead (for stock llama.cpp outputs).
    """

    @classmethod
    def detect(cls, path: Path) -> bool:
        return is_gguf(path) and not is_tmac_gguf(path)

    # -- options ---------------------------------------------------------------------------------

    def _rtn_params(self, file: str | None = None) -> tuple[int, int, bool]:
        """``(bits, group_size, zero_point)`` for re-quantised projections: options, else the float
        reader's defaults (:func:`hf_float.rtn_settings`), so GGUF and HF float sources behave alike."""
        return rtn_settings(self.options, file)

    # -- open ------------------------------------------------------------------------------------

    def open(self, path: Path) -> SourceModel:
        path = Path(path)
        file = str(path)
        header = scan(path)
        if header.is_tmac:
            raise TmacError("this GGUF file is in T-MAC's own format (I1..I4 tensors or tmac.* metadata); "
                            "it is read by the T-MAC reader, not the plain GGUF reader", file=file,
                            rule="plain GGUF input")
        if header.big_endian:
            raise TmacError("big-endian GGUF files are not supported", file=file, rule="little-endian GGUF")
        metadata: dict[str, Any] = {}
        value_types: dict[str, tuple[int, ...]] = {}
        for key, kv in header.kv.items():
            metadata[key] = _plain_value(kv)
            value_types[key] = (kv.vtype,) if kv.sub_type is None else (kv.vtype, kv.sub_type)
        arch = metadata.get("general.architecture")
        if not isinstance(arch, str) or not arch:
            raise TmacError("metadata general.architecture is missing", file=file, rule="general.architecture")

        plans: list[_Plan] = []
        counts: Counter[str] = Counter()
        exact_types: Counter[str] = Counter()
        rtn_types: Counter[str] = Counter()
        float_other: Counter[str] = Counter()
        for rec in header.tensors:
            qtype = _Q(rec.type_id)
            counts[qtype.name] += 1
            if qtype in _INT_TYPES or (qtype not in _PLAIN_FLOAT_TYPES and not _can_dequantize(qtype)):
                raise TmacError(f"tensor type {qtype.name} cannot be dequantised by the gguf package",
                                file=file, tensor=rec.name, rule="supported GGML type")
            proj = is_projection(rec.name) and len(rec.ne) == 2
            if proj and qtype in _EXACT_TYPES:
                mode = "exact"
                exact_types[qtype.name] += 1
            elif proj and self.options.get("quantize", True):
                mode = "rtn"
                rtn_types[qtype.name] += 1
            else:
                mode = "float"
                if qtype not in _PLAIN_FLOAT_TYPES:
                    float_other[qtype.name] += 1
            plans.append(_Plan(rec, qtype, mode))

        bits, gs, zp = self._rtn_params(file) if rtn_types else (0, 0, False)
        for p in plans:
            if p.mode == "rtn" and gs != -1 and p.record.ne[0] % gs:
                raise TmacError(f"group size {gs} does not divide K = {p.record.ne[0]}", file=file,
                                tensor=p.record.name, rule="K % group_size == 0")

        notes: list[str] = []
        if exact_types:
            notes.append("GGUF " + ", ".join(f"{n} ({c})" for n, c in sorted(exact_types.items()))
                         + " projections map exactly to T-MAC codes (Q4_0: 4-bit g32; Q4_1: 4-bit g32 with "
                         "zero offsets; TQ1_0/TQ2_0: ternary 2-bit g256), no re-quantisation")
        if rtn_types:
            notes.append("GGUF " + ", ".join(f"{n} ({c})" for n, c in sorted(rtn_types.items()))
                         + f" projections are dequantised with gguf.quants.dequantize and re-quantised by "
                         f"round-to-nearest to {bits}-bit, group {gs}, "
                         f"{'asymmetric' if zp else 'symmetric'} (per-tensor error in each tensor's meta)")
        given = [k for k in ("bits", "group_size", "zero_point") if self.options.get(k) is not None]
        if given and not rtn_types:
            notes.append(f"option(s) {', '.join(given)} not used: every projection of this GGUF maps exactly "
                         "to T-MAC codes without re-quantisation")
        if float_other:
            notes.append("GGUF " + ", ".join(f"{n} ({c})" for n, c in sorted(float_other.items()))
                         + " non-projection tensors pass through dequantised to float32")
        quant: dict[str, Any] = {
            "gguf_file_type": metadata.get("general.file_type"),
            "tensor_types": dict(counts),
        }
        if rtn_types:
            quant.update({"bits": bits, "group_size": gs, "zero_point": zp, "method": "rtn"})
        model = SourceModel(path=path, format="gguf", architecture=arch, gguf_arch=arch, config={},
                            quantization=quant, tokenizer_files={}, gguf_metadata=metadata,
                            gguf_kv=list(header.kv.values()), notes=notes,
                            _reader=self)
        self._state = {"header": header, "path": path, "map": np.memmap(path, dtype=np.uint8, mode="r") if header.file_size else np.zeros(0, np.uint8), "plans": plans, "value_types": value_types,
                       "rtn": (bits, gs, zp)}
        return model

    def metadata_types(self, model: SourceModel) -> dict[str, tuple[int, ...]]:
        """GGUF value types of each metadata key (``(type,)`` or ``(ARRAY, item type)``), for writers
        that re-emit ``model.gguf_metadata`` with the source's exact types."""
        return dict(self._state["value_types"])

    # -- tensors ---------------------------------------------------------------------------------

    def tensor_infos(self, model: SourceModel) -> list[TensorInfo]:
        bits, gs, zp = self._state["rtn"]
        infos = []
        for p in self._state["plans"]:
            rec = p.record
            shape = rec.shape
            if p.mode == "exact":
                infos.append(TensorInfo(rec.name, shape, bits=4 if p.qtype in (_Q.Q4_0, _Q.Q4_1) else 2,
                                        group_size=32 if p.qtype in (_Q.Q4_0, _Q.Q4_1) else 256,
                                        zero_point=p.qtype == _Q.Q4_1, nbytes=rec.nbytes or 0))
            elif p.mode == "rtn":
                infos.append(TensorInfo(rec.name, shape, bits=bits, group_size=shape[1] if gs in (-1, 0) else gs,
                                        zero_point=zp, nbytes=rec.nbytes or 0))
            else:
                infos.append(TensorInfo(rec.name, shape, nbytes=rec.nbytes or 0))
        return infos

    def iter_tensors(self, model: SourceModel) -> Iterator[Tensor]:
        mm: np.ndarray = self._state["map"]
        file = str(model.path)
        for p in self._state["plans"]:
            try:
                tensor = self._load(p, _tensor_data(mm, p.record, p.qtype), file)
            except TmacError as e:
                raise _with_file(e, file) from None
            if isinstance(tensor, QuantTensor) and "quant_stats" in tensor.meta:
                stats = tensor.meta["quant_stats"]
                tensor.meta["note"] = (f"{tensor.name}: {p.qtype.name} re-quantised RTN {stats['bits']}-bit, nmse "
                                       f"{stats['nmse']:.3e}, max abs error {stats['max_abs_err']:.3e}")
            yield tensor

    def _load(self, p: _Plan, data: np.ndarray, file: str) -> Tensor:
        name = p.record.name
        if p.mode == "exact":
            return _exact(name, p.qtype, data, file)
        if p.mode == "float":
            span = None
            if p.qtype in (_Q.F32, _Q.F16) and p.record.nbytes:
                span = FileSpan(self._state["path"], p.record.offset, p.record.nbytes, data.dtype.newbyteorder("<").str)
            return FloatTensor(name, _as_float(p.qtype, data), quantizable=is_projection(name), span=span)
        bits, gs, zp = self._state["rtn"]
        w = _as_float(p.qtype, data)
        qt, stats = quantize_rtn(name, w, bits=bits, group_size=gs, zero_point=zp)
        qt.meta.update({"source_type": p.qtype.name, "quant_stats": stats})
        return qt


def _with_file(e: TmacError, file: str) -> TmacError:
    """``e`` naming ``file`` too (errors raised by QuantTensor/quantize_rtn know only the tensor)."""
    if e.file:
        return e
    message = str(e)
    prefix = f"tensor {e.tensor}: " if e.tensor else ""
    if prefix and message.startswith(prefix):
        message = message[len(prefix):]
    return type(e)(message, tensor=e.tensor, file=file, rule=e.rule)


def _as_float(qtype: gguf.GGMLQuantizationType, data: np.ndarray) -> np.ndarray:
    """Tensor data as float in numpy shape: F32/F16 as stored (memory-mapped), others float32."""
    if qtype in (_Q.F32, _Q.F16):
        return data
    if qtype == _Q.F64:
        return data.astype(np.float32)
    return np.asarray(gguf.quants.dequantize(data, qtype), dtype=np.float32)


def _exact(name: str, qtype: gguf.GGMLQuantizationType, raw: np.ndarray, file: str) -> QuantTensor:
    """Q4_0 / Q4_1 / TQ1_0 / TQ2_0 rows ``[M0, bytes]`` -> a QuantTensor without re-quantising."""
    if qtype == _Q.Q4_0:
        codes, d = decode_q4_0(raw)
        return QuantTensor(name, codes, d, None, bits=4, group_size=32, meta={"source_type": qtype.name})
    if qtype == _Q.Q4_1:
        codes, d, m = decode_q4_1(raw)
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf blocks are refused by QuantTensor below
            zeros = (-(m.astype(np.float64) + 8.0 * d.astype(np.float64))).astype(np.float32)
        return QuantTensor(name, codes, d, zeros, bits=4, group_size=32, meta={"source_type": qtype.name})
    t, d = decode_tq2_0(raw) if qtype == _Q.TQ2_0 else decode_tq1_0(raw)
    if t.size and int(t.max()) > 2:
        row, col = (int(v) for v in np.argwhere(t > 2)[0])
        raise TmacError(f"TQ2_0 field value 3 at row {row}, column {col} is not a ternary code (0, 1 or 2)",
                        file=file, tensor=name, rule="ternary codes in range")
    return QuantTensor(name, t + np.uint8(1), d, None, bits=2, group_size=256, meta={"source_type": qtype.name})
