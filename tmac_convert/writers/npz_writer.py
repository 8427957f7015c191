"""The npz writer: one ``.npy`` member per tensor plus a versioned JSON manifest, streamed.

The file is a zip (stored, not compressed) that ``numpy.load`` opens:

* ``<tensor name>.npy``: a quantised tensor's Format A blob (uint8, 1-D) or a float tensor
  (float16 for 2-D and up, float32 for 1-D, in its numpy shape);
* ``tokenizer/<file>``: the source's tokenizer files, byte for byte;
* ``manifest.json`` (written last): ``{"format": "tmac-convert.npz", "format_version": 1, ...}``
  with the model facts (architecture, HF config, quantisation), the ``tmac`` facts (runtime-free:
  bits, group size, zero point, activation group size, kcfg text) and one descriptor per tensor
  (name, member, encoding, shape, bits, group size, zero point, per-tensor scale, bm, kfactor,
  byte count, scales_size, and the verification figures when verification ran).
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TmacError
from ..layouts import scales_count
from .base import OutputWriter, WriteContext
from ..format.encodings import TensorPlan
from ..format.tensor import FileSpan
from ..format.kv import carried_kv, kv_to_json
from ..format.tmac_keys import CONVERTER, TMAC_FORMAT_VERSION

from ..format.npz import (FIXED_DATE_TIME, FIXED_EXTERNAL_ATTR, MANIFEST, NPZ_FORMAT, NPZ_FORMAT_VERSION,
                                      TOKENIZER_PREFIX, member_name)

__all__ = ["NpzOutput", "describe", "member_name"]


def _info(name: str) -> zipfile.ZipInfo:
    """A stored member with a fixed date and mode: the bytes of the file do not depend on the clock or on the
    dates of the source files."""
    info = zipfile.ZipInfo(name, date_time=FIXED_DATE_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = FIXED_EXTERNAL_ATTR
    info.create_system = 3  # unix, whatever the host, so external_attr means the same everywhere
    return info


class NpzOutput(OutputWriter, name="npz", suffix=".npz"):
    """Writes the npz container described in the module docstring."""

    def __init__(self, ctx: WriteContext) -> None:
        super().__init__(ctx)
        self.zf: zipfile.ZipFile | None = None
        self.descriptors: list[dict[str, Any]] = []
        self._next = 0

    def overhead_bytes(self) -> int:
        tok = sum(Path(p).stat().st_size for p in self.ctx.model.tokenizer_files.values() if Path(p).is_file())
        return (1 << 20) + tok + 512 * len(self.ctx.plan.entries)

    def open(self, path: Path) -> None:
        self.zf = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True)

    def write(self, entry: TensorPlan, data: np.ndarray, verification: Any = None) -> None:
        assert self.zf is not None
        entries = self.ctx.plan.entries
        if self._next >= len(entries) or entries[self._next].name != entry.name:
            raise TmacError("written out of order", tensor=entry.name, rule="plan order")
        if data.nbytes != entry.nbytes:
            raise TmacError(f"{data.nbytes} bytes encoded, {entry.nbytes} planned", tensor=entry.name,
                            rule="tensor size matches plan")
        if isinstance(data, FileSpan):  # an unchanged source tensor: a memory map of its bytes
            data = data.array(tuple(entry.shape))
        arr = data.reshape(-1) if entry.quantized else data.reshape(entry.shape)
        with self.zf.open(_info(member_name(entry.name)), "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
        self.descriptors.append(describe(entry, verification))
        self._next += 1

    def close(self) -> None:
        assert self.zf is not None
        if self._next != len(self.ctx.plan.entries):
            raise TmacError(f"the source yielded {self._next} of {len(self.ctx.plan.entries)} planned tensors",
                            tensor=self.ctx.plan.entries[self._next].name, rule="every planned tensor written")
        for name, p in sorted(self.ctx.model.tokenizer_files.items()):
            if Path(p).is_file():
                if any(c in name for c in "/\\\0") or name in ("", ".", ".."):
                    raise TmacError(f"tokenizer file name {name!r} is not a plain file name", file=str(p),
                                    rule="npz member names are plain")
                with open(p, "rb") as src, self.zf.open(_info(TOKENIZER_PREFIX + name), "w", force_zip64=True) as f:
                    shutil.copyfileobj(src, f, 1 << 20)
        self.zf.writestr(_info(MANIFEST), json.dumps(self.manifest(), indent=1, sort_keys=False))
        self.zf.close()

    def abort(self) -> None:
        if self.zf is not None:
            try:
                self.zf.close()
            except Exception:  # noqa: BLE001 - the file is deleted anyway
                pass

    def check_written(self, path: Path) -> None:
        """The zip lists every planned member and a manifest describing them with the planned sizes."""
        try:
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
                man = json.loads(zf.read(MANIFEST))
        except (zipfile.BadZipFile, KeyError, ValueError) as e:
            raise TmacError(f"cannot read the written npz back: {e}", file=str(path), rule="written = planned") from None
        sizes = {d["name"]: d["nbytes"] for d in man["tensors"]}
        for e in self.ctx.plan.entries:
            if member_name(e.name) not in names or sizes.get(e.name) != e.nbytes:
                raise TmacError("member or manifest entry differs from the plan", tensor=e.name, file=str(path),
                                rule="written = planned")

    def manifest(self) -> dict[str, Any]:
        ctx = self.ctx
        m, plan = ctx.model, ctx.plan
        return {
            "format": NPZ_FORMAT,
            "format_version": NPZ_FORMAT_VERSION,
            "converter": CONVERTER,
            "source": {"path": str(m.path), "format": m.format},
            "architecture": m.architecture,
            "gguf_arch": m.gguf_arch,
            "config": _jsonable(m.config),
            "quantization": _jsonable(m.quantization),
            "tmac": {"format_version": TMAC_FORMAT_VERSION, "layout": "A", "bits": plan.bits or 0,
                     "group_size": plan.group_size, "zero_point": plan.zero_point, "one_scale": plan.one_scale,
                     "act_group_size": plan.act_group_size, "kcfg": plan.kcfg.to_ini()},
            "tokenizer_files": sorted(ctx.model.tokenizer_files),
            "gguf_metadata": ([kv_to_json(kv) for kv in carried_kv(m)] if m.gguf_metadata is not None else None),
            "tensors": self.descriptors,
        }


def describe(entry: TensorPlan, verification: Any = None) -> dict[str, Any]:
    """A tensor's manifest descriptor."""
    d: dict[str, Any] = {"name": entry.name, "member": member_name(entry.name), "encoding": entry.encoding,
                         "shape": list(entry.shape), "nbytes": entry.nbytes}
    if entry.quantized:
        m0, k = entry.shape
        d.update(bits=entry.bits, group_size=entry.group_size, zero_point=entry.zero_point,
                 per_tensor_scale=entry.per_tensor_scale, bm=entry.tiles.bm, kfactor=entry.tiles.kfactor,
                 scales_size=scales_count(m0, k, entry.group_size, entry.zero_point, entry.per_tensor_scale))
    if verification is not None:
        d["verification"] = {"nmse": float(verification.nmse), "max_abs_err": float(verification.max_abs_err),
                             "ok": bool(verification.ok)}
        for key in ("exact_error", "exact_limit", "expected_nmse", "int8_ratio"):
            if getattr(verification, key, None) is not None:
                d["verification"][key] = float(getattr(verification, key))
    return d


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)
