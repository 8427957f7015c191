"""The AVX-512 LUT kernels give the scalar kernel's outputs bit for bit, checked on any CPU by emulation.

* ``kernels/lut_avx512.c`` (``lut_tile_avx512``: one activation row through one tile, the entry point
  T-MAC's fork calls; ``lut_tile_rows_avx512``: a block of rows, the GEMM) must produce every output with
  exactly the bits of ``lut_tile_scalar``, like the AVX2 path.
* The check is the C self-test ``kernels/lut_selftest.c``: 700 random problems (bits 1-4, zero points,
  per-tensor scales, kfactor 2-128, sub-groups of 1-128 tables including those that are not a multiple of
  four, int8, float and fast-aggregation tables, one row and a block of three).
* Built with ``-DTMAC_AVX512_SIMDE``, the same source runs with every ``_mm512_*``/``_mm256_*`` intrinsic
  replaced by SIMDe's portable version (``simde/x86/avx512.h``, Debian ``libsimde-dev``), so the check
  needs no AVX-512 hardware.  An intrinsic SIMDe lacks would be an implicit declaration, which the build
  makes an error: the emulated build compiles the very calls the native one does.
* On CPUs with AVX-512 F/BW/VL, ``tests/test_kernels_selftest.py`` runs the same self-test natively, and
  the Python tests compare the ``avx512`` kernel path with the numpy reference.  Elsewhere the extension
  built with ``CFLAGS="-DTMAC_AVX512_SIMDE -Wno-psabi"`` offers the emulated ``avx512`` path on any AVX2 CPU,
  so that those Python tests can run it too (a build of minutes; not done by this test).
* Skipped, saying why, where there is no C compiler or no SIMDe header.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "kernels"
SOURCES = [str(KERNELS / f) for f in ("lut_selftest.c", "lut_scalar.c", "lut_neon.c", "lut_avx2.c", "lut_avx512.c")]
# -O1: the emulated intrinsics are plain C, so the optimisation level does not change what is checked, and GCC
# takes a minute at -O2 over SIMDe's headers against ~15 s at -O1.
FLAGS = ["-O1", "-std=c11", "-ffp-contract=off", "-Werror=implicit-function-declaration", "-Wno-psabi",
         "-DTMAC_SELFTEST_AVX512", "-DTMAC_AVX512_SIMDE"]


def _simde_include_dir() -> Path | None:
    dirs = [os.environ.get("SIMDE_INCLUDE_DIR"), "/usr/include", "/usr/local/include", "/opt/homebrew/include"]
    return next((Path(d) for d in dirs if d and (Path(d) / "simde" / "x86" / "avx512.h").is_file()), None)


SIMDE = _simde_include_dir()


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
@pytest.mark.skipif(SIMDE is None, reason="no SIMDe header simde/x86/avx512.h (Debian: libsimde-dev; or set "
                                         "SIMDE_INCLUDE_DIR): the AVX-512 path cannot be emulated here")
def test_avx512_path_equals_scalar_emulated_by_simde(tmp_path):
    exe = tmp_path / "selftest_avx512"
    subprocess.run(["cc", *FLAGS, f"-I{SIMDE}", *SOURCES, "-lm", "-o", str(exe)], check=True, capture_output=True,
                   timeout=600)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    lines = run.stdout.splitlines()
    assert run.returncode == 0, run.stdout
    assert any(line.startswith("OK ") and line.split()[2] == "avx512" for line in lines), run.stdout
    counts = {int(line.split()[1]) for line in lines if line.startswith("OK ")}
    assert counts == {700}, run.stdout  # every path ran every case
    assert all(line.endswith("(and 72 table builds)") for line in lines if line.startswith("OK ")), run.stdout
