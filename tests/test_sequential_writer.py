"""The output's data writer: whatever the pieces, the mode and the staging size, the file holds the header
followed by exactly the queued bytes; errors reach the caller; direct I/O falls back where it is refused."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tmac_convert.convert import convert
from tmac_convert.errors import TmacError
from tmac_convert.format.tensor import FileSpan
from tmac_convert.writers import sequential
from tmac_convert.writers.sequential import ALIGN, SequentialWriter

from .lock_trace import python_lock_entries, run_in_fresh_thread

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _direct_io_works(folder: Path) -> bool:
    if not hasattr(os, "O_DIRECT"):
        return False
    p = folder / "probe"
    p.write_bytes(b"")
    try:
        os.close(os.open(p, os.O_WRONLY | os.O_DIRECT))
        return True
    except OSError:
        return False
    finally:
        p.unlink()


def _source(tmp_path: Path, n: int = 3 * ALIGN + 77) -> tuple[Path, bytes]:
    data = np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8).tobytes()
    src = tmp_path / "source.bin"
    src.write_bytes(data)
    return src, data


piece = st.one_of(
    st.tuples(st.just("mem"), st.integers(0, 3 * ALIGN + 5), st.integers(0, 255)),
    st.tuples(st.just("span"), st.integers(0, 2 * ALIGN), st.integers(0, ALIGN + 77)),
    st.tuples(st.just("zeros"), st.integers(0, 2 * ALIGN + 1), st.just(0)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.integers(0, 2 * ALIGN + 3), pieces=st.lists(piece, max_size=8), direct=st.booleans(),
       staging=st.sampled_from([ALIGN, 2 * ALIGN, 5 * ALIGN]))
def test_the_file_holds_the_header_then_exactly_the_queued_bytes(tmp_path: Path, header: int, pieces: list,
                                                                  direct: bool, staging: int) -> None:
    src, src_bytes = _source(tmp_path)
    out = tmp_path / "out.bin"
    head = bytes((7 * i) % 251 for i in range(header))
    out.write_bytes(head)
    want = bytearray(head)
    w = SequentialWriter(out, header, direct=direct, staging_bytes=staging)
    for kind, a, b in pieces:
        if kind == "mem":
            arr = np.arange(a, dtype=np.uint8) ^ np.uint8(b)
            w.write(arr)
            want += arr.tobytes()
        elif kind == "span":
            w.copy(FileSpan(src, b, a, "|u1"), tensor="t")
            want += src_bytes[b:b + a]
        else:
            w.zeros(a)
            want += bytes(a)
        assert w.position == len(want)
    w.close()
    assert out.read_bytes() == bytes(want)


def test_a_wider_array_is_written_as_its_bytes(tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    out.write_bytes(b"")
    x = np.arange(1000, dtype=np.float32).reshape(10, 100)
    w = SequentialWriter(out, 0, staging_bytes=ALIGN)
    w.write(x)
    w.close()
    assert out.read_bytes() == x.tobytes()


def test_direct_io_is_used_where_the_file_system_allows_it(tmp_path: Path) -> None:
    if not _direct_io_works(tmp_path):
        pytest.skip(f"{tmp_path}'s file system refuses O_DIRECT")
    out = tmp_path / "out.bin"
    out.write_bytes(b"h" * 100)
    w = SequentialWriter(out, 100)
    assert w.mode == "direct"
    w.write(np.full(3 * ALIGN, 9, np.uint8))
    w.close()
    assert out.read_bytes() == b"h" * 100 + bytes([9]) * 3 * ALIGN


def test_a_file_system_that_refuses_direct_io_is_written_through_the_page_cache(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch
                                                                                 ) -> None:
    real_open = os.open

    def refuse_direct(path, flags, *a, **k):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", refuse_direct)
    src, data = _source(tmp_path)
    out = tmp_path / "out.bin"
    out.write_bytes(b"head")
    w = SequentialWriter(out, 4)
    assert w.mode == "buffered"
    w.write(np.full(2 << 20, 3, np.uint8))  # large enough to be written from its own memory
    w.copy(FileSpan(src, 5, 1000, "|u1"))
    w.close()
    assert out.read_bytes() == b"head" + bytes([3]) * (2 << 20) + data[5:1005]


def test_a_direct_write_refused_after_open_goes_on_through_the_page_cache(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    if not _direct_io_works(tmp_path):
        pytest.skip(f"{tmp_path}'s file system refuses O_DIRECT")
    import fcntl
    real_pwrite = os.pwrite
    refused = []

    def pwrite(fd, data, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    out = tmp_path / "out.bin"
    out.write_bytes(b"")
    w = SequentialWriter(out, 0, staging_bytes=ALIGN)
    payload = np.random.default_rng(2).integers(0, 256, 5 * ALIGN + 3, dtype=np.uint8)
    w.write(payload)
    w.close()
    assert refused and min(refused) == 0  # refused from the first write on (several may be in flight)
    assert out.read_bytes() == payload.tobytes()


@pytest.mark.parametrize("direct", [True, False])
def test_a_span_past_the_end_of_its_source_is_raised_by_close_naming_the_tensor(tmp_path: Path,
                                                                                direct: bool) -> None:
    src, _ = _source(tmp_path, 100)
    out = tmp_path / "out.bin"
    out.write_bytes(b"")
    w = SequentialWriter(out, 0, direct=direct)
    w.copy(FileSpan(src, 50, 60, "|u1"), tensor="token_embd.weight")
    with pytest.raises(TmacError, match="ended 10 bytes early") as e:
        w.close()
    assert e.value.tensor == "token_embd.weight"


def test_a_write_error_is_raised_in_the_callers_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    out = tmp_path / "out.bin"
    out.write_bytes(b"")
    w = SequentialWriter(out, 0, staging_bytes=ALIGN, pending_bytes=ALIGN)
    with pytest.raises(OSError) as e:
        for _ in range(100):  # the first full staging buffer fails; a later call or close() reports it
            w.write(np.zeros(ALIGN, np.uint8))
        w.close()
    assert e.value.errno == errno.ENOSPC
    w.abort()  # what the converter does after an error: the writer's threads end


def test_abort_drops_what_is_queued_and_raises_nothing(tmp_path: Path) -> None:
    src, _ = _source(tmp_path, 100)
    out = tmp_path / "out.bin"
    out.write_bytes(b"")
    w = SequentialWriter(out, 0)
    w.copy(FileSpan(src, 0, 1000, "|u1"))  # would fail at close
    w.write(np.ones(10, np.uint8))
    w.abort()
    w.abort()


@pytest.mark.parametrize("finish", ["close", "abort"])
def test_the_callers_thread_takes_no_python_lock_even_when_the_disk_is_behind(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch,
                                                                             finish: str) -> None:
    # Ctrl-C raises in the caller's thread at any bytecode; a Python lock it held at that moment would stay held
    # and hang the cleanup (tests/lock_trace.py).  A slow disk makes write() wait for the writer thread.
    src, src_bytes = _source(tmp_path)
    real_pwrite = os.pwrite

    def slow_pwrite(fd, data, offset):
        time.sleep(0.002)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", slow_pwrite)
    out = tmp_path / "out.bin"
    out.write_bytes(b"head")
    pieces = [np.full(ALIGN, i, np.uint8) for i in range(12)]

    def run() -> list[str]:
        with python_lock_entries() as entered:
            w = SequentialWriter(out, 4, direct=False, staging_bytes=ALIGN, pending_bytes=ALIGN)
            for a in pieces:
                w.write(a)
            w.copy(FileSpan(src, 0, len(src_bytes), "|u1"))
            w.zeros(5)
            w.close() if finish == "close" else w.abort()
        return entered

    assert run_in_fresh_thread(run) == []
    if finish == "close":
        assert out.read_bytes() == b"head" + b"".join(a.tobytes() for a in pieces) + src_bytes + bytes(5)


@pytest.mark.parametrize("fixture, options", [("gptq_v2_asym_2bit", {"bits": 2, "group_size": 64, "zero_point": True}),
                                              ("llama_f16", {"bits": 4, "group_size": 128})])
def test_a_conversion_writes_the_same_bytes_with_and_without_direct_io(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch, fixture: str,
                                                                       options: dict) -> None:
    convert(FIXTURES / fixture, tmp_path / "direct.gguf", **options)
    monkeypatch.setattr(sequential, "USE_DIRECT_IO", False)
    convert(FIXTURES / fixture, tmp_path / "buffered.gguf", **options)
    assert (tmp_path / "direct.gguf").read_bytes() == (tmp_path / "buffered.gguf").read_bytes()


@pytest.mark.parametrize("value, direct", [("0", False), ("off", False), ("1", True), ("", True)])
def test_the_environment_can_turn_direct_io_off(value: str, direct: bool) -> None:
    import subprocess
    import sys

    code = "from tmac_convert.writers import sequential; print(sequential.USE_DIRECT_IO)"
    env = {**os.environ, "TMAC_CONVERT_DIRECT_IO": value}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(direct)
