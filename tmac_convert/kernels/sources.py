"""The one list of the LUT kernel C sources, shared by ``setup.py`` (the ``_lut_native`` extension) and
the kernel kit generator (:mod:`tmac_convert.kit`), which emits the same files into a kit.

Stdlib only: ``setup.py`` loads this file by path, before the package (and numpy) can be imported.

* :data:`LUT_HEADER` declares ``lut_problem``/``lut_row`` and the per-ISA entry points
  ``lut_build_<isa>`` / ``lut_tile_<isa>``.
* :data:`LUT_SHARED_HEADERS` are included by several ISA files (the x86 float stage), so they travel with
  the sources.
* :data:`LUT_ISA_FILES` maps each ISA to its source file; files marked optional join the list only
  when they exist (a per-ISA file another change may add, such as ``lut_avx512.c``).
* ``lut.c`` (the Python binding) is not a kernel source: only the extension compiles it.
"""

from __future__ import annotations

from pathlib import Path

KERNEL_DIR = "kernels"  # relative to the repository root
LUT_HEADER = "lut_core.h"
LUT_SHARED_HEADERS = ("lut_float_x86.h",)
LUT_BINDING = "lut.c"
# isa -> (file, required); the order is the order of compilation
LUT_ISA_FILES: dict[str, tuple[str, bool]] = {
    "scalar": ("lut_scalar.c", True),
    "avx2": ("lut_avx2.c", True),
    "avx512": ("lut_avx512.c", False),
    "neon": ("lut_neon.c", True),
}
X86_ISAS = ("avx2", "avx512")
ARM_ISAS = ("neon",)


def lut_isa_sources(kernel_dir: str | Path) -> dict[str, str]:
    """``{isa: file name}`` of the LUT kernel sources present in ``kernel_dir`` (required ones always)."""
    d = Path(kernel_dir)
    return {isa: name for isa, (name, required) in LUT_ISA_FILES.items() if required or (d / name).is_file()}


def lut_kernel_sources(kernel_dir: str | Path) -> list[str]:
    """File names of the LUT kernel C sources in ``kernel_dir`` (without the header and ``lut.c``)."""
    return list(lut_isa_sources(kernel_dir).values())


def lut_kernel_files(kernel_dir: str | Path) -> list[str]:
    """Every file a kit needs from ``kernel_dir``: the headers, then the C sources."""
    return [LUT_HEADER, *LUT_SHARED_HEADERS, *lut_kernel_sources(kernel_dir)]
