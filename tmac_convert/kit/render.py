"""The text of every file of a kit (no file system writes here; see :mod:`tmac_convert.kit.writer`)."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

from .. import __version__
from ..kernels.sources import LUT_HEADER, LUT_SHARED_HEADERS, lut_kernel_files
from .plan import KitPlan, KitShape, TileShape
from .sources import KernelPath

CMAKE_DIR = "lib/cmake/t-mac"
LUT_DIR = "lib/lut"
ARM_ISAS = ("neon",)


def template(name: str) -> str:
    return resources.files("tmac_convert.kit").joinpath("templates", name).read_text()


def c_string(s: str) -> str:
    """``s`` as the inside of a C string literal (ASCII only)."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif 32 <= ord(ch) < 127 and ch != "?":
            out.append(ch)
        else:
            out.extend(f"\\{b:03o}" for b in ch.encode())
    return "".join(out)


def printable(s: str) -> str:
    """``s`` on one line: control characters (a newline in a file name) would break comments and INI lines."""
    return "".join(c if c.isprintable() else "?" for c in s)


def describe(model: Path, isa: str, plan: KitPlan) -> str:
    return f"{printable(model.name)} (tmac-convert {__version__}, {isa} kit, {len(plan.shapes)} shapes)"


def _paths_block(paths: list[KernelPath]) -> str:
    lines = []
    for p in paths:
        check = {"scalar": "kit_cpu_any", "avx2": "kit_cpu_avx2", "avx512": "kit_cpu_avx512"}.get(p.isa, "kit_cpu_any")
        entry = f'    {{"{p.isa}", {p.build}, {p.tile}, {check}}},'
        lines += [f"#if defined({p.guard})", entry, "#endif"] if p.guard else [entry]
    return "\n".join(lines)


def _tile_call(t: TileShape) -> str:
    return (f"  const lut_problem p = kit_problem({t.k}, {t.group_size}, {t.bm}, {t.kfactor}, {t.ags}, {t.bits}, "
            f"{int(t.zero_point)}, {int(t.one_scale)});\n"
            f"  return kit_qgemm(&p, {t.tile_scales}, A, LUT, Scales, LUT_Scales, LUT_Biases, C);")


def kernels_cc(model: Path, isa: str, plan: KitPlan, paths: list[KernelPath]) -> str:
    """The generated ``lib/kernels.cc``: per-shape T-MAC entry points over the shared LUT kernels."""
    table, funcs, protos, pre_dispatch, tile_dispatch = [], [], [], [], []
    for s in plan.shapes:
        c, p = s.section, s.pre
        table.append(f"    {{{p.m0}, {p.k}, {p.bits}, {c.bm}, {c.simd_n_in}, {c.simd_n_out}, {c.kfactor}, "
                     f"{c.group_size}, {c.lut_scales_size}, {c.scales_size}, {c.n_tile_num}, {p.ags}, "
                     f"{int(s.tile.zero_point)}, {int(s.tile.one_scale)}}},  /* {c.section}: "
                     f"{_names(s)} */")
        funcs.append(f"/* [{p.m0}, {p.k}] {p.bits}-bit: {_names(s)} */\n"
                     f"int {p.symbol}(void *B, void *LUT_Scales, void *LUT_Biases, void *QLUT) {{\n"
                     f"  return kit_preprocess({p.k}, {p.ags}, {p.actk}, B, LUT_Scales, LUT_Biases, QLUT);\n}}\n")
        protos.append(f"int {p.symbol}(void *B, void *LUT_Scales, void *LUT_Biases, void *QLUT);")
        pre_dispatch.append(f"  if (m == {p.m} && k == {p.k} && b == {p.bits}) "
                            f"return {p.symbol}(B, LUT_Scales, LUT_Biases, QLUT);")
    for t in plan.tile_shapes:
        funcs.append(f"/* tile of {t.bm} bit-rows: kfactor {t.kfactor}, group {t.group_size}, act group {t.ags}, "
                     f"{'zero points' if t.zero_point else 'one scale' if t.one_scale else 'no zero points'} */\n"
                     f"int {t.symbol}(void *A, void *LUT, void *Scales, void *LUT_Scales, void *LUT_Biases, "
                     f"void *C) {{\n{_tile_call(t)}\n}}\n")
        protos.append(f"int {t.symbol}(void *A, void *LUT, void *Scales, void *LUT_Scales, void *LUT_Biases, void *C);")
        tile_dispatch.append(f"  if (m == {t.bm} && k == {t.k} && b == {t.bits}) "
                             f"return {t.symbol}(A, LUT, Scales, LUT_Scales, LUT_Biases, C);")
    desc = describe(model, isa, plan)
    subs = {
        "@DESCRIPTION@": desc.replace("*/", "* /"),
        "@DESCRIPTION_C@": c_string(desc),
        "@MODEL_NAME@": printable(model.name).replace("*/", "* /"),
        "@ARM@": "1" if isa in ARM_ISAS else "0",
        "@PATH_NAMES@": ", ".join(p.isa for p in paths),
        "@PATHS@": _paths_block(paths),
        "@SHAPE_TABLE@": "\n".join(table),
        "@SHAPE_PROTOTYPES@": "\n".join(protos),
        "@SHAPE_FUNCTIONS@": "\n".join(funcs),
        "@PRE_DISPATCH@": "\n".join(pre_dispatch),
        "@QGEMM_DISPATCH@": "\n".join(tile_dispatch),
    }
    text = template("kernels.cc.in")
    for k, v in subs.items():
        text = text.replace(k, v)
    return text


def _names(s: KitShape) -> str:
    n = s.tensors
    text = n[0] if len(n) == 1 else f"{n[0]} and {len(n) - 1} more"
    return text.replace("*/", "* /")


def kcfg_ini(model: Path, isa: str, plan: KitPlan) -> str:
    head = (f"; kcfg.ini of a T-MAC kernel kit: {describe(model, isa, plan)}\n"
            "; Written by `tmac-convert kit` together with kernels.cc: they are one unit, and the kit's runtime\n"
            "; stops with an error naming the field when a section here does not describe its kernels.\n"
            "; lut_scales_size = LUT scale/bias slots per activation row (K / act group size for every\n"
            "; act group T-MAC admits; K / (4*kfactor) for the whole-K act group).\n\n")
    return head + plan.kcfg.to_ini()


def tmac_config_cmake(isa: str, lut_files: list[str]) -> str:
    sources = "\n".join(f'    "${{TMAC_LIB_DIR}}/lut/{f}"' for f in lut_files if f.endswith(".c"))
    return f"""# TMACConfig.cmake of a T-MAC kernel kit written by `tmac-convert kit` ({isa} kit).
# Read by T-MAC's llama.cpp fork through find_package(TMAC) with -DTMAC_DIR=<kit>/lib/cmake/t-mac; no TVM.
#
# Provides TMAC_FOUND, TMAC_LIB_DIR (holds kcfg.ini), TMAC_INCLUDE_DIRS, TMAC_KERNELS_SOURCE (kernels.cc,
# compiled into ggml by the fork) and the INTERFACE target t_mac_no_tvm, which carries the include
# folder, the define TMAC_KCFG_FILE (this kit's kcfg.ini) and the static library tmac_kit_lut: the LUT
# kernels, compiled as C11 without floating-point contraction: the kernels fuse exactly the multiply-adds
# their reference fuses, and a compiler that fused others would round once where the reference rounds twice.

get_filename_component(_tmac_kit_prefix "${{CMAKE_CURRENT_LIST_DIR}}/../../.." ABSOLUTE)
set(TMAC_FOUND TRUE)
set(TMAC_KIT_ISA "{isa}")
set(TMAC_LIB_DIR "${{_tmac_kit_prefix}}/lib")
set(TMAC_INCLUDE_DIRS "${{_tmac_kit_prefix}}/include")
set(TMAC_KERNELS_SOURCE "${{TMAC_LIB_DIR}}/kernels.cc")
set(TMAC_KCFG_FILE "${{TMAC_LIB_DIR}}/kcfg.ini")
set(TMAC_COMPILE_DEFS "TMAC_KCFG_FILE=\\"${{TMAC_KCFG_FILE}}\\"")

foreach(_tmac_kit_file "${{TMAC_KERNELS_SOURCE}}" "${{TMAC_KCFG_FILE}}")
  if(NOT EXISTS "${{_tmac_kit_file}}")
    message(FATAL_ERROR "T-MAC kit: ${{_tmac_kit_file}} is missing; write the kit again with tmac-convert kit")
  endif()
endforeach()

if(NOT TARGET tmac_kit_lut)
  add_library(tmac_kit_lut STATIC
{sources}
  )
  set_target_properties(tmac_kit_lut PROPERTIES C_STANDARD 11 POSITION_INDEPENDENT_CODE ON)
  if(MSVC)
    target_compile_options(tmac_kit_lut PRIVATE /fp:precise)
  else()
    target_compile_options(tmac_kit_lut PRIVATE -ffp-contract=off -fno-strict-aliasing $<$<NOT:$<CONFIG:Debug>>:-O3>)
  endif()
endif()

if(NOT TARGET t_mac_no_tvm)
  add_library(t_mac_no_tvm INTERFACE)
  set_target_properties(
    t_mac_no_tvm
    PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${{TMAC_INCLUDE_DIRS}}"
      INTERFACE_COMPILE_DEFINITIONS "${{TMAC_COMPILE_DEFS}}"
      INTERFACE_COMPILE_FEATURES cxx_std_17
      INTERFACE_LINK_LIBRARIES tmac_kit_lut
  )
endif()
"""


def readme(model: Path, isa: str, plan: KitPlan, out_dir: Path) -> str:
    shapes = "\n".join(f"  {shape_line(s)}" for s in plan.shapes)
    return f"""T-MAC kernel kit for {model.name}
{'=' * (22 + len(model.name))}

Written by tmac-convert {__version__} (`tmac-convert kit`) for {model} ({isa} kit).
It is a T-MAC install prefix for T-MAC's llama.cpp fork (kaleid-liner/llama.cpp, the submodule
T-MAC pins in 3rdparty/llama.cpp): the fork builds with it and runs this model, without TVM.

Build the fork with this kit (clang is required by the fork's T-MAC build):

  cmake -S <fork> -B build -DGGML_TMAC=ON -DTMAC_DIR={out_dir}/lib/cmake/t-mac \\
      -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Release \\
      -DLLAMA_CURL=OFF -DGGML_OPENMP=OFF
  cmake --build build --target llama-cli -j

(The fork's CMakeLists.txt wants a models/ folder: `mkdir -p <fork>/models` if it is missing.)
Run with the model this kit was written for:

  build/bin/llama-cli -m {model} -p "Hello" -n 32 -t 2

Files:
  lib/kernels.cc              the model's kernel entry points (generated)
  lib/kcfg.ini                the model's kcfg sections (generated; one unit with kernels.cc)
  lib/lut/                    tmac-convert's LUT kernel sources ({', '.join((LUT_HEADER, *LUT_SHARED_HEADERS))}, lut_*.c)
  lib/cmake/t-mac/TMACConfig.cmake
  include/t-mac/{{kernels.h, tmac_gemm_wrapper.h, INIReader.h}}, include/dmlc/logging.h
  tmac-kit.json               what the kit was written for (model, shapes, source hashes)

Shapes served ([M0, K] bits: tiles):
{shapes}

kcfg.ini and kernels.cc are one unit: at load the runtime checks every kcfg section it reads against
the kernels and stops with an error naming the shape and the field when they differ. The kcfg is read
from $TMAC_KCFG_FILE if set, else from lib/kcfg.ini of this kit. A model with other shapes or tiles
needs its own kit: `tmac-convert kit OTHER.gguf -o DIR`. To switch a build to another model's kit
cheaply, write the new kit into the same DIR with --force (unchanged files keep their timestamps) and
run the same `cmake --build` again: only kernels.cc and the files that differ are recompiled.

Kernel path: chosen at run time ({'NEON' if isa in ARM_ISAS else 'AVX-512 where present, else AVX2+FMA, else portable C'});
TMAC_KIT_PATH=scalar|avx2|avx512|neon forces one. TMAC_LOG_LEVEL=WARNING hides the runtime's INFO lines.
"""


def shape_line(s: KitShape) -> str:
    """One line describing a served shape: ``[M0, K] b-bit: bm .., kfactor .., scales, act group (tensors)``."""
    c, t = s.section, s.tile
    scale = "one scale" if t.one_scale else f"group {t.group_size}" + (", zero points" if t.zero_point else "")
    return (f"[{s.pre.m0}, {s.pre.k}] {s.pre.bits}-bit: bm {c.bm}, kfactor {c.kfactor}, {scale}, act group "
            f"{t.ags} ({_names(s)})")


def manifest(model: Path, isa: str, plan: KitPlan, paths: list[KernelPath], src: Path) -> str:
    st = model.stat()
    files = lut_kernel_files(src)
    return json.dumps({
        "tmac_convert": __version__,
        "model": {"path": str(model), "size": st.st_size, "mtime_ns": st.st_mtime_ns},
        "isa": isa,
        "kernel_paths": [p.isa for p in paths],
        "kernel_sources": {f: hashlib.sha256((src / f).read_bytes()).hexdigest() for f in files},
        "shapes": [{"m0": s.pre.m0, "k": s.pre.k, "bits": s.pre.bits, "section": s.section.section,
                    "preprocessor": s.pre.symbol, "qgemm": s.tile.symbol, "bm": s.section.bm,
                    "kfactor": s.section.kfactor, "group_size": s.tile.group_size, "zero_point": s.tile.zero_point,
                    "one_scale": s.tile.one_scale, "act_group_size": s.tile.ags,
                    "lut_scales_size": s.section.lut_scales_size, "scales_size": s.section.scales_size,
                    "n_tile_num": s.section.n_tile_num, "tensors": list(s.tensors)} for s in plan.shapes],
    }, indent=1) + "\n"
