"""Checkpoints written by the real producers themselves (``fixtures/real/``, see fixtures/README.md):
AutoGPTQ 0.7.1 (float32 and float16 models, 2/3/4-bit, sym and asym, one act-order), GPTQModel 7.7
(bfloat16 models, int16/int8 pack words), transformers' packed BitNet, and GGUF files quantised by
the ``gguf`` package.

Each folder holds the producer's own dequantisation of some layers (``producer_dequant.npz``:
AutoGPTQ's / transformers' quantised linear applied to an identity matrix, ``gguf.quants.dequantize``).
For every fixture:

* the reader's weights equal the producer's within the rounding of the scale dtype (both sides
  round once; float16 at worst) — or, where the converter must re-quantise (act-order, Q8_0),
  lie within half a step of the new grid of the producer's weights, as round-to-nearest promises;
* ``tmac-convert SOURCE`` with default settings exits 0 (act-order: refused by default with the
  reason, converted with ``--act-order requantize``), and ``tmac-convert verify OUT --source SOURCE``
  passes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.e2e_support import read_safetensors
from tests.test_readers_gptq import ref_permute
from tmac_convert import read
from tmac_convert.errors import TmacError
from tmac_convert.format.tensor import QuantTensor

REAL = Path(__file__).resolve().parent.parent / "fixtures" / "real"
FIXTURES = sorted(p.name for p in REAL.iterdir() if (p / "fixture.json").is_file())
AUTOGPTQ = [f for f in FIXTURES if f.startswith("autogptq_")]
GPTQMODEL = [f for f in FIXTURES if f.startswith("gptqmodel_")]
GGUF = [f for f in FIXTURES if f.startswith("gguf_")]

#: HF module -> (GGUF name, q/k heads to permute for Llama; None: rows as they are)
HF_LAYERS = {"model.layers.0.self_attn.q_proj": ("blk.0.attn_q.weight", 2),
             "model.layers.0.self_attn.k_proj": ("blk.0.attn_k.weight", 2),
             "model.layers.0.mlp.down_proj": ("blk.0.ffn_down.weight", None)}


def truth(name: str) -> dict:
    return json.loads((REAL / name / "fixture.json").read_text())


def reader_options(name: str) -> dict:
    return {"act_order": "requantize"} if truth(name).get("desc_act") else {}


def quant_tensors(folder: Path, **options) -> dict[str, QuantTensor]:
    return {t.name: t for t in read(folder, **options).tensors() if isinstance(t, QuantTensor)}


def producer_weights(name: str) -> dict[str, np.ndarray]:
    """GGUF name -> the producer's dequantised weight in GGUF row order, float64."""
    z = np.load(REAL / name / "producer_dequant.npz")
    out = {}
    for key in z.files:
        w = z[key].astype(np.float64)
        if key in HF_LAYERS:
            gguf_name, heads = HF_LAYERS[key]
            out[gguf_name] = ref_permute(w, heads) if heads and name.startswith(("autogptq_", "gptqmodel_")) else w
        else:
            out[key] = w
    return out


def rounding_bound(t: QuantTensor, theirs: np.ndarray) -> np.ndarray:
    """Elementwise: one rounding in the scales' dtype on each side, of the product and of the zero offset."""
    eps = float(np.finfo(t.scales.dtype).eps) if t.scales.dtype != np.float64 else 2.0 ** -52
    zp = 0.0 if t.zeros is None else np.abs(np.repeat(t.zeros.astype(np.float64), t.group_size, axis=1))
    return eps * (np.abs(theirs) + zp) + 1e-30


def half_step(t: QuantTensor) -> np.ndarray:
    """Elementwise half step of a re-quantised tensor's grid: round-to-nearest's error bound."""
    s = t.scales.astype(np.float64)
    return 0.5 * (np.repeat(s, t.group_size, axis=1) if not t.per_tensor_scale else s[0]) * (1 + 1e-6) + 1e-12


# ------------------------------------------------------------------------------------------ the matrix


def test_the_matrix_is_complete() -> None:
    """Every combination the issue asks for exists, made by the producer it names."""
    combos = {(truth(f)["dtype"], truth(f)["bits"], truth(f)["sym"], truth(f)["desc_act"]) for f in AUTOGPTQ}
    want = {(dt, b, sym, False) for dt in ("float32", "float16") for b in (2, 3, 4) for sym in (True, False)}
    assert want <= combos and any(c[3] for c in combos)
    assert all(truth(f)["producer"] == "auto-gptq 0.7.1" for f in AUTOGPTQ)
    assert {truth(f)["type"] for f in GGUF} >= {"Q4_0", "Q4_1", "TQ1_0", "TQ2_0", "Q8_0"}
    assert truth("bitnet_transformers_packed")["producer"].startswith("transformers ")
    assert {truth(f)["pack_dtype"] for f in GPTQMODEL} == {"int16", "int8"}
    assert all(truth(f)["producer"] == "gptqmodel 7.7.0" and truth(f)["dtype"] == "bfloat16" for f in GPTQMODEL)


@pytest.mark.parametrize("name", [f for f in AUTOGPTQ if not truth(f)["desc_act"]])
def test_autogptq_reads_back_to_autogptqs_own_dequantisation(name: str) -> None:
    t = truth(name)
    got = quant_tensors(REAL / name)
    assert len(got) == 7 and all(q.bits == t["bits"] and q.group_size == t["group_size"] for q in got.values())
    scale_dtype = {"float32": np.float32, "float16": np.float16}[t["dtype"]]
    for gguf_name, theirs in producer_weights(name).items():
        q = got[gguf_name]
        assert q.scales.dtype == scale_dtype, gguf_name
        assert (q.zeros is None) == t["sym"], "symmetric AutoGPTQ zeros are exactly 2**(b-1): dropped"
        err = np.abs(q.dequantize(np.float64) - theirs)
        assert np.all(err <= rounding_bound(q, theirs)), f"{gguf_name}: worst {err.max():.3g}"


@pytest.mark.parametrize("name", GPTQMODEL)
def test_gptqmodel_reads_back_to_gptqmodels_own_dequantisation(name: str) -> None:
    """GPTQModel 7.7: narrow pack words (int16/int8), float16 scales, every other tensor bfloat16."""
    t = truth(name)
    raw = read_safetensors(REAL / name)  # independent reader: the file really is what the fixture claims
    words = {a.dtype for n, a in raw.items() if n.endswith((".qweight", ".qzeros"))}
    assert words == {np.dtype(t["pack_dtype"])}
    model = read(REAL / name)
    got = {x.name: x for x in model.tensors()}
    quant = {n: q for n, q in got.items() if isinstance(q, QuantTensor)}
    assert len(quant) == 7 and all(q.bits == t["bits"] and q.scales.dtype == np.float16 for q in quant.values())
    emb = got["token_embd.weight"].data  # bfloat16 in the file: widened exactly
    assert np.array_equal(np.asarray(emb, np.float32), raw["model.embed_tokens.weight"])
    for gguf_name, theirs in producer_weights(name).items():
        q = quant[gguf_name]
        assert (q.zeros is None) == t["sym"]
        err = np.abs(q.dequantize(np.float64) - theirs)
        assert np.all(err <= rounding_bound(q, theirs)), f"{gguf_name}: worst {err.max():.3g}"


def test_autogptq_act_order_is_refused_by_default_and_requantised_within_half_a_step() -> None:
    name = next(f for f in AUTOGPTQ if truth(f)["desc_act"])
    with pytest.raises(TmacError, match="act-order"):
        read(REAL / name)
    got = quant_tensors(REAL / name, act_order="requantize")
    for gguf_name, theirs in producer_weights(name).items():
        q = got[gguf_name]
        err = np.abs(q.dequantize(np.float64) - theirs)
        # re-quantised from the checkpoint's exact values; AutoGPTQ rounded its own once to float16
        assert np.all(err <= half_step(q) + 2.0 ** -11 * np.abs(theirs)), gguf_name
        assert err.max() > 0  # it really was re-quantised: AutoGPTQ's groups were scattered over K


def test_transformers_packed_bitnet_reads_back_to_transformers_own_bitlinear() -> None:
    name = "bitnet_transformers_packed"
    got = quant_tensors(REAL / name)
    assert len(got) == 7
    for gguf_name, theirs in producer_weights(name).items():
        q = got[gguf_name]
        assert q.bits == 2 and q.per_tensor_scale and q.zeros is None
        # llama.cpp's bitnet architecture uses NEOX RoPE: rows stay in HF order
        err = np.abs(q.dequantize(np.float64) - theirs)
        assert np.all(err <= 4 * 2.0 ** -24 * np.abs(theirs)), f"{gguf_name}: worst {err.max():.3g}"


@pytest.mark.parametrize("name", GGUF)
def test_gguf_reads_back_to_the_gguf_packages_own_dequantisation(name: str) -> None:
    got = quant_tensors(REAL / name / "model.gguf")
    requantised = truth(name)["type"] == "Q8_0"  # 8-bit codes do not fit T-MAC's 1-4 bits
    for gguf_name, theirs in producer_weights(name).items():
        q = got[gguf_name]
        err = np.abs(q.dequantize(np.float64) - theirs)
        if requantised:
            assert err.max() > 0 and np.all(err <= half_step(q)), gguf_name
        else:
            bound = 2 * 2.0 ** -24 * (np.abs(theirs) + (0 if q.zeros is None else np.abs(
                np.repeat(q.zeros.astype(np.float64), q.group_size, axis=1))))
            assert np.all(err <= bound), f"{gguf_name}: worst {err.max():.3g}"


# ------------------------------------------------------------------------------------------ convert + verify


def cli(*args: str, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    from tmac_convert.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    out = capsys.readouterr()
    return int(e.value.code or 0), out.out + out.err


def source_of(name: str) -> Path:
    return REAL / name / "model.gguf" if name.startswith("gguf_") else REAL / name


@pytest.mark.parametrize("name", FIXTURES)
def test_converts_with_default_settings_and_verifies(name: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    src, out = source_of(name), tmp_path / "out.gguf"
    extra = []
    if truth(name).get("desc_act"):
        code, text = cli(str(src), "-o", str(out), capsys=capsys)
        assert code == 2 and "act-order" in text and "--act-order requantize" in text and not out.exists(), text
        extra = ["--act-order", "requantize"]
    code, text = cli(str(src), "-o", str(out), *extra, capsys=capsys)
    assert code == 0 and out.is_file(), text
    code, text = cli("verify", str(out), "--source", str(src), *extra, capsys=capsys)
    assert code == 0 and "OK" in text, text


# ------------------------------------------------------------------------------------------ other dtypes


@pytest.mark.parametrize("scale_dtype", ["BF16", "F32", "F16"])
def test_gptq_scales_and_float_tensors_of_any_safetensors_float_dtype(tmp_path: Path, scale_dtype: str,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """A real AutoGPTQ checkpoint re-saved with every float tensor (scales included) as ``scale_dtype``
    (GPTQModel keeps bfloat16 tensors): read as the exact widening of the stored values, converted and
    verified."""
    import sys

    from safetensors.numpy import load_file

    sys.path.insert(0, str(REAL.parent))
    import gen_common

    src = REAL / "autogptq_f32_4bit_asym"
    tensors = load_file(str(next(src.glob("*.safetensors"))))
    gen_common.save_safetensors(tmp_path / "model.safetensors", tensors, dtypes=scale_dtype,
                                metadata={"format": "pt"})
    for f in ("config.json", "quantize_config.json"):
        (tmp_path / f).write_bytes((src / f).read_bytes())
    stored = read_safetensors(tmp_path)  # what the file now holds (bfloat16 widened exactly), read independently
    got = quant_tensors(tmp_path)
    s = stored["model.layers.0.mlp.down_proj.scales"]
    q = got["blk.0.ffn_down.weight"]
    assert q.scales.dtype == (np.float16 if scale_dtype == "F16" else np.float32)
    assert np.array_equal(q.scales.astype(np.float64), s.T.astype(np.float64))
    code, text = cli(str(tmp_path), "-o", str(tmp_path / "out.gguf"), capsys=capsys)
    assert code == 0, text
    code, text = cli("verify", str(tmp_path / "out.gguf"), "--source", str(tmp_path), capsys=capsys)
    assert code == 0, text
