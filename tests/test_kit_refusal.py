"""A model the kit cannot serve is refused when the kit is written: a TmacError naming file, tensor and rule,
exit 2 from the CLI, and no kit folder."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tmac_convert.errors import TmacError
from tmac_convert.kit import write_kit
from tmac_convert.kit.model_facts import ModelFacts, TensorFacts
from tmac_convert.kit.plan import plan_kit

from .kit_support import ROOT, convert_fixture


def _t(name="blk.0.attn_q.weight", m0=256, k=256, bits=2, bm=256, kfactor=16, group_size=64, zero_point=True,
       one_scale=False, act_group_size=64) -> TensorFacts:
    nbytes = m0 * k * bits // 8 + 4 * (1 if one_scale else m0 * (k // group_size) * (2 if zero_point else 1))
    return TensorFacts(name, m0, k, bits, bm, kfactor, group_size, zero_point, one_scale, act_group_size, nbytes)


def _facts(*tensors: TensorFacts, runtime: str = "tmac") -> ModelFacts:
    return ModelFacts(Path("model.gguf"), runtime, tuple(tensors), "")


def _refused(facts: ModelFacts, rule: str, tensor: str | None = None, text: str = "") -> TmacError:
    with pytest.raises(TmacError) as e:
        plan_kit(facts)
    assert e.value.rule == rule, str(e.value)
    assert e.value.file == "model.gguf"
    if tensor:
        assert e.value.tensor == tensor and tensor in str(e.value)
    assert text in str(e.value)
    return e.value


# -- rules of the model's tensors (planner level) --------------------------------------------------

def test_a_well_formed_model_plans_one_preprocessor_per_shape_and_one_tile_kernel_per_tile_key():
    p = plan_kit(_facts(_t(), _t("blk.0.attn_output.weight"), _t("blk.0.ffn_up.weight", m0=512)))
    assert [s.pre.symbol for s in p.shapes] == ["preprocessor_t1_int8_m512_k256_n1_b2",
                                                 "preprocessor_t1_int8_m1024_k256_n1_b2"]
    assert [t.symbol for t in p.tile_shapes] == ["qgemm_lut_t1_int8_m256_k256_n1_b2"]
    assert p.shapes[0].tensors == ("blk.0.attn_q.weight", "blk.0.attn_output.weight")


def test_tensors_of_one_shape_with_different_tiles_are_refused():
    _refused(_facts(_t(), _t("blk.1.attn_q.weight", bm=128)), "one tile per shape", "blk.1.attn_q.weight",
             "bm 128")


def test_two_shapes_needing_different_tile_kernels_behind_one_fork_key_are_refused():
    # same (bm, K, bits) = (256, 256, 2) but kfactor 16 vs 8: the fork could not tell them apart
    _refused(_facts(_t(act_group_size=32), _t("blk.0.ffn_up.weight", m0=512, kfactor=8, act_group_size=32)),
             "one tile kernel per (bm, K, bits)",
             "blk.0.ffn_up.weight", "kfactor 8 vs 16")


def test_tiles_that_do_not_fit_the_shape_are_refused():
    _refused(_facts(_t(bm=384)), "(M0*bits) % bm == 0", "blk.0.attn_q.weight")


def test_an_act_group_the_kernels_do_not_admit_is_refused():
    _refused(_facts(_t(act_group_size=128, kfactor=16)), "(4*kfactor) % act_group_size == 0", "blk.0.attn_q.weight")


def test_a_group_size_not_dividing_k_is_refused():
    _refused(_facts(_t(group_size=96)), "K % group_size == 0", "blk.0.attn_q.weight")


def test_a_tensor_whose_bytes_are_not_all_in_the_file_is_refused():
    _refused(_facts(replace(_t(), nbytes_in_file=100)), "tensor data inside the file", "blk.0.attn_q.weight")


def test_the_aug2024_type_numbering_is_refused():
    _refused(_facts(_t(), runtime="aug2024"), "runtime tmac", None, "--runtime tmac")


# -- refusals from real files, through the public API and the CLI -----------------------------------

def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    f = tmp_path / "x.gguf"
    f.write_bytes(b"not a gguf at all")
    with pytest.raises(TmacError, match="not a GGUF") as e:
        write_kit(f, tmp_path / "kit")
    assert e.value.rule == "T-MAC GGUF" and not (tmp_path / "kit").exists()


def test_a_stock_gguf_is_refused():
    with pytest.raises(TmacError, match="not a T-MAC GGUF") as e:
        write_kit(ROOT / "fixtures" / "gguf_tq2_0" / "model.gguf", "/nonexistent-dir/kit")
    assert e.value.rule == "T-MAC GGUF"


def _patched(src: Path, dst: Path, old: bytes, new: bytes) -> Path:
    assert len(old) == len(new)
    data = src.read_bytes()
    assert data.count(old) >= 1
    dst.write_bytes(data.replace(old, new, 1))
    return dst


def test_a_tmac_gguf_without_tmac_keys_is_refused(tmp_path):
    model = convert_fixture("gptq-2bit-zp", tmp_path)
    bad = _patched(model, tmp_path / "nokeys.gguf", b"tmac.format_version", b"xmac.format_version")
    with pytest.raises(TmacError, match="without tmac.\\* keys") as e:
        write_kit(bad, tmp_path / "kit")
    assert e.value.rule == "tmac keys present"


def test_a_recorded_kcfg_that_disagrees_with_the_tensor_keys_is_refused(tmp_path):
    model = convert_fixture("gptq-2bit-zp", tmp_path)
    bad = _patched(model, tmp_path / "kcfg.gguf", b"kfactor = 16", b"kfactor = 32")
    with pytest.raises(TmacError, match="says kfactor = 32") as e:
        write_kit(bad, tmp_path / "kit")
    assert e.value.rule == "tmac.kcfg matches tensors" and e.value.tensor
    assert not (tmp_path / "kit").exists()


def test_tmac_bits_that_disagree_with_the_tensor_types_are_refused(tmp_path):
    model = convert_fixture("gptq-2bit-zp", tmp_path)
    data = model.read_bytes()
    key = b"tmac.bits"
    i = data.index(key) + len(key) + 4  # after the key and its value type (u32)
    bad = tmp_path / "bits.gguf"
    bad.write_bytes(data[:i] + (4).to_bytes(4, "little") + data[i + 4:])
    with pytest.raises(TmacError, match="type I2 but tmac.bits = 4") as e:
        write_kit(bad, tmp_path / "kit")
    assert e.value.rule == "tmac keys consistent" and e.value.tensor


def test_the_cli_exits_2_naming_file_tensor_and_rule(tmp_path, capsys):
    from tmac_convert.cli import main

    model = convert_fixture("gptq-2bit-zp", tmp_path)
    bad = _patched(model, tmp_path / "kcfg.gguf", b"kfactor = 16", b"kfactor = 32")
    with pytest.raises(SystemExit) as e:
        main(["kit", str(bad), "-o", str(tmp_path / "kit")])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert str(bad) in err and "tensor blk." in err and "kfactor = 32" in err
    assert not (tmp_path / "kit").exists()
