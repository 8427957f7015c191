"""GPTQ checkpoints (AutoGPTQ v1, GPTQModel v2/v1, EfficientQAT exports) -> the intermediate form.

Per quantised linear layer the checkpoint stores (``W`` = word bits, 32 for int32):

* ``qweight`` int ``[K*b/W, M0]``: codes, a little-endian bit stream along K (see :mod:`.gptq_bits`);
* ``qzeros``  int ``[G, M0*b/W]``: stored zero points along M0 (``z - 1`` in v1, ``z`` in v2);
* ``scales``  float ``[G, M0]`` with ``G = K / group_size`` (1 for per channel);
* ``g_idx``   int32 ``[K]`` (optional): the group of each input column (act-order when non-trivial).

It becomes ``QuantTensor(codes [M0, K], scales [M0, G], zeros z' [M0, G] | None)`` with
``z' = (z - 2**(b-1)) * s`` computed in the scale dtype's own arithmetic (float16 for float16 scales,
as T-MAC's reference does, so the blobs are byte-exact), in GGUF naming and GGUF row order (q/k
permuted for Llama-family models).  Metadata (zeros, scales, g_idx) is scanned once at open time,
which is small; weights are read one tensor at a time while iterating.

Options: ``gptq_format`` ("v1"/"v2", overriding the decision), ``act_order`` ("refuse", the default,
or "requantize" to re-quantise act-order layers to contiguous groups, reporting the error).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import TmacError
from ..parallel import cpu_count, map_in_threads
from ..format.rules import SUPPORTED_BITS
from ..format.tensor import QuantTensor, all_finite
from .base import FloatTensor, Reader, SourceModel, Tensor, TensorInfo
from ..buffer_pool import BufferPool
from .gptq_bits import (period, scale_facts_f16, transpose_scales_and_offsets, unpack_qweight, unpack_qzeros,
                        word_dtype)
from .gptq_config import GPTQConfig, ZeroEvidence, decide_format, find_quant_config, parse_config
from .hf_common import HFModel, file_order_key, model_folder, tokenizer_files
from ..archs.naming import is_projection
from ..quantize import quantize_rtn
from .safetensors_io import FLOAT_DTYPES, SafetensorsCheckpoint

ACT_ORDER_CHOICES = ("refuse", "requantize")


@dataclass
class _Layer:
    """One quantised linear layer: its HF prefix, GGUF name and derived geometry."""

    prefix: str
    name: str  # GGUF name of the weight
    m0: int
    k: int
    groups: int
    group_size: int
    act_order: bool = False
    zp_zero: dict[str, bool] | None = None  # "v1"/"v2" -> every z' is exactly 0 under that convention
    zp_finite: dict[str, bool] | None = None  # "v1"/"v2" -> every z' is finite in the scales' dtype


@dataclass
class _Plan:
    """Everything ``open`` decided, kept on the SourceModel's reader for iteration."""

    hf: HFModel
    ckpt: SafetensorsCheckpoint
    cfg: GPTQConfig
    fmt: str
    drop_zeros: bool
    layers: dict[str, _Layer]  # by HF prefix
    order: list[tuple[str, str]]  # ("q", prefix) or ("f", hf tensor name), in GGUF-name order


def _is_gptq_folder(path: Path) -> bool:
    folder = model_folder(path)
    cfg = folder / "config.json"
    if not cfg.is_file():
        return False
    try:
        from .hf_common import load_json
        found = find_quant_config(folder, load_json(cfg))
    except TmacError:
        return True  # a GPTQ-looking folder with a broken config: let open() report it
    return found is not None


class GPTQReader(Reader, name="gptq", priority=10):
    """Reads GPTQ safetensors checkpoints (single file or sharded)."""

    @classmethod
    def detect(cls, path: Path) -> bool:
        return _is_gptq_folder(Path(path))

    # ------------------------------------------------------------------ open

    def open(self, path: Path) -> SourceModel:
        path = Path(path)
        hf = HFModel.open(path)
        found = find_quant_config(hf.folder, hf.config)
        if found is None:
            raise TmacError("no GPTQ quantization_config in config.json and no quantize_config.json",
                            file=hf.config_path, rule="GPTQ quantisation config")
        cfg = parse_config(*found)
        act_order = self.options.get("act_order") or "refuse"
        if act_order not in ACT_ORDER_CHOICES:
            raise TmacError(f"act_order must be one of {ACT_ORDER_CHOICES}, got {act_order!r}", rule="act_order option")
        override = self.options.get("gptq_format")
        override = None if override in (None, "auto") else str(override)
        ckpt = SafetensorsCheckpoint(path)
        notes: list[str] = []

        prefixes = [n[: -len(".qweight")] for n in ckpt.names() if n.endswith(".qweight")]
        if not prefixes:
            raise TmacError("no '.qweight' tensors: the config says GPTQ but the weights are not GPTQ-packed",
                            file=str(ckpt.files[0]), rule="config matches tensors")
        layers: dict[str, _Layer] = {}
        evidence: list[ZeroEvidence] = []
        word_bits = 32

        def scan(prefix: str) -> tuple[_Layer, ZeroEvidence, int]:
            layer, stored, wb = self._scan_layer(hf, ckpt, cfg, prefix)
            return layer, ZeroEvidence.of(layer.name, stored, cfg.bits, wb), wb

        # every layer's zeros are read before the first tensor is yielded (they decide v1/v2): numpy releases
        # the GIL in the work, so the layers are scanned on a few threads (the first error, in order, wins)
        for prefix, (layer, ev, word_bits) in zip(prefixes, map_in_threads(scan, prefixes, min(4, cpu_count()),
                                                                            name="tmac-scan")):
            layers[prefix] = layer
            evidence.append(ev)
        fmt, why, warnings = decide_format(cfg, evidence, override)
        notes.append(f"GPTQ zero convention {fmt}: {why}")
        notes += [f"warning: {w}" for w in warnings]

        # T-MAC drops zeros only for sym checkpoints whose z' are all exactly 0.
        half = 1 << (cfg.bits - 1)
        drop_zeros = cfg.sym and all(lay.zp_zero[fmt] for lay in layers.values())
        if drop_zeros:
            notes.append(f"symmetric checkpoint: every z' = (z - {half}) * s is exactly 0, zeros dropped")
        elif cfg.sym:
            bad = next(lay.name for lay in layers.values() if not lay.zp_zero[fmt])
            notes.append(f"warning: sym=true but {bad} has non-zero zero offsets under {fmt}; zeros are kept")

        over = [lay for lay in layers.values() if not lay.act_order and not lay.zp_finite[fmt]]
        if over and not drop_zeros:
            raise TmacError(f"zero offsets z' = (z - {half}) * s overflow the scales' dtype (computed in it, as "
                            "T-MAC's reference does): a scale is too large for this checkpoint's zero points",
                            file=str(ckpt.entry(over[0].prefix + ".scales").file), tensor=over[0].name,
                            rule="zero offsets fit the scale dtype")
        acts = [lay for lay in layers.values() if lay.act_order]
        if acts:
            if act_order == "refuse":
                raise TmacError(
                    f"act-order (desc_act) checkpoint: {len(acts)} layers have a non-trivial g_idx, so a group's "
                    "columns are scattered over K; T-MAC kernels read one scale per contiguous run of "
                    "group_size columns and cannot run it. Pass act_order='requantize' (--act-order requantize) "
                    "to re-quantise those layers to contiguous groups (the error introduced is reported), or "
                    "use a checkpoint quantised with desc_act=false", file=found[1], tensor=acts[0].name,
                    rule="contiguous groups (no act-order)")
            notes.append(f"act-order: {len(acts)} layers with a non-trivial g_idx are re-quantised to contiguous "
                         f"groups of {cfg.group_size if cfg.group_size > 0 else 'K'} (round-to-nearest, "
                         "asymmetric); per-layer error is reported below as they are read")
            drop_zeros = False
        elif cfg.desc_act:
            notes.append("desc_act=true but every g_idx is trivial (k // group_size): accepted as contiguous groups")

        self._dropped_bias: list[str] = []
        order = self._order(hf, ckpt, layers)
        if self._dropped_bias:
            notes.append(f"dropped {len(self._dropped_bias)} all-zero biases the architecture does not have "
                         f"(AutoGPTQ writes them): {', '.join(self._dropped_bias[:4])}"
                         + (" ..." if len(self._dropped_bias) > 4 else ""))
        quant = {
            "method": "gptq",
            "bits": cfg.bits,
            "group_size": cfg.group_size,  # -1: per channel (each tensor's group_size is its K)
            "sym": cfg.sym,
            "zero_point": not drop_zeros,
            "checkpoint_format": fmt,
            "checkpoint_format_reason": why,
            "checkpoint_format_label": cfg.checkpoint_format,
            "desc_act": cfg.desc_act,
            "act_order": act_order if acts else "none",
            "pack_dtype": f"int{word_bits}",
            "quantizer": [f"{n}:{v}" if v else n for n, v in cfg.quantizers],
        }
        model = SourceModel(path=path, format="gptq", architecture=hf.architecture, gguf_arch=hf.gguf_arch,
                            config=hf.config, quantization=quant, tokenizer_files=tokenizer_files(hf.folder),
                            notes=notes, _reader=self)
        self._plan = _Plan(hf, ckpt, cfg, fmt, drop_zeros, layers, order)
        self._pool = BufferPool()
        return model

    def _scan_layer(self, hf: HFModel, ckpt: SafetensorsCheckpoint, cfg: GPTQConfig, prefix: str
                    ) -> tuple[_Layer, np.ndarray, int]:
        """Check one layer's tensors against each other and the config; return its geometry and zeros."""
        qw = ckpt.entry(prefix + ".qweight")
        qz = ckpt.entry(prefix + ".qzeros")
        sc = ckpt.entry(prefix + ".scales")
        f = str(qw.file)
        name = hf.gguf_name(prefix + ".weight", file=f)
        for e in (qw, qz):
            if not e.dtype.startswith(("I", "U")) or len(e.shape) != 2:
                raise TmacError(f"expected a 2-D integer tensor, found {e.dtype} {list(e.shape)}", file=str(e.file),
                                tensor=e.name, rule="GPTQ tensor dtype")
        if qw.dtype != qz.dtype:
            raise TmacError(f"qweight is {qw.dtype} but qzeros is {qz.dtype}", file=f, tensor=qz.name,
                            rule="GPTQ tensor dtype")
        word_bits = int(qw.dtype[1:])
        if cfg.pack_dtype is not None and word_dtype(cfg.pack_dtype).itemsize * 8 != word_bits:
            raise TmacError(f"config pack_dtype {cfg.pack_dtype} but the tensor holds {qw.dtype} words", file=f,
                            tensor=qw.name, rule="config matches tensors")
        if sc.dtype not in FLOAT_DTYPES or len(sc.shape) != 2:
            raise TmacError(f"expected 2-D float scales, found {sc.dtype} {list(sc.shape)}", file=str(sc.file),
                            tensor=sc.name, rule="GPTQ tensor dtype")
        b = cfg.bits
        groups, m0 = sc.shape
        rows, cols = qw.shape
        if cols != m0:
            raise TmacError(f"qweight has {cols} columns but scales has {m0}", file=f, tensor=qw.name,
                            rule="qweight [K*b/W, M0] matches scales [G, M0]")
        wp, _ = period(b, word_bits)
        if rows % wp:
            raise TmacError(f"{rows} rows of {word_bits}-bit words do not hold whole runs of {b}-bit codes",
                            file=f, tensor=qw.name, rule="qweight rows")
        k = rows * word_bits // b
        implied = qz.shape[1] * word_bits / m0 if m0 else 0
        if qz.shape[0] == groups and implied != b and implied in SUPPORTED_BITS and (m0 * b) % word_bits == 0:
            raise TmacError(f"qzeros {list(qz.shape)} hold {implied:g}-bit zeros for {m0} outputs but the config "
                            f"says bits = {b}", file=str(qz.file), tensor=qz.name, rule="config matches tensors")
        if qz.shape != (groups, m0 * b // word_bits) or (m0 * b) % word_bits:
            raise TmacError(f"qzeros shape {list(qz.shape)} != [{groups}, {m0 * b / word_bits:g}] implied by scales "
                            f"{list(sc.shape)} at {b} bits", file=str(qz.file), tensor=qz.name,
                            rule="qzeros [G, M0*b/W]")
        hint = f" (check bits = {b} in the quantisation config)"
        hf.check_shape(name, m0, k, file=f, tensor=qw.name, hint=hint)
        gs = k if cfg.group_size == -1 else cfg.group_size
        if k % gs:
            raise TmacError(f"group size {gs} does not divide K = {k}", file=f, tensor=qw.name,
                            rule="K % group_size == 0")
        if groups != k // gs:
            raise TmacError(f"scales have {groups} groups but K / group_size = {k} / {gs} = {k // gs}"
                            + (hint if cfg.group_size != -1 else ""), file=str(sc.file), tensor=sc.name,
                            rule="config matches tensors")
        layer = _Layer(prefix, name, m0, k, groups, gs)
        if prefix + ".g_idx" in ckpt:
            gi = ckpt.get(prefix + ".g_idx")
            if gi.shape != (k,) or gi.dtype.kind not in "iu":
                raise TmacError(f"g_idx must be an integer vector of length K = {k}, found {gi.dtype} "
                                f"{list(gi.shape)}", file=f, tensor=prefix + ".g_idx", rule="g_idx shape")
            if gi.size and (int(gi.min()) < 0 or int(gi.max()) >= groups):
                raise TmacError(f"g_idx values lie in [{int(gi.min())}, {int(gi.max())}], outside [0, {groups})",
                                file=f, tensor=prefix + ".g_idx", rule="g_idx range")
            layer.act_order = not np.array_equal(gi, np.arange(k) // gs)
        stored = unpack_qzeros(ckpt.get(qz.name), b)
        s = ckpt.get_float(sc.name)
        finite, layer.zp_zero, layer.zp_finite = _scale_facts(stored, s, b)
        if not finite:
            raise TmacError("scales contain NaN or infinity", file=str(sc.file), tensor=sc.name, rule="finite scales")
        return layer, stored, word_bits

    def _order(self, hf: HFModel, ckpt: SafetensorsCheckpoint, layers: dict[str, _Layer]) -> list[tuple[str, str]]:
        """What ``tensors()`` yields, in file order (:func:`~.hf_common.file_order_key`): quantised layers and
        pass-through tensors."""
        owned = set()
        items: list[tuple[str, str, str]] = []
        for prefix, layer in layers.items():
            owned.update(prefix + s for s in (".qweight", ".qzeros", ".scales", ".g_idx"))
            items.append((layer.name, "q", prefix))
        dropped = []
        for n in ckpt.names():
            if n in owned or hf.skip(n):
                continue
            if n.endswith((".qzeros", ".scales", ".g_idx")) and n.rsplit(".", 1)[0] not in layers:
                raise TmacError(f"tensor is missing, but its {n.rsplit('.', 1)[1]} is present",
                                file=str(ckpt.entry(n).file), tensor=n.rsplit(".", 1)[0] + ".qweight",
                                rule="required tensor")
            name = hf.gguf_name(n, file=str(ckpt.entry(n).file))
            # Decided here, not while streaming, so that tensor_infos() and tensors() agree (biases are small).
            if name.endswith(".bias") and not hf.bias_expected(name) and ckpt.entry(n).dtype in FLOAT_DTYPES \
                    and not np.any(ckpt.get_float(n)):
                dropped.append(name)
                continue
            items.append((name, "f", n))
        if dropped:
            self._dropped_bias = dropped
        items.sort(key=lambda t: file_order_key(t[0]))
        return [(kind, ref) for _, kind, ref in items]

    # ------------------------------------------------------------------ iterate

    def tensor_infos(self, model: SourceModel) -> list[TensorInfo]:
        plan = self._plan
        out = []
        for kind, ref in plan.order:
            if kind == "q":
                lay = plan.layers[ref]
                nbytes = sum(plan.ckpt.entry(ref + s).nbytes for s in (".qweight", ".qzeros", ".scales"))
                out.append(TensorInfo(lay.name, (lay.m0, lay.k), plan.cfg.bits, lay.group_size,
                                      zero_point=not plan.drop_zeros, nbytes=nbytes))
            else:
                e = plan.ckpt.entry(ref)
                out.append(TensorInfo(plan.hf.gguf_name(ref), e.shape, nbytes=e.nbytes))
        return out

    def iter_tensors(self, model: SourceModel) -> Iterator[Tensor]:
        plan = self._plan
        for kind, ref in plan.order:
            if kind == "q":
                yield self._quant(model, plan.layers[ref])
                continue
            yield self._float(ref)

    def _float(self, hf_name: str) -> FloatTensor:
        plan = self._plan
        e = plan.ckpt.entry(hf_name)
        name = plan.hf.gguf_name(hf_name, file=str(e.file))
        if e.dtype not in FLOAT_DTYPES:
            raise TmacError(f"expected a float tensor, found {e.dtype}", file=str(e.file), tensor=hf_name,
                            rule="float dtype")
        if plan.hf.permute_heads(name) is None:
            data, span = plan.ckpt.get_float_mapped(hf_name)
            return FloatTensor(name, data, quantizable=is_projection(name), span=span)
        data = plan.hf.permute(name, plan.ckpt.get_float(hf_name))
        return FloatTensor(name, data, quantizable=is_projection(name))

    def _quant(self, model: SourceModel, lay: _Layer) -> QuantTensor:
        plan = self._plan
        b = plan.cfg.bits
        ck = plan.ckpt
        f = str(ck.entry(lay.prefix + ".qweight").file)
        codes = unpack_qweight(ck.get_mapped(lay.prefix + ".qweight"), b, self._pool)  # [M0, K]
        stored = unpack_qzeros(ck.get(lay.prefix + ".qzeros"), b)  # [G, M0]
        s = ck.get_float(lay.prefix + ".scales")  # [G, M0]
        if codes.shape != (lay.m0, lay.k) or stored.shape != (lay.groups, lay.m0) or s.shape != (lay.groups, lay.m0):
            raise TmacError("tensor shapes changed since the checkpoint was opened", file=f, tensor=lay.name,
                            rule="stable checkpoint")
        if lay.act_order:
            return self._requantize(model, lay, codes, stored, s)
        fast = transpose_scales_and_offsets(stored, s, b, 1 if plan.fmt == "v1" else 0, not plan.drop_zeros)
        if fast is not None:
            scales, zeros = fast
        else:
            zeros = None if plan.drop_zeros else np.ascontiguousarray(_zero_offsets(stored, s, b, plan.fmt).T)
            scales = np.ascontiguousarray(s.T)
        codes = plan.hf.permute(lay.name, codes)
        scales = plan.hf.permute(lay.name, scales)
        if zeros is not None:
            zeros = plan.hf.permute(lay.name, zeros)
        return QuantTensor(lay.name, codes, scales, zeros, bits=b, group_size=lay.group_size,
                           meta={"source": lay.prefix, "file": f}, codes_in_range=True)  # b-bit fields

    def _requantize(self, model: SourceModel, lay: _Layer, codes: np.ndarray, stored: np.ndarray,
                    s: np.ndarray) -> QuantTensor:
        """Dequantise an act-order layer (float64, per-column groups from g_idx) and RTN it to contiguous groups."""
        plan = self._plan
        b = plan.cfg.bits
        gi = plan.ckpt.get(lay.prefix + ".g_idx").astype(np.int64)
        z = stored.astype(np.float64) + (1.0 if plan.fmt == "v1" else 0.0)  # [G, M0]
        w = (codes.astype(np.float64) - z[gi].T) * s.astype(np.float64)[gi].T  # [M0, K]
        qt, stats = quantize_rtn(lay.name, w, bits=b, group_size=lay.group_size, zero_point=True)
        del w
        note = (f"act-order {lay.name}: re-quantised to contiguous groups of {lay.group_size}, "
                f"nmse {stats['nmse']:.3e}, max abs error {stats['max_abs_err']:.3e}")
        codes = plan.hf.permute(lay.name, qt.codes)
        scales = plan.hf.permute(lay.name, qt.scales)
        zeros = plan.hf.permute(lay.name, qt.zeros)
        return QuantTensor(lay.name, codes, scales, zeros, bits=b, group_size=lay.group_size,
                           meta={"source": lay.prefix, "requantized": stats, "note": note})


def _scale_facts(stored: np.ndarray, s: np.ndarray, bits: int) -> tuple[bool, dict[str, bool], dict[str, bool]]:
    """``(every scale finite, zero, finite)``: the scan's facts about one tensor, ``zero`` and ``finite`` as
    :func:`_zero_offset_facts` decides them (empty when a scale is not finite).  float16 scales take one native
    pass over the bits (:func:`~tmac_convert.readers.gptq_bits.scale_facts_f16`), others numpy."""
    half = 1 << (bits - 1)
    fast = scale_facts_f16(stored, s, (half - 1, half))  # the stored value whose z is 2**(b-1): v1, v2
    if fast is None:
        if not all_finite(s):
            return False, {}, {}
        return (True, *_zero_offset_facts(stored, s, bits))
    finite, max_abs, zero_v1, zero_v2 = fast
    if not finite:
        return False, {}, {}
    return (True, {"v1": bool(zero_v1), "v2": bool(zero_v2)},
            _offsets_finite(stored, s, bits, np.uint16(max_abs).view(np.float16)))


def _zero_offset_facts(stored: np.ndarray, s: np.ndarray, bits: int) -> tuple[dict[str, bool], dict[str, bool]]:
    """Under each convention (``"v1"``, ``"v2"``): is every ``z' = (z - 2**(b-1)) * s`` exactly 0, and is every
    one finite in the scales' dtype?  Decided without computing ``z'`` (the same answers as
    :func:`_zero_offsets`, for finite ``s``):

    * zero: ``z - 2**(b-1)`` is an integer, so a non-zero one times a non-zero ``s`` is at least ``|s|`` in
      magnitude, which rounds to a non-zero value of ``s``'s own dtype: ``z' == 0`` iff ``z == 2**(b-1)`` or
      ``s == 0``;
    * finite: ``|z - 2**(b-1)| <= 2**(b-1)`` under both conventions and rounding is monotonic, so when
      ``max|s|·2**(b-1)`` is finite in the dtype every ``z'`` is; only otherwise is ``z'`` computed.
    """
    half = 1 << (bits - 1)
    s_zero = s == 0
    any_s_zero = bool(s_zero.any())
    zero: dict[str, bool] = {}
    for fmt, at in (("v1", half - 1), ("v2", half)):  # the stored value whose z is 2**(b-1)
        eq = stored == at
        zero[fmt] = bool(eq.all()) or (any_s_zero and bool((eq | s_zero).all()))
    return zero, _offsets_finite(stored, s, bits, np.max(np.abs(s), initial=0))


def _offsets_finite(stored: np.ndarray, s: np.ndarray, bits: int, max_abs: np.floating) -> dict[str, bool]:
    """Per convention, is every ``z'`` finite in the scales' dtype?  Yes when ``max|s|·2**(b-1)`` is (``max_abs``:
    max |s| in that dtype; rounding is monotonic); only otherwise is ``z'`` computed."""
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported by open()
        if np.isfinite(s.dtype.type(max_abs * s.dtype.type(1 << (bits - 1)))):
            return {"v1": True, "v2": True}
        return {fmt: bool(np.all(np.isfinite(_zero_offsets(stored, s, bits, fmt)))) for fmt in ("v1", "v2")}


def _zero_offsets(stored: np.ndarray, s: np.ndarray, bits: int, fmt: str) -> np.ndarray:
    """T-MAC zero offsets ``z' = (z - 2**(b-1)) * s``, ``[G, M0]``, in the scales' own float arithmetic.

    ``z = stored + 1`` for v1 (without re-masking, as AutoGPTQ's own dequantisation does), else
    ``stored``; float16 scales give float16 arithmetic (byte-exact with T-MAC's reference).
    """
    dt = s.dtype
    # z - 2**(b-1) is a small integer (|.| <= 16), exact in any float type, and its product with a
    # float16 scale is exact in float32; so one float32 multiply rounded once to float16 is exactly
    # numpy's float16 arithmetic, several times faster.
    wide = np.dtype(np.float32) if dt == np.float16 else dt  # a dtype instance, not a scalar type
    z = stored.astype(wide) + wide.type(1 if fmt == "v1" else 0)
    return ((z - wide.type(1 << (bits - 1))) * s.astype(wide, copy=False)).astype(dt, copy=False)
