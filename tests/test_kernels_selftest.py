"""The C self-test of the SIMD tile kernels against the scalar one: AVX2 (and AVX-512 where the CPU has it)
natively, NEON under qemu.

kernels/lut_selftest.c runs 700 random problems per path (bits 1-4, zero points, per-tensor scales, kfactor
2-128, sub-groups of 1-128 tables, int8, float and fast-aggregation tables) and requires bit-identical
outputs; before them, 72 int8 table builds per path (act and bias groups the kernels admit, halfway cases of the
rounding, groups of zeros) must give the scalar build's bytes.  The NEON run needs ``aarch64-linux-gnu-gcc`` and ``qemu-aarch64`` (Debian: gcc-aarch64-linux-gnu,
qemu-user) and is skipped without them.  The AVX-512 path on CPUs without it: tests/test_kernels_avx512.py.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [str(ROOT / "kernels" / f) for f in ("lut_selftest.c", "lut_scalar.c", "lut_neon.c", "lut_avx2.c", "lut_avx512.c")]
FLAGS = ["-O2", "-std=c11", "-ffp-contract=off", "-DTMAC_SELFTEST_AVX512"]


def _build_and_run(cc: str, run_prefix: list[str], out: Path) -> str:
    subprocess.run([cc, *FLAGS, *SOURCES, "-lm", "-o", str(out)], check=True, capture_output=True, timeout=120)
    return subprocess.run([*run_prefix, str(out)], check=True, capture_output=True, text=True, timeout=120).stdout


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_native_simd_path_equals_scalar(tmp_path):
    out = _build_and_run("cc", [], tmp_path / "selftest")
    assert out.startswith(("OK", "SKIP")), out
    if out.startswith("OK"):
        for line in out.splitlines():
            assert line.startswith("OK 700 ") and line.endswith("(and 72 table builds)"), out  # every case ran


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None or shutil.which("qemu-aarch64") is None,
                    reason="no aarch64 cross compiler or qemu-aarch64")
def test_neon_path_equals_scalar_under_qemu(tmp_path):
    out = _build_and_run("aarch64-linux-gnu-gcc", ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"], tmp_path / "st")
    assert out.startswith("OK 700 neon (and 72 table builds)"), out
