"""Everything a kernel kit needs to know about a converted model, read from its GGUF header only.

This module is the kit's only reader of the GGUF (no tensor data is read): :func:`read_model_facts`
returns one :class:`TensorFacts` per T-MAC ``I``-type tensor from the ``tmac.*`` keys (see
:class:`~tmac_convert.writers.gguf_meta.TmacMeta`) and the tensor infos, plus the file's own kcfg text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import TmacError
from ..gguf_tmac import RUNTIMES, is_gguf, parse
from ..readers.tmac_file import looks_tmac
from ..writers.gguf_meta import TmacMeta


@dataclass(frozen=True)
class TensorFacts:
    """One quantised tensor ``[m0, k]`` as the runtime's kernels must treat it.

    ``group_size`` is the weights per scale along K (K for one group per row and for a per-tensor
    scale); ``act_group_size`` the activations per int8 LUT scale (K for "the whole K").
    """

    name: str
    m0: int
    k: int
    bits: int
    bm: int
    kfactor: int
    group_size: int
    zero_point: bool
    one_scale: bool
    act_group_size: int
    nbytes_in_file: int  # bytes from the tensor's start to the next tensor or the end of the file


@dataclass(frozen=True)
class ModelFacts:
    """The quantised tensors of a T-MAC GGUF, its runtime numbering and its own kcfg text (may be empty)."""

    path: Path
    runtime: str
    tensors: tuple[TensorFacts, ...]
    kcfg_text: str


def _wanted(key: str) -> bool:
    return key.startswith(("tmac.", "general."))


def read_model_facts(model: str | Path) -> ModelFacts:
    """Read the facts of every ``I``-type tensor of a tmac-convert GGUF (header only).

    Raises:
        TmacError: not a GGUF, not a T-MAC GGUF, no ``tmac.*`` keys, keys inconsistent with the
            tensors (rule names the broken fact), or no quantised tensor at all.
    """
    p = Path(model)
    file = str(p)
    if not p.is_file():
        raise TmacError("no such file", file=file, rule="model file exists")
    if not is_gguf(p):
        raise TmacError("not a GGUF file; a kit is written for a T-MAC GGUF made by tmac-convert", file=file,
                        rule="T-MAC GGUF")
    gf = parse(p, keys=_wanted)  # tmac.* and general.* only: a vocabulary is not decoded
    if not looks_tmac(gf):
        raise TmacError("not a T-MAC GGUF (no tmac.* keys and no I1..I4 tensors); convert it with tmac-convert first",
                        file=file, rule="T-MAC GGUF")
    meta = TmacMeta.from_kv(gf.kv, file)
    if meta is None:
        raise TmacError("a T-MAC GGUF without tmac.* keys (written by T-MAC's own converter): its tiles, group "
                        "size and zero points are not recorded in it; re-convert it with tmac-convert",
                        file=file, rule="tmac keys present")
    if meta.layout != "A":
        raise TmacError(f"tmac.layout {meta.layout!r} is not supported (only A)", file=file, rule="tmac.layout")
    runtime = RUNTIMES.get(meta.runtime)
    if runtime is None:
        raise TmacError(f"tmac.runtime {meta.runtime!r} is not one of {', '.join(RUNTIMES)}", file=file,
                        rule="tmac.runtime")
    out = []
    for rec in gf.tensors:
        bits = runtime.bits_of(rec.type_id)
        if bits is None:
            continue
        if len(rec.ne) != 2:
            raise TmacError(f"I-type tensor has {len(rec.ne)} dimensions", tensor=rec.name, file=file,
                            rule="quantised tensors are 2-D")
        if rec.name not in meta.tiles:
            raise TmacError("I-type tensor missing from tmac.tensor_names", tensor=rec.name, file=file,
                            rule="tmac keys consistent")
        if bits != meta.bits:
            raise TmacError(f"type I{bits} but tmac.bits = {meta.bits}", tensor=rec.name, file=file,
                            rule="tmac keys consistent")
        m0, k = rec.shape
        bm, kf = meta.tiles[rec.name]
        gs = k if meta.one_scale or meta.group_size == -1 else meta.group_size
        ags = k if meta.act_group_size == -1 else meta.act_group_size
        out.append(TensorFacts(rec.name, m0, k, bits, bm, kf, gs, bool(meta.zero_point) and not meta.one_scale,
                               bool(meta.one_scale), ags, rec.span))
    unknown = set(meta.tiles) - {t.name for t in out}
    if unknown:
        raise TmacError(f"tmac.tensor_names lists {sorted(unknown)[0]!r}, which is not an I-type tensor", file=file,
                        rule="tmac keys consistent")
    if not out:
        raise TmacError("the file has no T-MAC I-type tensors: there is nothing for kernels to serve", file=file,
                        rule="quantised tensors present")
    return ModelFacts(p, runtime.name, tuple(out), meta.kcfg)
