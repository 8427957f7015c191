"""GGUF input: llama.cpp files read with the ``gguf`` package (memory-mapped), tensor by tensor.

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

Robustness: before ``GGUFReader`` sees a file, :func:`scan_gguf_header` walks the header with
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
from ..format.gguf_file import GGUF_MAGIC, GGUFFile, is_gguf, parse_header
from ..format.tensor import QuantTensor
from .base import FloatTensor, Reader, SourceModel, Tensor, TensorInfo
from .gguf_blocks import decode_q4_0, decode_q4_1, decode_tq1_0, decode_tq2_0
from .hf_float import rtn_settings
from ..archs.naming import is_projection
from ..quantize import quantize_rtn

__all__ = ["GGUF_MAGIC", "TMAC_KEY_PREFIX", "TMAC_TYPE_IDS", "GGUFTensorRecord", "GGUFHeader", "scan_gguf_header",
           "is_tmac_gguf", "GGUFSourceReader", "decode_q4_0", "decode_q4_1", "decode_tq2_0", "decode_tq1_0"]

TMAC_KEY_PREFIX = "tmac."
# GGML type ids T-MAC forks give I1..I4 that the gguf package does not know: 36-38 in the
# rebased fork (I1=36, I2=37, I3=38; I4=39 collides with upstream MXFP4) and 31-33 in the
# Aug-2024 fork (I1=31, I3=32, I4=33; I2=30 collides with BF16).  See tmac-format.md section 3.1.
# Ids 30 and 39 are told apart only by the ``tmac.`` metadata our writer adds.
TMAC_TYPE_IDS = frozenset({31, 32, 33, 36, 37, 38})

_Q = gguf.GGMLQuantizationType
_EXACT_TYPES = frozenset({_Q.Q4_0, _Q.Q4_1, _Q.TQ1_0, _Q.TQ2_0})
_PLAIN_FLOAT_TYPES = frozenset({_Q.F32, _Q.F16, _Q.F64})
_INT_TYPES = frozenset({_Q.I8, _Q.I16, _Q.I32, _Q.I64})

_VT = gguf.GGUFValueType


# ----------------------------------------------------------------------------------------------
# Header scan: the shared bounded parser (gguf_header) plus the checks a GGUF source needs
# ----------------------------------------------------------------------------------------------

@dataclass
class GGUFTensorRecord:
    """One tensor info of a GGUF header.  ``dims`` in GGUF order (``ne``: ``[K, M0, ...]``)."""

    name: str
    type_id: int
    dims: tuple[int, ...]
    offset: int  # relative to the data section
    nbytes: int | None = None  # None for types this scan does not size (T-MAC / unknown)

    @property
    def np_shape(self) -> tuple[int, ...]:
        """numpy (row-major) shape: ``dims`` reversed, e.g. ``(M0, K)``."""
        return tuple(reversed(self.dims))


@dataclass
class GGUFHeader:
    """What :func:`scan_gguf_header` learnt about a file without trusting it (a view of a :class:`GGUFFile`)."""

    parsed: GGUFFile
    tensors: list[GGUFTensorRecord]

    @property
    def path(self) -> Path:
        return self.parsed.path

    @property
    def version(self) -> int:
        return self.parsed.version

    @property
    def big_endian(self) -> bool:
        return self.parsed.big_endian

    @property
    def keys(self) -> list[str]:
        return list(self.parsed.kv)

    @property
    def alignment(self) -> int:
        return self.parsed.alignment

    @property
    def data_start(self) -> int:
        """Absolute offset of the data section (tensor ``offset`` values count from here)."""
        return self.parsed.data_offset

    @property
    def file_size(self) -> int:
        return self.parsed.file_size

    @property
    def is_tmac(self) -> bool:
        """True for a file in T-MAC's format (``tmac.*`` keys or T-MAC-only type ids)."""
        return (any(k.startswith(TMAC_KEY_PREFIX) for k in self.parsed.kv)
                or any(t.type_id in TMAC_TYPE_IDS for t in self.tensors))


def _type_sizes(type_id: int) -> tuple[int, int] | None:
    try:
        return gguf.GGML_QUANT_SIZES[_Q(type_id)]
    except (ValueError, KeyError):
        return None


def scan_gguf_header(path: str | Path) -> GGUFHeader:
    """Walk a GGUF header with bounds checks; raise :class:`TmacError` for anything malformed.

    :func:`~tmac_convert.format.gguf_file.parse_header` checks the structure (magic, version, counts,
    string and array lengths, value types, alignment, dimensions, aligned offsets, duplicate names);
    :func:`_check_tensors` adds type ids (known to gguf, or T-MAC's), row lengths a multiple of the
    type's block, and every tensor's data inside the file and not overlapping another.  T-MAC files
    are scanned but their tensor sizes are not checked (their size depends on kcfg).
    """
    parsed = parse_header(path)
    header = GGUFHeader(parsed, [GGUFTensorRecord(t.name, t.type_id, t.ne, t.rel_offset) for t in parsed.tensors])
    _check_tensors(header)
    return header


def _check_tensors(h: GGUFHeader) -> None:
    """Size each tensor from its type; check types, block multiples, data inside the file and no overlap."""
    tmac = h.is_tmac
    spans: list[tuple[int, int, str]] = []
    for t in h.tensors:
        nbytes = _tensor_nbytes(h, t, tmac)
        if nbytes is None:
            continue  # T-MAC blobs: the T-MAC reader sizes them from kcfg
        t.nbytes = nbytes
        _check_inside_file(h, t)
        spans.append((t.offset, t.offset + nbytes, t.name))
    _check_no_overlap(h, spans)


def _tensor_nbytes(h: GGUFHeader, t: GGUFTensorRecord, tmac: bool) -> int | None:
    """Bytes of ``t``'s data from its type (None for a T-MAC file's unsized types)."""
    sizes = _type_sizes(t.type_id)
    if sizes is None:
        if tmac:
            return None
        raise h.parsed.fail(f"GGML type id {t.type_id} is unknown to the gguf package (and not a T-MAC type)",
                            "supported GGML type", t.name)
    block, type_size = sizes
    if t.dims[0] % block:
        raise h.parsed.fail(f"row length {t.dims[0]} is not a multiple of the {_Q(t.type_id).name} block size "
                            f"{block}", "row length % block size == 0", t.name)
    n = 1
    for d in t.dims:
        n *= d
    return n // block * type_size


def _check_inside_file(h: GGUFHeader, t: GGUFTensorRecord) -> None:
    start = h.data_start + t.offset
    end = start + (t.nbytes or 0)
    if end > h.file_size:
        raise h.parsed.fail(f"data [{start}, {end}) runs past the end of the file ({h.file_size} bytes): truncated",
                            "tensor data within file", t.name)


def _check_no_overlap(h: GGUFHeader, spans: list[tuple[int, int, str]]) -> None:
    """``spans``: ``(start, end, name)`` relative to the data section, in any order."""
    spans = sorted(spans)
    for (a0, a1, an), (b0, _b1, bn) in zip(spans, spans[1:]):
        if b0 < a1:
            raise h.parsed.fail(f"data overlaps tensor {an} ([{a0}, {a1}) vs [{b0}, ...))",
                                "non-overlapping tensor data", bn)


def is_tmac_gguf(path: str | Path) -> bool:
    """True for a GGUF file in T-MAC's own format (written by tmac-convert or a T-MAC fork).

    Malformed files answer False (the GGUF reader then reports what is wrong with them).
    """
    try:
        return scan_gguf_header(path).is_tmac
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


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _field_value(f: Any) -> Any:
    """A GGUFReader field as a plain python value (int/float/bool/str/bytes or a list of them)."""
    try:
        value = f.contents()
    except UnicodeDecodeError:
        # not UTF-8: give the raw bytes instead of failing
        if f.types[0] == _VT.STRING:
            return bytes(f.parts[-1])
        return [bytes(f.parts[i]) for i in f.data]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return _plain(value)


@dataclass
class _Plan:
    """How one tensor is read: ``exact`` (Q4_0/Q4_1/TQ*), ``rtn`` (re-quantised) or ``float``."""

    record: GGUFTensorRecord
    qtype: gguf.GGMLQuantizationType
    mode: str
    index: int  # position in GGUFReader.tensors


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
        header = scan_gguf_header(path)
        if header.is_tmac:
            raise TmacError("this GGUF file is in T-MAC's own format (I1..I4 tensors or tmac.* metadata); "
                            "it is read by the T-MAC reader, not the plain GGUF reader", file=file,
                            rule="plain GGUF input")
        if header.big_endian:
            raise TmacError("big-endian GGUF files are not supported", file=file, rule="little-endian GGUF")
        try:
            reader = gguf.GGUFReader(path, "r")
        except Exception as e:  # noqa: BLE001 - GGUFReader raises anything on a bad file
            raise TmacError(f"the gguf package cannot parse the file: {type(e).__name__}: {e}", file=file,
                            rule="valid GGUF") from None
        by_name = {t.name: i for i, t in enumerate(reader.tensors)}
        metadata: dict[str, Any] = {}
        value_types: dict[str, tuple[int, ...]] = {}
        for key, f in reader.fields.items():
            if key.startswith("GGUF."):
                continue
            metadata[key] = _field_value(f)
            value_types[key] = tuple(int(t) for t in f.types)
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
            if rec.name not in by_name:  # cannot happen after the scan; belt and braces
                raise TmacError("tensor missing from the gguf package's view", file=file, tensor=rec.name,
                                rule="valid GGUF")
            if qtype in _INT_TYPES or (qtype not in _PLAIN_FLOAT_TYPES and not _can_dequantize(qtype)):
                raise TmacError(f"tensor type {qtype.name} cannot be dequantised by the gguf package",
                                file=file, tensor=rec.name, rule="supported GGML type")
            proj = is_projection(rec.name) and len(rec.dims) == 2
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
            plans.append(_Plan(rec, qtype, mode, by_name[rec.name]))

        bits, gs, zp = self._rtn_params(file) if rtn_types else (0, 0, False)
        for p in plans:
            if p.mode == "rtn" and gs != -1 and p.record.dims[0] % gs:
                raise TmacError(f"group size {gs} does not divide K = {p.record.dims[0]}", file=file,
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
                            gguf_kv=list(header.parsed.kv.values()), notes=notes,
                            _reader=self)
        self._state = {"header": header, "reader": reader, "plans": plans, "value_types": value_types,
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
            shape = rec.np_shape
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
        reader: gguf.GGUFReader = self._state["reader"]
        file = str(model.path)
        for p in self._state["plans"]:
            rt = reader.tensors[p.index]
            try:
                tensor = self._load(p, rt.data, file)
            except TmacError as e:
                raise _with_file(e, file) from None
            if isinstance(tensor, QuantTensor) and "quant_stats" in tensor.meta:
                stats = tensor.meta["quant_stats"]
                model.notes.append(f"{tensor.name}: {p.qtype.name} re-quantised RTN {stats['bits']}-bit, nmse "
                                   f"{stats['nmse']:.3e}, max abs error {stats['max_abs_err']:.3e}")
            yield tensor

    def _load(self, p: _Plan, data: np.ndarray, file: str) -> Tensor:
        name = p.record.name
        if p.mode == "exact":
            return _exact(name, p.qtype, data, file)
        if p.mode == "float":
            return FloatTensor(name, _as_float(p.qtype, data), quantizable=is_projection(name))
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
