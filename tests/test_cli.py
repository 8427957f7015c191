"""The command line, run as a real subprocess: every error path ends in one line and an exit code.

Exit codes (documented in ``tmac-convert --help``): 0 ok, 1 verification failed, 2 bad input or
usage, 130 interrupted.  No test may see a Python traceback on stderr unless it asked for one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tmac_convert.format import parse

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures"
GPTQ = FIX / "gptq_v2_asym_2bit"  # 2-bit, group 64, asymmetric
Q4_0 = FIX / "gguf_q4_0" / "model.gguf"
TESTS = Path(__file__).resolve().parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "200"}
ENV.pop("TMAC_CONVERT_TRACEBACK", None)


def run(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 120):
    return subprocess.run([sys.executable, "-m", "tmac_convert", *args], cwd=cwd, env=env or ENV,
                          capture_output=True, text=True, timeout=timeout)


def run_synth(*args: str, cwd: Path | None = None, env: dict | None = None, prelude: str = ""):
    """The CLI with the synthetic test reader registered (and optional patches in ``prelude``)."""
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import _tmac_synth\n{prelude}\n"
            "from tmac_convert.cli import main; main()")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env or ENV, capture_output=True,
                          text=True, timeout=120)


def one_line_error(r, code: int) -> str:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("tmac-convert: error: "), r.stderr
    return lines[0]


needs_verify = pytest.mark.skipif(
    __import__("importlib").util.find_spec("tmac_convert.proof") is None, reason="tmac_convert.proof not built yet")


# -- the bare convert form ------------------------------------------------------------------------

@needs_verify
def test_bare_form_with_bits_group_zero_point_converts_and_verifies(tmp_path):
    r = run(str(GPTQ), "--bits", "2", "--group", "64", "--zero-point", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "gptq_v2_asym_2bit.tmac.gguf").is_file()
    assert (tmp_path / "gptq_v2_asym_2bit.tmac.kcfg.ini").is_file()
    assert "I2" in r.stdout and "compression vs float16" in r.stdout and "worst NMSE" in r.stdout
    assert "Traceback" not in r.stderr


def test_convert_subcommand_npz_and_json_report(tmp_path):
    out = tmp_path / "m.npz"
    r = run("convert", str(GPTQ), "--format", "npz", "-o", str(out), "--json", "--no-verify")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["format"] == "npz" and d["by_type"]["I2"]["tensors"] == 14 and d["out"] == str(out)
    assert out.is_file()


def test_runtime_option_changes_type_ids(tmp_path):
    out = tmp_path / "a.gguf"
    r = run(str(Q4_0), "-o", str(out), "--runtime", "aug2024", "--no-verify", "--bits", "4", "--group", "32",
            "--no-zero-point")
    assert r.returncode == 0, r.stderr
    gf = parse(out)
    assert gf.get("general.file_type") == 32 and {t.type_id for t in gf.tensors if "attn_q" in t.name} == {33}


@pytest.mark.parametrize("args,match", [
    (["--bits", "4"], "--bits 4 was given but the source is 2-bit"),
    (["--group", "128"], "--group 128 was given but the source has group size 64"),
    (["--no-zero-point"], "--no-zero-point was given but the source has zero points"),
    (["--bits", "7"], "bits must be 1, 2, 3 or 4"),
    (["--threads", "0"], "threads must be at least 1"),
    (["--preset", "no-such-preset"], "unknown preset"),
    (["--preset", "aarch64-llama-3-8b-2bit"], "does not fit this model"),
    (["--kcfg", "/nonexistent/kcfg.ini"], "cannot read kcfg"),
])
def test_bad_requests_are_one_line_exit_2(tmp_path, args, match):
    r = run(str(GPTQ), "-o", str(tmp_path / "o.gguf"), "--no-verify", *args)
    assert match in one_line_error(r, 2)
    assert list(tmp_path.iterdir()) == []


def test_kcfg_mismatch_lists_every_shape(tmp_path):
    kc = tmp_path / "k.ini"
    kc.write_text("[qgemm_lut_t1_int8_m512_k256_n1_b2]\nbm = 256\nsimd_n_in = 16\nsimd_n_out = 8\nkfactor = 16\n"
                  "group_size = 128\nlut_scales_size = 4\nscales_size = 1024\nn_tile_num = 2\n")
    r = run(str(GPTQ), "-o", str(tmp_path / "o.gguf"), "--kcfg", str(kc), "--no-verify")
    line = one_line_error(r, 2)
    assert "(4 problems)" in line
    for shape in ("m512 k256 b2", "m256 k256 b2", "m1024 k256 b2", "m512 k512 b2"):
        assert shape in line
    assert "group_size 128" in line and "missing section" in line
    assert not (tmp_path / "o.gguf").exists()


def test_missing_source_and_unknown_option_and_no_args(tmp_path):
    assert "no such file" in one_line_error(run(str(tmp_path / "missing"), "--no-verify"), 2)
    r = run(str(GPTQ), "--bogus")
    assert r.returncode == 2 and "No such option" in r.stderr and "Traceback" not in r.stderr
    r = run()
    assert r.returncode == 2 and "Usage" in r.stdout + r.stderr and "Traceback" not in r.stderr


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "o.gguf"
    out.write_text("keep me")
    assert "pass --force" in one_line_error(run(str(GPTQ), "-o", str(out), "--no-verify"), 2)
    assert out.read_text() == "keep me"
    r = run(str(GPTQ), "-o", str(out), "--no-verify", "--force")
    assert r.returncode == 0 and out.read_bytes()[:4] == b"GGUF"


def test_help_documents_exit_codes_and_version():
    r = run("--help")
    assert r.returncode == 0 and "Exit codes: 0 ok, 1 verification failed, 2 bad input" in r.stdout
    for cmd in ("convert", "inspect", "verify", "tune"):
        assert cmd in r.stdout
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("tmac-convert ")


def test_console_script_entry_point(tmp_path):
    exe = Path(sys.executable).parent / "tmac-convert"
    if not exe.exists():
        pytest.skip("console script not installed")
    r = subprocess.run([str(exe), str(Q4_0), "-o", str(tmp_path / "o.gguf"), "--no-verify"], env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# -- unexpected errors, interruption, verification failure ---------------------------------------

def test_unexpected_exception_is_one_line_unless_traceback_asked(tmp_path):
    src = _synth(tmp_path, fail_at=3)
    r = run_synth(str(src), "-o", str(tmp_path / "o.gguf"), "--no-verify")
    line = one_line_error(r, 2)
    assert "unexpected RuntimeError: synthetic failure" in line and "TMAC_CONVERT_TRACEBACK" in line
    assert not (tmp_path / "o.gguf").exists()
    r = run_synth(str(src), "-o", str(tmp_path / "o.gguf"), "--no-verify",
                  env={**ENV, "TMAC_CONVERT_TRACEBACK": "1"})
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_tmac_error_inside_the_pipeline_is_one_line(tmp_path):
    src = _synth(tmp_path, fail_at=4, fail_kind="tmac")
    line = one_line_error(run_synth(str(src), "-o", str(tmp_path / "o.gguf"), "--no-verify"), 2)
    assert "synthetic failure" in line and "blk.0" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_midway_leaves_no_output(tmp_path, sig):
    src = _synth(tmp_path, sleep=0.2, layers=4)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    # A shell's background job (and CI under nohup) starts with SIGINT ignored, which children inherit;
    # a terminal's Ctrl-C reaches the CLI with Python's default handler, so the child restores it.
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import _tmac_synth\n"
            "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "from tmac_convert.cli import main; main()")
    p = subprocess.Popen([sys.executable, "-c", code, str(src), "-o", str(out_dir / "o.gguf"), "--no-verify"],
                         env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not any(out_dir.iterdir()) and time.time() < deadline:  # wait until writing has begun
        time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert list(out_dir.iterdir()) == []


@needs_verify
def test_verification_failure_exits_1_and_writes_nothing(tmp_path):
    """A layout bug (simulated: bit 0 of every code flipped in the first half of each blob) is caught."""
    prelude = ("import tmac_convert.format.encodings.tmac as E\n_p = E.pack\n"
               "def bad(*a, **k):\n    b = _p(*a, **k); b[: b.size // 2] ^= 0x11; return b\nE.pack = bad\n")
    r = run_synth(str(_synth(tmp_path)), "-o", str(tmp_path / "o.gguf"), prelude=prelude)
    line = one_line_error(r, 1)
    assert "blk.0.attn_q.weight" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


# -- inspect -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    r = run(str(GPTQ), "-o", str(d / "m.gguf"), "--no-verify")
    assert r.returncode == 0, r.stderr
    return d / "m.gguf"


def test_inspect_names_tmac_types_the_gguf_package_cannot(converted):
    r = run("inspect", str(converted), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    q = [t for t in d["tensors"] if t["name"] == "blk.0.attn_q.weight"][0]
    assert q["type"] == "I2" and q["gguf_package_type"] == "unknown(37)" and q["type_id"] == 37
    assert q["bm"] > 0 and q["kfactor"] > 0 and q["nbytes"] > 0 and q["shape"] == [256, 256]
    assert d["tmac"]["bits"] == 2 and d["runtime"]["name"] == "tmac" and d["problems"] == []
    assert d["metadata"]["tokenizer.ggml.model"] == "gpt2"
    r = run("inspect", str(converted))
    assert r.returncode == 0 and "I2" in r.stdout and "unknown(37)" in r.stdout and "tmac.bits" in r.stdout


def test_inspect_stock_gguf_and_npz(tmp_path, converted):
    r = run("inspect", str(Q4_0), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["is_tmac"] is False
    npz = tmp_path / "m.npz"
    assert run(str(GPTQ), "-o", str(npz), "--format", "npz", "--no-verify").returncode == 0
    d = json.loads(run("inspect", str(npz), "--json").stdout)
    assert d["container"] == "npz" and d["tmac"]["bits"] == 2 and d["problems"] == []


def test_inspect_bad_inputs(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\0" * 100)
    assert "neither a GGUF" in one_line_error(run("inspect", str(junk)), 2)
    assert "no such file" in one_line_error(run("inspect", str(tmp_path / "none.gguf")), 2)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (2**60).to_bytes(8, "little") + b"\0" * 40)
    assert "cannot fit" in one_line_error(run("inspect", str(bad)), 2)


# -- verify --------------------------------------------------------------------------------------

def test_verify_against_source_passes_then_catches_a_flipped_byte(tmp_path, converted):
    r = run("verify", str(converted), "--source", str(GPTQ), "--json")
    if r.returncode != 0 and "verify" in r.stderr and "No module" in r.stderr:
        pytest.skip("tmac_convert.proof not built yet")
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(r.stdout)
    assert d["ok"] is True and all(t["matches_source"] for t in d["tensors"])
    # flip one weight byte of a quantised tensor
    bad = tmp_path / "bad.gguf"
    raw = bytearray(converted.read_bytes())
    rec = parse(converted).tensor("blk.1.ffn_up.weight")
    raw[rec.offset + 10] ^= 0xFF
    bad.write_bytes(bytes(raw))
    r = run("verify", str(bad), "--source", str(GPTQ))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL: tensor blk.1.ffn_up.weight" in r.stdout and "bytes differ" in r.stdout
    assert "Traceback" not in r.stderr


def test_verify_bad_input_is_exit_2(tmp_path):
    junk = tmp_path / "j.gguf"
    junk.write_bytes(b"GGUF\x03\0\0\0" + b"\0" * 10)
    one_line_error(run("verify", str(junk)), 2)
    r = run("verify", str(Q4_0))  # a stock GGUF: checked as one (structure and decoding, no source)
    assert r.returncode == 0 and "structure and decoding only" in r.stdout, r.stdout + r.stderr


def test_tune_lists_presets():
    r = run("tune", "--list-presets")
    assert r.returncode == 0 and "aarch64-llama-3-8b-2bit" in r.stdout


def _synth(tmp_path: Path, **spec) -> Path:
    from . import _tmac_synth

    return _tmac_synth.write_synth(tmp_path / "src", **spec)


def test_tune_writes_a_kcfg_the_converter_accepts(tmp_path):
    kc = tmp_path / "kcfg.ini"
    r = run("tune", str(GPTQ), "-o", str(kc), "--json")
    if r.returncode == 2 and "native" in r.stderr:
        pytest.skip("native kernels not built")
    assert r.returncode == 0, r.stderr
    assert {x["section"] for x in json.loads(r.stdout)} == {
        "qgemm_lut_t1_int8_m256_k256_n1_b2", "qgemm_lut_t1_int8_m512_k256_n1_b2",
        "qgemm_lut_t1_int8_m512_k512_n1_b2", "qgemm_lut_t1_int8_m1024_k256_n1_b2"}
    assert "pass --force" in one_line_error(run("tune", str(GPTQ), "-o", str(kc)), 2)
    out = tmp_path / "o.gguf"
    r = run(str(GPTQ), "--kcfg", str(kc), "-o", str(out), "--json", "--no-verify")
    assert r.returncode == 0, r.stderr
    assert parse(out).get("tmac.kcfg") == kc.read_text()


def test_tune_and_format_usage_errors(tmp_path):
    assert "no such file" in one_line_error(run("tune", str(tmp_path / "missing")), 2)
    assert "give a SOURCE" in one_line_error(run("tune"), 2)
    r = run(str(GPTQ), "--format", "zip", "-o", str(tmp_path / "o.zip"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "zip" in r.stderr
    assert list(tmp_path.iterdir()) == []
