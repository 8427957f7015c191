"""``tmac-convert tune SOURCE``: time the LUT kernels for a model's shapes and write the fastest tiles.

The shapes come from the source's tensor infos (no tensor data is read); the timing itself is
:func:`tmac_convert.kernels.tune.tune_tiles`.  The kcfg.ini is written atomically (no overwrite
without ``force``) and can then be given to ``tmac-convert SOURCE --kcfg kcfg.ini``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import TmacError
from .layouts import Kcfg
from .writers.atomic import AtomicOutputs


def model_shapes(infos) -> list[tuple[int, int, int, int, bool, bool]]:
    """``(m0, k, bits, group_size, zero_point, per_tensor)`` of every distinct quantised shape, in model order."""
    seen, out = set(), []
    for i in infos:
        if i.bits is None:
            continue
        m0, k = i.shape
        key = (m0, k, i.bits)
        if key in seen:
            continue
        seen.add(key)
        out.append((m0, k, i.bits, i.group_size or k, bool(i.zero_point), bool(i.per_tensor_scale)))
    return out


def tune_source(source: str | Path, out: str | Path, *, act_group_size: int = 64, threads: int | None = None,
                force: bool = False, reader_options: dict[str, Any] | None = None) -> Kcfg:
    """Tune the tiles of ``source``'s quantised shapes on this CPU and write them to ``out`` (a kcfg.ini)."""
    from .kernels.tune import tune_tiles
    from .readers import read

    model = read(source, **(reader_options or {}))
    shapes = model_shapes(model.tensor_infos())
    if not shapes:
        raise TmacError("the source has no quantised tensors to tune (for a float source give --bits)",
                        file=str(model.path), rule="quantised tensors present")
    with AtomicOutputs([Path(out)], force=force) as tmp:
        kc = tune_tiles(shapes, act_group_size=act_group_size, threads=threads)
        tmp[Path(out)].write_text(kc.to_ini())
    return kc
