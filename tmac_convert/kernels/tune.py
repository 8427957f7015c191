"""Tile tuning: time the admissible ``(bm, kfactor)`` of each shape with the native LUT kernel on this CPU.

The kernel's speed depends on the tiles, not on the weight values, so each shape is timed on one blob of
random bytes (random codes) with unit scales, laid out once: a blob's length does not depend on the
tiles.  Candidates are T-MAC's own tuning space (bm in 256, 128, 512, 1024, 320, 640, or 192, 384, 576,
768 for 3-bit; kfactor 8 and 16, the values its runtime's kernels are generated for) plus kfactor 32, which
the bundled kernels run (and which converted files default to where admitted), restricted to what the shape
and the activation group admit; when none of those values fit, every admissible one is tried.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import LayoutError, TmacError
from ..layouts.constraints import bm_candidates, check_act_group, kfactor_candidates
from ..layouts.format_a import blob_nbytes
from ..layouts.kcfg import BM_ORDER, BM_ORDER_DEFAULT, KFACTOR_ORDER, Kcfg, KernelConfig, TileConfig
from . import gemm, resolve_path

Shape = tuple  # (m0, k, bits, group_size, zero_point, per_tensor)


@dataclass(frozen=True)
class Timing:
    """One measured candidate: the fastest of the repeats, in microseconds."""

    section: str
    bm: int
    kfactor: int
    micros: float


def candidates(m0: int, k: int, bits: int, group_size: int | None, act_group_size: int | None = 64,
               kfactors: tuple[int, ...] = KFACTOR_ORDER) -> list[TileConfig]:
    """The ``(bm, kfactor)`` to time for one shape (``group_size`` None for a per-tensor scale).

    ``kfactors`` widens or narrows the preferred kfactor values (T-MAC's own kernels come in 8 and 16 only).
    """
    admissible = bm_candidates(m0, bits) if m0 % 8 == 0 else []
    bms = [b for b in BM_ORDER.get(bits, BM_ORDER_DEFAULT) if b in admissible] or admissible
    ags = k if act_group_size in (-1, None) else act_group_size
    kfs = []
    for kf in kfactor_candidates(k, group_size):
        try:
            check_act_group(k, kf, ags)
        except LayoutError:
            continue
        kfs.append(kf)
    preferred = [kf for kf in kfs if kf in kfactors]
    kfs = preferred or kfs
    return [TileConfig(bm, kf) for bm in bms for kf in kfs]


def tune_tiles(shapes: list[Shape], act_group_size: int | None = 64, threads: int | None = None, *,
               repeats: int = 5, seed: int = 0, timings: list[Timing] | None = None,
               kfactors: tuple[int, ...] = KFACTOR_ORDER) -> Kcfg:
    """Time every admissible tile config of each shape and return the fastest as a :class:`Kcfg`.

    Args:
        shapes: ``(m0, k, bits, group_size, zero_point, per_tensor)`` per weight shape; a later shape with the
            same ``(m0·bits, k, bits)`` as an earlier one shares its kcfg section and is skipped.
        act_group_size: the kernels' activation group size (-1 or None: the whole K); restricts kfactor.
        threads: kernel threads while timing (default: all cores, as the converter's kernels run).
        repeats: timed runs per candidate after one warm-up; the fastest counts.
        timings: if given, every measurement is appended to it (for reports).
        kfactors: preferred kfactor values (default 8 and 16, T-MAC's own, and 32).

    Raises:
        TmacError: the native kernels are not built (timing the numpy reference would be meaningless),
            or a shape admits no tile config.
    """
    if resolve_path("auto") == "reference":
        raise TmacError("tile tuning needs the native LUT kernels, which are not built here", rule="native kernels")
    rng = np.random.default_rng(seed)
    kc = Kcfg(source="tuned")
    seen = set()
    for m0, k, bits, group_size, zero_point, per_tensor in shapes:
        key = (m0 * bits, k, bits)
        if key in seen:
            continue
        seen.add(key)
        gs = k if per_tensor else group_size
        cands = candidates(m0, k, bits, None if per_tensor else gs, act_group_size, kfactors)
        if not cands:
            raise LayoutError(f"no tile config fits M0={m0}, K={k}, {bits}-bit, group size {gs} with activation "
                              f"group {act_group_size}", rule="admissible tiles")
        nbytes = blob_nbytes(m0, k, bits, gs, zero_point, per_tensor)
        wbytes = m0 * k * bits // 8
        blob = np.empty(nbytes, dtype=np.uint8)
        blob[:wbytes] = rng.integers(0, 256, wbytes, dtype=np.uint8)
        blob[wbytes:].view("<f4")[:] = 1.0
        x = rng.standard_normal((1, k)).astype(np.float32)
        best = None
        for tiles in cands:
            kw = dict(m=m0, k=k, bits=bits, group_size=gs, zero_point=zero_point, bm=tiles.bm, kfactor=tiles.kfactor,
                      act_group_size=act_group_size, threads=threads)
            gemm(blob, x, **kw)
            t = min(_timed(blob, x, kw) for _ in range(repeats))
            entry = KernelConfig.for_tensor(m0, k, bits, group_size=gs, zero_point=zero_point, per_tensor=per_tensor,
                                            tiles=tiles, act_group_size=act_group_size if act_group_size else -1)
            if timings is not None:
                timings.append(Timing(entry.section, tiles.bm, tiles.kfactor, t * 1e6))
            if best is None or t < best[0]:
                best = (t, entry)
        kc.add(best[1])
    return kc


def _timed(blob, x, kw) -> float:
    t0 = time.perf_counter()
    gemm(blob, x, **kw)
    return time.perf_counter() - t0
