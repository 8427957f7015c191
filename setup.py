"""Native extensions (sources in kernels/); everything else is declared in pyproject.toml.

The LUT kernel sources are listed once, in tmac_convert/kernels/sources.py: the ``_lut_native``
extension compiles them, and ``build_py`` copies them into the package (``tmac_convert/kit/kernel_src``)
so that an installed tmac-convert can emit them into a kernel kit (``tmac-convert kit``).

The extensions are optional: where they cannot be compiled (no C compiler, an unsupported one), the
install goes on with the numpy reference code, which computes the same bits more slowly, and says
so (a warning here, and ``tmac-convert --version`` names the kernels in use).  Set
``TMAC_CONVERT_REQUIRE_NATIVE=1`` to make a failed compile fail the install instead.
"""

import importlib.util
import os
import shutil
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _load_sources_module():
    spec = importlib.util.spec_from_file_location("_tmac_kernel_sources", HERE / "tmac_convert" / "kernels" / "sources.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SOURCES = _load_sources_module()
KDIR = SOURCES.KERNEL_DIR
LUT_FILES = [f"{KDIR}/{name}" for name in SOURCES.lut_kernel_sources(HERE / KDIR)]

if sys.platform == "win32":
    cflags = ["/O2"]
else:
    cflags = ["-O3", "-std=c11", "-fno-strict-aliasing"]

# _pool_native owns the package's one worker pool; _layout_native and _lut_native import it as a PyCapsule
# at module init (kernels/pool.h says why), so it is listed first.
NATIVE = {
    "tmac_convert._pool_native": [f"{KDIR}/pool_module.c", f"{KDIR}/pool.c"],
    "tmac_convert._layout_native": [f"{KDIR}/layout.c"],
    "tmac_convert._gptq_native": [f"{KDIR}/gptq_unpack.c"],
    "tmac_convert._lut_native": [f"{KDIR}/{SOURCES.LUT_BINDING}", *LUT_FILES, f"{KDIR}/probe.c"],
}

# Extra flags per extension.  The LUT kernels must round exactly like the numpy reference, so no
# multiply-add contraction.  -pthread for the pool's threads.
NATIVE_FLAGS = {} if sys.platform == "win32" else {
    "tmac_convert._pool_native": ["-pthread"],
    "tmac_convert._lut_native": ["-ffp-contract=off"],
}
NATIVE_LINK = {} if sys.platform == "win32" else {"tmac_convert._pool_native": ["-pthread"]}


class BuildPyWithKernels(build_py):
    """build_py that also copies the LUT kernel sources into ``tmac_convert/kit/kernel_src``."""

    def run(self) -> None:
        super().run()
        dest = Path(self.build_lib) / "tmac_convert" / "kit" / "kernel_src"
        dest.mkdir(parents=True, exist_ok=True)
        for name in SOURCES.lut_kernel_files(HERE / KDIR):
            shutil.copyfile(HERE / KDIR / name, dest / name)



class OptionalBuildExt(build_ext):
    """build_ext that warns and skips an extension it cannot compile (the numpy fallback runs then)."""

    def _skip(self, what: str, err: BaseException) -> None:
        if os.environ.get("TMAC_CONVERT_REQUIRE_NATIVE"):
            raise err
        msg = (f"WARNING: tmac-convert: could not build {what} ({type(err).__name__}: {err}); installing without "
               "it: the numpy reference code runs instead (same results, slower). Install a C compiler and "
               "reinstall to get the native kernels; `tmac-convert --version` shows which are in use.")
        print(msg, file=sys.stderr, flush=True)

    def run(self) -> None:
        try:
            super().run()
        except Exception as err:  # noqa: BLE001 - no compiler at all fails before any extension
            self._skip("the native extensions", err)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as err:  # noqa: BLE001 - CompileError, LinkError, a missing compiler executable...
            self._skip(ext.name, err)


setup(ext_modules=[Extension(name, sources, extra_compile_args=cflags + NATIVE_FLAGS.get(name, []),
                             extra_link_args=NATIVE_LINK.get(name, []),
                             depends=[f"{KDIR}/{h}" for h in (SOURCES.LUT_HEADER, *SOURCES.LUT_SHARED_HEADERS)] + [f"{KDIR}/pool.h", f"{KDIR}/probe.h"])
                   for name, sources in NATIVE.items()],
      cmdclass={"build_py": BuildPyWithKernels, "build_ext": OptionalBuildExt})
