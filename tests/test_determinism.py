"""Determinism: the same source and options give byte-identical output -- across runs, thread counts
(1, all cores, more than the cores), hash seeds and separate processes -- and the same with the clock
moved on (the npz container stores member dates).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tmac_convert import pack
from tmac_convert.convert import convert
from tmac_convert.parallel import cpu_count

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}

#: (source, format, options): every reader and both containers.
CASES = [
    ("gptq_v2_asym_2bit", "gguf", {}),
    ("gptq_v2_asym_2bit", "npz", {}),
    ("gptq_act_order", "gguf", {"act_order": "requantize"}),
    ("llama_f16", "gguf", {"bits": 3, "group_size": 64}),
    ("bitnet_float", "gguf", {}),
    ("bitnet_packed", "npz", {}),
    ("gguf_q4_1/model.gguf", "gguf", {}),
    ("gguf_tq1_0/model.gguf", "gguf", {}),
]


def _convert(tmp: Path, tag: str, src: str, fmt: str, opts: dict, threads: int) -> dict[str, bytes]:
    d = tmp / tag
    d.mkdir()
    convert(FIX / src, d / f"model.{fmt}", format=fmt, threads=threads, verify=False, **opts)
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _digest(files: dict[str, bytes]) -> dict[str, str]:
    return {n: hashlib.sha256(b).hexdigest()[:16] for n, b in files.items()}


class _Clock:
    """``time`` as zipfile sees it: frozen (``offset`` None) or shifted by ``offset`` seconds."""

    def __init__(self, offset: float | None) -> None:
        self.offset, self.t0 = offset, time.time()

    def __getattr__(self, name):
        return getattr(time, name)

    def time(self) -> float:
        return self.t0 if self.offset is None else time.time() + self.offset


@pytest.mark.parametrize("src,fmt,opts", CASES, ids=[f"{c[0].split('/')[0]}-{c[1]}" for c in CASES])
def test_output_is_byte_identical_for_every_thread_count_and_run(tmp_path, monkeypatch, src, fmt, opts):
    # the clock is frozen here so only threads and runs vary (the clock itself: see the test below)
    monkeypatch.setattr(zipfile, "time", _Clock(None))
    first = _convert(tmp_path, "run0", src, fmt, opts, 1)
    assert any(n.endswith(fmt) for n in first)
    # all cores, more threads than cores, and one thread again (a second run)
    for i, t in enumerate(sorted({cpu_count(), cpu_count() + 1}) + [1]):
        again = _convert(tmp_path, f"run{i + 1}-t{t}", src, fmt, opts, t)
        assert _digest(again) == _digest(first), f"threads={t}"


def test_separate_processes_with_other_hash_seeds_write_the_same_bytes(tmp_path):
    """Two CLI processes (hash seeds 0 and 4242, 1 and all threads) and this process agree byte for byte."""
    here = _convert(tmp_path, "here", "gptq_v2_asym_2bit", "gguf", {}, cpu_count())
    for seed, threads in (("0", "1"), ("4242", str(cpu_count()))):
        d = tmp_path / f"proc{seed}"
        d.mkdir()
        r = subprocess.run([sys.executable, "-m", "tmac_convert", str(FIX / "gptq_v2_asym_2bit"), "--out",
                            str(d / "model.gguf"), "--threads", threads, "--no-verify", "--json"],
                           env={**ENV, "PYTHONHASHSEED": seed}, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert _digest({p.name: p.read_bytes() for p in sorted(d.iterdir())}) == _digest(here), seed


def test_verification_does_not_change_the_bytes(tmp_path):
    a = _convert(tmp_path, "noverify", "gptq_3bit", "gguf", {}, 2)
    d = tmp_path / "verify"
    d.mkdir()
    convert(FIX / "gptq_3bit", d / "model.gguf", threads=2, verify=True)
    assert _digest({p.name: p.read_bytes() for p in sorted(d.iterdir())}) == _digest(a)


@pytest.mark.parametrize("bits,m0,k", [(2, 4096, 1024), (3, 3072, 1024), (4, 2048, 1024)])
def test_pack_splits_large_tensors_over_threads_without_changing_a_byte(bits, m0, k):
    """pack() runs tiles on several threads for tensors of 1 MiB and more: the same blob for any count."""
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, size=(m0, k), dtype=np.uint8)
    scales = rng.standard_normal((m0, k // 64)).astype(np.float32)
    zeros = rng.standard_normal((m0, k // 64)).astype(np.float32)
    bm = 256 if bits != 3 else 384
    blobs = [pack(codes, scales, zeros, bits=bits, bm=bm, kfactor=16, threads=t) for t in (1, 2, 3, 8)]
    assert blobs[0].nbytes >= 1 << 20
    for b in blobs[1:]:
        assert np.array_equal(b, blobs[0])


def test_npz_output_does_not_depend_on_the_clock_or_file_dates(tmp_path, monkeypatch):
    first = _convert(tmp_path, "now", "gptq_v2_asym_2bit", "npz", {}, 2)
    monkeypatch.setattr(zipfile, "time", _Clock(86400.0))
    later = _convert(tmp_path, "tomorrow", "gptq_v2_asym_2bit", "npz", {}, 2)
    assert _digest(later) == _digest(first)
