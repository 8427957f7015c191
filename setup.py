"""Native extensions (sources in kernels/); everything else is declared in pyproject.toml.

The LUT kernel sources are listed once, in tmac_convert/kernels/sources.py: the ``_lut_native``
extension compiles them, and ``build_py`` copies them into the package (``tmac_convert/kit/kernel_src``)
so that an installed tmac-convert can emit them into a kernel kit (``tmac-convert kit``).
"""

import importlib.util
import shutil
import sys
from pathlib import Path

from setuptools import Extension, setup
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

NATIVE = {
    "tmac_convert._layout_native": [f"{KDIR}/layout.c"],
    "tmac_convert._gptq_native": [f"{KDIR}/gptq_unpack.c"],
    "tmac_convert._lut_native": [f"{KDIR}/{SOURCES.LUT_BINDING}", *LUT_FILES],
}

# Extra flags per extension.  The LUT kernels must round exactly like the numpy reference, so no
# multiply-add contraction; -pthread for their worker threads.
NATIVE_FLAGS = {} if sys.platform == "win32" else {
    "tmac_convert._lut_native": ["-ffp-contract=off", "-pthread"],
}


class BuildPyWithKernels(build_py):
    """build_py that also copies the LUT kernel sources into ``tmac_convert/kit/kernel_src``."""

    def run(self) -> None:
        super().run()
        dest = Path(self.build_lib) / "tmac_convert" / "kit" / "kernel_src"
        dest.mkdir(parents=True, exist_ok=True)
        for name in SOURCES.lut_kernel_files(HERE / KDIR):
            shutil.copyfile(HERE / KDIR / name, dest / name)


setup(ext_modules=[Extension(name, sources, extra_compile_args=cflags + NATIVE_FLAGS.get(name, []),
                             depends=[f"{KDIR}/{SOURCES.LUT_HEADER}"])
                   for name, sources in NATIVE.items()],
      cmdclass={"build_py": BuildPyWithKernels})
