"""Native extensions (sources in kernels/); everything else is declared in pyproject.toml."""

import sys

from setuptools import Extension, setup

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

setup(ext_modules=[Extension(name, sources, extra_compile_args=cflags + NATIVE_FLAGS.get(name, []),
                             depends=["kernels/lut_core.h"])
                   for name, sources in NATIVE.items()])
