"""A kit's kernels, compiled as the fork compiles them and driven as the fork drives them, compute what
tmac-convert's own kernels compute.

The driver (tests/kit_drivers/fork_like.cc) goes through the kit's TMACGeMMWrapper: kcfg from the
kit's kcfg.ini (checked against the kernels), scales converted to tmac_float_type, a workspace of
exactly the fork's size, one preprocessor call per activation row and one qgemm call per (tile, row)
with the fork's offsets, tiles shared out among threads.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from tmac_convert.kernels import available_paths, gemm
from tmac_convert.kit import write_kit

from .kit_support import (FAMILIES, build_driver, convert_fixture, dequantised, have, int8_budget,
                          one_tensor_per_shape, tensor_blob)

pytestmark = pytest.mark.skipif(not (have("clang") and have("clang++")), reason="clang/clang++ not installed")

N_ROWS = 3


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("kit-models")
    return {fam: convert_fixture(fam, d) for fam in FAMILIES}


@pytest.fixture(scope="module")
def drivers(models, tmp_path_factory):
    d = tmp_path_factory.mktemp("kit-drivers")
    out = {}
    for fam, model in models.items():
        write_kit(model, d / fam / "kit", isa="avx512" if "avx512" in available_paths() else "avx2")
        out[fam] = build_driver(d / fam / "kit", d / fam / "build")
    return out


def _x(t, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N_ROWS, t.k)).astype(np.float32)
    x[1] *= 40.0  # a row with large activations
    x[2, : t.k // 2] = 0.0  # and one with an all-zero half (a LUT scale of 0)
    return x


def _lut_gemm(blob, x, t):
    return gemm(blob, x, m=t.m0, k=t.k, bits=t.bits, group_size=t.group_size, zero_point=t.zero_point, bm=t.bm,
                kfactor=t.kfactor, act_group_size=t.act_group_size, lut="int8", threads=1)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_kit_is_bit_identical_to_tmac_convert_int8_gemm_on_every_shape(family, models, drivers, tmp_path):
    model, drv = models[family], drivers[family]
    for t in one_tensor_per_shape(model):
        blob, x = tensor_blob(model, t), _x(t)
        want = _lut_gemm(blob, x, t)
        for path in [p for p in ("scalar", "avx2", "avx512") if p in available_paths()]:
            for threads in (1, 2):
                r = drv.run(blob, x, t, tmp_path, threads=threads, env={"TMAC_KIT_PATH": path})
                assert r.returncode == 0, r.stderr
                assert f"path {path}" in r.stderr
                got = drv.output(tmp_path, N_ROWS, t.m0)
                assert np.array_equal(got, want), (f"{t.name} [{t.m0}, {t.k}] path {path} threads {threads}: max diff "
                                                   f"{np.abs(got - want).max()}")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_kit_is_within_the_int8_table_budget_of_float64_math(family, models, drivers, tmp_path):
    model, drv = models[family], drivers[family]
    for t in one_tensor_per_shape(model):
        blob, x = tensor_blob(model, t), _x(t, seed=1)
        r = drv.run(blob, x, t, tmp_path)
        assert r.returncode == 0, r.stderr
        got = drv.output(tmp_path, N_ROWS, t.m0).astype(np.float64)
        w, abs_s = dequantised(blob, t)
        exact = x.astype(np.float64) @ w.T
        budget = int8_budget(x, abs_s, t, w)
        err = np.abs(got - exact)
        assert np.all(err <= budget), f"{t.name}: worst error/budget {np.max(err / budget):.3f}"
        # the budget is a bound, not a blanket: the error uses a real part of it
        assert 0 < np.max(err / budget) < 1


def test_kit_builds_with_gcc_too_and_gives_the_same_bits(models, tmp_path):
    if not (have("gcc") and have("g++")):
        pytest.skip("gcc/g++ not installed")
    model = models["gptq-2bit-zp"]
    write_kit(model, tmp_path / "kit")
    drv = build_driver(tmp_path / "kit", tmp_path / "build", cc="gcc", cxx="g++")
    t = one_tensor_per_shape(model)[0]
    blob, x = tensor_blob(model, t), _x(t)
    r = drv.run(blob, x, t, tmp_path)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(drv.output(tmp_path, N_ROWS, t.m0), _lut_gemm(blob, x, t))


def test_kit_stays_inside_the_forks_workspace_under_address_sanitizer(models, tmp_path):
    model = models["bitnet-one-scale"]
    write_kit(model, tmp_path / "kit")
    try:
        drv = build_driver(tmp_path / "kit", tmp_path / "build", extra=("-fsanitize=address", "-g"))
    except (AssertionError, subprocess.CalledProcessError) as e:
        pytest.skip(f"no AddressSanitizer runtime: {e}")
    for fam in ("bitnet-one-scale",):
        for t in one_tensor_per_shape(models[fam]):
            blob, x = tensor_blob(models[fam], t), _x(t)
            r = drv.run(blob, x, t, tmp_path, threads=2)
            assert r.returncode == 0, r.stderr
            assert np.array_equal(drv.output(tmp_path, N_ROWS, t.m0), _lut_gemm(blob, x, t))


def test_whole_k_act_group_keeps_one_bias_slot_per_chunk_and_stays_bit_identical(tmp_path):
    """act group -1 (the whole K): the kit's kcfg gives the fork K/(4*kfactor) LUT slots per row."""
    model = convert_fixture("gptq-2bit-zp", tmp_path, act_group_size=-1)
    write_kit(model, tmp_path / "kit")
    ini = (tmp_path / "kit" / "lib" / "kcfg.ini").read_text()
    drv = build_driver(tmp_path / "kit", tmp_path / "build", extra=("-fsanitize=address",))
    for t in one_tensor_per_shape(model):
        assert t.act_group_size == t.k
        assert f"lut_scales_size = {t.k // (4 * t.kfactor)}\n" in ini
        blob, x = tensor_blob(model, t), _x(t)
        r = drv.run(blob, x, t, tmp_path)
        assert r.returncode == 0, r.stderr
        assert np.array_equal(drv.output(tmp_path, N_ROWS, t.m0), _lut_gemm(blob, x, t))
