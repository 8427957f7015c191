"""Native extensions (sources in kernels/); everything else is declared in pyproject.toml.

The extensions are optional: where they cannot be compiled (no C compiler, an unsupported one), the
install goes on with the numpy reference code, which computes the same bits more slowly, and says
so (a warning here, and ``tmac-convert --version`` names the kernels in use).  Set
``TMAC_CONVERT_REQUIRE_NATIVE=1`` to make a failed compile fail the install instead.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

if sys.platform == "win32":
    cflags = ["/O2"]
else:
    cflags = ["-O3", "-std=c11", "-fno-strict-aliasing"]

NATIVE = {
    "tmac_convert._layout_native": ["kernels/layout.c"],
    "tmac_convert._gptq_native": ["kernels/gptq_unpack.c"],
    "tmac_convert._lut_native": ["kernels/lut.c", "kernels/lut_scalar.c", "kernels/lut_avx2.c", "kernels/lut_neon.c"],
}

# Extra flags per extension.  The LUT kernels must round exactly like the numpy reference, so no
# multiply-add contraction; -pthread for their worker threads.
NATIVE_FLAGS = {} if sys.platform == "win32" else {
    "tmac_convert._lut_native": ["-ffp-contract=off", "-pthread"],
}


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
                             depends=["kernels/lut_core.h"])
                   for name, sources in NATIVE.items()],
      cmdclass={"build_ext": OptionalBuildExt})
