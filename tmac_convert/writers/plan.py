"""The output plan: every tensor's encoding, tiles and byte size, decided (and checked) before writing.

:func:`plan_model` plans a T-MAC file, :func:`plan_stock` a stock llama.cpp one (the projections'
encoding from the registry, refused where its exactness rule says so).  A given kcfg (a file or a preset) is checked here against every quantised tensor; all problems are
collected and reported together, grouped by shape, before any output byte exists.  Without a kcfg
the tiles come from :func:`tmac_convert.layouts.default_tiles` and a kcfg is generated from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import LayoutError, TmacError
from ..layouts import Kcfg, KernelConfig, TileConfig, default_tiles
from ..layouts.constraints import check_act_group
from ..layouts.kcfg import DEFAULT_ACT_GROUP
from ..format.tensor import TensorInfo
from ..archs.naming import is_projection
from ..format.encodings import TensorPlan, get_encoding, projection_encoding


@dataclass
class ModelPlan:
    """The plan of one output file.

    Attributes:
        entries: one :class:`TensorPlan` per tensor, in the order the reader yields them.
        kcfg: the kcfg sections the quantised tensors use (given, or generated from default tiles).
        kcfg_given: True when the kcfg came from ``--kcfg``/``--preset``.
        act_group_size: activation group size the kernels use (-1: the whole K).
        bits, group_size, zero_point, one_scale: the quantisation shared by every quantised tensor
            (``group_size`` -1 for one group per row, 0 with ``one_scale``); ``bits`` is None when
            nothing is quantised.
    """

    entries: list[TensorPlan]
    kcfg: Kcfg
    kcfg_given: bool = False
    act_group_size: int = DEFAULT_ACT_GROUP
    bits: int | None = None
    group_size: int = 0
    zero_point: bool = False
    one_scale: bool = False
    stock: str | None = None  # a stock llama.cpp --type: no I-types, no kcfg, no tmac.* keys
    _by_name: dict[str, TensorPlan] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {e.name: e for e in self.entries}

    def __getitem__(self, name: str) -> TensorPlan:
        return self._by_name[name]

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    @property
    def quantized(self) -> list[TensorPlan]:
        return [e for e in self.entries if e.quantized]

    @property
    def total_nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    @property
    def src_nbytes(self) -> int:
        return sum(e.src_nbytes for e in self.entries)


def _shape_key(info: TensorInfo) -> tuple[int, int, int]:
    m0, k = info.shape
    return m0, k, info.bits


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]} and {len(names) - 1} more"


def float_encoding_for(info: TensorInfo) -> str:
    """``f16`` for tensors of two or more dimensions, ``f32`` for vectors (llama.cpp's convention)."""
    return "f16" if len(info.shape) >= 2 else "f32"


def plan_model(infos: list[TensorInfo], *, kcfg: Kcfg | None = None, act_group_size: int | None = None,
               generated: frozenset[str] = frozenset()) -> ModelPlan:
    """Plan the output of a model whose tensors are described by ``infos``.

    Args:
        infos: the reader's tensor infos (quantised ones carry bits, group size, zero point).
        kcfg: tiles to use; every quantised shape must have a section that agrees with the tensor
            in bits, group size, zero points (``scales_size``) and layout rules.
        act_group_size: kernel activation group size; None takes it from the kcfg (``K /
            lut_scales_size``) or defaults to 64; -1 means the whole K.
        generated: names of tensors the converter adds.

    Raises:
        TmacError: listing every missing or mismatched kcfg shape (rule ``kcfg matches model``), or
            a layout or consistency problem.
    """
    quant = [i for i in infos if i.bits is not None]
    _check_uniform(quant)
    by_shape: dict[tuple[int, int, int], list[TensorInfo]] = {}
    for i in quant:
        if len(i.shape) != 2:
            raise TmacError(f"quantised tensor has shape {i.shape}, expected [M0, K]", tensor=i.name,
                            rule="quantised tensors are 2-D")
        by_shape.setdefault(_shape_key(i), []).append(i)

    tiles: dict[tuple[int, int, int], TileConfig] = {}
    sections: dict[tuple[int, int, int], KernelConfig] = {}
    problems: list[str] = []
    ags_seen: dict[int, list[str]] = {}
    for key, group in by_shape.items():
        m0, k, bits = key
        first = group[0]
        gs = first.group_size or k
        desc = f"m{m0 * bits} k{k} b{bits} ({_names([g.name for g in group])})"
        if kcfg is not None:
            try:
                sec = kcfg.lookup(m0, k, bits)
            except TmacError:
                near = [s.section for s in kcfg if s.m == m0 * bits and s.k == k]
                problems.append(f"{desc}: missing section qgemm_lut_t*_int8_m{m0 * bits}_k{k}_n1_b{bits}"
                                + (f" ({', '.join(near)} has the same m and k but other bits; T-MAC's own look-up "
                                   "would have used it silently)" if near else ""))
                continue
            probs = sec.problems(m0, k, bits, group_size=gs, zero_point=first.zero_point,
                                 per_tensor=first.per_tensor_scale)
            if probs:
                problems.append(f"{desc}: " + "; ".join(probs))
                continue
            if k % sec.lut_scales_size:
                problems.append(f"{desc}: lut_scales_size {sec.lut_scales_size} in {sec.section} does not divide K")
                continue
            ags = -1 if sec.lut_scales_size == 1 else k // sec.lut_scales_size
            if act_group_size is not None and _norm_ags(act_group_size, k) != _norm_ags(ags, k):
                problems.append(f"{desc}: {sec.section} has lut_scales_size {sec.lut_scales_size} (activation group "
                                f"{_norm_ags(ags, k)}), the requested activation group size is "
                                f"{_norm_ags(act_group_size, k)}")
                continue
            ags_seen.setdefault(ags, []).append(sec.section)
            tiles[key] = sec.tiles
            sections[key] = sec
        else:
            tiles[key] = default_tiles(m0, k, bits, None if first.per_tensor_scale else gs, tensor=first.name)

    if problems:
        src = kcfg.source if kcfg is not None and kcfg.source else "the kcfg"
        raise TmacError(f"{src} does not fit this model ({len(problems)} problem{'s' * (len(problems) > 1)}): "
                        + " | ".join(problems), file=kcfg.source if kcfg is not None else None,
                        rule="kcfg matches model")
    if len(ags_seen) > 1:
        raise TmacError("the kcfg mixes activation group sizes: " + "; ".join(
            f"{'K' if a == -1 else a} in {_names(s)}" for a, s in ags_seen.items()),
            file=kcfg.source if kcfg else None, rule="one activation group size")
    if act_group_size is None:
        if ags_seen:
            act_group_size = next(iter(ags_seen))
        else:
            act_group_size = _default_ags([(key[1], tiles[key].kfactor) for key in by_shape])

    for key, group in by_shape.items():
        m0, k, bits = key
        ags = k if act_group_size == -1 else act_group_size
        try:
            check_act_group(k, tiles[key].kfactor, ags, tensor=group[0].name)
        except LayoutError as e:
            raise TmacError(str(e), rule=e.rule) from None
        if kcfg is None:
            first = group[0]
            sections[key] = KernelConfig.for_tensor(
                m0, k, bits, group_size=first.group_size or k, zero_point=first.zero_point,
                per_tensor=first.per_tensor_scale, tiles=tiles[key], act_group_size=act_group_size)

    entries = []
    for info in infos:
        if info.bits is not None:
            m0, k = info.shape
            e = TensorPlan(info.name, "tmac", (m0, k), src_nbytes=info.nbytes, bits=info.bits,
                           group_size=k if info.per_tensor_scale else (info.group_size or k),
                           zero_point=info.zero_point, per_tensor_scale=info.per_tensor_scale,
                           tiles=tiles[_shape_key(info)], generated=info.name in generated,
                           act_group_size=act_group_size)
        else:
            e = TensorPlan(info.name, float_encoding_for(info), tuple(info.shape), src_nbytes=info.nbytes,
                           generated=info.name in generated)
        e.nbytes = get_encoding(e.encoding).nbytes(e)
        entries.append(e)
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise TmacError("the source yields this tensor twice", tensor=dup, rule="unique tensor names")

    used = Kcfg([sections[k] for k in by_shape], source=kcfg.source if kcfg is not None else None)
    first = quant[0] if quant else None
    return ModelPlan(entries, used, kcfg_given=kcfg is not None, act_group_size=act_group_size,
                     bits=first.bits if first else None,
                     group_size=0 if (first is None or first.per_tensor_scale) else _model_group(quant),
                     zero_point=bool(first and first.zero_point),
                     one_scale=bool(first and first.per_tensor_scale))


def _default_ags(shapes: list[tuple[int, int]]) -> int:
    """64 (T-MAC's default) when every ``(K, kfactor)`` admits it, else 32, else the whole K (-1)."""
    for ags in (DEFAULT_ACT_GROUP, 32):
        ok = True
        for k, kf in shapes:
            try:
                check_act_group(k, kf, ags)
            except LayoutError:
                ok = False
                break
        if ok:
            return ags
    return -1


def _norm_ags(ags: int, k: int) -> int | str:
    return "K" if ags in (-1, None) or ags == k else ags


def _model_group(quant: list[TensorInfo]) -> int:
    """The model-wide group size: the one group size of the tensors whose group is shorter than the row,
    or -1 (one group per row) when every tensor's group spans its row."""
    real = {i.group_size for i in quant if i.group_size and i.group_size != i.shape[1]}
    return next(iter(real)) if len(real) == 1 else -1


def _check_uniform(quant: list[TensorInfo]) -> None:
    """T-MAC kernels are compiled for one bit width, group size and zero-point flag per model."""
    if not quant:
        return
    first = quant[0]
    for i in quant[1:]:
        for what, a, b in (("bits", first.bits, i.bits), ("zero point", first.zero_point, i.zero_point),
                           ("per-tensor scale", first.per_tensor_scale, i.per_tensor_scale)):
            if a != b:
                raise TmacError(f"{what} {b} differs from {a} of {first.name}: T-MAC kernels are built for one "
                                "setting per model", tensor=i.name, rule="uniform quantisation")
    if first.per_tensor_scale:
        return
    real = sorted({i.group_size for i in quant if i.group_size and i.group_size != i.shape[1]})
    if len(real) > 1:
        a = next(i for i in quant if i.group_size == real[0])
        b = next(i for i in quant if i.group_size == real[1])
        raise TmacError(f"group size {b.group_size} differs from {a.group_size} of {a.name}: T-MAC kernels are "
                        "built for one group size per model", tensor=b.name, rule="uniform quantisation")
    if real:
        for i in quant:
            if (i.group_size or i.shape[1]) == i.shape[1] and i.shape[1] != real[0]:
                raise TmacError(f"one group per row (K = {i.shape[1]}) differs from group size {real[0]} of the "
                                "other tensors: T-MAC kernels are built for one group size per model",
                                tensor=i.name, rule="uniform quantisation")


def plan_stock(infos: list[TensorInfo], stock: str, *, allow_lossy: bool = False,
               generated: frozenset[str] = frozenset()) -> ModelPlan:
    """Plan a GGUF whose quantised projections (and, for float sources, projection matrices) are of
    the stock type ``stock``; everything else is F16 (2-D and up) or F32 (vectors) as in the T-MAC plan.

    Raises:
        TmacError: listing every tensor that cannot be written (rule ``block size divides K``) or, without
            ``allow_lossy``, every tensor that would be re-quantised (rule ``exact stock type``).
    """
    cls = projection_encoding(stock, lossy=allow_lossy)
    if cls.quantized:
        raise TmacError(f"--type {stock} is not a stock llama.cpp type", rule="output type")
    entries, cannot, lossy = [], [], []
    for info in infos:
        target = info.bits is not None or (is_projection(info.name) and len(info.shape) == 2)
        enc = float_encoding_for(info)
        if target:
            c, l = cls.plan_problem(info)
            if c:
                cannot.append(f"{info.name}: {c}")
            if l:
                lossy.append(f"{info.name}: {l}")
            # a float projection written as a float type is the plain float encoding
            enc = stock if stock in ("f16", "f32") and info.bits is None else cls.name
        e = TensorPlan(info.name, enc, tuple(info.shape), src_nbytes=info.nbytes, generated=info.name in generated)
        entries.append(e)
    if cannot:
        raise TmacError(f"{len(cannot)} tensor(s) cannot be written as {stock.upper()}: " + _listing(cannot),
                        rule="block size divides K")
    if lossy and not allow_lossy:
        raise TmacError(f"{stock.upper()} cannot hold {len(lossy)} tensor(s) exactly ({_listing(lossy)}); "
                        "--allow-lossy re-quantises them and reports each tensor's error",
                        rule="exact stock type")
    for e in entries:
        e.nbytes = get_encoding(e.encoding).nbytes(e)
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise TmacError("the source yields this tensor twice", tensor=dup, rule="unique tensor names")
    return ModelPlan(entries, Kcfg([]), stock=stock)


def _listing(items: list[str], limit: int = 4) -> str:
    shown = "; ".join(items[:limit])
    return shown + (f"; and {len(items) - limit} more" if len(items) > limit else "")
