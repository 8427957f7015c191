"""A full disk: the conversion fails with a clear error and leaves no output and no temporary file.

Three ways to run out of space, from the most real to the always-available:

1. a small tmpfs (mounted when this process may mount; skipped otherwise): too small from the start
   (refused by the free-space check before writing), and big enough at the start but filled up by
   another writer while the conversion runs (``ENOSPC`` in the middle of the tensor data);
2. ``RLIMIT_FSIZE`` on a CLI subprocess (``EFBIG`` in the middle of the output);
3. the writers' own writes, fsync and the kcfg write made to fail with ``ENOSPC`` in this process.

Each must leave no output and no temporary file, and be a TmacError naming the output and the rule
(``free disk space``), not the CLI's "unexpected OSError" line.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tmac_convert.convert import convert
from tmac_convert.errors import TmacError

FIX = Path(__file__).resolve().parents[1] / "fixtures"
SRC = FIX / "gptq_v2_asym_2bit"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "200"}
ENV.pop("TMAC_CONVERT_TRACEBACK", None)


@pytest.fixture
def tmpfs(tmp_path):
    """A function mounting a tmpfs of ``size`` bytes (skips the test where mounting is not allowed)."""
    mounted = []

    def mount(size: int) -> Path:
        d = tmp_path / f"tmpfs{len(mounted)}"
        d.mkdir()
        try:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True,
                               timeout=30)
        except (OSError, subprocess.SubprocessError) as e:
            pytest.skip(f"cannot mount a tmpfs here: {e}")
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def _fill(folder: Path) -> None:
    """Write a file until the file system is full."""
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC


def _convert_while_the_disk_fills(folder: Path, fmt: str) -> BaseException | None:
    done = []

    def progress(u):
        if not done:  # after the first tensor is written, someone else takes every free byte
            done.append(1)
            _fill(folder)

    try:
        convert(SRC, folder / f"model.{fmt}", format=fmt, verify=False, progress=progress)
    except BaseException as e:  # noqa: BLE001 - returned for the caller's assertions
        return e
    return None


def test_a_tmpfs_too_small_from_the_start_is_refused_before_writing(tmpfs):
    d = tmpfs(1 << 20)
    with pytest.raises(TmacError) as e:
        convert(SRC, d / "model.gguf", verify=False)
    assert e.value.rule == "free disk space" and "MiB free" in str(e.value)
    assert not list(d.iterdir())


@pytest.mark.parametrize("fmt", ["gguf", "npz"])
def test_a_disk_filling_up_midway_leaves_no_output_and_no_temporary_file(tmpfs, fmt):
    d = tmpfs(24 << 20)  # passes the up-front check (output + 16 MiB margin), then fills up
    err = _convert_while_the_disk_fills(d, fmt)
    assert err is not None, "the conversion cannot have succeeded on a full disk"
    assert sorted(p.name for p in d.iterdir()) == ["filler"]


@pytest.mark.parametrize("fmt", ["gguf", "npz"])
def test_a_disk_filling_up_midway_is_a_tmac_error_naming_the_output(tmpfs, fmt):
    d = tmpfs(24 << 20)
    err = _convert_while_the_disk_fills(d, fmt)
    assert isinstance(err, TmacError), repr(err)
    assert str(d / f"model.{fmt}") in str(err) and err.rule


def _cli_with_file_size_limit(tmp_path: Path, limit: int) -> subprocess.CompletedProcess:
    def limit_size():  # in the child: files may not grow beyond `limit`; EFBIG instead of SIGXFSZ
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "tmac_convert", str(SRC), "--out", str(tmp_path / "model.gguf"),
                           "--no-verify"], env=ENV, capture_output=True, text=True, timeout=120,
                          preexec_fn=limit_size)


def test_a_file_size_limit_midway_exits_2_and_leaves_nothing(tmp_path):
    r = _cli_with_file_size_limit(tmp_path, 256 << 10)  # the output is ~1 MB
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not list(tmp_path.iterdir())


def test_a_file_size_limit_midway_is_reported_as_a_clear_error(tmp_path):
    r = _cli_with_file_size_limit(tmp_path, 256 << 10)
    assert "unexpected" not in r.stderr and "model.gguf" in r.stderr, r.stderr


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _patch_failure(monkeypatch, where: str, fmt: str) -> None:
    """Make one step of writing fail with ENOSPC."""
    import gguf

    from tmac_convert.writers import atomic

    if where == "tensor data" and fmt == "gguf":
        from tmac_convert.writers.sequential import SequentialWriter

        monkeypatch.setattr(SequentialWriter, "_pwrite", _enospc)
    elif where == "tensor data":
        monkeypatch.setattr(np.lib.format, "write_array", _enospc)
    elif where == "header":
        monkeypatch.setattr(gguf.GGUFWriter, "write_header_to_file", _enospc)
    elif where == "kcfg":
        monkeypatch.setattr(Path, "write_text", _enospc)
    elif where == "fsync":
        monkeypatch.setattr(atomic.os, "fsync", _enospc)


CASES = [("tensor data", "gguf"), ("tensor data", "npz"), ("header", "gguf"), ("kcfg", "gguf"), ("fsync", "gguf"),
         ("fsync", "npz")]


@pytest.mark.parametrize("where,fmt", CASES)
def test_enospc_at_any_step_leaves_no_output_and_no_temporary_file(tmp_path, monkeypatch, where, fmt):
    out = tmp_path / "out"
    out.mkdir()
    _patch_failure(monkeypatch, where, fmt)
    with pytest.raises((OSError, TmacError)):
        convert(SRC, out / f"model.{fmt}", format=fmt, verify=False)
    assert not list(out.iterdir())


@pytest.mark.parametrize("where,fmt", CASES)
def test_enospc_at_any_step_keeps_a_previous_output_untouched(tmp_path, monkeypatch, where, fmt):
    out = tmp_path / "out"
    out.mkdir()
    convert(FIX / "gptq_3bit", out / f"model.{fmt}", format=fmt, verify=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _patch_failure(monkeypatch, where, fmt)
    with pytest.raises((OSError, TmacError)):
        convert(SRC, out / f"model.{fmt}", format=fmt, verify=False, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("where,fmt", CASES)
def test_enospc_at_any_step_is_a_tmac_error(tmp_path, monkeypatch, where, fmt):
    _patch_failure(monkeypatch, where, fmt)
    with pytest.raises(TmacError):
        convert(SRC, tmp_path / f"model.{fmt}", format=fmt, verify=False)
