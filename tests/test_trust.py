"""A user can trust both a success and a failure (issue 12): reproductions, run as a user runs them.

* Every bundled fixture converts at the default settings and ``verify`` passes it (1-bit included),
  with the layout proof far inside its bound and the int8 error exactly what table rounding explains.
* A deliberate layout error fails the proof on every bit width of the fixtures.
* A destroyed model (2-bit asymmetric -> TQ2_0) is reported as lossy and fails unless --max-error allows it.
* The source is never overwritten (the same path, the kcfg sidecar, symlinks, hard links), and default
  output names come from the resolved source name.
* ``verify`` checks stock-type outputs; ``inspect`` reads the tool's own npz, names a folder for what it
  is, and a closed stdout is not "verification failed".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tmac_convert as tc
from tmac_convert import proof as verify
from tmac_convert.convert import DEFAULT_MAX_ERROR
from tmac_convert.layouts import default_tiles
from tmac_convert.readers import read
from tmac_convert.format.tensor import QuantTensor

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "200"}
ENV.pop("TMAC_CONVERT_TRACEBACK", None)

#: every bundled source, with the options a user must give (act-order needs a decision)
SOURCES = [("gptq_1bit", []), ("gptq_v2_asym_2bit", []), ("gptq_3bit", []), ("gptq_v1_sym_4bit", []),
           ("gptq_act_order", ["--act-order", "requantize"]), ("autogptq_4bit", []), ("bitnet_packed", []),
           ("bitnet_float", []), ("llama_f16", []), ("gguf_q4_0/model.gguf", []), ("gguf_q4_1/model.gguf", []),
           ("gguf_tq1_0/model.gguf", []), ("gguf_tq2_0/model.gguf", []), ("gguf_f16/model.gguf", [])]


def run(*args: str, cwd: Path | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tmac_convert", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


# -- no correct conversion fails ------------------------------------------------------------------

@pytest.mark.parametrize("src,opts", SOURCES, ids=[s.split("/")[0] for s, _ in SOURCES])
def test_every_fixture_converts_at_default_settings_and_verifies(tmp_path, src, opts):
    out = tmp_path / "out.gguf"
    r = run(str(FIX / src), "-o", str(out), "--json", *opts)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    tmac = [t for t in d["tensors"] if t["exact_error"] is not None]
    assert tmac, "every fixture has quantised projections"
    for t in tmac:
        assert t["exact_error"] < t["exact_limit"] / 20, t            # far inside the float32 bound
        assert abs(t["int8_ratio"] - 1) < 1e-3, t                    # the int8 error is the tables' rounding
    v = run("verify", str(out), "--source", str(FIX / src), *opts)
    assert v.returncode == 0, v.stdout + v.stderr
    assert "layout exact" in v.stdout


@pytest.mark.parametrize("ags", ["32", "-1"])
def test_the_1bit_fixture_passes_at_every_act_group(tmp_path, ags):
    out = tmp_path / "one.gguf"
    r = run(str(FIX / "gptq_1bit"), "-o", str(out), "--act-group", ags)
    assert r.returncode == 0, r.stderr
    assert "layout exact on 14 T-MAC tensors" in r.stdout and "what their rounding explains" in r.stdout
    assert run("verify", str(out)).returncode == 0


# -- no wrong conversion passes -------------------------------------------------------------------

def _first_tensor(src: str) -> tuple[QuantTensor, int, int]:
    """The source's first quantised tensor that its default tiles split into at least two tiles."""
    for t in read(FIX / src).tensors():
        if isinstance(t, QuantTensor):
            tiles = default_tiles(t.shape[0], t.shape[1], t.bits, None if t.per_tensor_scale else t.group_size)
            if t.shape[0] * t.bits // tiles.bm >= 2:
                return t, tiles.bm, tiles.kfactor
    raise AssertionError(f"{src} has no tensor of two tiles")


@pytest.mark.parametrize("src,bits", [("gptq_1bit", 1), ("gptq_v2_asym_2bit", 2), ("gptq_3bit", 3),
                                      ("autogptq_4bit", 4)])
@pytest.mark.parametrize("fault", ["swapped tile", "negated zero offset"])
def test_a_layout_error_in_a_fixture_tensor_fails_the_proof(src, bits, fault):
    t, bm, kf = _first_tensor(src)
    assert t.bits == bits and t.zeros is not None
    blob = tc.pack(t.codes, t.scales, t.zeros, bits=bits, bm=bm, kfactor=kf)
    good = verify.verify_tensor(t, blob, bm=bm, kfactor=kf)
    assert good.ok, good.summary()
    if fault == "swapped tile":
        tile = t.shape[1] * bm // 8
        bad = blob.copy()
        bad[:tile], bad[tile:2 * tile] = blob[tile:2 * tile], blob[:tile]
        assert not np.array_equal(bad, blob)
    else:
        z = t.zeros.astype(np.float32)
        r_, g_ = np.unravel_index(np.argmax(np.abs(z)), z.shape)
        z[r_, g_] = -z[r_, g_]
        bad = tc.pack(t.codes, t.scales, z, bits=bits, bm=bm, kfactor=kf)
    r = verify.verify_tensor(t, bad, bm=bm, kfactor=kf)
    assert not r.ok and not r.exact_ok and r.exact_error > 100 * r.exact_limit, r.summary()


# -- lossy is never "passed" ----------------------------------------------------------------------

def test_a_destroyed_model_is_lossy_and_fails_without_an_explicit_max_error(tmp_path):
    src = FIX / "gptq_v2_asym_2bit"
    out = tmp_path / "t.gguf"
    r = run(str(src), "--type", "tq2_0", "--allow-lossy", "-o", str(out))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "passed" not in r.stdout + r.stderr and "lossy" in r.stderr and "--max-error" in r.stderr
    assert not out.exists() and not list(tmp_path.iterdir())
    ok = run(str(src), "--type", "tq2_0", "--allow-lossy", "-o", str(out), "--max-error", "0.9")
    assert ok.returncode == 0, ok.stderr
    assert "passed" not in ok.stdout
    line = next(x for x in ok.stdout.splitlines() if x.startswith("lossy:"))
    assert "NMSE 0.848 vs source" in line and "--max-error 0.9" in line
    # verify holds the file to the same limit
    assert run("verify", str(out), "--source", str(src)).returncode == 1
    v = run("verify", str(out), "--source", str(src), "--max-error", "0.9")
    assert v.returncode == 0 and "lossy: worst NMSE 0.848 vs source" in v.stdout


def test_lossless_stock_conversions_say_exact_and_lossy_ones_report_their_error(tmp_path):
    exact = run(str(FIX / "gptq_v1_sym_4bit"), "--type", "q4_0", "-o", str(tmp_path / "a.gguf"))
    assert exact.returncode == 0 and "hold the source's codes exactly" in exact.stdout
    assert "lossy" not in exact.stdout
    lossy = run(str(FIX / "llama_f16"), "--type", "q4_0", "--allow-lossy", "-o", str(tmp_path / "b.gguf"), "--json")
    d = json.loads(lossy.stdout)
    assert lossy.returncode == 0 and d["lossy"] and 0 < d["worst_lossy_nmse"] < DEFAULT_MAX_ERROR


def test_round_to_nearest_of_a_float_source_is_lossy_too(tmp_path):
    four = run(str(FIX / "llama_f16"), "-o", str(tmp_path / "4.gguf"), "--json")
    assert four.returncode == 0 and json.loads(four.stdout)["lossy"]
    two = run(str(FIX / "llama_f16"), "--bits", "2", "-o", str(tmp_path / "2.gguf"))
    assert two.returncode == 1 and "lossy" in two.stderr and not (tmp_path / "2.gguf").exists()
    assert run(str(FIX / "llama_f16"), "--bits", "2", "-o", str(tmp_path / "2.gguf"), "--max-error", "0.5"
               ).returncode == 0


def test_the_cli_default_max_error_is_the_library_default():
    r = run("convert", "--help")
    assert r.returncode == 0 and "--max-error" in r.stdout
    from tmac_convert.cli import convert_cmd, verify_cmd

    for cmd in (convert_cmd, verify_cmd):
        import inspect

        assert inspect.signature(cmd).parameters["max_error"].default.default == DEFAULT_MAX_ERROR


# -- never damage the input -----------------------------------------------------------------------

@pytest.fixture
def model(tmp_path: Path) -> Path:
    m = tmp_path / "m"
    shutil.copytree(FIX / "gptq_v1_sym_4bit", m)
    return m


def _unchanged(m: Path) -> None:
    for f in (FIX / "gptq_v1_sym_4bit").iterdir():
        assert (m / f.name).read_bytes() == f.read_bytes(), f.name


def test_an_output_that_is_a_source_file_is_refused_even_with_force(model, tmp_path):
    r = run("m", "-o", "m/model.safetensors", "--force", cwd=tmp_path)
    assert r.returncode == 2 and "part of the source" in r.stderr, r.stderr
    _unchanged(model)


def test_a_kcfg_sidecar_that_is_a_source_file_is_refused(model, tmp_path):
    # -o m/config.gguf puts the kcfg at m/config.kcfg.ini; make that name a source file
    (model / "config.kcfg.ini").write_text("[not ours]\n")
    r = run("m", "-o", "m/config.gguf", "--force", cwd=tmp_path)
    assert r.returncode == 2 and "config.kcfg.ini" in r.stderr, r.stderr
    assert (model / "config.kcfg.ini").read_text() == "[not ours]\n" and not (model / "config.gguf").exists()


def test_symlinks_and_hard_links_to_source_files_are_refused(model, tmp_path):
    (tmp_path / "link.gguf").symlink_to(model / "model.safetensors")
    os.link(model / "config.json", tmp_path / "hard.gguf")
    (tmp_path / "side.kcfg.ini").symlink_to(model / "tokenizer.json")
    for out in ("link.gguf", "hard.gguf", "side.gguf"):
        r = run("m", "-o", out, "--force", cwd=tmp_path)
        assert r.returncode == 2 and "part of the source" in r.stderr, (out, r.stderr)
    _unchanged(model)


def test_a_gguf_source_cannot_be_its_own_output(tmp_path):
    src = tmp_path / "q.gguf"
    shutil.copy(FIX / "gguf_q4_0" / "model.gguf", src)
    r = run("q.gguf", "-o", "q.gguf", "--force", cwd=tmp_path)
    assert r.returncode == 2 and src.read_bytes() == (FIX / "gguf_q4_0" / "model.gguf").read_bytes()


def test_dot_inside_a_model_folder_names_the_output_after_the_folder(model):
    r = run(".", cwd=model)
    assert r.returncode == 0, r.stderr
    assert (model / "m.tmac.gguf").is_file() and (model / "m.tmac.kcfg.ini").is_file()
    assert not list(model.glob("..*")) and not list(model.glob(".tmac*"))
    assert run(".", "--force", cwd=model).returncode == 0   # re-running may replace its own output
    _unchanged(model)


def test_writing_a_new_file_into_the_source_folder_is_allowed(model, tmp_path):
    assert run("m", "-o", "m/out.gguf", cwd=tmp_path).returncode == 0
    assert run("m", "-o", "m/out.gguf", "--force", cwd=tmp_path).returncode == 0   # its own output, not the source's
    _unchanged(model)


# -- verify and inspect on every output -----------------------------------------------------------

@pytest.mark.parametrize("src,typ", [("gptq_v1_sym_4bit", "q4_0"), ("gptq_v2_asym_2bit", "q4_1"),
                                     ("bitnet_packed", "tq2_0"), ("bitnet_packed", "tq1_0"), ("gptq_3bit", "f16")])
def test_verify_checks_stock_type_outputs(tmp_path, src, typ):
    out = tmp_path / f"o.{typ}.gguf"
    assert run(str(FIX / src), "--type", typ, "-o", str(out)).returncode == 0
    alone = run("verify", str(out))
    assert alone.returncode == 0 and "structure and decoding only" in alone.stdout, alone.stdout + alone.stderr
    both = run("verify", str(out), "--source", str(FIX / src), "--json")
    d = json.loads(both.stdout)
    assert both.returncode == 0 and d["ok"] and d["stock"] and not d["lossy"], d["problems"]
    # one flipped byte in a quantised tensor is found against the source
    from tmac_convert.format.gguf_file import parse

    rec = next(t for t in parse(out).tensors if t.name == "blk.0.attn_q.weight")
    data = bytearray(out.read_bytes())
    data[rec.offset + 7] ^= 0x11
    out.write_bytes(bytes(data))
    bad = run("verify", str(out), "--source", str(FIX / src))
    assert bad.returncode == 1 and "blk.0.attn_q.weight" in bad.stdout


def test_inspect_reads_the_tools_own_npz(tmp_path):
    out = tmp_path / "a.npz"
    assert run(str(FIX / "gptq_v1_sym_4bit"), "-f", "npz", "-o", str(out)).returncode == 0
    r = run("inspect", str(out))
    assert r.returncode == 0 and "I4" in r.stdout and "Traceback" not in r.stderr, r.stderr
    d = json.loads(run("inspect", str(out), "--json").stdout)
    assert {t["type"] for t in d["tensors"]} >= {"I4", "F32"}
    assert run("verify", str(out)).returncode == 0


def test_inspect_and_verify_name_a_folder_for_what_it_is(tmp_path):
    for cmd in ("inspect", "verify"):
        r = run(cmd, str(FIX / "gptq_1bit"))
        assert r.returncode == 2 and "is a folder" in r.stderr and "no such file" not in r.stderr, r.stderr


def test_a_closed_stdout_is_not_verification_failed(tmp_path):
    out = tmp_path / "o.gguf"
    assert run(str(FIX / "gptq_1bit"), "-o", str(out)).returncode == 0
    for args in (["inspect", str(out)], ["inspect", str(out), "--full"]):
        cmd = " ".join([sys.executable, "-m", "tmac_convert", *args]) + " | head -1; echo \"rc=${PIPESTATUS[0]}\""
        p = subprocess.run(["bash", "-c", cmd], env=ENV, capture_output=True, text=True, timeout=120)
        rc = int(p.stdout.strip().splitlines()[-1].split("=")[1])
        assert rc in (0, 141), (rc, p.stderr)
        assert "Traceback" not in p.stderr and "error" not in p.stderr, p.stderr
