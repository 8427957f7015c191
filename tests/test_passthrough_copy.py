"""Tensors that pass through unchanged are copied file to file, and the output is the same bytes as when
they are encoded through Python buffers."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from tmac_convert.convert import convert
from tmac_convert.format.encodings.base import _FloatEncoding
from tmac_convert.format.tensor import FileSpan
from tmac_convert.writers import copy as copy_mod
from tmac_convert.writers import sequential

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.mark.parametrize("fallback", [False, True])
def test_copy_span_copies_exactly_the_span(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fallback: bool) -> None:
    src = tmp_path / "src.bin"
    payload = np.random.default_rng(0).integers(0, 256, 3 * copy_mod.CHUNK + 12345, dtype=np.uint8).tobytes()
    src.write_bytes(b"h" * 100 + payload + b"t" * 7)
    if fallback:
        def unsupported(*a, **k):
            raise OSError(errno.EXDEV, "cross-device")
        monkeypatch.setattr(os, "copy_file_range", unsupported)
    dst = tmp_path / "dst.bin"
    with open(dst, "wb") as f:
        f.write(b"x" * 64)
        f.flush()
        how = copy_mod.copy_span(FileSpan(src, 100, len(payload), "|u1"), f.fileno(), 64)
    assert how == ("read/write" if fallback else "copy_file_range")
    assert dst.read_bytes() == b"x" * 64 + payload


def test_a_span_past_the_end_of_the_source_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "short.bin"
    src.write_bytes(b"abc")
    with open(tmp_path / "d.bin", "wb") as f, pytest.raises(Exception, match="ended 7 bytes early"):
        copy_mod.copy_span(FileSpan(src, 0, 10, "|u1"), f.fileno(), 0)


@pytest.mark.parametrize("fixture, options", [("gptq_v2_asym_2bit", {"bits": 2, "group_size": 64, "zero_point": True}),
                                              ("llama_f16", {"bits": 4, "group_size": 128}),
                                              ("gguf_q4_0", {}), ("phi3_gptq_2bit", {})])
def test_copied_output_equals_the_encoded_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixture: str,
                                                 options: dict) -> None:
    src = FIXTURES / fixture
    if src.is_dir() and not (src / "config.json").is_file():
        src = next(src.glob("*.gguf"))
    copied = []
    real = sequential.SequentialWriter.copy
    monkeypatch.setattr(sequential.SequentialWriter, "copy",
                        lambda self, span, **k: copied.append(span) or real(self, span, **k))
    convert(src, tmp_path / "copy.gguf", threads=1, **options)
    assert copied, "no tensor was copied file to file"
    assert all(s.dtype in ("<f2", "<f4") for s in copied)
    monkeypatch.setattr(_FloatEncoding, "passthrough", lambda self, t, p: None)
    copied.clear()
    convert(src, tmp_path / "encoded.gguf", threads=1, **options)
    assert not copied
    assert (tmp_path / "copy.gguf").read_bytes() == (tmp_path / "encoded.gguf").read_bytes()
