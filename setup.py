"""Native extensions (sources in kernels/); everything else is declared in pyproject.toml."""

import sys

from setuptools import Extension, setup

if sys.platform == "win32":
    cflags = ["/O2"]
else:
    cflags = ["-O3", "-std=c11", "-fno-strict-aliasing"]

NATIVE = {
    "tmac_convert._layout_native": ["kernels/layout.c"],
}

setup(ext_modules=[Extension(name, sources, extra_compile_args=cflags) for name, sources in NATIVE.items()])
