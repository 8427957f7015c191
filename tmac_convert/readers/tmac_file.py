"""Reads tmac-convert's own outputs (and T-MAC GGUF files) back into the intermediate form.

* A T-MAC GGUF (``I1..I4`` tensors): the ``tmac.*`` keys say the runtime numbering, bits, group size,
  zero points and each tensor's bm/kfactor.  Files from T-MAC's own converter lack those keys; they
  are read when a ``kcfg`` option names the kcfg.ini they were made with (bits come from the type
  id, the rest from the kcfg section of each shape).
* An npz written by tmac-convert: the JSON manifest describes every member.

Quantised tensors are unpacked (Format A blob -> codes, scales, zero offsets), float tensors are
memory-mapped (GGUF) or read member by member (npz), so ``tmac_convert.read(out)`` followed by a
conversion with other tiles re-tiles a file, one tensor in memory at a time.

Options: ``kcfg`` (path or :class:`~tmac_convert.layouts.Kcfg`) for files without ``tmac.*`` keys,
``runtime`` (``tmac``/``aug2024``) to name the type-id numbering of such files.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import TmacError
from ..format.encodings import TensorPlan, encoding_for_type, get_encoding
from ..format.kv import kv_from_json
from ..format.tmac_keys import TMAC_KEY_PREFIX, TmacMeta
from ..format.gguf_file import GGUFFile, TensorRecord, is_gguf, parse, read_bytes, standard_nbytes
from ..format.rules import zero_point_from_scales_size
from ..format.runtime import RUNTIMES, Runtime, runtimes_using
from ..layouts import Kcfg, TileConfig, load_kcfg
from ..layouts.constraints import check_layout
from .base import Reader, SourceModel, Tensor, TensorInfo
from ..format.npz import (MAX_TOKENIZER_BYTES, TOKENIZER_PREFIX, is_our_npz, member_names, read_manifest,
                            read_member, read_raw_member)

def looks_tmac(gf: GGUFFile) -> bool:
    """True for a GGUF with ``tmac.*`` keys or T-MAC-only type ids (see :attr:`GGUFFile.is_tmac`)."""
    return gf.is_tmac


def _infer_runtime(gf: GGUFFile, option: str | None) -> Runtime:
    if option is not None:
        if option not in RUNTIMES:
            raise TmacError(f"unknown runtime {option!r}; runtimes: {', '.join(RUNTIMES)}", rule="runtime name")
        return RUNTIMES[option]
    name = gf.get("tmac.runtime")
    if name is not None:
        if not isinstance(name, str) or name not in RUNTIMES:
            raise gf.fail(f"tmac.runtime {name!r} is not one of {', '.join(RUNTIMES)}", "tmac.runtime")
        return RUNTIMES[name]
    hits = runtimes_using({t.type_id for t in gf.tensors})
    if len(hits) == 1:
        return RUNTIMES[hits[0]]
    raise gf.fail("cannot tell which T-MAC type-id numbering the file uses; pass runtime=tmac or aug2024",
                  "known type-id numbering")


@dataclass
class _GGUFState:
    gf: GGUFFile
    runtime: Runtime
    plans: list[TensorPlan]
    records: dict[str, TensorRecord]


class TmacFileReader(Reader, name="tmac", priority=10):
    """tmac-convert GGUF/npz outputs and T-MAC GGUF files (see the module docstring)."""

    @classmethod
    def detect(cls, path: Path) -> bool:
        p = Path(path)
        if not p.is_file():
            return False
        if is_gguf(p):
            try:
                return looks_tmac(parse(p))
            except TmacError:
                return False
        return _is_our_npz(p)

    def open(self, path: Path) -> SourceModel:
        p = Path(path)
        if is_gguf(p):
            return self._open_gguf(p)
        if _is_our_npz(p):
            return self._open_npz(p)
        raise TmacError("neither a T-MAC GGUF nor a tmac-convert npz", file=str(p), rule="tmac file")

    # -- GGUF ------------------------------------------------------------------------------------

    def _open_gguf(self, p: Path) -> SourceModel:
        gf = parse(p)
        file = str(p)
        runtime = _infer_runtime(gf, self.options.get("runtime"))
        meta = TmacMeta.from_kv(gf.kv, file)
        kc = self.options.get("kcfg")
        if kc is not None and not isinstance(kc, Kcfg):
            kc = load_kcfg(kc)
        if meta is None and kc is None:
            raise TmacError("a T-MAC GGUF without tmac.* keys (written by T-MAC's own converter): its tiles live "
                            "only in the kcfg.ini it was made with; pass that kcfg", file=file,
                            rule="tiles known")
        if meta is not None and meta.layout != "A":
            raise gf.fail(f"tmac.layout {meta.layout!r} is not supported (only A)", "tmac.layout")
        plans = []
        for rec in gf.tensors:
            enc = encoding_for_type(rec.type_id, runtime)
            if enc is None:
                raise gf.fail(f"type {rec.type_id} is neither T-MAC I1..I4 ({runtime.name} numbering), F16 nor F32",
                              "tensor type", rec.name)
            shape = rec.shape
            if enc == "tmac":
                plan = self._quant_plan(rec, runtime, meta, kc, file)
            else:
                plan = TensorPlan(rec.name, enc, shape)
            plan.nbytes = get_encoding(enc).nbytes(plan)
            if enc != "tmac" and standard_nbytes(rec.type_id, rec.ne) != plan.nbytes:
                raise gf.fail("size mismatch", "tensor size", rec.name)
            if plan.nbytes > rec.span:
                raise gf.fail(f"needs {plan.nbytes} bytes but only {rec.span} lie before the next tensor or the end "
                              "of the file", "tensor data inside the file", rec.name)
            plan.src_nbytes = plan.nbytes
            plans.append(plan)
        if meta is not None:
            unknown = set(meta.tiles) - {pl.name for pl in plans if pl.quantized}
            if unknown:
                raise gf.fail(f"tmac.tensor_names lists {sorted(unknown)[0]!r}, which is not an I-type tensor",
                              "tmac keys consistent")
        quant = [pl for pl in plans if pl.quantized]
        q: dict[str, Any] = {"runtime": runtime.name}
        if quant:
            q.update(bits=quant[0].bits, group_size=quant[0].group_size, zero_point=quant[0].zero_point,
                     one_scale=quant[0].per_tensor_scale)
        if meta is not None:
            q.update(act_group_size=meta.act_group_size, kcfg=meta.kcfg, converter=meta.converter)
            if quant and not meta.one_scale:
                q["group_size"] = meta.group_size  # the model-wide value (-1: one group per row)
        arch = gf.get("general.architecture")
        if not isinstance(arch, str):
            raise gf.fail("general.architecture is missing", "general.architecture")
        metadata = {k: v.value for k, v in gf.kv.items() if not k.startswith("tmac.")}
        self._state = _GGUFState(gf, runtime, plans, {r.name: r for r in gf.tensors})
        notes = [f"T-MAC GGUF ({runtime.name} type ids)" + ("" if meta else ", tiles from the given kcfg")]
        return SourceModel(path=p, format="tmac-gguf", architecture=arch, gguf_arch=arch, config={},
                           quantization=q, tokenizer_files={}, gguf_metadata=metadata,
                           gguf_kv=[kv for k, kv in gf.kv.items() if not k.startswith(TMAC_KEY_PREFIX)], notes=notes,
                           _reader=self)

    def _quant_plan(self, rec: TensorRecord, runtime: Runtime, meta: TmacMeta | None, kc: Kcfg | None,
                    file: str) -> TensorPlan:
        if len(rec.ne) != 2:
            raise TmacError(f"I-type tensor has {len(rec.ne)} dimensions", tensor=rec.name, file=file,
                            rule="quantised tensors are 2-D")
        bits = runtime.bits_of(rec.type_id)
        m0, k = rec.shape
        if meta is not None:
            if rec.name not in meta.tiles:
                raise TmacError("I-type tensor missing from tmac.tensor_names", tensor=rec.name, file=file,
                                rule="tmac keys consistent")
            if meta.bits != bits:
                raise TmacError(f"type I{bits} but tmac.bits = {meta.bits}", tensor=rec.name, file=file,
                                rule="tmac keys consistent")
            bm, kf = meta.tiles[rec.name]
            per_tensor = meta.one_scale
            gs = k if per_tensor or meta.group_size == -1 else meta.group_size
            zp = meta.zero_point
        else:
            sec = kc.lookup(m0, k, bits, tensor=rec.name)
            bm, kf = sec.bm, sec.kfactor
            per_tensor = sec.scales_size == 1
            gs = k if per_tensor else sec.group_size
            found = (False if per_tensor else zero_point_from_scales_size(sec.scales_size, m0, k, gs)
                     if gs and k % gs == 0 else None)
            if found is None:
                base = m0 * (k // gs) if gs and k % gs == 0 else -1
                raise TmacError(f"kcfg {sec.section} scales_size {sec.scales_size} fits neither {base} (group "
                                f"{gs}) nor {2 * base} (with zero points)", tensor=rec.name, file=file,
                                rule="kcfg matches file")
            zp = found
        if not per_tensor and (gs <= 0 or k % gs):
            raise TmacError(f"group size {gs} does not divide K = {k}", tensor=rec.name, file=file,
                            rule="K % group_size == 0")
        return TensorPlan(rec.name, "tmac", (m0, k), bits=bits, group_size=gs, zero_point=zp,
                          per_tensor_scale=per_tensor, tiles=TileConfig(bm, kf))

    # -- npz -------------------------------------------------------------------------------------

    def _open_npz(self, p: Path) -> SourceModel:
        file = str(p)
        man = read_manifest(p)  # schema-checked
        tm = man["tmac"]
        names = member_names(p)
        plans = []
        for d in man["tensors"]:
            enc = get_encoding(d["encoding"]).name
            shape = tuple(d["shape"])
            if enc == "tmac":
                pl = TensorPlan(d["name"], enc, shape, bits=d["bits"], group_size=d["group_size"],
                                zero_point=d["zero_point"], per_tensor_scale=d["per_tensor_scale"],
                                tiles=TileConfig(d["bm"], d["kfactor"]))
                m0, k = shape
                check_layout(m0, k, pl.bits, d["bm"], d["kfactor"], None if pl.per_tensor_scale else pl.group_size,
                             tensor=pl.name)
                if pl.per_tensor_scale and (pl.zero_point or pl.group_size != k):
                    raise TmacError("a per-tensor scale needs group_size == K and no zero points", tensor=pl.name,
                                    file=file, rule="manifest consistent")
            else:
                pl = TensorPlan(d["name"], enc, shape)
            pl.nbytes = get_encoding(enc).nbytes(pl)
            if pl.nbytes != d["nbytes"]:
                raise TmacError(f"manifest says {d['nbytes']} bytes, the descriptor needs {pl.nbytes}",
                                tensor=pl.name, file=file, rule="manifest consistent")
            if d["member"] not in names:
                raise TmacError(f"member {d['member']} is missing", tensor=pl.name, file=file,
                                rule="manifest consistent")
            pl.src_nbytes = pl.nbytes
            plans.append((pl, d["member"]))
        if len({pl.name for pl, _ in plans}) != len(plans):
            raise TmacError("the manifest lists a tensor twice", file=file, rule="manifest consistent")
        tok_dir = _extract_tokenizer(p, man.get("tokenizer_files") or [], self)
        gm = man.get("gguf_metadata")
        if gm is not None:
            try:
                self._kv = [kv_from_json(d) for d in gm]
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise TmacError(f"gguf_metadata is malformed ({e})", file=file, rule="manifest schema") from None
        q = dict(man.get("quantization") or {})
        q.update(bits=tm["bits"], group_size=tm["group_size"], zero_point=tm["zero_point"],
                 one_scale=tm["one_scale"], act_group_size=tm["act_group_size"], kcfg=tm["kcfg"])
        self._npz = (p, plans)
        return SourceModel(path=p, format="tmac-npz", architecture=man["architecture"], gguf_arch=man["gguf_arch"],
                           config=dict(man.get("config") or {}), quantization=q, tokenizer_files=tok_dir,
                           gguf_metadata=None if gm is None else {kv.key: kv.value for kv in self._kv},
                           gguf_kv=None if gm is None else list(self._kv),
                           notes=["tmac-convert npz"], _reader=self)

    # -- tensors ---------------------------------------------------------------------------------

    def plans(self, model: SourceModel) -> list[TensorPlan]:
        """The file's tensor plans (encoding, shape, tiles...), in file order."""
        if model.format == "tmac-gguf":
            return list(self._state.plans)
        return [pl for pl, _ in self._npz[1]]

    def tensor_infos(self, model: SourceModel) -> list[TensorInfo]:
        out = []
        for pl in self.plans(model):
            if pl.quantized:
                out.append(TensorInfo(pl.name, pl.shape, bits=pl.bits, group_size=pl.group_size,
                                      zero_point=pl.zero_point, per_tensor_scale=pl.per_tensor_scale,
                                      nbytes=pl.nbytes))
            else:
                out.append(TensorInfo(pl.name, pl.shape, nbytes=pl.nbytes))
        return out

    def raw_bytes(self, model: SourceModel) -> Iterator[tuple[TensorPlan, np.ndarray]]:
        """``(plan, stored bytes as uint8)`` for every tensor, in file order (GGUF: memory-mapped)."""
        if model.format == "tmac-gguf":
            st = self._state
            for pl in st.plans:
                rec = st.records[pl.name]
                yield pl, read_bytes(model.path, rec.offset, pl.nbytes)
            return
        for pl, _ in self._npz[1]:
            yield self.raw_for(model, pl.name)

    def raw_for(self, model: SourceModel, name: str) -> tuple[TensorPlan, np.ndarray] | None:
        """``(plan, stored bytes)`` of one tensor by name, or None when the file has no such tensor."""
        if model.format == "tmac-gguf":
            st = self._state
            pl = next((x for x in st.plans if x.name == name), None)
            if pl is None:
                return None
            return pl, read_bytes(model.path, st.records[name].offset, pl.nbytes)
        p, plans = self._npz
        hit = next(((pl, m) for pl, m in plans if pl.name == name), None)
        if hit is None:
            return None
        pl, member = hit
        dtype = np.dtype("|u1") if pl.quantized else get_encoding_dtype(pl.encoding)
        arr = read_member(p, member, nbytes=pl.nbytes, dtype=dtype, tensor=name)
        return pl, arr.view(np.uint8)

    def iter_tensors(self, model: SourceModel) -> Iterator[Tensor]:
        for pl, data in self.raw_bytes(model):
            try:
                yield get_encoding(pl.encoding).decode(data, pl)
            except TmacError as e:
                if e.file:
                    raise
                raise type(e)(str(e), file=str(model.path), rule=e.rule) from None


def _is_our_npz(p: Path) -> bool:
    return is_our_npz(p)


def get_encoding_dtype(encoding: str) -> np.dtype:
    """The stored dtype of a float encoding (``<f2``/``<f4``)."""
    return get_encoding(encoding).dtype


def _extract_tokenizer(p: Path, names: list, owner: Any) -> dict[str, Path]:
    """Copy the npz's tokenizer members to a temporary folder that lives as long as ``owner``."""
    if not names:
        return {}
    for n in names:
        if not isinstance(n, str) or "/" in n or "\\" in n or n in ("", ".", "..") or "\x00" in n:
            raise TmacError(f"tokenizer file name {n!r} is not a plain file name", file=str(p), rule="manifest schema")
    tmp = Path(tempfile.mkdtemp(prefix="tmac-npz-tok-"))
    weakref.finalize(owner, shutil.rmtree, tmp, True)
    out = {}
    for n in names:
        (tmp / n).write_bytes(read_raw_member(p, TOKENIZER_PREFIX + n, MAX_TOKENIZER_BYTES))
        out[n] = tmp / n
    return out
