"""An ARM (NEON, float16 tmac_float_type) kit cross-compiles for AArch64 and, under qemu-user, computes
within the int8-table and float16 error of exact math.

Needs clang and an AArch64 C sysroot (/usr/aarch64-linux-gnu: Debian's gcc-aarch64-linux-gnu) to
compile, and qemu-aarch64 to run; skipped with the reason otherwise.  kernels.cc is compiled as C++
without the C++ standard library (the kit's kernels need none), the LUT sources as C, and a C driver
(tests/kit_drivers/raw.c) calls them with the fork's offsets and float16 buffers.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tmac_convert.kernels import gemm
from tmac_convert.kit import write_kit

from .kit_support import DRIVERS, FAMILIES, convert_fixture, dequantised, have, int8_budget, one_tensor_per_shape, tensor_blob

SYSROOT = Path("/usr/aarch64-linux-gnu")
TARGET = ["--target=aarch64-linux-gnu", f"--sysroot={SYSROOT}"]

pytestmark = pytest.mark.skipif(not (have("clang") and have("clang++") and (SYSROOT / "include" / "stdio.h").exists()),
                                reason="needs clang and an AArch64 C sysroot in /usr/aarch64-linux-gnu "
                                       "(apt-get install clang gcc-aarch64-linux-gnu)")

ARM_FAMILIES = ["gptq-2bit-zp", "gptq-4bit-sym", "gptq-3bit-zp", "gptq-1bit-per-row", "bitnet-one-scale", "gguf-q4_0"]


def _cross_build(kit: Path, work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    objs = []
    for c in sorted((kit / "lib" / "lut").glob("*.c")):
        o = work / (c.stem + ".o")
        subprocess.run(["clang", *TARGET, "-O2", "-std=c11", "-ffp-contract=off", "-Werror", "-c", str(c), "-o", str(o)],
                       check=True, capture_output=True, text=True)
        objs.append(str(o))
    r = subprocess.run(["clang++", *TARGET, "-O2", "-std=c++17", "-nostdinc++", "-fno-exceptions", "-fno-rtti", "-Wall",
                        "-Werror", "-I", str(kit / "include"), "-c", str(kit / "lib" / "kernels.cc"), "-o",
                        str(work / "kernels.o")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    subprocess.run(["clang", *TARGET, "-O2", "-Wall", "-Werror", "-I", str(kit / "include"), "-c", str(DRIVERS / "raw.c"),
                    "-o", str(work / "raw.o")], check=True, capture_output=True, text=True)
    # link: the cross gcc driver if present, else clang (its sysroot detection finds the same libraries)
    linker = ["aarch64-linux-gnu-gcc"] if have("aarch64-linux-gnu-gcc") else ["clang", "--target=aarch64-linux-gnu"]
    exe = work / "raw"
    r = subprocess.run([*linker, *objs, str(work / "kernels.o"), str(work / "raw.o"), "-o", str(exe), "-lpthread",
                        "-lm"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return exe


@pytest.fixture(scope="module")
def arm_builds(tmp_path_factory):
    d = tmp_path_factory.mktemp("kit-arm")
    out = {}
    for fam in ARM_FAMILIES:
        model = convert_fixture(fam, d)
        report = write_kit(model, d / fam / "kit", isa="neon")
        assert report.isa == "neon" and report.kernel_paths == ["neon", "scalar"]
        out[fam] = (model, _cross_build(d / fam / "kit", d / fam / "build"))
    return out


def test_arm_kit_cross_compiles_with_the_neon_path_and_fp16_types(arm_builds, tmp_path):
    for fam, (model, exe) in arm_builds.items():
        assert exe.exists()
        head = exe.read_bytes()[:20]
        assert head[:4] == b"\x7fELF" and head[18] == 183  # e_machine EM_AARCH64


def test_x86_kit_refuses_to_compile_for_arm(tmp_path):
    model = convert_fixture("gptq-2bit-zp", tmp_path)
    write_kit(model, tmp_path / "kit", isa="avx2")
    r = subprocess.run(["clang++", *TARGET, "-std=c++17", "-nostdinc++", "-fsyntax-only", "-I",
                        str(tmp_path / "kit" / "include"), str(tmp_path / "kit" / "lib" / "kernels.cc")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "was written for x86" in r.stderr and "--isa neon" in r.stderr


@pytest.mark.skipif(not have("qemu-aarch64"), reason="qemu-aarch64 not installed (apt-get install qemu-user)")
@pytest.mark.parametrize("family", ARM_FAMILIES)
def test_arm_kit_under_qemu_matches_exact_math_within_int8_and_fp16_error(family, arm_builds, tmp_path):
    model, exe = arm_builds[family]
    for t in one_tensor_per_shape(model):
        rng = np.random.default_rng(7)
        x = rng.standard_normal((2, t.k)).astype(np.float32)
        blob = tensor_blob(model, t)
        blob.tofile(tmp_path / "b")
        x.tofile(tmp_path / "x")
        r = subprocess.run(["qemu-aarch64", "-L", str(SYSROOT), str(exe), str(tmp_path / "b"), str(t.m0), str(t.k),
                            str(t.bits), str(tmp_path / "x"), "2", str(tmp_path / "y")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "path neon" in r.stderr
        y = np.fromfile(tmp_path / "y", dtype=np.float32).reshape(2, t.m0).astype(np.float64)
        x16 = x.astype(np.float16).astype(np.float32)  # the fork hands the kernels fp16 activations
        w, abs_s = dequantised(blob, t)
        exact = x16.astype(np.float64) @ w.T
        # int8 tables, plus fp16 rounding (2^-11 relative) of the scales, LUT scales and biases and the
        # outputs: at most 4 roundings on terms bounded by sum|w x|
        budget = int8_budget(x16, abs_s, t, w) + 2.0**-9 * (np.abs(x16.astype(np.float64)) @ np.abs(w).T)
        err = np.abs(y - exact)
        assert np.all(err <= budget), f"{t.name}: worst error/budget {np.max(err / budget):.3f}"
        # and it is the same computation as the x86 kernels, up to that fp16 rounding
        ref = gemm(blob, x16, m=t.m0, k=t.k, bits=t.bits, group_size=t.group_size, zero_point=t.zero_point, bm=t.bm,
                   kfactor=t.kfactor, act_group_size=t.act_group_size, lut="int8")
        assert np.max(np.abs(y - ref)) <= np.max(budget)
