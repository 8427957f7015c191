"""An installed (non-editable) tmac-convert carries the LUT kernel sources it emits into kits: the very
files setup.py compiles into tmac_convert._lut_native, listed once in tmac_convert/kernels/sources.py."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from tmac_convert.kernels.sources import LUT_HEADER, lut_kernel_files, lut_kernel_sources

from .kit_support import ROOT


def test_setup_compiles_exactly_the_listed_lut_sources():
    text = (ROOT / "setup.py").read_text()
    # setup.py takes its list from the shared module instead of spelling file names
    assert "lut_kernel_sources(" in text and "lut_scalar.c" not in text and "lut_avx2.c" not in text
    assert lut_kernel_sources(ROOT / "kernels") == ["lut_scalar.c", "lut_avx2.c", "lut_avx512.c", "lut_neon.c"]
    assert lut_kernel_files(ROOT / "kernels")[0] == LUT_HEADER


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    d = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q",
                        "-w", str(d)], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {r.stderr[-500:]}")
    (whl,) = d.glob("tmac_convert-*.whl")
    return whl


def test_the_wheel_holds_the_kernel_sources_and_kit_templates(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in lut_kernel_files(ROOT / "kernels"):
        assert f"tmac_convert/kit/kernel_src/{f}" in names
        assert zipfile.ZipFile(wheel).read(f"tmac_convert/kit/kernel_src/{f}") == (ROOT / "kernels" / f).read_bytes()
    for t in ("kernels.cc.in", "kernels.h", "tmac_gemm_wrapper.h", "INIReader.h", "logging.h"):
        assert f"tmac_convert/kit/templates/{t}" in names


def test_an_installed_package_writes_a_kit_from_its_packaged_sources(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    script = f"""
import tmac_convert, sys
from pathlib import Path
assert Path(tmac_convert.__file__).is_relative_to({str(target)!r}), tmac_convert.__file__
from tmac_convert.convert import convert
from tmac_convert.kit import write_kit
from tmac_convert.kit.sources import kernel_source_dir
assert kernel_source_dir().is_relative_to({str(target)!r}), kernel_source_dir()
convert({str(ROOT / 'fixtures' / 'gptq_3bit')!r}, {str(tmp_path / 'm.gguf')!r}, verify=False)
r = write_kit({str(tmp_path / 'm.gguf')!r}, {str(tmp_path / 'kit')!r})
print(r.isa, len(r.files))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(target)}, timeout=300)
    assert r.returncode == 0, r.stderr
    for f in lut_kernel_files(ROOT / "kernels"):
        assert (tmp_path / "kit" / "lib" / "lut" / f).read_bytes() == (ROOT / "kernels" / f).read_bytes()
