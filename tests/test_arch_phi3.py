"""Phi-3, the architecture added as one file (``tmac_convert/archs/phi3.py``), end to end.

Facts from the T-MAC fork's ``src/llama.cpp`` (tarball in /work/shared/third_party): ``LLM_ARCH_PHI3``
loads ``token_embd``, ``output_norm``, ``output`` and per block ``attn_norm``, ``attn_qkv``
``[n_embd + 2·n_embd_gqa rows]``, ``attn_output``, ``ffn_norm``, ``ffn_down``, ``ffn_up``
``[2·n_ff rows]`` (no ``attn_q/k/v``, no ``ffn_gate``); its graph takes q, k, v as the row ranges
``[0, n_embd)``, ``[n_embd, n_embd + gqa)``, ``[n_embd + gqa, ...)`` of ``attn_qkv`` and applies SiLU
to the *first* half of ``ffn_up`` (``LLM_FFN_SWIGLU``), with NEOX RoPE; HF's ``Phi3MLP`` chunks
``gate_up_proj`` into gate then up.  So the converted rows must be the checkpoint's rows, in order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import tmac_convert as tc
from tmac_convert.archs import Architecture, architecture_for
from tmac_convert.archs.phi3 import Phi3
from tmac_convert.errors import TmacError
from tmac_convert.format import parse
from tmac_convert.format.tensor import QuantTensor

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
GPTQ, FLOAT = FIXTURES / "phi3_gptq_2bit", FIXTURES / "phi3_f16"
FORK_PHI3_BLOCK = {"attn_norm", "attn_qkv", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_down",
                   "ffn_up"}
FORK_PHI3_GLOBAL = {"token_embd", "output_norm", "output", "rope_factors_long", "rope_factors_short"}
FORK_PHI3_REQUIRED_BLOCK = {"attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_down", "ffn_up"}


def _gptq_weight(folder: Path, mod: str, bits: int = 2) -> np.ndarray:
    """float64 ``[out, in]`` weight of a v2 GPTQ module, unpacked here with plain shifts (int32 words)."""
    t = load_file(str(folder / "model.safetensors"))
    qw, qz, s, g = (t[f"{mod}.{x}"] for x in ("qweight", "qzeros", "scales", "g_idx"))
    per = 32 // bits
    k = qw.shape[0] * per
    rows = np.arange(k)
    codes = (qw.view(np.uint32)[rows // per] >> (bits * (rows % per)).astype(np.uint32)[:, None]) & ((1 << bits) - 1)
    m0 = qw.shape[1]
    cols = np.arange(m0)
    z = (qz.view(np.uint32)[:, cols // per] >> (bits * (cols % per)).astype(np.uint32)) & ((1 << bits) - 1)
    w = (codes.astype(np.float64) - z[g].astype(np.float64)) * s[g].astype(np.float64)  # [K, M0]
    return w.T


def test_the_checkpoint_architecture_finds_the_phi3_class() -> None:
    arch = architecture_for({"architectures": ["Phi3ForCausalLM"], "hidden_size": 256, "num_attention_heads": 4,
                             "num_key_value_heads": 2, "intermediate_size": 512})
    assert type(arch) is Phi3 and Architecture.registry["Phi3ForCausalLM"] is Phi3
    assert arch.name == "phi3" and arch.permute_heads("blk.0.attn_qkv.weight") is None
    assert arch.expected_shape("blk.0.attn_qkv.weight") == (256 + 2 * 128, 256)
    assert arch.expected_shape("blk.0.ffn_up.weight") == (1024, 256)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("phi3") / "phi3.gguf"
    report = tc.convert(GPTQ, out, bits=2, group_size=64, zero_point=True, threads=1)
    return out, report


def test_gptq_phi3_converts_with_every_tensor_verified(converted) -> None:
    out, report = converted
    quant = [t for t in report.tensors if t.type == "I2"]
    assert len(quant) == 2 * 4 and all(t.nmse is not None and t.nmse < 1e-3 for t in quant)
    gf = parse(out)
    names = [t.name for t in gf.tensors]
    roles = {n.split(".")[2] for n in names if n.startswith("blk.")}
    globals_ = {n.rsplit(".", 1)[0] for n in names if not n.startswith("blk.")}
    assert roles <= FORK_PHI3_BLOCK and FORK_PHI3_REQUIRED_BLOCK <= roles and "attn_q" not in roles
    assert globals_ <= FORK_PHI3_GLOBAL and {"token_embd", "output_norm", "output"} <= globals_
    assert gf.get("general.architecture") == "phi3"


def test_fused_rows_are_the_checkpoints_rows_in_order(converted) -> None:
    """Read back, each fused tensor equals the checkpoint's own dequantisation row for row (no permutation),
    so the fork's row ranges give HF's q, k, v and its first ffn_up half is HF's gate."""
    out, _ = converted
    back = {t.name: t for t in tc.read(out).tensors() if isinstance(t, QuantTensor)}
    for i in range(2):
        for gguf_name, mod in ((f"blk.{i}.attn_qkv.weight", f"model.layers.{i}.self_attn.qkv_proj"),
                               (f"blk.{i}.ffn_up.weight", f"model.layers.{i}.mlp.gate_up_proj"),
                               (f"blk.{i}.attn_output.weight", f"model.layers.{i}.self_attn.o_proj"),
                               (f"blk.{i}.ffn_down.weight", f"model.layers.{i}.mlp.down_proj")):
            want = _gptq_weight(GPTQ, mod)
            got = back[gguf_name].dequantize(np.float64)
            assert got.shape == want.shape, gguf_name
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * np.abs(want).max(), err_msg=gguf_name)
    qkv = back["blk.0.attn_qkv.weight"].dequantize(np.float64)
    n_embd, gqa = 256, 128  # the fork's split points
    hf = _gptq_weight(GPTQ, "model.layers.0.self_attn.qkv_proj")
    for lo, hi in ((0, n_embd), (n_embd, n_embd + gqa), (n_embd + gqa, n_embd + 2 * gqa)):
        np.testing.assert_allclose(qkv[lo:hi], hf[lo:hi], atol=1e-3)


def test_hyper_parameters_are_what_the_fork_reads(converted) -> None:
    out, _ = converted
    gf = parse(out)
    c = json.loads((GPTQ / "config.json").read_text())
    want = {"phi3.context_length": c["max_position_embeddings"], "phi3.embedding_length": c["hidden_size"],
            "phi3.feed_forward_length": c["intermediate_size"], "phi3.block_count": c["num_hidden_layers"],
            "phi3.attention.head_count": c["num_attention_heads"],
            "phi3.attention.head_count_kv": c["num_key_value_heads"],
            "phi3.rope.dimension_count": c["hidden_size"] // c["num_attention_heads"],
            "phi3.rope.scaling.original_context_length": c["original_max_position_embeddings"],
            "phi3.attention.sliding_window": c["sliding_window"]}
    assert {k: gf.get(k) for k in want} == want
    assert gf.get("phi3.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert gf.get("tokenizer.ggml.model") == "gpt2"


def test_float_phi3_is_quantised_and_written_as_stock_f16(tmp_path: Path) -> None:
    r = tc.convert(FLOAT, tmp_path / "q.gguf", bits=4, group_size=128, zero_point=True, threads=1)
    assert {t.name for t in r.tensors if t.type == "I4"} >= {"blk.0.attn_qkv.weight", "blk.1.ffn_up.weight"}
    s = tc.convert(FLOAT, tmp_path / "f.gguf", out_type="f16", threads=1)
    src = load_file(str(FLOAT / "model.safetensors"))
    back = {t.name: np.asarray(t.data) for t in tc.read(tmp_path / "f.gguf", quantize=False).tensors()}
    np.testing.assert_array_equal(back["blk.1.ffn_up.weight"], src["model.layers.1.mlp.gate_up_proj.weight"])
    assert s.runtime == "stock llama.cpp"


def test_long_rope_factors_become_tensors_and_a_bad_length_is_refused() -> None:
    cfg = {"architectures": ["Phi3ForCausalLM"], "hidden_size": 256, "num_attention_heads": 4,
           "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
           "rope_scaling": {"type": "longrope", "long_factor": [1.5] * 32, "short_factor": [1.0] * 32}}
    extra = {t.name: t.data for t in architecture_for(cfg).extra_tensors(set())}
    assert set(extra) == {"rope_factors_long.weight", "rope_factors_short.weight"}
    assert extra["rope_factors_long.weight"].dtype == np.float32 and extra["rope_factors_long.weight"][0] == 1.5
    cfg["rope_scaling"]["long_factor"] = [1.0] * 31
    with pytest.raises(TmacError, match="long_factor must be 32"):
        architecture_for(cfg).extra_tensors(set())


def test_phi3_fixtures_are_reproducible(capsys: pytest.CaptureFixture) -> None:
    """Regenerating the committed Phi-3 fixtures gives the same bytes (needs the dev-time tokenizers)."""
    pytest.importorskip("tokenizers")
    import sys

    sys.path.insert(0, str(FIXTURES))
    import make_fixtures

    assert make_fixtures.main(["--check", "--only", "gen_phi3"]) == 0, capsys.readouterr().out
