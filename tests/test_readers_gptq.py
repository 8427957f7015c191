"""GPTQ reader: golden-exact unpacking, fixtures equal to an independent float64 dequantisation, the
v1/v2 decision, act-order, architectures, malformed checkpoints and lazy reading.

Independent references used here: a bit-stream unpacker built on ``np.unpackbits`` (not
``gptq_bits``), the GPTQ dequantisation ``W = (q - z[g_idx]) * s[g_idx]`` in float64, and the q/k
permutation written as an index formula (not reshape/swapaxes).
"""

from __future__ import annotations

import json
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open

from tests.conftest import golden_files
from tmac_convert import read
from tmac_convert.errors import TmacError
from tmac_convert.readers.base import FloatTensor
from tmac_convert.readers.gptq_bits import pack_qweight, pack_qzeros
from tmac_convert.readers.gptq_config import GPTQConfig, ZeroEvidence, decide_format
from tmac_convert.format.tensor import QuantTensor

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import gen_common  # noqa: E402
import gen_gptq  # noqa: E402

GPTQ_FIXTURES = ("gptq_v1_sym_4bit", "gptq_v2_asym_2bit", "gptq_3bit", "gptq_1bit", "gptq_act_order")


# ----------------------------------------------------------------------------- independent references


def ref_unpack(words: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """Fields of a little-endian bit stream along ``axis`` (np.unpackbits based)."""
    w = np.moveaxis(np.asarray(words), axis, -1)
    wb = w.dtype.itemsize * 8
    raw = np.ascontiguousarray(w).astype(w.dtype.newbyteorder("<")).view(np.uint8)
    stream = np.unpackbits(raw, axis=-1, bitorder="little")
    fields = stream.reshape(*stream.shape[:-1], w.shape[-1] * wb // bits, bits)
    vals = (fields.astype(np.int64) << np.arange(bits)).sum(-1)
    return np.moveaxis(vals, -1, axis)


def ref_permute(rows: np.ndarray, n_head: int) -> np.ndarray:
    """GGUF row h*d + 2*i + p takes HF row h*d + p*d/2 + i (llama.cpp's q/k permutation)."""
    m0 = rows.shape[0]
    d = m0 // n_head
    r = np.arange(m0)
    h, rem = np.divmod(r, d)
    i, p = np.divmod(rem, 2)
    return rows[h * d + p * (d // 2) + i]


def ref_dequant(folder: Path, prefix: str, bits: int, convention: str) -> np.ndarray:
    """float64 HF-order weight of one GPTQ layer, straight from the safetensors files."""
    idx = folder / "model.safetensors.index.json"
    files = {n: folder / f for n, f in json.loads(idx.read_text())["weight_map"].items()} if idx.exists() else None

    def get(name: str) -> np.ndarray:
        f = files[name] if files else folder / "model.safetensors"
        with safe_open(str(f), "numpy") as h:
            return h.get_tensor(name)

    q = ref_unpack(get(prefix + ".qweight"), bits, 0).T  # [M0, K]
    z = ref_unpack(get(prefix + ".qzeros"), bits, 1) + (1 if convention == "v1" else 0)  # [G, M0]
    s = get(prefix + ".scales").astype(np.float64)
    g = get(prefix + ".g_idx").astype(np.int64)
    return (q - z[g].T) * s[g].T


def fixture_truth(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name / "fixture.json").read_text())


# ----------------------------------------------------------------------------- checkpoint builder


def write_gptq(folder: Path, *, arch: str = "LlamaForCausalLM", bits: int = 4, group_size: int = 64,
               sym: bool = False, convention: str = "v2", quant: dict[str, Any] | None = None,
               edit: Any = None, act_order: bool = False, word: str = "int32", seed: int = 0,
               config_overrides: dict[str, Any] | None = None, stored_override: Any = None) -> Path:
    """A tiny GPTQ checkpoint (no tokenizer) quantised by the fixture quantiser; ``edit`` may mutate tensors."""
    cfg = gen_common.tiny_config(arch, vocab_size=64, **(config_overrides or {}))
    w = gen_common.tiny_weights(cfg, seed)
    mods = set(gen_common.projection_names(cfg))
    tensors: dict[str, np.ndarray] = {}
    for n, a in w.items():
        mod = n[: -len(".weight")]
        if mod not in mods:
            tensors[n] = a.astype(np.float16)
            continue
        perm = np.random.default_rng(seed).permutation(a.shape[1]) if act_order else None
        codes, z, s, g_idx = gen_gptq.gptq_quantize(a, bits, group_size, sym, perm)
        z = np.maximum(z, 1) if convention == "v1" else z
        stored = z - 1 if convention == "v1" else z
        if stored_override is not None:
            stored = stored_override(mod, stored)
        tensors[mod + ".qweight"] = pack_qweight(codes, bits, word)
        tensors[mod + ".qzeros"] = pack_qzeros(stored.astype(np.uint8), bits, word)
        tensors[mod + ".scales"] = s
        tensors[mod + ".g_idx"] = g_idx
    for n in list(w):
        if n.endswith(".bias"):
            tensors[n] = w[n].astype(np.float16)
    qc = {"quant_method": "gptq", "bits": bits, "group_size": group_size, "sym": sym, "desc_act": act_order,
          **({"checkpoint_format": "gptq_v2"} if convention == "v2" else {"checkpoint_format": "gptq"})}
    if quant is not None:
        qc = {k: v for k, v in {**qc, **quant}.items() if v is not None}
    cfg["quantization_config"] = qc
    if edit is not None:
        edit(tensors, cfg)
    gen_common.write_model_dir(folder, cfg, tensors, tokenizer=False)
    return folder


def only_quant(model) -> dict[str, QuantTensor]:
    return {t.name: t for t in model.tensors() if isinstance(t, QuantTensor)}


# ----------------------------------------------------------------------------- golden


@pytest.mark.parametrize("path", golden_files("gptq_"), ids=lambda p: p.stem)
@pytest.mark.parametrize("module, gguf", [("mlp.up_proj", "ffn_up"), ("self_attn.q_proj", "attn_q")])
def test_golden_gptq_through_the_reader_is_byte_exact(tmp_path: Path, path: Path, module: str, gguf: str) -> None:
    d = np.load(path)
    bits, gs = int(d["bits"]), int(d["group_size"])
    m0, k = d["expect_codes"].shape
    heads = 4
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": k,
           "intermediate_size": m0, "num_attention_heads": heads, "num_key_value_heads": heads,
           "head_dim": m0 // heads, "num_hidden_layers": 1, "vocab_size": 32,
           "quantization_config": {"quant_method": "gptq", "bits": bits, "group_size": gs, "sym": False,
                                   "desc_act": False, "checkpoint_format": str(d["checkpoint_format"])}}
    p = f"model.layers.0.{module}"
    gen_common.write_model_dir(tmp_path, cfg, {p + ".qweight": d["qweight"], p + ".qzeros": d["qzeros"],
                                               p + ".scales": d["scales"]}, tokenizer=False)
    model = read(tmp_path)
    assert model.quantization["checkpoint_format"] == {"gptq": "v1", "gptq_v2": "v2"}[str(d["checkpoint_format"])]
    (t,) = list(model.tensors())
    assert t.name == f"blk.0.{gguf}.weight" and t.bits == bits and t.group_size == gs
    want = [d["expect_codes"], d["expect_scales"], d["expect_zeros"]]
    if gguf == "attn_q":
        want = [ref_permute(a, heads) for a in want]
    assert np.array_equal(t.codes, want[0])
    assert t.scales.dtype == np.float16 and t.scales.tobytes() == want[1].tobytes()
    assert t.zeros.dtype == np.float16 and t.zeros.tobytes() == want[2].tobytes()


# ----------------------------------------------------------------------------- fixtures


@pytest.mark.parametrize("name", GPTQ_FIXTURES)
def test_fixture_reads_back_to_the_float64_dequantisation(name: str) -> None:
    truth = fixture_truth(name)
    folder = FIXTURES / name
    model = read(folder, act_order="requantize")
    assert model.format == "gptq" and model.gguf_arch == "llama"
    assert model.quantization["checkpoint_format"] == truth["zero_convention"]
    assert model.quantization["bits"] == truth["bits"]
    assert set(model.tokenizer_files) >= {"tokenizer.json", "tokenizer_config.json"}
    cfg = model.config
    seen = 0
    for t in model.tensors():
        if not isinstance(t, QuantTensor):
            continue
        prefix = t.meta["source"]
        ref = ref_dequant(folder, prefix, truth["bits"], truth["zero_convention"])
        if prefix.endswith("q_proj"):
            ref = ref_permute(ref, cfg["num_attention_heads"])
        elif prefix.endswith("k_proj"):
            ref = ref_permute(ref, cfg["num_key_value_heads"])
        got = t.dequantize(np.float64)
        gs = t.group_size
        if truth["act_order"]:
            # re-quantised to contiguous groups: within half a (new) step of the GPTQ weight
            step = np.repeat(t.scales.astype(np.float64), gs, axis=1)
            assert np.all(np.abs(got - ref) <= 0.5 * step * (1 + 1e-6) + 1e-7)
            stats = t.meta["requantized"]
            assert stats["nmse"] == pytest.approx(((got - ref) ** 2).sum() / (ref ** 2).sum(), rel=1e-3)
        else:
            # z' = (z - 2^(b-1)) * s is rounded once to the scale dtype (float16): half an ulp
            zref = ref - (t.codes.astype(np.float64) - (1 << (t.bits - 1))) * np.repeat(
                t.scales.astype(np.float64), gs, axis=1)
            assert np.all(np.abs(got - ref) <= np.abs(zref) * 2.0 ** -11 + 1e-12), prefix
        seen += 1
    assert seen == 2 * 7


def test_fixture_float_tensors_pass_through_unchanged() -> None:
    model = read(FIXTURES / "gptq_v2_asym_2bit")
    floats = {t.name: t for t in model.tensors() if isinstance(t, FloatTensor)}
    assert set(floats) == {"token_embd.weight", "output.weight", "output_norm.weight", "blk.0.attn_norm.weight",
                           "blk.0.ffn_norm.weight", "blk.1.attn_norm.weight", "blk.1.ffn_norm.weight"}
    with safe_open(str(FIXTURES / "gptq_v2_asym_2bit" / "model-00001-of-00002.safetensors"), "numpy") as f:
        emb = f.get_tensor("model.embed_tokens.weight")
    assert floats["token_embd.weight"].data.dtype == np.float16
    assert np.array_equal(floats["token_embd.weight"].data, emb)


def test_tensor_infos_match_what_is_yielded() -> None:
    model = read(FIXTURES / "gptq_3bit")
    infos = model.tensor_infos()
    tensors = list(model.tensors())
    assert [i.name for i in infos] == [t.name for t in tensors]
    for i, t in zip(infos, tensors):
        if isinstance(t, QuantTensor):
            assert i.shape == t.shape and i.bits == 3 and i.group_size == t.group_size and i.zero_point
        else:
            assert i.shape == t.data.shape and i.bits is None


def test_symmetric_v1_fixture_drops_zeros_and_autogptq_zero_biases() -> None:
    model = read(FIXTURES / "gptq_v1_sym_4bit")
    assert model.quantization["zero_point"] is False
    names = [t.name for t in model.tensors()]
    assert not any(n.endswith(".bias") for n in names)
    assert any("zeros dropped" in n for n in model.notes)
    assert any("dropped 14 all-zero biases" in n for n in model.notes)


def test_act_order_is_refused_by_default_with_an_explanation() -> None:
    with pytest.raises(TmacError) as e:
        read(FIXTURES / "gptq_act_order")
    assert e.value.rule == "contiguous groups (no act-order)"
    assert "act_order='requantize'" in str(e.value) and e.value.file and e.value.tensor


def test_trivial_g_idx_with_desc_act_is_accepted(tmp_path: Path) -> None:
    write_gptq(tmp_path, quant={"desc_act": True})
    model = read(tmp_path)
    assert len(only_quant(model)) == 14
    assert any("g_idx is trivial" in n for n in model.notes)


# ----------------------------------------------------------------------------- v1 / v2


def _cfg(**kw: Any) -> GPTQConfig:
    base = dict(file="config.json", bits=4, group_size=128, sym=True, desc_act=False, checkpoint_format=None,
                pack_dtype=None, quantizers=[])
    return GPTQConfig(**{**base, **kw})


def _ev(values: list[int], bits: int = 4, pattern_words: np.ndarray | None = None) -> ZeroEvidence:
    stored = np.array(values, np.uint8).reshape(1, -1) if pattern_words is None else pattern_words
    return ZeroEvidence.of("blk.0.attn_q.weight", stored, bits, 32)


@pytest.mark.parametrize("cfg, evidence, want, why", [
    (_cfg(), [_ev([7] * 8)], "v1", "every stored zero is 7"),
    (_cfg(), [_ev([8] * 8)], "v2", "every stored zero is 8"),
    (_cfg(checkpoint_format="gptq_v2"), [_ev([7] * 8)], "v1", "overrides the label"),
    (_cfg(checkpoint_format="gptq", quantizers=[("gptqmodel", "7.7.0")]), [_ev([8] * 8)], "v2", "overrides"),
    (_cfg(sym=False, quantizers=[("auto_gptq", "0.7.1")]), [_ev([3, 5, 7, 9, 1, 2, 4, 6])], "v1", "AutoGPTQ"),
    (_cfg(sym=False, quantizers=[("gptqmodel", "1.2.0")]), [_ev([3, 5, 7, 9, 1, 2, 4, 6])], "v2", "gptqmodel"),
    (_cfg(sym=False, quantizers=[("efficientqat", "")]), [_ev([3, 5, 7, 9, 1, 2, 4, 6])], "v2", "EfficientQAT"),
    (_cfg(sym=False, checkpoint_format="gptq"), [_ev([3, 5, 7, 9, 1, 2, 4, 6])], "v1", "cannot tell"),
    (_cfg(sym=False), [_ev([3, 5, 7, 9, 1, 2, 4, 6])], "v1", "assuming AutoGPTQ"),
    # a 15 followed by a 3 in the same word cannot be v1 even with the -1 defect
    (_cfg(sym=False, checkpoint_format="gptq"), [_ev([3, 15, 3, 9, 1, 2, 4, 6])], "v2", "impossible in v1"),
])
def test_zero_convention_decision(cfg: GPTQConfig, evidence, want: str, why: str) -> None:
    choice, reason, _ = decide_format(cfg, evidence, None)
    assert choice == want and why in reason


def test_override_wins_but_the_contradiction_is_reported() -> None:
    choice, reason, warnings = decide_format(_cfg(), [_ev([7] * 8)], "v2")
    assert choice == "v2" and "given by the user" in reason
    assert warnings and "contradicts the stored zeros" in warnings[0]


def test_symmetric_config_with_scattered_zeros_is_inconsistent() -> None:
    with pytest.raises(TmacError) as e:
        decide_format(_cfg(), [_ev([7, 7, 8, 3, 7, 7, 7, 7])], None)
    assert e.value.rule == "symmetric checkpoint has one zero value"
    assert "[3, 7, 8]" in str(e.value)


def test_autogptq_minus_one_defect_is_detected_end_to_end(tmp_path: Path) -> None:
    """AutoGPTQ stores an asymmetric zero of 0 as -1: its field and every higher field of the word turn to 1s."""
    def corrupt(mod: str, stored: np.ndarray) -> np.ndarray:
        if mod.endswith("layers.1.mlp.down_proj"):
            stored = stored.copy()
            stored[0, 5:8] = 15  # field 5 was -1; fields 6 and 7 of that word overwritten
        return stored

    write_gptq(tmp_path, convention="v1", quant={"checkpoint_format": None}, stored_override=corrupt)
    with pytest.raises(TmacError) as e:
        read(tmp_path)
    assert e.value.rule == "AutoGPTQ v1 zero -1 defect" and e.value.tensor == "blk.1.ffn_down.weight"
    assert "3 stored zero fields" in str(e.value)
    model = read(tmp_path, gptq_format="v2")  # the user may overrule
    assert model.quantization["checkpoint_format"] == "v2"


def test_gptq_format_override_changes_the_zero_points(tmp_path: Path) -> None:
    write_gptq(tmp_path, convention="v2", sym=False)
    v2 = only_quant(read(tmp_path))
    v1 = only_quant(read(tmp_path, gptq_format="v1"))
    t2, t1 = v2["blk.0.ffn_up.weight"], v1["blk.0.ffn_up.weight"]
    assert np.array_equal(t1.codes, t2.codes)
    # z one larger in v1: z' grows by exactly one scale
    assert np.allclose(t1.zeros.astype(np.float64) - t2.zeros.astype(np.float64), t2.scales.astype(np.float64),
                       rtol=2e-3, atol=1e-6)


# ----------------------------------------------------------------------------- architectures, word sizes


def test_qwen2_biases_pass_through_and_rows_are_not_permuted(tmp_path: Path) -> None:
    write_gptq(tmp_path, arch="Qwen2ForCausalLM", convention="v2")
    model = read(tmp_path)
    assert model.gguf_arch == "qwen2"
    tensors = {t.name: t for t in model.tensors()}
    w = gen_common.tiny_weights(gen_common.tiny_config("Qwen2ForCausalLM", vocab_size=64), 0)
    for role, hf in (("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj")):
        b = tensors[f"blk.0.{role}.bias"]
        assert isinstance(b, FloatTensor)
        assert np.array_equal(b.data, w[f"model.layers.0.self_attn.{hf}.bias"].astype(np.float16))
    q = tensors["blk.0.attn_q.weight"]
    ref = ref_dequant(tmp_path, "model.layers.0.self_attn.q_proj", 4, "v2")  # HF order, unpermuted
    assert np.abs(q.dequantize(np.float64) - ref).max() < 1e-3


def test_mistral_is_llama_in_gguf_and_permuted(tmp_path: Path) -> None:
    write_gptq(tmp_path, arch="MistralForCausalLM", convention="v2")
    model = read(tmp_path)
    assert model.gguf_arch == "llama"
    k = only_quant(model)["blk.1.attn_k.weight"]
    ref = ref_permute(ref_dequant(tmp_path, "model.layers.1.self_attn.k_proj", 4, "v2"), 2)
    assert np.abs(k.dequantize(np.float64) - ref).max() < 1e-3


@pytest.mark.parametrize("word", ["int8", "int16", "int64"])
def test_pack_dtype_words(tmp_path: Path, word: str) -> None:
    write_gptq(tmp_path, bits=3, word=word, quant={"pack_dtype": word})
    model = read(tmp_path)
    assert model.quantization["pack_dtype"] == word
    t = only_quant(model)["blk.0.ffn_down.weight"]
    ref = ref_dequant(tmp_path, "model.layers.0.mlp.down_proj", 3, "v2")
    assert np.abs(t.dequantize(np.float64) - ref).max() < 1e-3


def test_per_channel_group_size(tmp_path: Path) -> None:
    write_gptq(tmp_path, bits=2, group_size=-1)
    t = only_quant(read(tmp_path))["blk.0.ffn_down.weight"]
    assert t.group_size == 512 and t.scales.shape == (256, 1)


def test_quantize_config_json_is_read(tmp_path: Path) -> None:
    def move(tensors, cfg):
        qc = cfg.pop("quantization_config")
        (tmp_path / "quantize_config.json").write_text(json.dumps(qc))

    write_gptq(tmp_path, convention="v2", edit=move)
    assert read(tmp_path).quantization["checkpoint_format"] == "v2"


# ----------------------------------------------------------------------------- malformed checkpoints


def _drop(name):
    return lambda t, c: t.pop(name)


def _reshape_qzeros(t, c):
    n = "model.layers.0.mlp.up_proj.qzeros"
    t[n] = t[n][:, :-1]


def _bits(b):
    return lambda t, c: c["quantization_config"].update(bits=b)


def _group(g):
    return lambda t, c: c["quantization_config"].update(group_size=g)


def _gidx_out_of_range(t, c):
    n = "model.layers.0.self_attn.o_proj.g_idx"
    t[n] = t[n].copy()
    t[n][3] = 99


def _nan_scale(t, c):
    n = "model.layers.1.mlp.gate_proj.scales"
    t[n] = t[n].copy()
    t[n][0, 0] = np.nan


def _pack_dtype_mismatch(t, c):
    c["quantization_config"]["pack_dtype"] = "int16"


@pytest.mark.parametrize("edit, rule, tensor", [
    (_drop("model.layers.0.mlp.up_proj.scales"), "required tensor", "model.layers.0.mlp.up_proj.scales"),
    (_drop("model.layers.1.self_attn.v_proj.qweight"), "required tensor", "model.layers.1.self_attn.v_proj.qweight"),
    (_reshape_qzeros, "qzeros [G, M0*b/W]", "model.layers.0.mlp.up_proj.qzeros"),
    (_bits(2), "config matches tensors", "model.layers.0.self_attn.q_proj.qzeros"),
    (_bits(8), "bits in 1..4", None),
    (_group(128), "config matches tensors", "model.layers.0.self_attn.q_proj.scales"),
    (_gidx_out_of_range, "g_idx range", "model.layers.0.self_attn.o_proj.g_idx"),
    (_nan_scale, "finite scales", "model.layers.1.mlp.gate_proj.scales"),
    (_pack_dtype_mismatch, "config matches tensors", "model.layers.0.self_attn.q_proj.qweight"),
])
def test_malformed_checkpoint_names_file_tensor_and_rule(tmp_path: Path, edit, rule: str, tensor: str | None) -> None:
    write_gptq(tmp_path, edit=edit)
    with pytest.raises(TmacError) as e:
        list(read(tmp_path).tensors())
    err = e.value
    assert err.rule == rule, str(err)
    assert err.file and (err.tensor == tensor if tensor else True), str(err)
    assert "\n" not in str(err)


def test_truncated_safetensors_is_reported(tmp_path: Path) -> None:
    write_gptq(tmp_path)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(TmacError) as e:
        read(tmp_path)
    assert e.value.rule == "complete file" and e.value.file == str(f) and e.value.tensor


def test_config_and_quantize_config_must_agree(tmp_path: Path) -> None:
    write_gptq(tmp_path, edit=lambda t, c: (tmp_path.mkdir(exist_ok=True),
                                            (tmp_path / "quantize_config.json").write_text('{"bits": 2}')))
    with pytest.raises(TmacError) as e:
        read(tmp_path)
    assert e.value.rule == "consistent quantisation config" and "quantize_config.json" in e.value.file


# ----------------------------------------------------------------------------- laziness


def _big_gptq(folder: Path) -> int:
    """A 2-layer hidden-1024 / ffn-4096 random 4-bit checkpoint; returns the largest layer's code bytes."""
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 1024,
           "intermediate_size": 4096, "num_attention_heads": 8, "num_key_value_heads": 8, "num_hidden_layers": 2,
           "vocab_size": 64, "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128,
                                                     "sym": False, "checkpoint_format": "gptq_v2"}}
    rng = np.random.default_rng(0)
    tensors: dict[str, np.ndarray] = {"model.embed_tokens.weight": np.zeros((64, 1024), np.float16)}
    for mod in gen_common.projection_names(cfg):
        m0, k = gen_common.projection_shape(cfg, mod)
        tensors[mod + ".qweight"] = rng.integers(-2**31, 2**31, (k // 8, m0), dtype=np.int64).astype(np.int32)
        tensors[mod + ".qzeros"] = rng.integers(-2**31, 2**31, (k // 128, m0 // 8), dtype=np.int64).astype(np.int32)
        tensors[mod + ".scales"] = rng.random((k // 128, m0)).astype(np.float16)
    gen_common.write_model_dir(folder, cfg, tensors, tokenizer=False, shards=2)
    return 4096 * 1024


def test_reading_is_lazy(tmp_path: Path) -> None:
    largest = _big_gptq(tmp_path)
    tracemalloc.start()
    try:
        model = read(tmp_path)
        after_open = tracemalloc.get_traced_memory()[0]
        total = 0
        for t in model.tensors():
            total += t.codes.nbytes if isinstance(t, QuantTensor) else t.data.nbytes
            del t
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total > 7 * largest  # the model is several times its largest tensor ...
    assert after_open < largest  # ... opening it loads no weights ...
    assert peak < 4 * largest, (peak, largest)  # ... and iterating holds about one tensor at a time


def test_gptq_fixtures_are_reproducible(capsys: pytest.CaptureFixture) -> None:
    """Regenerating the committed GPTQ/float fixtures gives the same bytes (needs the dev-time tokenizers)."""
    pytest.importorskip("tokenizers")
    import make_fixtures

    assert make_fixtures.main(["--check", "--only", "gen_gptq"]) == 0, capsys.readouterr().out


# ----------------------------------------------------------------------------- a real producer: AutoGPTQ 0.7.1


def _close_to_producer(got: np.ndarray, t: QuantTensor, theirs: np.ndarray) -> bool:
    """AutoGPTQ rounds (q - z) * s once to float16; we round z' once: both within half an ulp each."""
    zp = np.repeat(t.zeros.astype(np.float64), t.group_size, axis=1) if t.zeros is not None else 0.0
    return bool(np.all(np.abs(got - theirs) <= 2.0 ** -11 * (np.abs(theirs) + np.abs(zp)) + 1e-12))


def test_autogptq_checkpoint_equals_autogptqs_own_dequantisation() -> None:
    folder = FIXTURES / "autogptq_4bit"
    model = read(folder)
    assert model.quantization["checkpoint_format"] == "v1" and model.quantization["zero_point"]
    ref = np.load(folder / "autogptq_dequant.npz")
    tensors = only_quant(model)
    assert len(tensors) == 14
    for prefix, name, heads in (("model.layers.0.self_attn.q_proj", "blk.0.attn_q.weight", 4),
                                ("model.layers.0.self_attn.k_proj", "blk.0.attn_k.weight", 2),
                                ("model.layers.1.mlp.down_proj", "blk.1.ffn_down.weight", None)):
        theirs = ref[prefix].astype(np.float64)
        if heads:
            theirs = ref_permute(theirs, heads)
        t = tensors[name]
        assert _close_to_producer(t.dequantize(np.float64), t, theirs), name


def test_autogptq_three_bit_packing_equals_autogptqs_own_dequantisation(tmp_path: Path) -> None:
    """AutoGPTQ's 3-bit packer (fields straddling int32 words) read by the bit-stream rule."""
    z = np.load(FIXTURES / "autogptq_3bit_layers.npz")
    prefixes = sorted({k.rsplit(".", 1)[0] for k in z.files})
    cfg = gen_common.tiny_config(vocab_size=64)
    tensors = {f"{p}.{t}": z[f"{p}.{t}"] for p in prefixes for t in ("qweight", "qzeros", "scales", "g_idx")}
    gen_common.write_model_dir(tmp_path, cfg, tensors, tokenizer=False,
                               extra_json={"quantize_config.json": {"bits": 3, "group_size": 128, "sym": False,
                                                                    "desc_act": False, "quant_method": "gptq"}})
    got = only_quant(read(tmp_path))
    for p in prefixes:
        name = {"model.layers.0.self_attn.k_proj": "blk.0.attn_k.weight",
                "model.layers.1.mlp.down_proj": "blk.1.ffn_down.weight"}[p]
        theirs = z[f"{p}.dequant"].astype(np.float64)
        if "k_proj" in p:
            theirs = ref_permute(theirs, 2)
        t = got[name]
        assert t.bits == 3 and _close_to_producer(t.dequantize(np.float64), t, theirs), name
