"""The library API: checks before writing, kcfg agreement, safety of the output, the pipeline."""

from __future__ import annotations

import os
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from tmac_convert.convert import ProgressUpdate, check_requested, convert, default_out, kcfg_path_for
from tmac_convert.errors import TmacError
from tmac_convert.format import parse
from tmac_convert.layouts import Kcfg, KernelConfig, TileConfig
from tmac_convert.readers.base import TensorInfo
from tmac_convert.writers import atomic

from . import _tmac_synth as S


def _src(tmp_path: Path, **spec) -> Path:
    return S.write_synth(tmp_path / "src", **spec)


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def _kcfg_for(src: Path, **override) -> Kcfg:
    """A kcfg with one section per quantised shape of the synthetic model (tiles default or overridden)."""
    import json

    s = json.loads((src / S.SPEC).read_text())
    kc = Kcfg()
    for name, shape, q in S.layout(s):
        if q:
            m0, k = shape
            tiles = override.get("tiles", TileConfig(64 if (m0 * s["bits"]) % 64 == 0 else 32, 8))
            kc.add(KernelConfig.for_tensor(m0, k, s["bits"], group_size=override.get("group_size", s["group_size"]),
                                           zero_point=override.get("zero_point", s["zero_point"]), per_tensor=False,
                                           tiles=tiles, act_group_size=override.get("ags", 32)))
    return kc


# -- options against the source --------------------------------------------------------------------

@pytest.mark.parametrize("kw,match", [
    ({"bits": 4}, r"--bits 4 was given but the source is 2-bit"),
    ({"group_size": 64}, r"--group 64 was given but the source has group size 32"),
    ({"zero_point": False}, r"--no-zero-point was given but the source has zero points"),
])
def test_requested_quantisation_must_match_a_quantised_source(tmp_path, kw, match):
    src = _src(tmp_path)
    with pytest.raises(TmacError, match=match):
        convert(str(src), tmp_path / "o.gguf", verify=False, **kw)
    assert not (tmp_path / "o.gguf").exists()


def test_matching_request_is_accepted(tmp_path):
    src = _src(tmp_path)
    r = convert(str(src), tmp_path / "o.gguf", verify=False, bits=2, group_size=32, zero_point=True, max_error=1.0)
    assert r.tensors and (tmp_path / "o.gguf").exists()


def test_check_requested_per_tensor_source():
    info = TensorInfo("w", (64, 64), bits=2, group_size=64, per_tensor_scale=True)
    with pytest.raises(TmacError, match="one scale per tensor"):
        check_requested([info], bits=2, group_size=128, zero_point=None, file="f")
    check_requested([info], bits=2, group_size=None, zero_point=False, file="f")


# -- kcfg / preset checked before writing ------------------------------------------------------------

def test_given_kcfg_tiles_are_used_and_embedded(tmp_path):
    src = _src(tmp_path)
    kc = _kcfg_for(src)
    out = tmp_path / "o.gguf"
    r = convert(str(src), out, kcfg=kc, verify=False)
    gf = parse(out)
    assert set(gf.get("tmac.tensor_bm").tolist()) <= {32, 64}
    embedded = Kcfg.parse(gf.get("tmac.kcfg"))
    assert sorted(e.section for e in embedded) == sorted(e.section for e in kc)
    assert all(kc.lookup(e.m0, e.k, e.bits) == e for e in embedded)
    assert r.act_group_size == 32


def test_kcfg_mismatch_lists_every_missing_and_wrong_shape(tmp_path):
    src = _src(tmp_path)
    kc = _kcfg_for(src)
    # drop one shape, give another a wrong group size, a third no zero points
    sections = list(kc)
    by_shape = {(e.m, e.k): e for e in sections}
    dropped = by_shape[(128, 64)]
    wrong_gs = by_shape[(256, 64)]
    wrong_zp = by_shape[(128, 128)]
    kc = Kcfg([e for e in sections if e not in (dropped, wrong_gs, wrong_zp)], source="my-kcfg.ini")
    kc.add(KernelConfig(**{**wrong_gs.__dict__, "group_size": 64, "scales_size": wrong_gs.scales_size // 2}))
    kc.add(KernelConfig(**{**wrong_zp.__dict__, "scales_size": wrong_zp.scales_size // 2}))
    out = tmp_path / "o.gguf"
    with pytest.raises(TmacError) as ei:
        convert(str(src), out, kcfg=kc, verify=False)
    msg = str(ei.value)
    assert "my-kcfg.ini does not fit this model (3 problems)" in msg
    assert "m128 k64 b2" in msg and "missing section" in msg
    assert "group_size 64" in msg and "the tensor has 32" in msg
    assert "scales_size" in msg and "with zero points" in msg
    assert not out.exists() and _files(tmp_path) == {"src"}


def test_kcfg_with_other_bits_names_the_trap(tmp_path):
    src = _src(tmp_path, bits=2, hidden=128, ffn=256)
    import json

    s = json.loads((src / S.SPEC).read_text())
    kc = Kcfg(source="k.ini")
    for name, (m0, k), q in [x for x in S.layout(s) if x[2]]:
        # same m = M0*bits and k, but 4-bit: T-MAC's own look-up would take it silently
        kc.add(KernelConfig.for_tensor(m0 // 2, k, 4, group_size=32, zero_point=True, per_tensor=False,
                                       tiles=TileConfig(128, 8), act_group_size=32))
    with pytest.raises(TmacError, match="same m and k but other bits"):
        convert(str(src), tmp_path / "o.gguf", kcfg=kc, verify=False)


def test_preset_for_another_model_lists_its_missing_shapes(tmp_path):
    src = _src(tmp_path)
    with pytest.raises(TmacError, match=r"preset:aarch64-llama-3-8b-2bit does not fit this model \(4 problems\)"):
        convert(str(src), tmp_path / "o.gguf", preset="aarch64-llama-3-8b-2bit", verify=False)


def test_kcfg_and_preset_together_is_usage_error(tmp_path):
    with pytest.raises(TmacError, match="not both"):
        convert(str(_src(tmp_path)), tmp_path / "o.gguf", kcfg=Kcfg(), preset="x", verify=False)


def test_retile_to_another_kcfg_through_our_own_file(tmp_path):
    """read(out) gives back the intermediate form; converting it with other tiles re-tiles it."""
    from tmac_convert import pack
    from tmac_convert.readers import read

    src = _src(tmp_path)
    first = tmp_path / "a.gguf"
    convert(str(src), first, verify=False)
    kc = _kcfg_for(src, tiles=TileConfig(32, 4), ags=-1)  # kfactor 4 admits only whole-K activation groups
    second = tmp_path / "b.npz"
    convert(str(first), second, format="npz", kcfg=kc, verify=False)
    back = {t.name: t for t in read(second).tensors()}
    for t in S.expected_tensors(src):
        b = back[t.name]
        if hasattr(t, "codes"):
            assert np.array_equal(b.codes, t.codes)
            np.testing.assert_array_equal(b.scales, t.scales.astype(np.float32))
            np.testing.assert_array_equal(b.zeros, t.zeros.astype(np.float32))
    # and the re-tiled bytes are exactly pack() with the new tiles
    gf_bytes = tmp_path / "c.gguf"
    convert(str(second), gf_bytes, kcfg=kc, verify=False)
    gf = parse(gf_bytes)
    raw = gf_bytes.read_bytes()
    for t in S.expected_tensors(src):
        if hasattr(t, "codes"):
            rec = gf.tensor(t.name)
            want = pack(t.codes, t.scales, t.zeros, bits=2, bm=32, kfactor=4)
            assert raw[rec.offset:rec.offset + want.size] == want.tobytes()


# -- safe output -------------------------------------------------------------------------------

def test_existing_output_is_refused_and_untouched_without_force(tmp_path):
    src = _src(tmp_path)
    out = tmp_path / "o.gguf"
    out.write_bytes(b"precious")
    with pytest.raises(TmacError, match="exists; pass --force"):
        convert(str(src), out, verify=False)
    assert out.read_bytes() == b"precious"
    assert not kcfg_path_for(out).exists()
    convert(str(src), out, verify=False, force=True)
    assert out.read_bytes()[:4] == b"GGUF"


def test_existing_kcfg_beside_is_refused_too(tmp_path):
    src = _src(tmp_path)
    out = tmp_path / "o.gguf"
    kcfg_path_for(out).write_text("mine")
    with pytest.raises(TmacError, match="o.kcfg.ini: exists"):
        convert(str(src), out, verify=False)
    assert not out.exists() and kcfg_path_for(out).read_text() == "mine"


@pytest.mark.parametrize("kind", ["tmac", "runtime"])
def test_failure_midway_leaves_nothing(tmp_path, kind):
    src = _src(tmp_path, fail_at=5, fail_kind=kind)
    out = tmp_path / "out" / "o.gguf"
    out.parent.mkdir()
    with pytest.raises((TmacError, RuntimeError)):
        convert(str(src), out, verify=False, threads=2)
    assert _files(out.parent) == set()


def test_keyboard_interrupt_leaves_nothing(tmp_path):
    src = _src(tmp_path, layers=3)
    out = tmp_path / "out" / "o.gguf"
    out.parent.mkdir()

    def interrupt(u: ProgressUpdate) -> None:
        if u.done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(str(src), out, verify=False, progress=interrupt)
    assert _files(out.parent) == set()


def test_free_space_is_checked_before_writing(tmp_path, monkeypatch):
    src = _src(tmp_path)
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: Usage(10**9, 10**9, 1000))
    out = tmp_path / "out" / "o.gguf"
    out.parent.mkdir()
    with pytest.raises(TmacError, match="free disk space|MiB free"):
        convert(str(src), out, verify=False)
    assert _files(out.parent) == set()


def test_missing_output_folder_is_an_error(tmp_path):
    with pytest.raises(TmacError, match="output folder does not exist"):
        convert(str(_src(tmp_path)), tmp_path / "nope" / "o.gguf", verify=False)


def test_default_output_names():
    assert default_out("ChenMnZ/Llama-3-8b-instruct-EfficientQAT-w2g128-GPTQ", ".gguf") == \
        Path("Llama-3-8b-instruct-EfficientQAT-w2g128-GPTQ.tmac.gguf")
    assert default_out("/x/model.gguf", ".npz") == Path("model.tmac.npz")
    assert kcfg_path_for(Path("d/m.tmac.gguf")) == Path("d/m.tmac.kcfg.ini")


def test_default_output_goes_to_the_current_folder(tmp_path, monkeypatch):
    src = _src(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    r = convert(str(src), verify=False)
    assert r.out == "src.tmac.gguf" and _files(work) == {"src.tmac.gguf", "src.tmac.kcfg.ini"}


# -- pipeline ----------------------------------------------------------------------------------

def test_progress_reports_every_tensor_and_all_bytes(tmp_path):
    src = _src(tmp_path)
    seen: list[ProgressUpdate] = []
    r = convert(str(src), tmp_path / "o.gguf", verify=False, progress=seen.append, threads=2)
    assert [u.done for u in seen] == list(range(1, len(r.tensors) + 1))
    assert seen[-1].bytes_done == seen[-1].bytes_total == r.out_nbytes
    assert [u.name for u in seen] == [t.name for t in r.tensors]


def test_report_summary_figures(tmp_path):
    src = _src(tmp_path)
    r = convert(str(src), tmp_path / "o.gguf", verify=False)
    d = r.to_dict()
    assert d["out_nbytes"] == sum(t["out_nbytes"] for t in d["tensors"])
    assert os.path.getsize(tmp_path / "o.gguf") >= parse(tmp_path / "o.gguf").data_offset + d["out_nbytes"]
    by = d["by_type"]
    assert by["I2"]["tensors"] == 14 and by["F32"]["tensors"] == 5 and by["F16"]["tensors"] == 2
    assert d["compression"] == pytest.approx(r.f16_nbytes / r.out_nbytes, rel=1e-3)
    assert d["kcfg_from"] == "default tiles" and d["verified"] is False


def test_pipeline_bounds_tensors_in_flight(tmp_path, monkeypatch):
    """At most threads+2 tensors are between the reader and the writer at any time."""
    src = _src(tmp_path, layers=4)
    live = {"n": 0, "max": 0}
    orig_iter = S.SynthReader.iter_tensors

    def tracked(self, model):
        for t in orig_iter(self, model):
            live["n"] += 1
            live["max"] = max(live["max"], live["n"])
            yield t

    monkeypatch.setattr(S.SynthReader, "iter_tensors", tracked)

    def written(u):
        live["n"] -= 1

    convert(str(src), tmp_path / "o.gguf", verify=False, threads=2, progress=written)
    assert live["max"] <= 4  # threads + 2
