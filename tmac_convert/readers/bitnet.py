"""BitNet b1.58 checkpoints: float (``BitnetForCausalLM``) and packed (transformers' ``bitnet`` method).

Both give ternary 2-bit :class:`~tmac_convert.format.tensor.QuantTensor`\\ s with T-MAC codes ``t + 2`` in
{1, 2, 3} (implicit zero 2), one per-tensor scale (``scales.shape == (1,)``, ``group_size == K``),
for the attention q/k/v/o and MLP gate/up/down projections only; every other tensor (norms,
including BitNet's ``attn_sub_norm`` / ``ffn_sub_norm``, embeddings, an untied ``lm_head``) passes
through as a :class:`~tmac_convert.readers.base.FloatTensor`.

**Float checkpoints** (1bitLLM ``BitnetForCausalLM``; also ``quant_method: bitnet`` with
``quantization_mode: online``, e.g. bitnet-b1.58-2B-4T-bf16).  llama.cpp's converter
(``BitnetModel.weight_quant``) and transformers' ``WeightQuant`` both ternarise in float32:
``s = clamp(mean|W|, 1e-5)``, ``iscale = 1/s``, ``W_t = clamp(round(W * iscale), -1, 1) / iscale``,
then cast ``W_t`` to the checkpoint dtype.  We mirror that in numpy float32: ``t = clamp(rint(W *
iscale))`` (rint is round-half-even like torch.round) and the scale is ``dtype(1 / iscale)``, the
value ``W_t`` holds for ``t = +-1``; the dequantised weight therefore equals llama.cpp's ``W_t``.
Byte-exactness caveat (format notes section 2.2): torch reduces ``mean|W|`` in float32 with its own
summation order; we sum in float64 and round once, so ``s`` is the correctly rounded mean and may
differ from torch's by an ulp of float32.  That shows only after the dtype cast in rare cases, and
in the codes only for weights within an ulp of a rounding boundary of ``W / s``.

**Packed checkpoints** (``BitNetForCausalLM``, ``quantization_config.quant_method == "bitnet"``,
``quantization_mode: offline``; transformers ``integrations/bitnet.py``): ``weight`` is uint8
``[M/4, K]``; bits ``2i..2i+1`` of byte ``[r, k]`` hold row ``i*M/4 + r`` (four row slabs), field
``0/1/2`` = ``-1/0/+1`` (3 is invalid), so the T-MAC code is simply ``field + 1``.  ``weight_scale``
(one element) **divides** for ``linear_class: bitlinear`` (BitLinear.post_quant_process computes
``y / (input_scale * weight_scale)``, so ``W = t / weight_scale``) but **multiplies** for
``linear_class: autobitlinear`` (AutoBitLinear.forward computes ``output * weight_scale``, and
llama.cpp's converter multiplies too for microsoft/bitnet-b1.58-2B-4T, which uses autobitlinear).
The T-MAC scale is ``1/weight_scale`` or ``weight_scale`` rounded once to float32.

llama.cpp's ``bitnet`` architecture uses NEOX RoPE (``llama_model_rope_type``), so q/k rows are not
permuted (its converter does not permute them either); :func:`naming.qk_permute_heads` agrees.  A
``quant_method: bitnet`` checkpoint of another architecture (a ``LlamaForCausalLM``) gets that
architecture's names and q/k permutation (applied to the codes; the scale is per tensor).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import TmacError
from ..format.tensor import QuantTensor
from .base import FloatTensor, Reader, SourceModel, Tensor, TensorInfo
from .hf_common import HFModel, load_json, model_folder, tokenizer_files
from ..archs.naming import gguf_tensor_name, is_projection, permute_qk
from .safetensors_io import FLOAT_DTYPES, SafetensorsCheckpoint

BITNET_ARCHITECTURES = ("BitnetForCausalLM", "BitNetForCausalLM")
# The gguf package's tensor map knows BitNet's sub-norms only under 1bitLLM's names
# (``inner_attn_ln`` / ``ffn_layernorm``); transformers' BitNet model calls them ``attn_sub_norm`` /
# ``ffn_sub_norm``.  Renamed before the lookup so the GGUF names still come from gguf's tables.
_HF_ALIASES = {".self_attn.attn_sub_norm.": ".self_attn.inner_attn_ln.",
               ".mlp.ffn_sub_norm.": ".mlp.ffn_layernorm."}
_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8)


# ----------------------------------------------------------------------------------------------
# Pure functions (tested on their own)
# ----------------------------------------------------------------------------------------------

def unpack_bitnet_slabs(packed: np.ndarray) -> np.ndarray:
    """uint8 ``[M/4, K]`` -> 2-bit fields uint8 ``[M, K]``: row ``i*M/4 + r`` is bits ``2i..2i+1`` of row ``r``.

    Values are the stored fields 0..3 (0/1/2 = -1/0/+1; 3 is invalid and left for the caller to reject).
    """
    rows, k = packed.shape
    fields = (packed[None, :, :] >> _SHIFTS[:, None, None]) & 0x03  # [4, M/4, K]: slab i
    return np.ascontiguousarray(fields).reshape(4 * rows, k)


def pack_bitnet_slabs(fields: np.ndarray) -> np.ndarray:
    """Inverse of :func:`unpack_bitnet_slabs`: fields uint8 ``[M, K]`` (M % 4 == 0) -> uint8 ``[M/4, K]``."""
    m, k = fields.shape
    f = fields.reshape(4, m // 4, k).astype(np.uint8)
    return (f[0] | (f[1] << 2) | (f[2] << 4) | (f[3] << 6)).astype(np.uint8)


def round_to_dtype(x: np.ndarray, st_dtype: str) -> np.ndarray:
    """float32 values rounded (to nearest even) to a safetensors float dtype, returned as float32."""
    x = np.asarray(x, dtype=np.float32)
    if st_dtype == "F16":
        return x.astype(np.float16).astype(np.float32)
    if st_dtype == "BF16":
        u = np.ascontiguousarray(x).view(np.uint32).astype(np.uint64)
        r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
        return r.astype(np.uint32).view(np.float32)
    return x  # F32 (F64 is narrowed to float32 by the reader anyway)


def ternarize(w: np.ndarray, st_dtype: str) -> tuple[np.ndarray, float]:
    """BitNet b1.58 ``weight_quant`` of a float matrix: ``(t int8 [M0, K] in {-1,0,1}, scale)``.

    ``s = max(mean|W|, 1e-5)`` (float64 sum, rounded to float32), ``iscale = float32(1/s)``,
    ``t = clip(rint(float32(W * iscale)), -1, 1)``, ``scale = st_dtype(float32(1/iscale))``: exactly
    the values llama.cpp's converter gives ``W_t`` after its cast to the checkpoint dtype.
    """
    w32 = np.asarray(w, dtype=np.float32)
    mean = float(np.abs(w32).sum(dtype=np.float64)) / max(w32.size, 1)
    s = np.float32(max(np.float32(mean), np.float32(1e-5)))
    iscale = np.float32(1.0) / s
    prod = w32 * iscale  # float32 * float32 -> float32, as torch
    np.rint(prod, out=prod)
    np.clip(prod, -1, 1, out=prod)
    t = prod.astype(np.int8)
    scale = float(round_to_dtype(np.array([np.float32(1.0) / iscale]), st_dtype)[0])
    return t, scale


# ----------------------------------------------------------------------------------------------
# Detection and planning
# ----------------------------------------------------------------------------------------------

def _load_config(folder: Path) -> dict[str, Any] | None:
    try:
        return load_json(folder / "config.json") if (folder / "config.json").is_file() else None
    except TmacError:
        return None


def is_bitnet_config(config: dict[str, Any]) -> bool:
    """True for a BitNet b1.58 config (architecture name, ``model_type: bitnet`` or ``quant_method: bitnet``)."""
    archs = config.get("architectures") or []
    qc = config.get("quantization_config") or {}
    return (any(a in BITNET_ARCHITECTURES for a in (archs if isinstance(archs, list) else []) if isinstance(a, str))
            or config.get("model_type") == "bitnet"
            or (isinstance(qc, dict) and str(qc.get("quant_method", "")).lower() == "bitnet"))


class _Item:
    """One tensor to yield: ``kind`` is ``packed`` or ``ternarize`` (a projection) or ``float`` (pass-through)."""

    __slots__ = ("hf", "name", "kind", "scale_hf", "heads", "shape")

    def __init__(self, hf: str, name: str, kind: str, shape: tuple[int, ...], scale_hf: str | None = None,
                 heads: int | None = None) -> None:
        self.hf, self.name, self.kind, self.shape, self.scale_hf, self.heads = hf, name, kind, shape, scale_hf, heads


class BitNetReader(Reader, name="bitnet", priority=20):
    """BitNet b1.58 HF folders (float or packed).  Detected from ``config.json``; no options."""

    @classmethod
    def detect(cls, path: Path) -> bool:
        cfg = _load_config(model_folder(path))
        return cfg is not None and is_bitnet_config(cfg)

    def open(self, path: Path) -> SourceModel:
        # The architecture may be BitNet's own or another one carrying quant_method bitnet (e.g.
        # HF1BitLLM's Llama3-8B-1.58 is a LlamaForCausalLM): llama.cpp's name tables and q/k
        # permutation then follow that architecture.
        hf = HFModel.open(path)
        folder, config, cfg_file = hf.folder, hf.config, hf.config_path
        qc = config.get("quantization_config") or {}
        if not isinstance(qc, dict):
            raise TmacError("quantization_config is not an object", file=cfg_file, rule="quantization_config")
        if qc and str(qc.get("quant_method", "bitnet")).lower() != "bitnet":
            raise TmacError(f"quant_method {qc.get('quant_method')!r} is not bitnet", file=cfg_file,
                            rule="quantization_config")
        if qc.get("use_rms_norm"):
            raise TmacError("BitLinear's own input RMSNorm (use_rms_norm: true) has no llama.cpp tensor",
                            file=cfg_file, rule="supported BitNet variant")
        linear_class = str(qc.get("linear_class", "bitlinear")).lower()
        mode = str(qc.get("quantization_mode", "offline")).lower()
        if linear_class not in ("bitlinear", "autobitlinear") or mode not in ("offline", "online"):
            raise TmacError(f"linear_class {linear_class!r} / quantization_mode {mode!r} unknown", file=cfg_file,
                            rule="quantization_config")
        # Packed weights exist only for quant_method bitnet in offline mode; everything else is float.
        expect_packed = bool(qc) and mode == "offline"
        ckpt = SafetensorsCheckpoint(Path(path))
        items, notes = self._plan(ckpt, hf, expect_packed)
        form = "packed" if expect_packed else "float"
        if form == "packed":
            rule = "W = t / weight_scale (bitlinear)" if linear_class == "bitlinear" else \
                "W = t * weight_scale (autobitlinear)"
            notes.insert(0, f"packed BitNet b1.58 ({linear_class}, offline): ternary codes unpacked from four "
                            f"row slabs per byte; per-tensor scale from weight_scale, {rule}")
        else:
            notes.insert(0, "float BitNet b1.58: projections ternarised as llama.cpp's weight_quant "
                            "(s = mean|W| in float32, t = clamp(round(W/s), -1, 1), scale cast to the "
                            "checkpoint dtype); codes t+2, one scale per tensor")
        quant = {"method": "bitnet", "form": form, "bits": 2, "group_size": -1, "per_tensor_scale": True,
                 "sym": True, "linear_class": linear_class if qc else None,
                 "quantization_mode": mode if qc else None,
                 "scale_convention": ("divide" if linear_class == "bitlinear" else "multiply")
                 if form == "packed" else "mean-abs"}
        model = SourceModel(path=folder, format="bitnet", architecture=hf.architecture, gguf_arch=hf.gguf_arch,
                            config=config, quantization=quant, tokenizer_files=tokenizer_files(folder),
                            gguf_metadata=None, notes=notes, _reader=self)
        self._state = {"ckpt": ckpt, "items": items}
        return model

    def _plan(self, ckpt: SafetensorsCheckpoint, hf: HFModel, expect_packed: bool
              ) -> tuple[list[_Item], list[str]]:
        """Decide, from the header only, what each tensor becomes; check dtypes and shapes against config."""
        items: list[_Item] = []
        notes: list[str] = []
        names = ckpt.names()
        scale_names = {n for n in names if n.endswith(".weight_scale")}
        used_scales: set[str] = set()
        for n in names:
            if n in scale_names or hf.skip(n):
                continue
            e = ckpt.entry(n)
            file = str(e.file)
            name = self._gguf_name(hf, n, file, notes)
            if not (is_projection(name) and len(e.shape) == 2):
                if e.dtype not in FLOAT_DTYPES:
                    raise TmacError(f"expected a float tensor, found {e.dtype}", file=file, tensor=n,
                                    rule="float dtype")
                items.append(_Item(n, name, "float", tuple(e.shape), None, hf.permute_heads(name)))
                continue
            heads = hf.permute_heads(name)
            if e.dtype == "U8":
                if not expect_packed:
                    raise TmacError("uint8 (packed) weight, but config.json does not declare quant_method bitnet "
                                    "with quantization_mode offline", file=file, tensor=n,
                                    rule="config matches tensors")
                scale = n[: -len("weight")] + "weight_scale"
                if scale not in scale_names:
                    raise TmacError(f"packed weight has no weight_scale tensor ({scale})", file=file, tensor=n,
                                    rule="required tensor")
                used_scales.add(scale)
                m0, k = 4 * e.shape[0], e.shape[1]
                hf.check_shape(name, m0, k, file=file, tensor=n,
                               hint=f" (packed uint8 {list(e.shape)} holds M/4 rows of 4 codes)")
                items.append(_Item(n, name, "packed", (m0, k), scale, heads))
            elif e.dtype in FLOAT_DTYPES:
                if expect_packed:
                    raise TmacError(f"config.json declares packed BitNet weights (quant_method bitnet, offline) "
                                    f"but this projection is {e.dtype}", file=file, tensor=n,
                                    rule="config matches tensors")
                hf.check_shape(name, e.shape[0], e.shape[1], file=file, tensor=n)
                items.append(_Item(n, name, "ternarize", tuple(e.shape), None, heads))
            else:
                raise TmacError(f"projection dtype {e.dtype} is neither packed uint8 nor float", file=file,
                                tensor=n, rule="projection dtype")
        stray = sorted(scale_names - used_scales)
        if stray:
            raise TmacError("weight_scale without a packed weight", file=str(ckpt.entry(stray[0]).file),
                            tensor=stray[0], rule="config matches tensors")
        if not any(i.kind != "float" for i in items):
            raise TmacError("no attention/MLP projection found", file=str(ckpt.path), rule="required tensor")
        return items, notes

    @staticmethod
    def _gguf_name(hf: HFModel, n: str, file: str, notes: list[str]) -> str:
        lookup = n
        for old, new in _HF_ALIASES.items():
            lookup = lookup.replace(old, new)
        name = gguf_tensor_name(lookup, hf.arch, hf.n_layers)
        if name is not None:
            return name
        # e.g. an untied lm_head: llama.cpp's bitnet tensor list has no output.weight (its graph ties
        # the output to token_embd); the llama table names it, and the writer decides what to do
        name = gguf_tensor_name(lookup, "llama", hf.n_layers)
        if name is None:
            raise TmacError(f"no llama.cpp name for this tensor in architecture {hf.gguf_arch!r}", file=file,
                            tensor=n, rule="known tensor name")
        notes.append(f"warning: {n} -> {name}: not in llama.cpp's {hf.gguf_arch} tensor list (its graph ties the "
                     "output to token_embd), so stock llama.cpp refuses to load the file; passed through for "
                     "runtimes that use it")
        return name

    # -- tensors ---------------------------------------------------------------------------------

    def tensor_infos(self, model: SourceModel) -> list[TensorInfo]:
        ckpt: SafetensorsCheckpoint = self._state["ckpt"]
        out = []
        for it in self._state["items"]:
            nbytes = ckpt.entry(it.hf).nbytes
            if it.kind == "float":
                out.append(TensorInfo(it.name, tuple(it.shape), nbytes=nbytes))
            else:
                out.append(TensorInfo(it.name, tuple(it.shape), bits=2, group_size=int(it.shape[1]),
                                      per_tensor_scale=True, nbytes=nbytes))
        return out

    def iter_tensors(self, model: SourceModel) -> Iterator[Tensor]:
        ckpt: SafetensorsCheckpoint = self._state["ckpt"]
        linear_class = model.quantization["linear_class"] or "bitlinear"
        for it in self._state["items"]:
            file = str(ckpt.entry(it.hf).file)
            if it.kind == "float":
                data = ckpt.get_float(it.hf)
                if it.heads:
                    data = permute_qk(data, it.heads)
                yield FloatTensor(it.name, data, quantizable=False)
            elif it.kind == "packed":
                yield self._packed(ckpt, it, file, linear_class)
            else:
                yield self._ternarized(ckpt, it, file)

    def _packed(self, ckpt: SafetensorsCheckpoint, it: _Item, file: str, linear_class: str) -> QuantTensor:
        raw = np.asarray(ckpt.get(it.hf))
        fields = unpack_bitnet_slabs(raw)
        if fields.size and int(fields.max()) > 2:
            row, col = (int(v) for v in np.argwhere(fields > 2)[0])
            raise TmacError(f"2-bit field 3 at row {row}, column {col} (packed row {row % raw.shape[0]}, bits "
                            f"{2 * (row // raw.shape[0])}..{2 * (row // raw.shape[0]) + 1}) is not a ternary code",
                            file=file, tensor=it.hf, rule="ternary codes in range")
        assert it.scale_hf is not None
        scale_file = str(ckpt.entry(it.scale_hf).file)
        ws = ckpt.get_float(it.scale_hf).astype(np.float64).reshape(-1)
        if ws.size != 1 or not np.isfinite(ws[0]) or ws[0] == 0:
            raise TmacError(f"weight_scale must be one finite non-zero number, got {ws.size} value(s) "
                            f"{ws[:4].tolist()}", file=scale_file, tensor=it.scale_hf, rule="weight_scale")
        scale = 1.0 / ws[0] if linear_class == "bitlinear" else ws[0]
        if not abs(scale) <= float(np.finfo(np.float32).max):
            raise TmacError(f"the T-MAC scale {scale:g} ({'1 / ' if linear_class == 'bitlinear' else ''}weight_scale) "
                            "overflows float32", file=scale_file, tensor=it.scale_hf, rule="weight_scale")
        codes = fields + np.uint8(1)  # field 0/1/2 = t -1/0/+1 -> T-MAC code t + 2
        if it.heads:
            codes = permute_qk(codes, it.heads)
        return self._quant(it, codes, scale, file, {"source": "bitnet-packed", "weight_scale": float(ws[0]),
                                                     "linear_class": linear_class})

    def _ternarized(self, ckpt: SafetensorsCheckpoint, it: _Item, file: str) -> QuantTensor:
        e = ckpt.entry(it.hf)
        w = ckpt.get_float(it.hf)
        if not np.all(np.isfinite(w)):
            row = int(np.argwhere(~np.isfinite(w))[0][0])
            raise TmacError(f"weight row {row} contains NaN or infinity", file=file, tensor=it.hf,
                            rule="finite weights")
        t, scale = ternarize(w, e.dtype)
        codes = (t + 2).astype(np.uint8)
        if it.heads:
            codes = permute_qk(codes, it.heads)
        return self._quant(it, codes, scale, file, {"source": "bitnet-float", "dtype": e.dtype})

    @staticmethod
    def _quant(it: _Item, codes: np.ndarray, scale: float, file: str, meta: dict[str, Any]) -> QuantTensor:
        try:
            return QuantTensor(it.name, codes, np.array([scale], dtype=np.float32), None, bits=2,
                               group_size=int(codes.shape[1]), meta={"hf_name": it.hf, **meta})
        except TmacError as e:  # QuantTensor names only the tensor: add the file (and the HF name)
            message = str(e)
            prefix = f"tensor {e.tensor}: "
            message = message[len(prefix):] if message.startswith(prefix) else message
            raise TmacError(message, file=file, tensor=it.hf, rule=e.rule) from None
