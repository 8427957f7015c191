"""What `tmac-convert kit` writes: the T-MAC install prefix the fork's find_package(TMAC) reads, made from
tmac-convert's own kernel sources, with a kcfg equal to the one the converter recorded in the GGUF."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from tmac_convert.cli import main
from tmac_convert.errors import TmacError
from tmac_convert.gguf_tmac import parse
from tmac_convert.kernels.sources import lut_kernel_files
from tmac_convert.kit import KitReport, write_kit
from tmac_convert.kit.sources import kernel_source_dir
from tmac_convert.layouts import Kcfg

from .kit_support import FAMILIES, ROOT, convert_fixture

KIT_FILES = {
    "lib/cmake/t-mac/TMACConfig.cmake", "lib/kcfg.ini", "lib/kernels.cc", "include/t-mac/kernels.h",
    "include/t-mac/tmac_gemm_wrapper.h", "include/t-mac/INIReader.h", "include/dmlc/logging.h", "README",
    "tmac-kit.json",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("kit-files")
    return {fam: convert_fixture(fam, d) for fam in FAMILIES}


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_the_kit_is_a_tmac_install_prefix(models, tmp_path):
    r = write_kit(models["gptq-2bit-zp"], tmp_path / "kit", isa="avx2")
    assert isinstance(r, KitReport) and r.out_dir == (tmp_path / "kit").absolute() and r.isa == "avx2"
    assert r.kernel_paths == ["avx2", "scalar"]
    lut = {f"lib/lut/{f}" for f in lut_kernel_files(kernel_source_dir())}
    assert _files(tmp_path / "kit") == KIT_FILES | lut == set(r.files)
    assert len(r.shapes) == 4 and all(re.match(r"\[\d+, \d+\] 2-bit: bm 256, kfactor 16, group 64, zero points", s)
                                      for s in r.shapes)


def test_the_lut_sources_are_the_packages_own_bytes(models, tmp_path):
    write_kit(models["gptq-4bit-sym"], tmp_path / "kit")
    src = kernel_source_dir()
    for f in lut_kernel_files(src):
        assert (tmp_path / "kit" / "lib" / "lut" / f).read_bytes() == (src / f).read_bytes()
    man = json.loads((tmp_path / "kit" / "tmac-kit.json").read_text())
    assert set(man["kernel_sources"]) == set(lut_kernel_files(src))


def test_tmac_config_gives_what_the_fork_reads(models, tmp_path):
    write_kit(models["gptq-2bit-zp"], tmp_path / "kit")
    cm = (tmp_path / "kit" / "lib" / "cmake" / "t-mac" / "TMACConfig.cmake").read_text()
    for var in ("TMAC_FOUND TRUE", "TMAC_LIB_DIR", "TMAC_INCLUDE_DIRS", 'TMAC_KERNELS_SOURCE "${TMAC_LIB_DIR}/kernels.cc"'):
        assert f"set({var}" in cm
    assert "add_library(t_mac_no_tvm INTERFACE)" in cm and "TMAC_KCFG_FILE=" in cm
    assert "INTERFACE_LINK_LIBRARIES tmac_kit_lut" in cm
    # the LUT kernels are compiled as C, without contraction, by the kit's own target
    assert "add_library(tmac_kit_lut STATIC" in cm and "-ffp-contract=off" in cm and "C_STANDARD 11" in cm
    for f in lut_kernel_files(kernel_source_dir()):
        if f.endswith(".c"):
            assert f'"${{TMAC_LIB_DIR}}/lut/{f}"' in cm


@pytest.mark.parametrize("family", list(FAMILIES))
def test_kcfg_equals_the_one_the_converter_recorded(family, models, tmp_path):
    model = models[family]
    write_kit(model, tmp_path / "kit")
    ours = Kcfg.parse((tmp_path / "kit" / "lib" / "kcfg.ini").read_text())
    recorded = Kcfg.parse(parse(model).get("tmac.kcfg"))
    assert [e.section for e in ours] and {e.section for e in ours} == {e.section for e in recorded}
    for e in ours:
        assert e == recorded.lookup(e.m0, e.k, e.bits)


def test_kernels_cc_defines_tmacs_entry_points_for_every_shape_and_nothing_else(models, tmp_path):
    model = models["gptq-1bit-per-row"]  # two tile heights (bm 128 and 256)
    write_kit(model, tmp_path / "kit")
    cc = (tmp_path / "kit" / "lib" / "kernels.cc").read_text()
    kc = Kcfg.parse((tmp_path / "kit" / "lib" / "kcfg.ini").read_text())
    pre = set(re.findall(r"^int (preprocessor_t1_int8_m\d+_k\d+_n1_b\d+)\(", cc, re.M))
    tiles = set(re.findall(r"^int (qgemm_lut_t1_int8_m\d+_k\d+_n1_b\d+)\(", cc, re.M))
    assert pre == {f"preprocessor_t1_int8_m{e.m}_k{e.k}_n1_b{e.bits}" for e in kc}
    assert tiles == {f"qgemm_lut_t1_int8_m{e.bm}_k{e.k}_n1_b{e.bits}" for e in kc}
    assert "int preprocessor_int8(int m, int k, int n, int b," in cc and "int qgemm_lut_int8(int m, int k, int n, int b," in cc


def test_headers_are_the_same_for_every_model_so_switching_kits_rebuilds_little(models, tmp_path):
    a = write_kit(models["gptq-2bit-zp"], tmp_path / "a")
    b = write_kit(models["bitnet-one-scale"], tmp_path / "b")
    for f in ("include/t-mac/kernels.h", "include/t-mac/tmac_gemm_wrapper.h", "include/t-mac/INIReader.h",
              "include/dmlc/logging.h", "lib/cmake/t-mac/TMACConfig.cmake"):
        assert (a.out_dir / f).read_bytes() == (b.out_dir / f).read_bytes(), f


def test_force_replaces_a_kit_keeping_timestamps_of_unchanged_files(models, tmp_path):
    out = tmp_path / "kit"
    write_kit(models["gptq-2bit-zp"], out)
    old = {f: (out / f).stat().st_mtime_ns for f in _files(out)}
    time.sleep(0.02)
    with pytest.raises(TmacError, match="exists; pass --force"):
        write_kit(models["bitnet-one-scale"], out)
    write_kit(models["bitnet-one-scale"], out, force=True)
    assert "bitnet-one-scale" in (out / "lib" / "kernels.cc").read_text()
    assert (out / "include/t-mac/kernels.h").stat().st_mtime_ns == old["include/t-mac/kernels.h"]
    assert (out / "lib/kernels.cc").stat().st_mtime_ns != old["lib/kernels.cc"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".kit.")]  # no temporary folders left


def test_force_never_replaces_a_folder_that_is_not_a_kit(models, tmp_path):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(TmacError, match="not a kit written by tmac-convert"):
        write_kit(models["gptq-2bit-zp"], precious, force=True)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_a_refused_model_leaves_no_kit_and_no_temporary_folder(tmp_path):
    with pytest.raises(TmacError):
        write_kit(ROOT / "fixtures" / "gguf_q4_0" / "model.gguf", tmp_path / "kit")
    assert list(tmp_path.iterdir()) == []


def test_isa_choices(models, tmp_path):
    assert write_kit(models["gptq-2bit-zp"], tmp_path / "n", isa="neon").kernel_paths == ["neon", "scalar"]
    assert "#define TMAC_KIT_ARM 1" in (tmp_path / "n" / "lib" / "kernels.cc").read_text()
    assert write_kit(models["gptq-2bit-zp"], tmp_path / "x", isa="avx2").kernel_paths == ["avx2", "scalar"]
    assert "#define TMAC_KIT_ARM 0" in (tmp_path / "x" / "lib" / "kernels.cc").read_text()
    with pytest.raises(TmacError, match="unknown isa"):
        write_kit(models["gptq-2bit-zp"], tmp_path / "bad", isa="sse")
    if not (kernel_source_dir() / "lut_avx512.c").exists():
        with pytest.raises(TmacError, match="no AVX-512 kernel path"):
            write_kit(models["gptq-2bit-zp"], tmp_path / "z", isa="avx512")


# -- the command line ------------------------------------------------------------------------------

def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_cli_kit_writes_and_reports(models, tmp_path, capsys):
    code, out, err = _cli(["kit", str(models["gguf-q4_0"]), "-o", str(tmp_path / "kit"), "--json"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["out_dir"] == str((tmp_path / "kit").absolute()) and len(d["shapes"]) == 4
    code, out, err = _cli(["kit", str(models["gguf-q4_0"]), "-o", str(tmp_path / "kit")], capsys)
    assert code == 2 and "--force" in err


def test_cli_kit_refuses_a_non_tmac_gguf_with_exit_2(tmp_path, capsys):
    code, out, err = _cli(["kit", str(ROOT / "fixtures" / "gguf_q4_0" / "model.gguf"), "-o", str(tmp_path / "k")],
                          capsys)
    assert code == 2 and "not a T-MAC GGUF" in err and "model.gguf" in err
    assert not (tmp_path / "k").exists()


def test_convert_with_kit_writes_both(tmp_path, capsys):
    out = tmp_path / "m.gguf"
    code, stdout, err = _cli([str(ROOT / "fixtures" / "gptq_3bit"), "-o", str(out), "--no-verify", "--kit",
                              str(tmp_path / "kit"), "--json"], capsys)
    assert code == 0, err
    d = json.loads(stdout)
    assert d["kit"]["out_dir"] == str((tmp_path / "kit").absolute())
    assert "qgemm_lut_t1_int8_m192_k256_n1_b3" in (tmp_path / "kit" / "lib" / "kernels.cc").read_text()


def test_convert_with_kit_into_an_existing_folder_is_refused_before_converting(tmp_path, capsys):
    (tmp_path / "kit").mkdir()
    (tmp_path / "kit" / "x").write_text("")
    out = tmp_path / "m.gguf"
    code, stdout, err = _cli([str(ROOT / "fixtures" / "gptq_3bit"), "-o", str(out), "--no-verify", "--kit",
                              str(tmp_path / "kit")], capsys)
    assert code == 2 and "--force" in err
    assert not out.exists()


def test_kit_of_an_8b_shaped_model_reads_only_its_header(tmp_path):
    """A Llama-3-8B-shaped T-MAC GGUF whose data section is a hole: the kit needs no tensor data
    (benchmarks/bench_kit.py times this; the bar is under 1 s)."""
    from benchmarks.bench_kit import write_llama3_8b_header

    model = write_llama3_8b_header(tmp_path / "llama3-8b.gguf", layers=2, vocab=1000)
    r = write_kit(model, tmp_path / "kit")
    assert [s.split(":")[0] for s in r.shapes] == ["[4096, 4096] 2-bit", "[1024, 4096] 2-bit", "[14336, 4096] 2-bit",
                                                  "[4096, 14336] 2-bit"]
    assert os.stat(model).st_blocks * 512 < (64 << 20)  # the 2-layer file is sparse: its data was never written


# -- does a kit serve a model? ----------------------------------------------------------------------

def test_check_kit_catches_a_kit_for_other_tiles_of_the_same_shapes(models, tmp_path, capsys):
    """The fork cannot see a model's tiles: same shapes, other bm would run silently wrong; check_kit says so."""
    from tmac_convert.convert import convert
    from tmac_convert.kit import check_kit
    from tmac_convert.layouts import KernelConfig, TileConfig

    a = models["gptq-2bit-zp"]
    recorded = Kcfg.parse(parse(a).get("tmac.kcfg"))
    other = Kcfg([KernelConfig.for_tensor(e.m0, e.k, e.bits, group_size=e.group_size, zero_point=True,
                                          per_tensor=False, tiles=TileConfig(128, e.kfactor)) for e in recorded])
    b = tmp_path / "b.gguf"
    convert(ROOT / "fixtures" / FAMILIES["gptq-2bit-zp"], b, kcfg=other, verify=False)
    write_kit(a, tmp_path / "kit")
    assert check_kit(a, tmp_path / "kit") == []
    problems = check_kit(b, tmp_path / "kit")
    assert len(problems) == len(recorded)
    assert all("bm 256 (model: 128)" in p and "kernels' bm 256 (model: 128)" in p for p in problems)
    code, out, err = _cli(["kit", str(b), "-o", str(tmp_path / "kit"), "--check"], capsys)
    assert code == 1 and out.count("FAIL:") == len(recorded)
    code, out, err = _cli(["kit", str(a), "-o", str(tmp_path / "kit"), "--check"], capsys)
    assert code == 0 and "serves" in out


def test_a_per_isa_kernel_file_added_later_joins_the_kit_with_its_guard(tmp_path):
    """kernels/lut_avx512.c plus its declarations in lut_core.h: the kit dispatches to it (best first)."""
    from tmac_convert.kernels.sources import lut_kernel_sources
    from tmac_convert.kit import _select_paths
    from tmac_convert.kit.sources import kernel_paths

    src = kernel_source_dir()
    for f in lut_kernel_files(src):
        (tmp_path / f).write_bytes((src / f).read_bytes())
    assert "avx512" not in kernel_paths(tmp_path) or (src / "lut_avx512.c").exists()
    header = (tmp_path / "lut_core.h").read_text()
    block = ("\n#if defined(__x86_64__)\n#define TMAC_HAVE_AVX512 1\nvoid lut_tile_avx512(const lut_problem *p, "
             "const uint8_t *w, const float *s, const lut_row *row, float *C, float *y);\n#endif\n")
    if "TMAC_HAVE_AVX512" not in header:
        head, tail = header.rsplit("#endif", 1)  # before the include guard's end
        (tmp_path / "lut_core.h").write_text(head + block + "#endif" + tail)
    (tmp_path / "lut_avx512.c").write_text("/* avx512 */\n")
    paths = kernel_paths(tmp_path)
    assert paths["avx512"].guard == "TMAC_HAVE_AVX512" and paths["avx512"].tile == "lut_tile_avx512"
    assert "lut_avx512.c" in lut_kernel_sources(tmp_path)
    isa, chosen = _select_paths("avx512", paths)
    assert isa == "avx512" and [p.isa for p in chosen] == ["avx512", "avx2", "scalar"]
    assert [p.isa for p in _select_paths("avx2", paths)[1]] == ["avx2", "scalar"]


def test_an_odd_model_file_name_cannot_break_the_generated_sources(models, tmp_path):
    import shutil
    import subprocess

    odd = tmp_path / 'a "b" *x ??= c\\d\n;e?.gguf'
    shutil.copyfile(models["gptq-2bit-zp"], odd)
    write_kit(odd, tmp_path / "kit")
    Kcfg.parse((tmp_path / "kit" / "lib" / "kcfg.ini").read_text())  # still a valid INI
    if shutil.which("clang++"):
        r = subprocess.run(["clang++", "-std=c++17", "-fsyntax-only", "-I", str(tmp_path / "kit" / "include"),
                            str(tmp_path / "kit" / "lib" / "kernels.cc")], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
