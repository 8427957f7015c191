"""Tile configurations: T-MAC's ``kcfg.ini`` (section 3.5 of the format notes), presets and defaults.

A kcfg holds one section per distinct ``(M0·bits, K, bits)``, named
``qgemm_lut_t{T}_int8_m{M0*bits}_k{K}_n{N}_b{bits}`` with eight integer fields.  T-MAC's converter
looks sections up by ``m`` and ``k`` only; here the look-up also requires ``b`` to match, and a
section that matches only in ``m`` and ``k`` is reported, not used.
"""

from __future__ import annotations

import configparser
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import LayoutError, TmacError
from ..format.rules import scales_size
from .constraints import SIMD_N_IN, SIMD_N_OUT, bm_candidates, check_layout, kfactor_candidates

FIELDS = ("bm", "simd_n_in", "simd_n_out", "kfactor", "group_size", "lut_scales_size", "scales_size", "n_tile_num")
_SECTION = re.compile(r"^qgemm_lut_t(\d+)_int8_m(\d+)_k(\d+)_n(\d+)_b(\d+)$")
_MAX_FIELD = 1 << 40  # any honest value is far below; bounds what a hostile file can make us allocate
_MAX_KCFG_BYTES = 16 << 20
DEFAULT_ACT_GROUP = 64
# T-MAC's tuning space for bm, in the order its tuner lists it; the default takes the first admissible value
# (and `tmac-convert tune` times these).
BM_ORDER = {3: (192, 384, 576, 768)}
BM_ORDER_DEFAULT = (256, 128, 512, 1024, 320, 640)
# kfactor: 32 first, which T-MAC's tuner does not try (its generated kernels come in 8 and 16) but the bundled
# kernels run 7-30% faster than 16 (4096x14336 2-bit, GEMV and GEMM, 1 and 2 threads, AVX2 on the project's
# EPYC: half the per-chunk float work); it admits the same act groups (32, 64) and 128 besides.  `tune` times
# all three.
KFACTOR_ORDER = (32, 16, 8)


@dataclass(frozen=True)
class TileConfig:
    """The tile parameters the layout needs: ``bm`` bit-rows per tile and ``kfactor`` LUT groups per K step."""

    bm: int
    kfactor: int


@dataclass(frozen=True)
class KernelConfig:
    """One kcfg.ini section: the tile and kernel parameters of one ``(M0·bits, K, bits)`` shape."""

    m: int  # M0 * bits
    k: int
    bits: int
    bm: int
    kfactor: int
    group_size: int
    lut_scales_size: int
    scales_size: int
    n_tile_num: int
    simd_n_in: int = SIMD_N_IN
    simd_n_out: int = SIMD_N_OUT
    threads: int = 1  # the "t" in the section name
    n: int = 1

    @property
    def m0(self) -> int:
        return self.m // self.bits

    @property
    def tiles(self) -> TileConfig:
        return TileConfig(self.bm, self.kfactor)

    @property
    def section(self) -> str:
        return f"qgemm_lut_t{self.threads}_int8_m{self.m}_k{self.k}_n{self.n}_b{self.bits}"

    @classmethod
    def for_tensor(cls, m0: int, k: int, bits: int, *, group_size: int, zero_point: bool, per_tensor: bool,
                   tiles: TileConfig, act_group_size: int = DEFAULT_ACT_GROUP) -> "KernelConfig":
        """The section T-MAC would write for a tensor ``[M0, K]`` packed with ``tiles``.

        ``act_group_size`` -1 means the whole K.  ``scales_size`` is 1 for a per-tensor scale.
        """
        ags = k if act_group_size in (-1, None) else act_group_size
        check_layout(m0, k, bits, tiles.bm, tiles.kfactor, None if per_tensor else group_size)
        size = scales_size(m0, k, group_size, zero_point, per_tensor)
        return cls(m=m0 * bits, k=k, bits=bits, bm=tiles.bm, kfactor=tiles.kfactor, group_size=group_size,
                   lut_scales_size=k // ags, scales_size=size, n_tile_num=m0 * bits // tiles.bm)

    def problems(self, m0: int, k: int, bits: int, *, group_size: int, zero_point: bool,
                 per_tensor: bool) -> list[str]:
        """What disagrees between this section and a tensor; empty when the runtime would read it right."""
        out = []
        if (self.m, self.k, self.bits) != (m0 * bits, k, bits):
            out.append(f"section {self.section} is for m{self.m} k{self.k} b{self.bits}, the tensor needs "
                       f"m{m0 * bits} k{k} b{bits}")
            return out
        if not per_tensor and self.group_size != group_size:
            out.append(f"group_size {self.group_size} in {self.section}, the tensor has {group_size}")
        want = scales_size(m0, k, group_size, zero_point, per_tensor)
        if self.scales_size != want:
            what = ("a per-tensor scale" if per_tensor else
                    f"group size {group_size} {'with' if zero_point else 'without'} zero points")
            out.append(f"scales_size {self.scales_size} in {self.section}, the tensor ({what}) needs {want}")
        if self.n_tile_num * self.bm != self.m:
            out.append(f"n_tile_num {self.n_tile_num} * bm {self.bm} != m {self.m} in {self.section}")
        try:
            check_layout(m0, k, bits, self.bm, self.kfactor, None if per_tensor else group_size)
        except LayoutError as e:
            out.append(str(e))
        return out


class Kcfg:
    """A parsed kcfg.ini: sections in file order, looked up by shape *and* bits."""

    def __init__(self, entries: list[KernelConfig] | None = None, source: str | None = None) -> None:
        self.entries: list[KernelConfig] = list(entries or [])
        self.source = source

    def __iter__(self):
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entry: KernelConfig) -> None:
        """Add a section, replacing one with the same name."""
        self.entries = [e for e in self.entries if e.section != entry.section] + [entry]

    def lookup(self, m0: int, k: int, bits: int, *, tensor: str | None = None) -> KernelConfig:
        """The section for ``[M0, K]`` at ``bits``; an error names a section that matches only ``m``/``k``."""
        m = m0 * bits
        for e in self.entries:
            if e.m == m and e.k == k and e.bits == bits and e.n == 1:
                return e
        near = [e.section for e in self.entries if e.m == m and e.k == k]
        hint = (f"; {', '.join(near)} has the same m and k but other bits (T-MAC's own look-up would have "
                f"used it silently)" if near else "")
        raise TmacError(f"no section for M0*bits={m}, K={k}, bits={bits} (qgemm_lut_t*_int8_m{m}_k{k}_n1_b{bits})"
                        f"{hint}", tensor=tensor, file=self.source, rule="kcfg section for shape and bits")

    def to_ini(self) -> str:
        """The file text in T-MAC's own layout (configparser's: ``key = value``, a blank line after each section)."""
        return "".join("\n".join([f"[{e.section}]"] + [f"{f} = {getattr(e, f)}" for f in FIELDS]) + "\n\n"
                       for e in self.entries)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_ini())

    @classmethod
    def parse(cls, text: str, source: str | None = None) -> "Kcfg":
        """Parse kcfg.ini text; every section name and value is checked and bounded."""
        if not isinstance(text, str):
            raise TmacError(f"kcfg text must be a string, got {type(text).__name__}", file=source, rule="kcfg text")
        parser = configparser.ConfigParser(interpolation=None, strict=True)
        try:
            parser.read_string(text, source=source or "<kcfg>")
        except configparser.Error as e:
            raise TmacError(f"not a valid kcfg.ini: {str(e).splitlines()[0]}", file=source, rule="ini syntax") from None
        entries = []
        for name in parser.sections():
            m = _SECTION.match(name)
            if not m:
                raise TmacError(f"section [{name}] is not named qgemm_lut_t<T>_int8_m<M>_k<K>_n<N>_b<bits>",
                                file=source, rule="kcfg section name")
            t, mm, kk, n, b = (int(x) for x in m.groups())
            sec = parser[name]
            missing = [f for f in FIELDS if f not in sec]
            if missing:
                raise TmacError(f"section [{name}] lacks {', '.join(missing)}", file=source, rule="kcfg fields")
            vals = {}
            for f in FIELDS:
                raw = sec[f].strip()
                if not re.fullmatch(r"\d{1,13}", raw) or not 0 < int(raw) < _MAX_FIELD:
                    raise TmacError(f"section [{name}] field {f} = {raw!r} is not a positive integer",
                                    file=source, rule="kcfg field value")
                vals[f] = int(raw)
            if not 1 <= b <= 4 or mm % b or mm <= 0 or kk <= 0 or mm >= _MAX_FIELD or kk >= _MAX_FIELD:
                raise TmacError(f"section [{name}] has bits {b} or shape m{mm} k{kk} out of range",
                                file=source, rule="kcfg section name")
            entries.append(KernelConfig(m=mm, k=kk, bits=b, threads=t, n=n, **vals))
        return cls(entries, source)

    @classmethod
    def load(cls, path: str | Path) -> "Kcfg":
        p = Path(path)
        try:
            size = p.stat().st_size
            if size > _MAX_KCFG_BYTES:
                raise TmacError(f"{size} bytes is too large for a kcfg.ini", file=str(p), rule="kcfg size")
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise TmacError(f"cannot read kcfg: {e.strerror}", file=str(p), rule="readable file") from None
        except UnicodeDecodeError:
            raise TmacError("kcfg.ini is not UTF-8 text", file=str(p), rule="kcfg text") from None
        return cls.parse(text, source=str(p))


def load_kcfg(path: str | Path) -> Kcfg:
    """Read a T-MAC kcfg.ini."""
    return Kcfg.load(path)


def preset_names() -> list[str]:
    """Names of the bundled presets (T-MAC's published tuned kcfg files)."""
    return sorted(p.name[:-4] for p in resources.files("tmac_convert.presets").iterdir() if p.name.endswith(".ini"))


def load_preset(name: str) -> Kcfg:
    """A bundled preset by name (see :func:`preset_names`)."""
    if name not in preset_names():
        raise TmacError(f"unknown preset {name!r}; presets: {', '.join(preset_names())}", rule="preset name")
    res = resources.files("tmac_convert.presets") / f"{name}.ini"
    return Kcfg.parse(res.read_text(encoding="utf-8"), source=f"preset:{name}")


def default_tiles(m0: int, k: int, bits: int, group_size: int | None, *, tensor: str | None = None) -> TileConfig:
    """The tile config used when no kcfg is given, chosen deterministically from the shape alone.

    ``bm`` is the first value of T-MAC's tuning list (256, 128, 512, 1024, 320, 640; for 3-bit 192, 384,
    576, 768) that the shape admits, else the largest admissible bm; ``kfactor`` is 32 where admitted
    (``K`` and the group size multiples of 128; it allows activation groups of 32, 64 and 128), else 16,
    else 8, else the largest admissible.  ``group_size`` is None for a per-tensor scale.
    """
    bms = bm_candidates(m0, bits) if m0 % 8 == 0 else []
    kfs = kfactor_candidates(k, group_size)
    if not bms or not kfs:
        raise LayoutError(f"no tile config fits M0={m0}, K={k}, {bits}-bit, group size {group_size}: admissible bm "
                          f"{bms or 'none'} (M0 must be a multiple of 8), kfactor {kfs or 'none'}",
                          tensor=tensor, rule="admissible tiles")
    bm = next((b for b in BM_ORDER.get(bits, BM_ORDER_DEFAULT) if b in bms), max(bms))
    kf = next((f for f in KFACTOR_ORDER if f in kfs), max(kfs))
    return TileConfig(bm, kf)
