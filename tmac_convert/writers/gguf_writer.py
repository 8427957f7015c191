"""The T-MAC GGUF writer, built on the ``gguf`` package's :class:`gguf.GGUFWriter`.

Contents of a file:

* key/values: ``general.architecture``; for an HF source the hyper-parameters from ``config.json``
  and the tokenizer (see :mod:`.tokenizer`, :mod:`tmac_convert.archs.hparams`); for a GGUF source every key/value of the source, typed as
  there; ``general.file_type`` of the target runtime (38 for T-MAC's pinned fork, 32 for the August
  2024 fork; 1 = mostly F16 when nothing is quantised); the ``tmac.*`` keys with the embedded kcfg.
* tensor infos: quantised projections as T-MAC ``I{bits}`` with GGUF dims ``[K, M0]`` and the
  Format A blob as data (its length includes the scales, as the fork's loader expects); other
  tensors ``F16`` (2-D and up) or ``F32`` (1-D).

The ``gguf`` package does not know T-MAC's type ids (or names them as other types), so tensor
infos are added with the raw id and the logical shape directly: its byte-shape conversion (which
looks the id up in its own table) is never used for them.  Tensors are streamed: the header and
tensor infos are written first from the plan, then each tensor's bytes as the pipeline yields them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ..errors import TmacError
from .base import OutputWriter, WriteContext
from ..format.tensor import FileSpan
from .sequential import SequentialWriter
from ..format.encodings import TensorPlan, get_encoding, projection_encoding
from ..format.gguf_file import parse as parse_gguf
from ..archs import architecture_for
from ..archs.hparams import config_file
from ..format.kv import add_kv, carried_kv
from ..format.tmac_keys import CONVERTER, TmacMeta
from .tokenizer import load_tokenizer

logging.getLogger("gguf").setLevel(logging.ERROR)


def tmac_meta(ctx: WriteContext) -> TmacMeta:
    """The ``tmac.*`` facts of a plan."""
    plan = ctx.plan
    return TmacMeta(runtime=ctx.runtime.name, bits=plan.bits or 0, group_size=plan.group_size,
                    zero_point=plan.zero_point, one_scale=plan.one_scale, act_group_size=plan.act_group_size,
                    tiles={e.name: (e.tiles.bm, e.tiles.kfactor) for e in plan.quantized},
                    kcfg=plan.kcfg.to_ini())


class GGUFOutput(OutputWriter, name="gguf", suffix=".gguf"):
    """Writes a GGUF file for the T-MAC llama.cpp runtime (see the module docstring)."""

    def __init__(self, ctx: WriteContext) -> None:
        super().__init__(ctx)
        self.w: gguf.GGUFWriter | None = None
        self._next = 0
        self.data: SequentialWriter | None = None  # the tensor data, written after the header

    # -- metadata -------------------------------------------------------------------------------

    def prepare(self) -> None:
        ctx = self.ctx
        model = ctx.model
        w = gguf.GGUFWriter(None, model.gguf_arch)
        have: set[str] = {gguf.Keys.General.ARCHITECTURE}
        carried = carried_kv(model) if model.gguf_metadata is not None else []
        for kv in carried:
            add_kv(w, kv)
            have.add(kv.key)
        if not carried:
            if model.config:
                architecture_for(model.config, config_file(model)).add_hparams(w, ctx.notes)
            w.add_type("model")
            w.add_name(_model_name(model))
            load_tokenizer(model, pre_override=ctx.tokenizer_pre, notes=ctx.notes).add_to(w)
            have.update(w.kv_data[0])
        if gguf.Keys.General.QUANTIZED_BY not in have:
            w.add_quantized_by(CONVERTER)
        if gguf.Keys.General.QUANTIZATION_VERSION not in have:
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        if ctx.plan.stock:  # a stock llama.cpp file: its block type, and no tmac.* keys
            w.add_file_type(projection_encoding(ctx.plan.stock)().file_type(ctx.runtime))
        else:
            w.add_file_type(projection_encoding("tmac")().file_type(ctx.runtime) if ctx.plan.bits
                            else int(gguf.LlamaFileType.MOSTLY_F16))
            tmac_meta(ctx).add_to(w)
        dummy = np.dtype(np.float32)  # anything but uint8 keeps the logical shape as given
        for e in ctx.plan.entries:
            enc = get_encoding(e.encoding)
            w.add_tensor_info(e.name, e.shape, dummy, e.nbytes, raw_dtype=enc.gguf_type(e, ctx.runtime))
        self.w = w

    def overhead_bytes(self) -> int:
        assert self.w is not None
        n = 64
        for key, v in self.w.kv_data[0].items():
            n += len(key.encode()) + 12 + _value_size(v.value)
        for e in self.ctx.plan.entries:
            n += len(e.name.encode()) + 8 + 4 + 8 * len(e.shape) + 12 + self.w.data_alignment
        return n

    # -- data -----------------------------------------------------------------------------------

    def open(self, path: Path) -> None:
        assert self.w is not None, "prepare() first"
        self.w.write_header_to_file(Path(path))
        self.w.write_kv_data_to_file()
        self.w.write_ti_data_to_file()
        (fout,) = self.w.fout  # one file: the writer was made without shards
        fout.flush()
        start = fout.tell()
        self.w.close()  # the header is complete; the data is written by one SequentialWriter
        self.data = SequentialWriter(path, start)

    def write(self, entry: TensorPlan, data: np.ndarray, verification: Any = None) -> None:
        assert self.data is not None, "open() first"
        entries = self.ctx.plan.entries
        if self._next >= len(entries) or entries[self._next].name != entry.name:
            want = entries[self._next].name if self._next < len(entries) else "nothing more"
            raise TmacError(f"written out of order (expected {want})", tensor=entry.name, rule="plan order")
        if data.nbytes != entry.nbytes:
            raise TmacError(f"{data.nbytes} bytes encoded, {entry.nbytes} planned", tensor=entry.name,
                            rule="tensor size matches plan")
        # the layout of gguf.GGUFWriter: every tensor's data at a multiple of the alignment, then padding
        align = self.w.data_alignment
        self.data.zeros(-self.data.position % align)
        if isinstance(data, FileSpan):
            self.data.copy(data, tensor=entry.name)
        else:
            self.data.write(data)
        self.data.zeros(-data.nbytes % align)
        self._next += 1

    def close(self) -> None:
        assert self.data is not None
        if self._next != len(self.ctx.plan.entries):
            missing = self.ctx.plan.entries[self._next].name
            raise TmacError(f"the source yielded {self._next} of {len(self.ctx.plan.entries)} planned tensors",
                            tensor=missing, rule="every planned tensor written")
        self.data.close()

    def abort(self) -> None:
        if self.data is not None:
            self.data.abort()
        elif self.w is not None:
            self.w.close()

    def check_written(self, path: Path) -> None:
        """Every tensor info as planned (name, type, dims, room for its bytes) and the tmac keys as written."""
        gf = parse_gguf(path)
        plan = self.ctx.plan
        if [t.name for t in gf.tensors] != [e.name for e in plan.entries]:
            raise TmacError("the written tensor list differs from the plan", file=str(path), rule="written = planned")
        for rec, e in zip(gf.tensors, plan.entries):
            want = get_encoding(e.encoding).gguf_type(e, self.ctx.runtime)
            if rec.type_id != want or rec.shape != tuple(e.shape) or rec.span < e.nbytes or rec.offset % gf.alignment:
                raise TmacError(f"written as type {rec.type_id} shape {rec.shape} with {rec.span} bytes of room at "
                                f"{rec.offset}, planned type {want} shape {tuple(e.shape)} of {e.nbytes} bytes",
                                tensor=e.name, file=str(path), rule="written = planned")
        meta = TmacMeta.from_kv(gf.kv, str(path))
        if plan.stock:
            if meta is not None:
                raise TmacError("a stock llama.cpp file was written with tmac.* keys", file=str(path),
                                rule="written = planned")
            return
        if meta is None or meta.tiles != {e.name: (e.tiles.bm, e.tiles.kfactor) for e in plan.quantized}:
            raise TmacError("the tmac.* keys read back differ from the plan", file=str(path), rule="written = planned")


def _model_name(model) -> str:
    name = (model.config or {}).get("_name_or_path") or Path(str(model.path)).name
    return str(name).rstrip("/").split("/")[-1]


def _value_size(v: Any) -> int:
    if isinstance(v, (str, bytes)):
        return len(v.encode() if isinstance(v, str) else v) + 8
    if isinstance(v, np.ndarray):
        return v.nbytes + 12
    if isinstance(v, (list, tuple)):
        return 12 + sum(_value_size(x) for x in v)
    return 8
