"""Written files, parsed back: tensor infos, offsets, sizes, types, metadata, and every byte.

Each quantised tensor's stored bytes must equal ``tmac_convert.pack`` of the source tensor with the
tiles the file records; float tensors must equal the source cast to F16 (2-D) or F32 (1-D).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest

from tmac_convert import pack
from tmac_convert.convert import convert, kcfg_path_for
from tmac_convert.errors import TmacError
from tmac_convert.format import RUNTIMES, parse
from tmac_convert.layouts import Kcfg, blob_nbytes, default_tiles
from tmac_convert.readers.base import FloatTensor
from tmac_convert.format.tensor import QuantTensor
from tmac_convert.format.encodings import Encoding, get_encoding

from . import _tmac_synth as S


def _convert(tmp_path: Path, name: str = "out.gguf", **kw):
    src = S.write_synth(tmp_path / "src", **kw.pop("spec", {}))
    out = tmp_path / name
    kw.setdefault("verify", False)
    report = convert(str(src), out, **kw)
    return src, out, report


def _check_gguf_against_source(out: Path, src: Path, runtime: str = "tmac") -> None:
    """Every structural fact of the GGUF and every tensor's bytes, against the synthetic source."""
    gf = parse(out)
    rt = RUNTIMES[runtime]
    names = gf.get("tmac.tensor_names")
    tiles = dict(zip(names, zip(gf.get("tmac.tensor_bm").tolist(), gf.get("tmac.tensor_kfactor").tolist())))
    expected = list(S.expected_tensors(src))
    assert [t.name for t in gf.tensors] == [t.name for t in expected]
    # data section starts aligned right after the tensor infos; tensors are aligned, in order, disjoint
    assert gf.data_offset % gf.alignment == 0
    end = gf.data_offset
    raw = out.read_bytes()
    for rec, src_t in zip(gf.tensors, expected):
        assert rec.offset % gf.alignment == 0 and rec.offset >= end
        if isinstance(src_t, QuantTensor):
            m0, k = src_t.shape
            assert rec.ne == (k, m0)
            assert rec.type_id == rt.type_ids[src_t.bits]
            bm, kf = tiles[rec.name]
            dt = default_tiles(m0, k, src_t.bits, None if src_t.per_tensor_scale else src_t.group_size)
            assert (bm, kf) == (dt.bm, dt.kfactor)
            want = pack(src_t.codes, src_t.scales, src_t.zeros, bits=src_t.bits, bm=bm, kfactor=kf)
            assert want.size == blob_nbytes(m0, k, src_t.bits, src_t.group_size, src_t.zeros is not None,
                                            src_t.per_tensor_scale)
        else:
            assert rec.ne == tuple(reversed(src_t.data.shape))
            if src_t.data.ndim == 2:
                assert rec.type_id == gguf.GGMLQuantizationType.F16
                want = np.frombuffer(src_t.data.astype("<f2").tobytes(), np.uint8)
            else:
                assert rec.type_id == gguf.GGMLQuantizationType.F32
                want = np.frombuffer(src_t.data.astype("<f4").tobytes(), np.uint8)
        got = np.frombuffer(raw[rec.offset:rec.offset + want.size], np.uint8)
        assert np.array_equal(got, want), rec.name
        end = rec.offset + want.size
    assert end <= gf.file_size


def test_gguf_tensors_offsets_types_and_bytes(tmp_path):
    src, out, report = _convert(tmp_path)
    _check_gguf_against_source(out, src)
    assert report.out_nbytes == sum(t.out_nbytes for t in report.tensors)
    assert {t.type for t in report.tensors} == {"I2", "F16", "F32"}


def test_gguf_metadata_hparams_tokenizer_and_tmac_keys(tmp_path):
    src, out, _ = _convert(tmp_path)
    gf = parse(out)
    g = gf.get
    assert g("general.architecture") == "llama"
    assert g("general.file_type") == 38
    assert (g("llama.block_count"), g("llama.embedding_length"), g("llama.feed_forward_length")) == (2, 64, 128)
    assert (g("llama.attention.head_count"), g("llama.attention.head_count_kv")) == (4, 2)
    assert g("llama.rope.dimension_count") == 16 and g("llama.rope.freq_base") == 500000.0
    assert g("llama.context_length") == 512 and g("llama.vocab_size") == 40
    # tokenizer through the gguf package's vocab helpers: BPE, Llama 3 pre-tokenizer, merges, specials
    assert g("tokenizer.ggml.model") == "gpt2" and g("tokenizer.ggml.pre") == "llama-bpe"
    toks = g("tokenizer.ggml.tokens")
    assert len(toks) == 40 and toks[-2:] == list(S.SPECIALS)
    types = g("tokenizer.ggml.token_type").tolist()
    assert types[-2:] == [gguf.TokenType.CONTROL] * 2 and set(types[:-2]) == {gguf.TokenType.NORMAL}
    assert len(g("tokenizer.ggml.merges")) > 0
    assert g("tokenizer.ggml.bos_token_id") == 38 and g("tokenizer.ggml.eos_token_id") == 39
    assert "messages" in g("tokenizer.chat_template")
    # self-describing T-MAC keys
    assert g("tmac.bits") == 2 and g("tmac.group_size") == 32 and g("tmac.zero_point") is True
    assert g("tmac.one_scale") is False and g("tmac.runtime") == "tmac" and g("tmac.layout") == "A"
    assert g("tmac.act_group_size") == 32  # group 32 admits kfactor 8 only, hence activation groups of 32
    assert gf.kv["tmac.tensor_bm"].sub_type == gguf.GGUFValueType.UINT32
    kc = Kcfg.parse(g("tmac.kcfg"))
    assert kcfg_path_for(out).read_text() == g("tmac.kcfg")
    for t in S.expected_tensors(src):
        if isinstance(t, QuantTensor):
            sec = kc.lookup(*t.shape, t.bits)
            assert sec.problems(*t.shape, t.bits, group_size=32, zero_point=True, per_tensor=False) == []
            assert sec.lut_scales_size == t.shape[1] // 32


def test_aug2024_runtime_uses_its_type_ids_and_file_type(tmp_path):
    src, out, _ = _convert(tmp_path, runtime="aug2024")
    gf = parse(out)
    assert gf.get("general.file_type") == 32 and gf.get("tmac.runtime") == "aug2024"
    assert {t.type_id for t in gf.tensors if t.name.endswith("attn_q.weight")} == {30}  # I2 = 30 there
    _check_gguf_against_source(out, src, runtime="aug2024")


@pytest.mark.parametrize("bits", [1, 3, 4])
def test_other_bit_widths(tmp_path, bits):
    spec = {"bits": bits, "hidden": 128, "ffn": 256, "group_size": 64}
    src, out, _ = _convert(tmp_path, spec=spec)
    _check_gguf_against_source(out, src)
    assert {t.type_id for t in parse(out).tensors if t.name.endswith("ffn_up.weight")} == {35 + bits}


def test_per_tensor_scale_model(tmp_path):
    src, out, _ = _convert(tmp_path, spec={"per_tensor": True, "zero_point": False})
    _check_gguf_against_source(out, src)
    gf = parse(out)
    assert gf.get("tmac.one_scale") is True and gf.get("tmac.group_size") == 0
    assert gf.get("tmac.zero_point") is False
    kc = Kcfg.parse(gf.get("tmac.kcfg"))
    assert {e.scales_size for e in kc} == {1}


def test_the_gguf_package_cannot_read_tmac_types(tmp_path):
    """Why our own tensor-info parser exists: gguf refuses id 37 (I2) and calls 39 (I4) MXFP4."""
    _, out, _ = _convert(tmp_path)
    with pytest.raises(ValueError):
        gguf.GGUFReader(out)
    assert gguf.GGMLQuantizationType(RUNTIMES["tmac"].type_ids[4]).name == "MXFP4"


def test_output_is_identical_for_any_thread_count(tmp_path):
    outs = []
    for threads in (1, 2, 3):
        _, out, _ = _convert(tmp_path / f"t{threads}", threads=threads, spec={"layers": 3})
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]


def test_npz_members_manifest_and_bytes(tmp_path):
    src, out, _ = _convert(tmp_path, "out.npz", format="npz")
    with zipfile.ZipFile(out) as zf:
        man = json.loads(zf.read("manifest.json"))
        assert zf.read("tokenizer/tokenizer.json") == (src / "tokenizer.json").read_bytes()
    assert man["format"] == "tmac-convert.npz" and man["format_version"] == 1
    assert man["tmac"]["bits"] == 2 and Kcfg.parse(man["tmac"]["kcfg"])
    arrays = np.load(out)
    descs = {d["name"]: d for d in man["tensors"]}
    for t in S.expected_tensors(src):
        d = descs[t.name]
        a = arrays[d["member"][:-4]]
        if isinstance(t, QuantTensor):
            want = pack(t.codes, t.scales, t.zeros, bits=t.bits, bm=d["bm"], kfactor=d["kfactor"])
            assert a.dtype == np.uint8 and np.array_equal(a, want)
            assert d["nbytes"] == want.size and d["encoding"] == "tmac"
            assert d["scales_size"] == t.scales.size * 2
        else:
            assert a.shape == t.data.shape
            assert np.array_equal(a, t.data.astype(np.float16 if t.data.ndim == 2 else np.float32))


def test_llama3_rope_scaling_adds_rope_freqs(tmp_path):
    rs = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
    _, out, _ = _convert(tmp_path, spec={"rope_scaling": rs})
    gf = parse(out)
    rec = gf.tensor("rope_freqs.weight")
    assert rec.type_id == gguf.GGMLQuantizationType.F32 and rec.ne == (8,)
    f = np.frombuffer(out.read_bytes()[rec.offset:rec.offset + 32], "<f4")
    # float64 reference of the llama3 rule: short wavelengths keep 1, long ones get the factor
    dim, base = 16, 500000.0
    wl = 2 * np.pi / (1.0 / base ** (np.arange(0, dim, 2) / dim))
    assert f[0] == 1.0 and f[-1] == 8.0
    mid = (wl >= 64 / 4) & (wl <= 64 / 1)
    s = (64 / wl[mid] - 1) / 3
    np.testing.assert_allclose(f[mid], 1 / ((1 - s) / 8 + s), rtol=1e-6)


def test_unknown_pre_tokenizer_is_refused_unless_named(tmp_path):
    with pytest.raises(TmacError, match="--tokenizer-pre"):
        _convert(tmp_path / "a", spec={"pre_regex": r"\p{L}+|\s+"})
    assert not (tmp_path / "a" / "out.gguf").exists()
    _, out, _ = _convert(tmp_path / "b", spec={"pre_regex": r"\p{L}+|\s+"}, tokenizer_pre="gpt-2")
    assert parse(out).get("tokenizer.ggml.pre") == "gpt-2"


def test_missing_tokenizer_writes_none_and_says_so(tmp_path):
    _, out, report = _convert(tmp_path, spec={"tokenizer": False})
    assert parse(out).get("tokenizer.ggml.model") == "none"
    assert any("no tokenizer" in n for n in report.notes)


def test_encodings_are_registered_by_name():
    assert {"tmac", "f16", "f32"} <= set(Encoding.registry)
    with pytest.raises(TmacError, match="unknown output encoding"):
        get_encoding("q9_9")


def test_f16_overflow_is_an_error_naming_the_tensor():
    from tmac_convert.format.encodings import TensorPlan

    enc = get_encoding("f16")
    plan = TensorPlan("big.weight", "f16", (2, 2))
    with pytest.raises(TmacError, match="big.weight.*overflows"):
        enc.encode(FloatTensor("big.weight", np.array([[1.0, 7e4], [0, 0]], np.float32)), plan)


def test_sentencepiece_tokenizer_needs_its_package(tmp_path):
    import importlib.util

    if importlib.util.find_spec("sentencepiece") is not None:
        pytest.skip("sentencepiece is installed here")
    src = S.write_synth(tmp_path / "src", tokenizer=False)
    (src / "tokenizer.model").write_bytes(b"\0" * 16)
    with pytest.raises(TmacError, match="needs the sentencepiece package"):
        convert(str(src), tmp_path / "o.gguf", verify=False)
    assert not (tmp_path / "o.gguf").exists()


def test_bpe_without_merges_is_refused(tmp_path):
    src = S.write_synth(tmp_path / "src")
    tj = json.loads((src / "tokenizer.json").read_text())
    tj["model"]["merges"] = []
    (src / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(TmacError, match="without merges"):
        convert(str(src), tmp_path / "o.gguf", verify=False)
