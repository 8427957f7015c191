"""Native extensions (sources in kernels/); everything else is declared in pyproject.toml."""

import sys

from setuptools import Extension, setup

if sys.platform == "win32":
    cflags = ["/O2"]
else:
    cflags = ["-O3", "-std=c11", "-fno-strict-aliasing"]

# _pool_native owns the package's one worker pool; _layout_native and _lut_native import it as a PyCapsule
# at module init (kernels/pool.h says why), so it is listed first.
NATIVE = {
    "tmac_convert._pool_native": ["kernels/pool_module.c", "kernels/pool.c"],
    "tmac_convert._layout_native": ["kernels/layout.c"],
    "tmac_convert._gptq_native": ["kernels/gptq_unpack.c"],
    "tmac_convert._lut_native": ["kernels/lut.c", "kernels/lut_scalar.c", "kernels/lut_avx2.c", "kernels/lut_neon.c",
                                  "kernels/probe.c"],
}

# Extra flags per extension.  The LUT kernels must round exactly like the numpy reference, so no
# multiply-add contraction.  -pthread for the pool's threads.
NATIVE_FLAGS = {} if sys.platform == "win32" else {
    "tmac_convert._pool_native": ["-pthread"],
    "tmac_convert._lut_native": ["-ffp-contract=off"],
}
NATIVE_LINK = {} if sys.platform == "win32" else {"tmac_convert._pool_native": ["-pthread"]}

setup(ext_modules=[Extension(name, sources, extra_compile_args=cflags + NATIVE_FLAGS.get(name, []),
                             extra_link_args=NATIVE_LINK.get(name, []),
                             depends=["kernels/lut_core.h", "kernels/pool.h", "kernels/probe.h"])
                   for name, sources in NATIVE.items()])
