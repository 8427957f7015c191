"""What a kit must contain for a model: its kernel shapes and kcfg sections, checked before writing.

The fork calls two kinds of kernel (section 3.6 of the format notes):

* a **preprocessor** per weight shape, found by ``(M0·bits, K, bits)``: builds one activation row's
  int8 tables, LUT scales and biases;
* a **qgemm** per tile shape, found by ``(bm, K, bits)``: one tile of ``bm`` bit-rows times one row.

Tile parameters that are not part of those keys (kfactor, group size, act group size, zero points,
one scale) are compile-time constants of the generated kernels, so tensors that share a key must
agree on them; otherwise the fork could not tell which kernel a tensor needs and the kit is refused.

``lut_scales_size`` in the kit's kcfg is the number of LUT scale (and bias) slots the kernels keep
per activation row: ``K / (4·actk)`` with ``actk = min(ags/4, kfactor)`` tables per sub-group.  For
every act group size T-MAC admits (``ags <= 4·kfactor``) that is T-MAC's ``K / ags``; for the
"whole K" act group (``ags == K``) the kernels keep one bias per kfactor chunk, so the slots (and the
fork's workspace, which it sizes from this field) are ``K / (4·kfactor)`` instead of 1.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import LayoutError, TmacError
from ..format.rules import scales_size
from ..layouts import Kcfg, KernelConfig, TileConfig
from ..layouts.constraints import check_act_group, check_layout
from .model_facts import ModelFacts, TensorFacts

# Limits of the kernels (kernels/lut.c check_problem) and of the fork's int arithmetic.
MAX_ACTK = 128
MAX_SUBGROUPS_PER_CHUNK = 32
INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class PreShape:
    """One preprocessor: the tables of one activation row for a weight ``[m0, k]``."""

    m0: int
    k: int
    bits: int
    ags: int
    actk: int

    @property
    def m(self) -> int:
        return self.m0 * self.bits

    @property
    def symbol(self) -> str:
        return f"preprocessor_t1_int8_m{self.m}_k{self.k}_n1_b{self.bits}"

    @property
    def n_slots(self) -> int:
        """LUT scale/bias slots per activation row (the kit's ``lut_scales_size``)."""
        return self.k // (4 * self.actk)


@dataclass(frozen=True)
class TileShape:
    """One qgemm: a tile of ``bm`` bit-rows (``bm/bits`` outputs) over K, with its compile-time constants."""

    bm: int
    k: int
    bits: int
    kfactor: int
    group_size: int
    zero_point: bool
    one_scale: bool
    ags: int
    actk: int

    @property
    def symbol(self) -> str:
        return f"qgemm_lut_t1_int8_m{self.bm}_k{self.k}_n1_b{self.bits}"

    @property
    def tile_scales(self) -> int:
        """Scale floats per tile (scales and zero offsets interleaved; 1 shared value for one scale)."""
        return scales_size(self.bm // self.bits, self.k, self.group_size, self.zero_point, self.one_scale)


@dataclass(frozen=True)
class KitShape:
    """One weight shape the kit serves: its kcfg section, its preprocessor and its tile kernel."""

    section: KernelConfig
    pre: PreShape
    tile: TileShape
    tensors: tuple[str, ...]


@dataclass(frozen=True)
class KitPlan:
    """Every shape of the model, in first-seen order, and the kcfg that describes them."""

    shapes: tuple[KitShape, ...]
    kcfg: Kcfg

    @property
    def pre_shapes(self) -> list[PreShape]:
        return [s.pre for s in self.shapes]

    @property
    def tile_shapes(self) -> list[TileShape]:
        out: list[TileShape] = []
        for s in self.shapes:
            if s.tile not in out:
                out.append(s.tile)
        return out


def _desc(t: TensorFacts) -> str:
    return f"[{t.m0}, {t.k}] {t.bits}-bit"


def _check_tensor(t: TensorFacts, file: str) -> int:
    """Layout and kernel rules for one tensor; returns its actk."""
    try:
        check_layout(t.m0, t.k, t.bits, t.bm, t.kfactor, None if t.one_scale else t.group_size, tensor=t.name)
        check_act_group(t.k, t.kfactor, t.act_group_size, tensor=t.name)
    except LayoutError as e:
        raise TmacError(str(e).removeprefix(f"tensor {t.name}: "), tensor=t.name, file=file, rule=e.rule) from None
    if t.act_group_size % 4:
        raise TmacError(f"act group size {t.act_group_size} is not a multiple of 4", tensor=t.name, file=file,
                        rule="act_group_size % 4 == 0")
    actk = min(t.act_group_size // 4, t.kfactor)
    if t.kfactor % actk or (t.act_group_size // 4) % actk:
        raise TmacError(f"act groups of {t.act_group_size} do not align with kfactor {t.kfactor} chunks",
                        tensor=t.name, file=file, rule="act groups align with kfactor chunks")
    if actk > MAX_ACTK:
        raise TmacError(f"{actk} tables per int16 sub-group could overflow (the kernels allow {MAX_ACTK})",
                        tensor=t.name, file=file, rule=f"min(ags/4, kfactor) <= {MAX_ACTK}")
    if t.kfactor // actk > MAX_SUBGROUPS_PER_CHUNK:
        raise TmacError(f"kfactor {t.kfactor} holds {t.kfactor // actk} act sub-groups; the kernels allow "
                        f"{MAX_SUBGROUPS_PER_CHUNK}", tensor=t.name, file=file,
                        rule=f"kfactor/actk <= {MAX_SUBGROUPS_PER_CHUNK}")
    wbytes = t.m0 * t.k * t.bits // 8
    if t.m0 * t.k * t.bits > INT_MAX or t.k * 4 > INT_MAX:
        raise TmacError(f"{_desc(t)} is too large for the fork's int arithmetic", tensor=t.name, file=file,
                        rule="M0*K*bits < 2^31")
    nscales = scales_size(t.m0, t.k, t.group_size, t.zero_point, t.one_scale)
    if t.nbytes_in_file < wbytes + 4 * nscales:
        raise TmacError(f"the file holds {t.nbytes_in_file} bytes for it, its weights and scales need "
                        f"{wbytes + 4 * nscales}", tensor=t.name, file=file, rule="tensor data inside the file")
    return actk


def plan_kit(facts: ModelFacts) -> KitPlan:
    """Group the model's tensors into kernel shapes and make the kit's kcfg; refuse what cannot be served.

    Raises:
        TmacError: a tensor the kernels cannot run, two tensors that would need different kernels
            behind one fork look-up key, or a ``tmac.kcfg`` in the file that disagrees with the tensors.
    """
    file = str(facts.path)
    if facts.runtime != "tmac":
        raise TmacError(f"the file uses the {facts.runtime!r} type-id numbering; kits are for T-MAC's pinned fork "
                        "(ids 36-39): re-convert with --runtime tmac", file=file, rule="runtime tmac")
    file_kcfg = Kcfg.parse(facts.kcfg_text, source=f"{file} (tmac.kcfg)") if facts.kcfg_text.strip() else None
    by_shape: dict[tuple[int, int, int], list[TensorFacts]] = {}
    for t in facts.tensors:
        by_shape.setdefault((t.m0, t.k, t.bits), []).append(t)
    shapes: list[KitShape] = []
    tiles_by_key: dict[tuple[int, int, int], tuple[TileShape, str]] = {}
    for (m0, k, bits), group in by_shape.items():
        first = group[0]
        actk = _check_tensor(first, file)
        for t in group[1:]:
            _check_tensor(t, file)
            if (t.bm, t.kfactor) != (first.bm, first.kfactor):
                raise TmacError(f"tiles (bm {t.bm}, kfactor {t.kfactor}) differ from {first.name}'s (bm {first.bm}, "
                                f"kfactor {first.kfactor}) of the same shape {_desc(t)}; the fork finds tiles by shape "
                                "(one kcfg section per shape)", tensor=t.name, file=file, rule="one tile per shape")
        tile = TileShape(first.bm, k, bits, first.kfactor, first.group_size, first.zero_point, first.one_scale,
                         first.act_group_size, actk)
        key = (tile.bm, k, bits)
        if key in tiles_by_key and tiles_by_key[key][0] != tile:
            other, name = tiles_by_key[key]
            diff = ", ".join(f"{f} {getattr(tile, f)} vs {getattr(other, f)}" for f in tile.__dataclass_fields__
                             if getattr(tile, f) != getattr(other, f))
            raise TmacError(f"its tile kernel {tile.symbol} would differ from the one {name} needs ({diff}); the fork "
                            "selects tile kernels by (bm, K, bits) only", tensor=first.name, file=file,
                            rule="one tile kernel per (bm, K, bits)")
        tiles_by_key.setdefault(key, (tile, first.name))
        pre = PreShape(m0, k, bits, first.act_group_size, actk)
        sec = KernelConfig.for_tensor(m0, k, bits, group_size=first.group_size, zero_point=first.zero_point,
                                      per_tensor=first.one_scale, tiles=TileConfig(first.bm, first.kfactor),
                                      act_group_size=first.act_group_size)
        if file_kcfg is not None:
            sec = _agree_with_file_kcfg(file_kcfg, sec, first, file)
        sec = replace(sec, lut_scales_size=pre.n_slots, threads=1, n=1)
        shapes.append(KitShape(sec, pre, tile, tuple(t.name for t in group)))
    return KitPlan(tuple(shapes), Kcfg([s.section for s in shapes]))


def _agree_with_file_kcfg(file_kcfg: Kcfg, sec: KernelConfig, t: TensorFacts, file: str) -> KernelConfig:
    """The file's own kcfg section for the shape, checked against the tensor facts (all fields)."""
    try:
        got = file_kcfg.lookup(t.m0, t.k, t.bits, tensor=t.name)
    except TmacError as e:
        raise TmacError(f"tmac.kcfg has no section for {_desc(t)} ({e})", tensor=t.name, file=file,
                        rule="tmac.kcfg matches tensors") from None
    for f in ("bm", "kfactor", "group_size", "lut_scales_size", "scales_size", "n_tile_num"):
        if getattr(got, f) != getattr(sec, f):
            raise TmacError(f"tmac.kcfg section {got.section} says {f} = {getattr(got, f)}, the tensor's tmac.* keys "
                            f"mean {getattr(sec, f)}", tensor=t.name, file=file, rule="tmac.kcfg matches tensors")
    return got
