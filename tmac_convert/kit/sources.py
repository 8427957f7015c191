"""Where the LUT kernel sources are, and which kernel paths they provide (for the kit's dispatch).

An installed package carries them in ``tmac_convert/kit/kernel_src`` (copied there by ``setup.py``'s
``build_py``); a source checkout (editable install) uses ``kernels/`` at the repository root.  The
file list itself is :mod:`tmac_convert.kernels.sources` (shared with ``setup.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import TmacError
from ..kernels.sources import KERNEL_DIR, LUT_HEADER, lut_isa_sources, lut_kernel_files

_PACKAGED = Path(__file__).resolve().parent / "kernel_src"
_CHECKOUT = Path(__file__).resolve().parents[2] / KERNEL_DIR


def kernel_source_dir() -> Path:
    """The folder holding ``lut_core.h`` and the LUT kernel C sources."""
    for d in (_PACKAGED, _CHECKOUT):
        if (d / LUT_HEADER).is_file() and all((d / f).is_file() for f in lut_kernel_files(d)):
            return d
    raise TmacError(f"the LUT kernel sources are missing (looked in {_PACKAGED} and {_CHECKOUT}); reinstall "
                    "tmac-convert", rule="kernel sources installed")


@dataclass(frozen=True)
class KernelPath:
    """One kernel path of the C sources: its ISA, the macro guarding it and its two entry points."""

    isa: str
    guard: str | None  # preprocessor macro that lut_core.h defines when the path is compiled in
    build: str  # lut_build_<isa>, or the scalar builder when the path has none of its own
    tile: str


_GUARD_BLOCK = re.compile(r"#define\s+(TMAC_HAVE_\w+)\b(.*?)#endif", re.S)
_DECL = re.compile(r"\blut_(build|tile)_(\w+)\s*\(")


def kernel_paths(src: Path) -> dict[str, KernelPath]:
    """The paths ``lut_core.h`` declares: ``{isa: KernelPath}`` for scalar and each guarded ISA block."""
    header = (src / LUT_HEADER).read_text()
    found: dict[str, dict[str, str]] = {}
    guards: dict[str, str] = {}
    for m in _GUARD_BLOCK.finditer(header):
        for kind, isa in _DECL.findall(m.group(2)):
            found.setdefault(isa, {})[kind] = f"lut_{kind}_{isa}"
            guards.setdefault(isa, m.group(1))
    out = {"scalar": KernelPath("scalar", None, "lut_build_scalar", "lut_tile_scalar")}
    present = lut_isa_sources(src)
    for isa, fns in found.items():
        if "tile" in fns and isa in present:
            out[isa] = KernelPath(isa, guards[isa], fns.get("build", "lut_build_scalar"), fns["tile"])
    return out
