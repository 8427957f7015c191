"""Helpers for the kernel kit tests: fixture conversion, compiling a kit with a test driver, running it,
and the int8-table error budget of a LUT product."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tmac_convert import unpack
from tmac_convert.gguf_tmac import parse, read_bytes
from tmac_convert.kit.model_facts import TensorFacts, read_model_facts

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
DRIVERS = Path(__file__).resolve().parent / "kit_drivers"

# Fixture families the kit must serve: (name, source path inside fixtures/)
FAMILIES = {
    "gptq-4bit-sym": "gptq_v1_sym_4bit",          # group 128, no zero points
    "gptq-2bit-zp": "gptq_v2_asym_2bit",          # group 64, zero points
    "gptq-3bit-zp": "gptq_3bit",                  # bm 192
    "gptq-1bit-per-row": "gptq_1bit",             # group -1 (per row), two tile heights
    "autogptq-4bit-zp": "autogptq_4bit",
    "bitnet-one-scale": "bitnet_packed",          # one scale per tensor
    "gguf-q4_0": "gguf_q4_0/model.gguf",          # group 32, act group 32, kfactor 8
    "gguf-tq2_0": "gguf_tq2_0/model.gguf",        # group 256
}


def convert_fixture(family: str, out_dir: Path, **options) -> Path:
    """Convert a bundled fixture family to a T-MAC GGUF in ``out_dir`` (cached by name and options)."""
    from tmac_convert.convert import convert

    tag = "-".join(f"{k}{v}" for k, v in sorted(options.items()))
    out = out_dir / f"{family}{'-' + tag if tag else ''}.gguf"
    if not out.exists():
        convert(FIXTURES / FAMILIES[family], out, verify=False, **options)
    return out


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


@dataclass
class BuiltDriver:
    exe: Path
    kit: Path

    def run(self, blob: np.ndarray, x: np.ndarray, t: TensorFacts, work: Path, threads: int = 1,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        blob_f, x_f, y_f = work / "blob.bin", work / "x.bin", work / "y.bin"
        np.ascontiguousarray(blob).tofile(blob_f)
        np.ascontiguousarray(x, dtype=np.float32).tofile(x_f)
        if y_f.exists():
            y_f.unlink()
        return subprocess.run([str(self.exe), str(blob_f), str(t.m0), str(t.k), str(t.bits), str(x_f),
                               str(x.shape[0]), str(y_f), str(threads)], capture_output=True, text=True,
                              env={**os.environ, **(env or {})}, timeout=120)

    def output(self, work: Path, n: int, m0: int) -> np.ndarray:
        return np.fromfile(work / "y.bin", dtype=np.float32).reshape(n, m0)


# the warning flags of the fork's ggml target (ggml/src/CMakeLists.txt, clang)
FORK_WARNINGS = ("-Wmissing-declarations", "-Wmissing-noreturn", "-Wall", "-Wextra", "-Wpedantic", "-Wcast-qual",
                 "-Wunreachable-code-break", "-Wunreachable-code-return", "-Wmissing-prototypes", "-Wextra-semi")


def build_driver(kit: Path, work: Path, *, cc: str = "clang", cxx: str = "clang++",
                 extra: tuple[str, ...] = ()) -> BuiltDriver:
    """Compile the kit's LUT sources (C) and kernels.cc + headers (C++) with the fork-like test driver."""
    work.mkdir(parents=True, exist_ok=True)
    objs = []
    for c in sorted((kit / "lib" / "lut").glob("*.c")):
        o = work / (c.stem + ".o")
        subprocess.run([cc, "-O2", "-std=c11", "-ffp-contract=off", "-fno-strict-aliasing", *extra, "-c", str(c),
                        "-o", str(o)], check=True, capture_output=True, text=True)
        objs.append(str(o))
    # kernels.cc with the warnings the fork's ggml target enables, as errors
    warn = FORK_WARNINGS if "clang" in cxx else ("-Wall", "-Wextra")
    r = subprocess.run([cxx, "-O2", "-std=gnu++17", *warn, "-Werror", *extra, "-I", str(kit / "include"), "-c",
                        str(kit / "lib" / "kernels.cc"), "-o", str(work / "kernels.o")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    exe = work / "fork_like"
    r = subprocess.run([cxx, "-O2", "-std=c++17", "-Wall", "-Werror", *extra, "-I", str(kit / "include"),
                        f'-DTMAC_KCFG_FILE="{kit / "lib" / "kcfg.ini"}"', str(work / "kernels.o"),
                        str(DRIVERS / "fork_like.cc"), *objs, "-o", str(exe), "-pthread"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return BuiltDriver(exe, kit)


def tensor_blob(model: Path, t: TensorFacts) -> np.ndarray:
    """The tensor's bytes in the GGUF: Format A weights, then float32 scales (and zero offsets)."""
    rec = parse(model).tensor(t.name)
    nscales = 1 if t.one_scale else t.m0 * (t.k // t.group_size) * (2 if t.zero_point else 1)
    return read_bytes(model, rec.offset, t.m0 * t.k * t.bits // 8 + 4 * nscales)


def one_tensor_per_shape(model: Path) -> list[TensorFacts]:
    seen, out = set(), []
    for t in read_model_facts(model).tensors:
        if (t.m0, t.k) not in seen:
            seen.add((t.m0, t.k))
            out.append(t)
    return out


def dequantised(blob: np.ndarray, t: TensorFacts) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``W [M0, K]`` and the per-weight |scale| ``[M0, K]`` from the blob (no LUT involved)."""
    codes, scales, zeros = unpack(blob, m=t.m0, k=t.k, bits=t.bits, group_size=t.group_size,
                                  zero_point=t.zero_point, bm=t.bm, kfactor=t.kfactor)
    if t.one_scale:
        s = np.full((t.m0, t.k), float(np.asarray(scales).ravel()[0]))
    else:
        s = np.repeat(scales.astype(np.float64), t.group_size, axis=1)
    w = (codes.astype(np.float64) - (1 << (t.bits - 1))) * s
    if zeros is not None:
        w = w - np.repeat(zeros.astype(np.float64), t.group_size, axis=1)
    return w, np.abs(s)


def int8_budget(x: np.ndarray, abs_scale: np.ndarray, t: TensorFacts, w: np.ndarray) -> np.ndarray:
    """Worst-case |error| of each output of T-MAC's int8-table product vs exact math, ``[N, M0]``.

    Each table lookup (one per bit-plane i and table j of 4 activations) is off by at most half its
    act group's LUT scale ``max_j(sum|x_4j..4j+3|)/127``; it is weighted by ``alpha_i * |s|`` with
    ``sum_i alpha_i = (2^b - 1)/2``.  Biases and zero-point terms use exact float sums.  Plus float32
    rounding: 1e-5 of the sum of |w*x| (K up to ~2^12 terms at 2^-24, with margin).
    """
    n, k = x.shape
    ags = t.act_group_size
    tab = np.abs(x.astype(np.float64)).reshape(n, k // 4, 4).sum(axis=2)                 # [N, K/4]
    lscale = tab.reshape(n, k // ags, ags // 4).max(axis=2) / 127.0                        # [N, K/ags]
    per_table = np.repeat(lscale, ags // 4, axis=1) / 2.0                                  # [N, K/4]
    s_table = abs_scale[:, ::4]                                                            # [M0, K/4]
    lut = ((1 << t.bits) - 1) / 2.0 * per_table @ s_table.T                                # [N, M0]
    flt = 1e-5 * (np.abs(x.astype(np.float64)) @ np.abs(w).T)
    return lut + flt
