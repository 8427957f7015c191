"""The library surface the README shows, as it shows it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

import tmac_convert as tc


def test_every_public_name_resolves_and_read_is_public() -> None:
    assert "read" in tc.__all__ and "verify_file" in tc.__all__ and "kernels" in tc.__all__
    for name in tc.__all__:
        assert getattr(tc, name) is not None, name


def test_readme_kernel_call_after_a_plain_import() -> None:
    """``import tmac_convert as tc; tc.kernels.gemm(...)`` works without importing the subpackage first,
    and the float-LUT product equals float64 math on the dequantised weights."""
    code = ("import numpy as np, tmac_convert as tc\n"
            "rng = np.random.default_rng(0)\n"
            "m, k = 64, 256\n"
            "codes = rng.integers(0, 4, (m, k), dtype=np.uint8)\n"
            "scales = rng.uniform(0.5, 1.5, (m, k // 128)).astype(np.float32)\n"
            "blob = tc.pack(codes, scales, None, bits=2, bm=128, kfactor=16)\n"
            "x = rng.standard_normal(k).astype(np.float32)\n"
            "y = tc.kernels.gemm(blob, x, m=m, k=k, bits=2, group_size=128, zero_point=False, bm=128, kfactor=16,\n"
            "                    lut='float')\n"
            "w = tc.QuantTensor('w', codes, scales, None, bits=2, group_size=128).dequantize(np.float64)\n"
            "ref = w @ x.astype(np.float64)\n"
            "err = float(np.abs(y - ref).max() / np.abs(ref).max())\n"
            "assert err < 1e-5, err\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_functions_keep_their_names_after_their_modules_are_imported() -> None:
    """``tc.convert`` and ``tc.verify_file`` stay the functions when ``tmac_convert.convert`` is imported."""
    import tmac_convert.convert  # noqa: F401
    import tmac_convert.verify_file  # noqa: F401

    assert callable(tc.convert) and callable(tc.verify_file)
    assert tc.convert.__name__ == "convert" and tc.verify_file.__name__ == "verify_file"


def test_the_package_is_typed() -> None:
    assert (Path(tc.__file__).parent / "py.typed").is_file()


def test_verify_file_is_the_verify_command(tmp_path: Path) -> None:
    """The library's verify entry point re-checks a converted file, as ``tmac-convert verify`` does."""
    fixture = Path(__file__).resolve().parent.parent / "fixtures" / "gptq_v2_asym_2bit"
    out = tmp_path / "o.gguf"
    tc.convert(fixture, out, bits=2, group_size=64, zero_point=True, threads=1)
    check = tc.verify_file(out, source=fixture)
    assert check.ok
