"""Kernel kits: T-MAC install prefixes that let T-MAC's llama.cpp fork run a converted model without TVM.

:func:`write_kit` reads a tmac-convert GGUF's header (its ``tmac.*`` keys and tensor infos) and writes
the folder the fork's ``find_package(TMAC)`` reads (section 3.6 of the format notes)::

    DIR/lib/cmake/t-mac/TMACConfig.cmake   DIR/lib/kcfg.ini   DIR/lib/kernels.cc   DIR/lib/lut/...
    DIR/include/t-mac/{kernels.h, tmac_gemm_wrapper.h, INIReader.h}   DIR/include/dmlc/logging.h
    DIR/README   DIR/tmac-kit.json

``kernels.cc`` holds T-MAC's two entry points per shape (``preprocessor_t1_int8_m*`` and
``qgemm_lut_t1_int8_m*``) for exactly the model's shapes, bits, tiles, group size, act group size,
zero points and one-scale, as thin glue over tmac-convert's own LUT kernels (``lut/``: the C sources
the Python extension compiles).  The wrapper checks every kcfg section the runtime reads against the
kernels and stops with a message naming the shape and field that differ (T-MAC issue #66).
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TmacError
from ..kernels.sources import lut_kernel_files
from . import render
from .model_facts import ModelFacts, TensorFacts, read_model_facts
from .plan import KitPlan, plan_kit
from .sources import KernelPath, kernel_paths, kernel_source_dir
from .writer import MARKER, check_target, write_tree

ISAS = ("auto", "avx2", "avx512", "neon")

__all__ = ["write_kit", "check_kit", "KitReport", "ISAS", "read_model_facts", "plan_kit", "ModelFacts", "TensorFacts", "KitPlan"]


@dataclass
class KitReport:
    """What :func:`write_kit` wrote.

    Attributes:
        out_dir: the kit folder.
        isa: the kit's instruction set: ``x86`` kits are ``avx2`` or ``avx512`` (with run-time
            dispatch down to portable C), ARM kits ``neon``.
        kernel_paths: the kernel paths compiled into ``kernels.cc``, best first.
        shapes: one line per weight shape served, ``"[M0, K] b-bit: bm .., kfactor .., ..."``.
        files: the kit's files, relative to ``out_dir``.
        seconds: wall time of the whole call.
    """

    out_dir: Path
    isa: str
    kernel_paths: list[str]
    shapes: list[str]
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _host_is_arm() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64", "armv8l", "armv8b")


def _select_paths(isa: str, available: dict[str, KernelPath]) -> tuple[str, list[KernelPath]]:
    """The kit's ISA name and its kernel paths, best first (scalar last)."""
    if isa not in ISAS:
        raise TmacError(f"unknown isa {isa!r}; choose one of {', '.join(ISAS)}", rule="kit isa")
    if isa == "auto":
        isa = "neon" if _host_is_arm() else ("avx512" if "avx512" in available else "avx2")
    if isa == "neon":
        order = ["neon"]
    elif isa == "avx512":
        if "avx512" not in available:
            raise TmacError("no AVX-512 kernel path in this tmac-convert's kernel sources (kernels/lut_avx512.c); "
                            "use --isa avx2 (or auto)", rule="kit isa available")
        order = ["avx512", "avx2"]
    else:
        order = ["avx2"]
    return isa, [available[i] for i in order if i in available] + [available["scalar"]]


def write_kit(model: str | Path, out_dir: str | Path, *, isa: str = "auto", force: bool = False) -> KitReport:
    """Write the T-MAC kernel kit for a converted model.

    Args:
        model: a T-MAC GGUF written by tmac-convert (only its header is read).
        out_dir: the kit folder to create (replaced only with ``force``, and only if it is a kit).
        isa: ``auto`` (this machine: an x86 kit with AVX2 and, when the kernel sources have it, AVX-512
            chosen at run time over portable C; on AArch64 a NEON kit), ``avx2``, ``avx512`` or ``neon``
            (an ARM kit: the fork's float16 ``tmac_float_type``).
        force: replace an existing kit folder.

    Returns:
        A :class:`KitReport`.

    Raises:
        TmacError: the file is not a T-MAC GGUF with consistent ``tmac.*`` keys, a tensor the kernels
            cannot serve (the message names file, tensor and rule), an unknown or unavailable ``isa``,
            or an existing ``out_dir`` without ``force``.  Nothing is written then.
    """
    t0 = time.perf_counter()
    model = Path(model)
    out = Path(out_dir).absolute()
    check_target(out, force)  # before any work
    src = kernel_source_dir()
    kit_isa, paths = _select_paths(isa, kernel_paths(src))
    facts = read_model_facts(model)
    plan = plan_kit(facts)
    model_abs = model.absolute()
    files: dict[str, str | bytes] = {
        f"{render.CMAKE_DIR}/TMACConfig.cmake": render.tmac_config_cmake(kit_isa, lut_kernel_files(src)),
        "lib/kcfg.ini": render.kcfg_ini(model_abs, kit_isa, plan),
        "lib/kernels.cc": render.kernels_cc(model_abs, kit_isa, plan, paths),
        "include/t-mac/kernels.h": render.template("kernels.h"),
        "include/t-mac/tmac_gemm_wrapper.h": render.template("tmac_gemm_wrapper.h"),
        "include/t-mac/INIReader.h": render.template("INIReader.h"),
        "include/dmlc/logging.h": render.template("logging.h"),
        "README": render.readme(model_abs, kit_isa, plan, out),
        MARKER: render.manifest(model_abs, kit_isa, plan, paths, src),
    }
    for f in lut_kernel_files(src):
        files[f"{render.LUT_DIR}/{f}"] = (src / f).read_bytes()
    write_tree(out, files, force)
    return KitReport(out, kit_isa, [p.isa for p in paths], [render.shape_line(s) for s in plan.shapes],
                     sorted(files), time.perf_counter() - t0)


def check_kit(model: str | Path, kit_dir: str | Path) -> list[str]:
    """What stops the kit in ``kit_dir`` from serving ``model``; empty when it serves it exactly.

    The fork cannot see a model's own ``tmac.*`` keys, so a kit built for a model with the same shapes
    but other tiles (bm, kfactor), group size or zero points would run it silently wrong; this compares
    the model's shapes and tiles (header only) with the kit's kcfg.ini and the shapes its kernels were
    generated for (``tmac-kit.json``).

    Raises:
        TmacError: the model is not one a kit can serve, or ``kit_dir`` is not a readable kit.
    """
    import json

    from ..layouts import Kcfg

    kit = Path(kit_dir)
    try:
        kcfg = Kcfg.parse((kit / "lib" / "kcfg.ini").read_text(), source=str(kit / "lib" / "kcfg.ini"))
        made = {s["section"]: s for s in json.loads((kit / MARKER).read_text())["shapes"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TmacError(f"not a readable kit ({e})", file=str(kit), rule="kit folder readable") from None
    problems = []
    for shape in plan_kit(read_model_facts(model)).shapes:
        want, t = shape.section, shape.tile
        where = f"[{shape.pre.m0}, {shape.pre.k}] {shape.pre.bits}-bit ({shape.tensors[0]})"
        got = next((e for e in kcfg if e.section == want.section), None)
        if got is None:
            problems.append(f"{where}: the kit's kcfg.ini has no section {want.section}")
            continue
        diff = [f"{f} {getattr(got, f)} (model: {getattr(want, f)})" for f in
                ("bm", "kfactor", "group_size", "lut_scales_size", "scales_size", "n_tile_num")
                if getattr(got, f) != getattr(want, f)]
        k = made.get(want.section)
        if k is None:
            diff.append("the kernels were not generated for it")
        else:
            diff += [f"kernels' {f} {k[f]} (model: {v})" for f, v in
                     (("bm", want.bm), ("kfactor", want.kfactor), ("group_size", t.group_size),
                      ("zero_point", t.zero_point), ("one_scale", t.one_scale), ("act_group_size", t.ags))
                     if k.get(f) != v]
        if diff:
            problems.append(f"{where}: " + ", ".join(diff))
    return problems
