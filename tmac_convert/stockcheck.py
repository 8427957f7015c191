"""``verify`` for GGUF files with stock llama.cpp types (``--type q4_0|q4_1|tq1_0|tq2_0|f16|f32`` outputs).

The same proof as at conversion time (:meth:`tmac_convert.format.encodings.stock.StockEncoding.check`): each
stored tensor is decoded by ``gguf.quants.dequantize`` and compared with the source's weights.

* Without a source: every tensor's size follows from its type and shape and lies inside the file, and
  every tensor decodes to finite values (nothing more can be known).
* With ``source``: the source is planned again for the file's stock type; a tensor that the type holds
  exactly must match the source within float16 rounding of its block constants, a re-quantised one
  reports its NMSE against the source as *lossy* and fails beyond ``max_error``; float tensors must
  hold the source's values exactly in their stored precision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np

from .errors import TmacError
from .format.gguf_file import parse, standard_nbytes
from .format.tensor import FloatTensor, QuantTensor
from .readers.base import TensorInfo

#: GGUF ``general.file_type`` -> ``--type`` name.
_FILE_TYPES = {int(gguf.LlamaFileType.MOSTLY_Q4_0): "q4_0", int(gguf.LlamaFileType.MOSTLY_Q4_1): "q4_1",
               int(gguf.LlamaFileType.MOSTLY_TQ1_0): "tq1_0", int(gguf.LlamaFileType.MOSTLY_TQ2_0): "tq2_0",
               int(gguf.LlamaFileType.MOSTLY_F16): "f16", int(gguf.LlamaFileType.ALL_F32): "f32"}


def check_stock_file(out: Any, path: Path, source: str | Path | None, reader_options: dict[str, Any],
                     max_error: float) -> None:
    """Fill ``out`` (a :class:`tmac_convert.verify_file.FileCheck`) for a stock-type GGUF."""
    from .verify_file import TensorCheck

    gf = parse(path)
    raw: dict[str, np.ndarray] = {}
    checks: dict[str, TensorCheck] = {}
    for rec in gf.tensors:
        name = gguf.GGMLQuantizationType(rec.type_id).name if rec.type_id in gguf.GGMLQuantizationType._value2member_map_ \
            else str(rec.type_id)
        c = TensorCheck(rec.name, name)
        checks[rec.name] = c
        out.tensors.append(c)
        n = standard_nbytes(rec.type_id, rec.ne)
        if n is None:
            c.problems.append(f"type id {rec.type_id} is not a stock llama.cpp type this tool writes")
            continue
        if rec.offset + n > gf.file_size:
            c.problems.append(f"{n} bytes at offset {rec.offset} run past the end of the file ({gf.file_size} bytes)")
            continue
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=rec.offset, shape=(n,))
        raw[rec.name] = data
        qt = gguf.GGMLQuantizationType(rec.type_id)
        rows = rec.shape[0] if len(rec.shape) > 1 else 1
        values = gguf.quants.dequantize(np.asarray(data).reshape(rows, -1), qt)
        if not np.isfinite(values).all():
            c.problems.append("decodes to NaN or infinity")
    if source is None:
        return
    stock = _FILE_TYPES.get(int(gf.get("general.file_type", -1)))
    if stock is None:
        out.problems.append(f"general.file_type {gf.get('general.file_type')} is not one of the stock types "
                            f"this tool writes ({', '.join(sorted(set(_FILE_TYPES.values())))})")
        return
    _compare_source(out, checks, raw, stock, source, reader_options, max_error)


def _compare_source(out: Any, checks: dict, raw: dict[str, np.ndarray], stock: str, source: str | Path,
                    reader_options: dict[str, Any], max_error: float) -> None:
    from .archs import architecture_for
    from .archs.hparams import config_file
    from .convert import lossy_error
    from .format.encodings import get_encoding
    from .readers import read
    from .writers.plan import plan_stock

    src = read(source, **{**reader_options, "quantize": False})
    infos = src.tensor_infos()
    extras = (architecture_for(src.config, config_file(src)).extra_tensors({i.name for i in infos})
              if src.config else [])
    all_infos = infos + [TensorInfo(t.name, tuple(t.data.shape), nbytes=t.data.nbytes) for t in extras]
    plan = {e.name: e for e in plan_stock(all_infos, stock, allow_lossy=True,
                                          generated=frozenset(t.name for t in extras)).entries}

    def stream():
        yield from src.tensors()
        yield from extras

    seen = set()
    for t in stream():
        seen.add(t.name)
        e = plan[t.name]
        c = checks.get(t.name)
        if c is None:
            out.problems.append(f"tensor {t.name} of the source is missing from the file")
            continue
        data = raw.get(t.name)
        if data is None:
            continue
        enc = get_encoding(e.encoding)
        if data.size != enc.nbytes(e):
            c.problems.append(f"{data.size} bytes stored, {enc.nbytes(e)} expected for {e.encoding} of the source")
            continue
        if isinstance(t, QuantTensor) or e.encoding.endswith(":dequant") or getattr(enc, "qtype", None) is not None:
            exact = enc.exact_problem(t) is None if hasattr(enc, "exact_problem") and isinstance(t, QuantTensor) \
                else True
            if hasattr(enc, "exact_problem") and exact and e.encoding.endswith(":lossy"):
                enc = get_encoding(e.encoding.split(":")[0])  # exact codes: hold the file to the exact bound
            try:
                res = enc.check(t, np.asarray(data), e)
            except TmacError as err:
                c.problems.append(str(err))
                continue
            c.nmse, c.max_abs_err = float(res.nmse), float(res.max_abs_err)
            c.lossy_nmse = lossy_error(t, res)
            c.matches_source = c.lossy_nmse is None
            if c.lossy_nmse is not None and not c.lossy_nmse <= max_error:
                c.problems.append(f"lossy: NMSE {c.lossy_nmse:.3g} against the source's weights, above "
                                  f"--max-error {max_error:g}")
        else:
            assert isinstance(t, FloatTensor)
            want = enc.encode(t, e).reshape(-1).view(np.uint8)
            c.matches_source = bool(want.size == data.size and np.array_equal(want, np.asarray(data)))
            if not c.matches_source:
                c.problems.append("stored bytes differ from the source tensor in the stored precision")
    for name in checks:
        if name not in seen:
            out.problems.append(f"tensor {name} is in the file but not in the source")
