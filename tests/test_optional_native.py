"""Installing without a C compiler: setup.py skips the extensions it cannot compile (saying so), the
package then runs on its numpy code, says so in ``--version`` and the conversion summary, and
writes the same bytes as with the native extensions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "400"}
ENV.pop("TMAC_CONVERT_NO_NATIVE", None)

#: run in a child: the compiled modules cannot be imported, as after an install without a compiler
_NOT_BUILT = """
import importlib.abc, sys
class NotBuilt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in ("tmac_convert._layout_native", "tmac_convert._gptq_native", "tmac_convert._lut_native",
                    "tmac_convert._pool_native"):
            raise ImportError(f"No module named {name!r}")
sys.meta_path.insert(0, NotBuilt())
from tmac_convert.cli import main
main()
"""


def cli(*args: str, not_built: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", _NOT_BUILT] if not_built else [sys.executable, "-m", "tmac_convert"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=ENV, timeout=300)


def test_without_the_extensions_version_says_numpy_runs() -> None:
    r = cli("--version", not_built=True)
    assert r.returncode == 0 and r.stdout.startswith("tmac-convert ")
    assert "kernels: numpy reference" in r.stdout and "not built" in r.stdout
    assert "layout packing, GPTQ unpacking, LUT kernels" in r.stdout


def test_without_the_extensions_conversion_verifies_and_gives_the_same_bytes(tmp_path: Path) -> None:
    src = FIXTURES / "gptq_3bit"
    slow, fast = tmp_path / "numpy.gguf", tmp_path / "native.gguf"
    r = cli(str(src), "-o", str(slow), not_built=True)
    assert r.returncode == 0 and "verification: layout exact on" in r.stdout, r.stderr
    assert "kernels: numpy reference" in r.stdout  # the summary says what ran
    r = cli(str(src), "-o", str(fast))
    assert r.returncode == 0, r.stderr
    assert slow.read_bytes() == fast.read_bytes()


@pytest.fixture
def build_tree(tmp_path: Path) -> Path:
    """What setup.py needs to build the extensions, copied away from the checkout."""
    for f in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, tmp_path / f)
    shutil.copytree(ROOT / "kernels", tmp_path / "kernels")
    (tmp_path / "tmac_convert" / "kernels").mkdir(parents=True)  # the one list of LUT kernel sources
    shutil.copy(ROOT / "tmac_convert" / "kernels" / "sources.py", tmp_path / "tmac_convert" / "kernels")
    return tmp_path


def _build_ext(tree: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", "out", "--build-temp", "tmp"],
                          cwd=tree, capture_output=True, text=True, timeout=300, env={**os.environ, **env})


def test_setup_without_a_c_compiler_warns_and_succeeds(build_tree: Path) -> None:
    r = _build_ext(build_tree, CC="/bin/false")
    assert r.returncode == 0, r.stderr
    for ext in ("_pool_native", "_layout_native", "_gptq_native", "_lut_native"):
        assert f"could not build tmac_convert.{ext}" in r.stderr
    assert "numpy reference code runs instead" in r.stderr
    assert not list(build_tree.rglob("*.so"))


def test_setup_can_be_told_to_require_the_extensions(build_tree: Path) -> None:
    r = _build_ext(build_tree, CC="/bin/false", TMAC_CONVERT_REQUIRE_NATIVE="1")
    assert r.returncode != 0 and "/bin/false" in r.stderr and "could not build" not in r.stderr
