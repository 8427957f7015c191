"""No silent mismatch (T-MAC issue #66): a kit's runtime stops, naming the tensor shape and the field, when
the kcfg it reads does not describe the shapes its kernels were generated for."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tmac_convert.kit import write_kit

from .kit_support import build_driver, convert_fixture, have, one_tensor_per_shape, tensor_blob

pytestmark = pytest.mark.skipif(not (have("clang") and have("clang++")), reason="clang/clang++ not installed")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("kit-mismatch")
    model = convert_fixture("gptq-2bit-zp", d)
    write_kit(model, d / "kit")
    drv = build_driver(d / "kit", d / "build")
    t = one_tensor_per_shape(model)[0]
    return d, model, drv, t


def _run(setup, tmp_path, kcfg_text: str | None, t=None):
    d, model, drv, t0 = setup
    t = t or t0
    env = {}
    if kcfg_text is not None:
        (tmp_path / "kcfg.ini").write_text(kcfg_text)
        env["TMAC_KCFG_FILE"] = str(tmp_path / "kcfg.ini")
    x = np.ones((1, t.k), dtype=np.float32)
    return drv.run(tensor_blob(model, t), x, t, tmp_path, env=env)


def _section_of(text: str, t) -> tuple[int, int]:
    m = re.search(rf"\[qgemm_lut_t1_int8_m{t.m0 * t.bits}_k{t.k}_n1_b{t.bits}\]\n(.*?)(\n\n|\Z)", text, re.S)
    return m.start(1), m.end(1)


def test_the_kits_own_kcfg_runs(setup, tmp_path):
    r = _run(setup, tmp_path, None)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("field", ["bm", "kfactor", "group_size", "lut_scales_size", "scales_size", "n_tile_num"])
def test_a_kcfg_field_that_differs_from_the_kernels_stops_the_runtime_naming_shape_and_field(setup, tmp_path, field):
    d, model, drv, t = setup
    text = (d / "kit" / "lib" / "kcfg.ini").read_text()
    a, b = _section_of(text, t)
    section = text[a:b]
    old = int(re.search(rf"^{field} = (\d+)$", section, re.M).group(1))
    tampered = text[:a] + re.sub(rf"^{field} = \d+$", f"{field} = {old * 2}", section, flags=re.M) + text[b:]
    r = _run(setup, tmp_path, tampered)
    assert r.returncode != 0
    assert "[FATAL]" in r.stderr
    assert f"tensor shape [{t.m0}, {t.k}] (M0 x K), {t.bits}-bit" in r.stderr
    assert f"{field} = {old * 2} (the kernels were generated for {old})" in r.stderr
    assert "issue #66" in r.stderr


def test_a_tampered_section_of_another_shape_is_caught_when_the_kcfg_is_loaded(setup, tmp_path):
    d, model, drv, t = setup
    other = one_tensor_per_shape(model)[-1]
    assert (other.m0, other.k) != (t.m0, t.k)
    text = (d / "kit" / "lib" / "kcfg.ini").read_text()
    a, b = _section_of(text, other)
    tampered = text[:a] + text[a:b].replace("kfactor = 16", "kfactor = 8") + text[b:]
    r = _run(setup, tmp_path, tampered)  # runs tensor t, whose own section is intact
    assert r.returncode != 0
    assert f"tensor shape [{other.m0}, {other.k}] (M0 x K)" in r.stderr and "kfactor = 8" in r.stderr


def test_a_section_for_other_bits_is_reported_as_a_bits_difference(setup, tmp_path):
    d, model, drv, t = setup
    text = (d / "kit" / "lib" / "kcfg.ini").read_text()
    name = f"qgemm_lut_t1_int8_m{t.m0 * t.bits}_k{t.k}_n1_b{t.bits}"
    r = _run(setup, tmp_path, text.replace(f"[{name}]", f"[{name[:-1]}4]"))
    assert r.returncode != 0
    assert f"has no section {name} for tensor shape [{t.m0}, {t.k}]" in r.stderr
    assert "field bits differs" in r.stderr


def test_a_tensor_the_kit_was_not_written_for_is_refused_at_run_time(setup, tmp_path):
    """Negative control: a model with another shape through this kit stops instead of computing garbage."""
    d, model, drv, t = setup
    from dataclasses import replace

    stranger = replace(t, m0=t.m0 * 8)
    blob = np.zeros(stranger.m0 * stranger.k * stranger.bits // 8 + 4 * 2 * stranger.m0 * (stranger.k // stranger.group_size),
                    dtype=np.uint8)
    x = np.ones((1, t.k), dtype=np.float32)
    r = drv.run(blob, x, stranger, tmp_path)
    assert r.returncode != 0
    assert f"tensor shape [{stranger.m0}, {stranger.k}]" in r.stderr
    assert "written for another model" in r.stderr


def test_an_unreadable_kcfg_stops_at_first_use(setup, tmp_path):
    d, model, drv, t = setup
    x = np.ones((1, t.k), dtype=np.float32)
    r = drv.run(tensor_blob(model, t), x, t, tmp_path, env={"TMAC_KCFG_FILE": str(tmp_path / "missing.ini")})
    assert r.returncode != 0
    assert "cannot read kcfg file" in r.stderr and "(the file cannot be read)" in r.stderr
