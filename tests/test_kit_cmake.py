"""The kit's TMACConfig.cmake, used the way the fork's GGML_TMAC block uses it (find_package(TMAC) with
TMAC_DIR, TMAC_LIB_DIR/kcfg.ini, TMAC_KERNELS_SOURCE compiled into the consumer, t_mac_no_tvm linked),
builds a working program: the kcfg path comes from the compile definition, the LUT kernels are
compiled without contraction.  (Building the real fork with kits is the fork tests' job.)"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from tmac_convert.kernels import gemm
from tmac_convert.kit import write_kit

from .kit_support import DRIVERS, BuiltDriver, convert_fixture, have, one_tensor_per_shape, tensor_blob

pytestmark = pytest.mark.skipif(not (have("cmake") and have("clang") and have("clang++")),
                                reason="cmake and clang are needed")

CMAKELISTS = """cmake_minimum_required(VERSION 3.14)
project(kit_consumer C CXX)
set(CMAKE_EXPORT_COMPILE_COMMANDS ON)
find_package(Threads REQUIRED)
find_package(TMAC)
if(NOT TMAC_FOUND)
  message(FATAL_ERROR "TMAC not found")
endif()
file(COPY ${{TMAC_LIB_DIR}}/kcfg.ini DESTINATION ${{CMAKE_CURRENT_BINARY_DIR}})
add_executable(fork_like "{driver}" ${{TMAC_KERNELS_SOURCE}})
target_link_libraries(fork_like PRIVATE t_mac_no_tvm Threads::Threads)
"""


def test_find_package_tmac_builds_a_program_that_computes_like_tmac_convert(tmp_path):
    model = convert_fixture("gguf-q4_0", tmp_path)
    write_kit(model, tmp_path / "kit")
    src = tmp_path / "consumer"
    src.mkdir()
    (src / "CMakeLists.txt").write_text(CMAKELISTS.format(driver=DRIVERS / "fork_like.cc"))
    build = tmp_path / "build"
    r = subprocess.run(["cmake", "-S", str(src), "-B", str(build), f"-DTMAC_DIR={tmp_path / 'kit' / 'lib/cmake/t-mac'}",
                        "-DCMAKE_C_COMPILER=clang", "-DCMAKE_CXX_COMPILER=clang++", "-DCMAKE_BUILD_TYPE=Release"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["cmake", "--build", str(build), "-j2"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    commands = json.loads((build / "compile_commands.json").read_text())
    lut = [c["command"] for c in commands if "/lib/lut/" in c["file"]]
    assert lut and all("-ffp-contract=off" in c for c in lut)
    kernels = next(c["command"] for c in commands if c["file"].endswith("kernels.cc"))
    assert "TMAC_KCFG_FILE=" in kernels and str(tmp_path / "kit" / "lib" / "kcfg.ini") in kernels
    drv = BuiltDriver(build / "fork_like", tmp_path / "kit")
    for t in one_tensor_per_shape(model):
        blob = tensor_blob(model, t)
        x = np.random.default_rng(3).standard_normal((2, t.k)).astype(np.float32)
        r = drv.run(blob, x, t, tmp_path)
        assert r.returncode == 0, r.stderr
        want = gemm(blob, x, m=t.m0, k=t.k, bits=t.bits, group_size=t.group_size, zero_point=t.zero_point, bm=t.bm,
                    kfactor=t.kfactor, act_group_size=t.act_group_size)
        assert np.array_equal(drv.output(tmp_path, 2, t.m0), want)
