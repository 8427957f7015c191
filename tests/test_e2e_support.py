"""The end-to-end helpers survive llama.cpp dying: a native crash in its child process is a failed
assertion that names the signal and llama.cpp's last words, and the test run goes on.

These run without llama-cpp-python: the child is crashed (or made to refuse) before it imports it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e_support import LlamaCppCrashed, LlamaCppRefused, llama_run


@pytest.mark.parametrize("sig", ["SIGSEGV", "SIGABRT", "SIGILL"])
def test_a_native_crash_in_llamacpp_is_a_failed_assertion_naming_the_signal(sig: str, tmp_path: Path) -> None:
    crash = ("import os, signal, sys\nsys.stderr.write('ggml: about to crash\\n'); sys.stderr.flush()\n"
             f"os.kill(os.getpid(), signal.{sig})")
    with pytest.raises(LlamaCppCrashed, match=f"signal {sig}") as e:
        llama_run(tmp_path / "model.gguf", [1, 2, 3], prelude=crash)
    assert isinstance(e.value, AssertionError)  # pytest reports it as a test failure
    assert "about to crash" in str(e.value) and "model.gguf" in str(e.value)


def test_a_hang_in_llamacpp_is_a_failed_assertion(tmp_path: Path) -> None:
    with pytest.raises(LlamaCppCrashed, match="did not finish within 2 s"):
        llama_run(tmp_path / "model.gguf", [1], prelude="import time; time.sleep(60)", timeout=2)


def test_a_refused_file_is_not_a_crash(tmp_path: Path) -> None:
    """What llama.cpp refuses politely (``Llama(...)`` raises) is reported as such, for negative controls."""
    refuse = ("import sys, types\nm = types.ModuleType('llama_cpp')\n"
              "def Llama(**kw): raise ValueError('Failed to load model from file: ' + kw['model_path'])\n"
              "m.Llama = Llama\nsys.modules['llama_cpp'] = m")
    with pytest.raises(LlamaCppRefused, match="Failed to load model"):
        llama_run(tmp_path / "model.gguf", [1], prelude=refuse)
