"""``tmac-convert inspect``: what is inside a GGUF or tmac-convert npz file, as plain data.

For GGUF files the header is parsed by :mod:`tmac_convert.format.runtime`, so T-MAC type ids are named
``I1..I4`` (the ``gguf`` package calls 39 MXFP4, 30 BF16 and knows nothing of 36-38; both names are
shown).  For T-MAC files each quantised tensor's tiles come from the ``tmac.*`` keys and its byte
size is recomputed from them; the embedded kcfg is checked against every tensor.  Problems are
listed, not raised (``tmac-convert verify`` is the gate).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import TmacError
from .format.gguf_file import is_gguf, parse, standard_nbytes
from .format.runtime import RUNTIMES, gguf_type_label, type_name
from .layouts import Kcfg

_ARRAY_PREVIEW = 8
_STRING_PREVIEW = 200


def _preview(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        head = v[:_ARRAY_PREVIEW].tolist()
        return head if v.size <= _ARRAY_PREVIEW else {"length": int(v.size), "first": head}
    if isinstance(v, list):
        head = [_preview(x) for x in v[:_ARRAY_PREVIEW]]
        return head if len(v) <= _ARRAY_PREVIEW else {"length": len(v), "first": head}
    if isinstance(v, bytes):
        return f"<{len(v)} bytes>"
    if isinstance(v, str) and len(v) > _STRING_PREVIEW:
        return v[:_STRING_PREVIEW] + f"... ({len(v)} chars)"
    return v


def describe_file(path: str | Path, *, full_metadata: bool = False) -> dict[str, Any]:
    """A JSON-able description of a GGUF or tmac-convert npz file.

    Keys: ``file``, ``container`` (``gguf``/``npz``), ``tmac`` (the T-MAC facts or None),
    ``runtime``, ``metadata`` (previewed unless ``full_metadata``), ``tensors`` (name, type, what
    the gguf package would call it, shape, bytes, offset, bits, bm, kfactor), ``problems``.
    """
    p = Path(path)
    if p.is_dir():
        raise TmacError("is a folder; inspect takes one file: a GGUF or a tmac-convert npz (a model folder is "
                        "converted with `tmac-convert FOLDER`)", file=str(p), rule="file to inspect")
    if not p.exists():
        raise TmacError("no such file", file=str(p), rule="file exists")
    if not p.is_file():
        raise TmacError("not a regular file", file=str(p), rule="file to inspect")
    if is_gguf(p):
        return _describe_gguf(p, full_metadata)
    from .readers.tmac_file import _is_our_npz

    if _is_our_npz(p):
        return _describe_npz(p)
    raise TmacError("neither a GGUF file nor a tmac-convert npz", file=str(p), rule="known file type")


def _describe_gguf(p: Path, full: bool) -> dict[str, Any]:
    from .readers.tmac_file import TmacFileReader, looks_tmac

    gf = parse(p)
    problems: list[str] = []
    tmac = looks_tmac(gf)
    runtime = None
    plans: dict[str, Any] = {}
    meta_json = None
    if tmac:
        try:
            reader = TmacFileReader()
            model = reader.open(p)
            runtime = RUNTIMES[model.quantization["runtime"]]
            plans = {pl.name: pl for pl in reader.plans(model)}
            from .format.tmac_keys import TmacMeta

            meta = TmacMeta.from_kv(gf.kv, str(p))
            if meta is not None:
                meta_json = meta.to_json()
                problems += kcfg_problems(meta.kcfg, list(plans.values()), str(p))
        except TmacError as e:
            problems.append(str(e))
            name = gf.get("tmac.runtime")
            runtime = RUNTIMES.get(name) if isinstance(name, str) else None
    tensors = []
    for rec in gf.tensors:
        pl = plans.get(rec.name)
        nbytes = pl.nbytes if pl is not None else standard_nbytes(rec.type_id, rec.ne)
        t = {"name": rec.name, "type": type_name(rec.type_id, runtime), "type_id": rec.type_id,
             "gguf_package_type": gguf_type_label(rec.type_id), "shape": list(rec.shape), "ne": list(rec.ne),
             "offset": rec.offset, "nbytes": nbytes}
        if pl is not None and pl.quantized:
            t.update(bits=pl.bits, group_size=pl.group_size, zero_point=pl.zero_point, bm=pl.tiles.bm,
                     kfactor=pl.tiles.kfactor)
        tensors.append(t)
    ft = gf.get("general.file_type")
    return {
        "file": str(p), "container": "gguf", "gguf_version": gf.version, "alignment": gf.alignment,
        "file_size": gf.file_size, "data_offset": gf.data_offset, "architecture": gf.get("general.architecture"),
        "file_type": ft, "tmac": meta_json, "is_tmac": tmac,
        "runtime": None if runtime is None else {"name": runtime.name, "description": runtime.description,
                                                 "file_type_matches": ft == runtime.file_type},
        "metadata": {k: (kv.value.tolist() if isinstance(kv.value, np.ndarray) else kv.value) if full
                     else _preview(kv.value) for k, kv in gf.kv.items()},
        "tensors": tensors, "problems": problems,
    }


def kcfg_problems(kcfg_text: str, plans: list[Any], file: str) -> list[str]:
    """Every disagreement between an embedded kcfg and the quantised tensors it must describe."""
    try:
        kc = Kcfg.parse(kcfg_text, source=f"{file} (tmac.kcfg)")
    except TmacError as e:
        return [str(e)]
    out = []
    for pl in plans:
        if not pl.quantized:
            continue
        m0, k = pl.shape
        try:
            sec = kc.lookup(m0, k, pl.bits, tensor=pl.name)
        except TmacError as e:
            out.append(str(e))
            continue
        probs = sec.problems(m0, k, pl.bits, group_size=pl.group_size, zero_point=pl.zero_point,
                             per_tensor=pl.per_tensor_scale)
        if (sec.bm, sec.kfactor) != (pl.tiles.bm, pl.tiles.kfactor):
            probs.append(f"{sec.section} has bm {sec.bm} kfactor {sec.kfactor}, the tensor was packed with "
                         f"bm {pl.tiles.bm} kfactor {pl.tiles.kfactor}")
        out += [f"tensor {pl.name}: {x}" for x in probs]
    return out


def _npz_tensor(d: dict[str, Any]) -> dict[str, Any]:
    """A manifest descriptor as a tensor row: its ``type`` is ``I{bits}`` for T-MAC blobs, else the encoding."""
    t = {k: v for k, v in d.items() if k != "member"}
    t["type"] = f"I{d['bits']}" if d.get("bits") else str(d.get("encoding", "?")).upper()
    return t


def _describe_npz(p: Path) -> dict[str, Any]:
    from .readers.tmac_file import read_manifest

    man = read_manifest(p)
    tm = man.get("tmac") or {}
    tensors = [_npz_tensor(d) for d in man.get("tensors", [])]
    problems: list[str] = []
    try:
        from .readers.tmac_file import TmacFileReader

        r = TmacFileReader()
        model = r.open(p)
        problems += kcfg_problems(tm.get("kcfg", ""), r.plans(model), str(p))
    except TmacError as e:
        problems.append(str(e))
    return {"file": str(p), "container": "npz", "format": man.get("format"),
            "format_version": man.get("format_version"), "converter": man.get("converter"),
            "architecture": man.get("architecture"), "gguf_arch": man.get("gguf_arch"), "tmac": tm,
            "is_tmac": True, "runtime": None, "file_size": p.stat().st_size,
            "metadata": {"config": man.get("config"), "quantization": man.get("quantization"),
                         "source": man.get("source"), "tokenizer_files": man.get("tokenizer_files")},
            "tensors": tensors, "problems": problems}
