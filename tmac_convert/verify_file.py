"""``tmac-convert verify FILE [--source SRC]``: re-check a written file (for users' CI).

Checks, collecting every failure instead of stopping at the first:

1. structure: the header parses, every tensor's size follows from its type and tiles and lies inside
   the file (done by opening it with the T-MAC reader; a failure here is a bad input, exit 2);
2. the embedded kcfg (and the ``<stem>.kcfg.ini`` beside the file, when present) agrees with every
   quantised tensor's shape, bits, group size, zero points and tiles;
3. each quantised blob unpacks and packs back to the same bytes, and the kernel-level check
   (:func:`tmac_convert.proof.verify_tensor`) passes on it;
4. with a source: every source tensor is present and its stored bytes equal
   ``tmac_convert.pack`` (or the float encoding) of the source tensor, and nothing else is stored
   except tensors the converter generates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .convert import VERIFY_SEED, kcfg_path_for
from .inspect_file import kcfg_problems
from .errors import TmacError
from .format.gguf_file import is_gguf, parse
from .layouts import pack
from .readers.base import FloatTensor
from .readers.tmac_file import TmacFileReader, looks_tmac
from .format.tensor import QuantTensor
from .format.encodings import get_encoding

GENERATED = frozenset({"rope_freqs.weight"})


@dataclass
class TensorCheck:
    name: str
    type: str
    nmse: float | None = None
    max_abs_err: float | None = None
    matches_source: bool | None = None
    proof: dict[str, Any] | None = None
    lossy_nmse: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class FileCheck:
    """The result of :func:`verify_file`; ``ok`` is False when any check failed."""

    file: str
    source: str | None
    tensors: list[TensorCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    stock: bool = False  # a GGUF of stock llama.cpp types (checked by tmac_convert.stockcheck)

    @property
    def ok(self) -> bool:
        return not self.problems and all(t.ok for t in self.tensors)

    @property
    def failures(self) -> list[str]:
        return self.problems + [f"tensor {t.name}: {p}" for t in self.tensors for p in t.problems]

    def to_dict(self) -> dict[str, Any]:
        worst = max((t.nmse for t in self.tensors if t.nmse is not None), default=None)
        lossy = [t.lossy_nmse for t in self.tensors if t.lossy_nmse is not None]
        return {"file": self.file, "source": self.source, "ok": self.ok, "problems": self.failures,
                "stock": self.stock, "worst_nmse": worst, "lossy": bool(lossy),
                "worst_lossy_nmse": max(lossy) if lossy else None,
                "tensors": [{**asdict(t), "ok": t.ok} for t in self.tensors]}


def verify_file(path: str | Path, source: str | Path | None = None, *, verify: bool = True,
                reader_options: dict[str, Any] | None = None, file_options: dict[str, Any] | None = None,
                max_error: float | None = None) -> FileCheck:
    """Re-check a T-MAC GGUF or tmac-convert npz (see the module docstring).

    Args:
        path: the file to check.
        source: the checkpoint it was converted from (optional).
        verify: run the kernel-level check on each quantised tensor.
        reader_options: options for reading the source (e.g. ``gptq_format``).
        file_options: options for reading the file (``kcfg``/``runtime`` for T-MAC's own files).
        max_error: the largest NMSE a re-quantised stock tensor may have against the source (default
            :data:`tmac_convert.convert.DEFAULT_MAX_ERROR`).

    Raises:
        TmacError: the file (or source) cannot be read at all.
    """
    p = Path(path)
    if p.is_dir():
        raise TmacError("is a folder; verify takes a file this tool wrote (a GGUF or an npz)", file=str(p),
                        rule="file to verify")
    if is_gguf(p) and not file_options and not looks_tmac(parse(p)):
        from .convert import DEFAULT_MAX_ERROR
        from .stockcheck import check_stock_file

        out = FileCheck(str(p), None if source is None else str(source), stock=True)
        check_stock_file(out, p, source, reader_options or {}, DEFAULT_MAX_ERROR if max_error is None else max_error)
        return out
    reader = TmacFileReader(**(file_options or {}))
    model = reader.open(p)
    plans = reader.plans(model)
    out = FileCheck(str(p), None if source is None else str(source))
    kcfg_text = model.quantization.get("kcfg")
    if kcfg_text is not None:
        out.problems += kcfg_problems(kcfg_text, plans, str(p))
        beside = kcfg_path_for(p)
        if beside.is_file():
            text = beside.read_text(encoding="utf-8", errors="replace")
            if text != kcfg_text:
                out.problems.append(f"{beside} differs from the kcfg embedded in the file")
                out.problems += kcfg_problems(text, plans, str(beside))
    ags = model.quantization.get("act_group_size") or 64

    checks: dict[str, TensorCheck] = {}
    for pl, data in reader.raw_bytes(model):
        c = TensorCheck(pl.name, f"I{pl.bits}" if pl.quantized else pl.encoding.upper())
        checks[pl.name] = c
        out.tensors.append(c)
        if not pl.quantized:
            continue
        try:
            qt = get_encoding("tmac").decode(data, pl)
        except TmacError as e:
            c.problems.append(f"cannot unpack: {e}")
            continue
        again = pack(qt.codes, qt.scales, qt.zeros, bits=pl.bits, bm=pl.tiles.bm, kfactor=pl.tiles.kfactor,
                     name=pl.name)
        if not np.array_equal(again, np.asarray(data)):
            c.problems.append("unpack then pack does not give back the stored bytes")
        if verify:
            from .proof import verify_tensor

            k = pl.shape[1]
            r = verify_tensor(qt, np.asarray(data), bm=pl.tiles.bm, kfactor=pl.tiles.kfactor,
                              act_group_size=k if ags == -1 else ags, seed=VERIFY_SEED)
            c.nmse, c.max_abs_err = float(r.nmse), float(r.max_abs_err)
            c.proof = r.as_dict()
            if not r.ok:
                c.problems.append(f"kernel check failed: {r.summary()}")

    if source is not None:
        from .convert import DEFAULT_MAX_ERROR

        _compare_source(out, checks, reader, model, source, reader_options or {},
                        DEFAULT_MAX_ERROR if max_error is None else max_error)
    return out


def _compare_source(out: FileCheck, checks: dict[str, TensorCheck], reader: TmacFileReader, model, source,
                    reader_options: dict[str, Any], max_error: float) -> None:
    from .readers import read

    q = model.quantization
    opts = dict(reader_options)
    if q.get("bits"):
        # for a float source these choose the quantisation the file was made with
        opts.setdefault("bits", q["bits"])
        if not q.get("one_scale"):
            opts.setdefault("group_size", q.get("group_size"))
        opts.setdefault("zero_point", bool(q.get("zero_point")))
    src = read(source, **opts)
    seen = set()
    for t in src.tensors():
        seen.add(t.name)
        hit = reader.raw_for(model, t.name)
        if hit is None:
            out.problems.append(f"tensor {t.name} of the source is missing from the file")
            continue
        pl, data = hit
        c = checks[t.name]
        if pl.quantized != isinstance(t, QuantTensor):
            c.matches_source = False
            c.problems.append("stored " + ("quantised" if pl.quantized else "as float") + ", the source tensor is "
                              + ("quantised" if isinstance(t, QuantTensor) else "float"))
            continue
        try:
            if isinstance(t, QuantTensor):
                want = pack(t.codes, t.scales, t.zeros, bits=t.bits, bm=pl.tiles.bm, kfactor=pl.tiles.kfactor,
                            name=t.name)
            else:
                assert isinstance(t, FloatTensor)
                want = get_encoding(pl.encoding).encode(t, pl).reshape(-1).view(np.uint8)
        except TmacError as e:
            c.matches_source = False
            c.problems.append(f"the source tensor does not fit the stored one: {e}")
            continue
        if isinstance(t, QuantTensor):
            from .convert import lossy_error

            c.lossy_nmse = lossy_error(t, None)  # the source re-quantised (float source, act order)
            if c.lossy_nmse is not None and not c.lossy_nmse <= max_error:
                c.problems.append(f"lossy: NMSE {c.lossy_nmse:.3g} against the source's weights, above "
                                  f"--max-error {max_error:g}")
        got = np.asarray(data).reshape(-1)
        same = want.size == got.size and np.array_equal(want, got)
        c.matches_source = bool(same)
        if not same:
            n = int(np.count_nonzero(want != got)) if want.size == got.size else -1
            what = (f"{n} of {got.size} bytes differ" if n >= 0 else f"{got.size} bytes stored, {want.size} expected")
            c.problems.append(f"stored bytes differ from the conversion of the source tensor ({what})")
    for name in checks:
        if name not in seen and name not in GENERATED:
            out.problems.append(f"tensor {name} is in the file but not in the source")
