"""Float Hugging Face checkpoints (safetensors F16/BF16/F32) quantised round-to-nearest on the fly.

Only attention and MLP projection matrices (``blk.N.attn_{q,k,v,output}``, ``blk.N.ffn_{gate,up,down}``)
are quantised, with :func:`~.quantize.quantize_rtn` at the requested ``bits`` / ``group_size`` /
``zero_point``; everything else (embeddings, norms, output head, biases) passes through as a
:class:`FloatTensor` (F16 stays float16; BF16 and F32 become float32, exactly).  The error each
quantised tensor picks up is recorded in its ``meta["quant_stats"]`` and ``meta["note"]`` (the report's notes).

Options: ``bits`` (1-4, default 4), ``group_size`` (default 128; -1 = per channel),
``zero_point`` (default True: asymmetric); ``quantize=False`` passes the projections through as
float (for stock llama.cpp outputs, which quantise them themselves or keep them float).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

from ..errors import TmacError
from ..format.rules import bits_supported
from .base import FloatTensor, Reader, SourceModel, Tensor, TensorInfo
from .hf_common import HFModel, file_order_key, model_folder, tokenizer_files
from ..archs.naming import is_projection
from ..quantize import quantize_rtn
from .safetensors_io import FLOAT_DTYPES, SafetensorsCheckpoint, checkpoint_files

DEFAULTS: dict[str, Any] = {"bits": 4, "group_size": 128, "zero_point": True}


def rtn_settings(options: Mapping[str, Any], file: str | None = None) -> tuple[int, int, bool]:
    """``(bits, group_size, zero_point)`` for round-to-nearest quantisation: ``options``, else
    :data:`DEFAULTS` (shared by every reader that quantises float weights, so they behave alike).

    Raises :class:`TmacError` naming ``file`` for non-integer values, bits outside 1..4 or a group
    size that is 0 or below -1 (-1 = per channel).
    """
    bits = options.get("bits")
    bits = DEFAULTS["bits"] if bits is None else bits
    gs = options.get("group_size")
    gs = DEFAULTS["group_size"] if gs is None else gs
    zp = options.get("zero_point")
    zp = DEFAULTS["zero_point"] if zp is None else zp
    try:
        bits, gs = int(bits), int(gs)
    except (TypeError, ValueError):
        raise TmacError(f"bits {bits!r} and group_size {gs!r} must be integers", file=file,
                        rule="quantisation options") from None
    if not bits_supported(bits):
        raise TmacError(f"cannot quantise to {bits} bits: T-MAC kernels take 1, 2, 3 or 4 bits", file=file,
                        rule="bits in 1..4")
    if gs == 0 or gs < -1:
        raise TmacError(f"group_size {gs} is invalid (use -1 for per channel)", file=file, rule="group size")
    return bits, gs, bool(zp)


class HFFloatReader(Reader, name="hf-float", priority=90):
    """Float HF safetensors checkpoints; the fallback after the quantised-format readers."""

    @classmethod
    def detect(cls, path: Path) -> bool:
        folder = model_folder(Path(path))
        if not (folder / "config.json").is_file():
            return False
        try:
            return bool(checkpoint_files(Path(path)))
        except TmacError:
            return True  # broken index: let open() report it

    def _settings(self, file: str) -> tuple[int, int, bool]:
        return rtn_settings(self.options, file)

    def open(self, path: Path) -> SourceModel:
        path = Path(path)
        hf = HFModel.open(path)
        qc = hf.config.get("quantization_config")
        if isinstance(qc, dict) and qc.get("quant_method"):
            raise TmacError(f"quantisation method {qc.get('quant_method')!r} is not supported (GPTQ, BitNet and "
                            "float checkpoints are)", file=hf.config_path, rule="supported quantisation method")
        if "bitnet" in hf.architecture.lower():
            raise TmacError("BitNet checkpoints need the BitNet reader (ternary weights), not round-to-nearest",
                            file=hf.config_path, rule="supported architecture")
        bits, gs, zp = self._settings(hf.config_path)
        ckpt = SafetensorsCheckpoint(path)
        items = []
        for n in ckpt.names():
            if hf.skip(n):
                continue
            e = ckpt.entry(n)
            if e.dtype not in FLOAT_DTYPES:
                raise TmacError(f"a float checkpoint holds an {e.dtype} tensor (a quantised checkpoint without its "
                                "quantisation config?)", file=str(e.file), tensor=n, rule="float dtype")
            name = hf.gguf_name(n, file=str(e.file))
            quant = is_projection(name) and len(e.shape) == 2 and self.options.get("quantize", True)
            if quant:
                hf.check_shape(name, e.shape[0], e.shape[1], file=str(e.file), tensor=n)
                k = e.shape[1]
                if gs != -1 and k % gs:
                    raise TmacError(f"group size {gs} does not divide K = {k}", file=str(e.file), tensor=n,
                                    rule="K % group_size == 0")
            items.append((name, n, quant))
        if not any(q for _, _, q in items) and self.options.get("quantize", True):
            raise TmacError("no attention/MLP projection matrices found to quantise", file=str(ckpt.files[0]),
                            rule="quantisable tensors")
        items.sort(key=lambda t: file_order_key(t[0]))
        self._hf, self._ckpt, self._items = hf, ckpt, items
        self._settings_ = (bits, gs, zp)
        dtypes = sorted({ckpt.entry(n).dtype for _, n, _ in items})
        quant = {"method": "rtn", "bits": bits, "group_size": gs, "sym": not zp, "zero_point": zp,
                 "source_dtypes": dtypes}
        notes = [f"float checkpoint ({', '.join(dtypes)}): projections quantised round-to-nearest to {bits} bits, "
                 f"group {'per channel' if gs == -1 else gs}, {'asymmetric' if zp else 'symmetric'}"]
        if not self.options.get("quantize", True):
            quant = {"method": "none", "source_dtypes": dtypes}
            notes = [f"float checkpoint ({', '.join(dtypes)}): projections passed through as float"]
        return SourceModel(path=path, format="hf-float", architecture=hf.architecture, gguf_arch=hf.gguf_arch,
                           config=hf.config, quantization=quant, tokenizer_files=tokenizer_files(hf.folder),
                           notes=notes, _reader=self)

    def tensor_infos(self, model: SourceModel) -> list[TensorInfo]:
        bits, gs, zp = self._settings_
        out = []
        for name, n, quant in self._items:
            e = self._ckpt.entry(n)
            if quant:
                out.append(TensorInfo(name, e.shape, bits, e.shape[1] if gs == -1 else gs, zero_point=zp,
                                      nbytes=e.nbytes))
            else:
                out.append(TensorInfo(name, e.shape, nbytes=e.nbytes))
        return out

    def iter_tensors(self, model: SourceModel) -> Iterator[Tensor]:
        bits, gs, zp = self._settings_
        hf = self._hf
        for name, n, quant in self._items:
            if not quant and hf.permute_heads(name) is None:
                data, span = self._ckpt.get_float_mapped(n)
                yield FloatTensor(name, data, quantizable=is_projection(name), span=span)
                continue
            data = hf.permute(name, self._ckpt.get_float(n))
            if not quant:
                yield FloatTensor(name, data, quantizable=is_projection(name))
                continue
            try:
                qt, stats = quantize_rtn(name, data, bits=bits, group_size=gs, zero_point=zp)
            except TmacError as e:  # quantize_rtn knows the tensor, not the file
                raise TmacError(str(e).removeprefix(f"tensor {e.tensor}: "), tensor=e.tensor,
                                file=str(self._ckpt.entry(n).file), rule=e.rule) from None
            del data
            qt.meta.update({"source": n, "quant_stats": stats,
                            "note": f"{name}: RTN {bits}-bit nmse {stats['nmse']:.3e}, max abs error "
                                    f"{stats['max_abs_err']:.3e}"})
            yield qt
