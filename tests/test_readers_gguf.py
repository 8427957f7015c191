"""GGUF input reader: exact Q4_0/Q4_1/TQ1_0/TQ2_0 mappings, re-quantised float/other types, and
malformed files failing with a TmacError that names file, tensor and rule."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tmac_convert.errors import TmacError
from tmac_convert.readers.base import FloatTensor
from tmac_convert.format.gguf_file import scan as scan_gguf_header
from tmac_convert.readers.gguf_source import (GGUFSourceReader, decode_q4_0, decode_q4_1, decode_tq1_0,
                                              decode_tq2_0, is_tmac_gguf)
from tmac_convert.archs.naming import is_projection
from tmac_convert.quantize import quantize_rtn
from tmac_convert.format.tensor import QuantTensor

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import gen_gguf  # noqa: E402

Q = gguf.GGMLQuantizationType
EXACT = {"gguf_q4_0": Q.Q4_0, "gguf_q4_1": Q.Q4_1, "gguf_tq1_0": Q.TQ1_0, "gguf_tq2_0": Q.TQ2_0}
EPS32 = float(np.finfo(np.float32).eps)


def source_tensors(path: Path) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def read_all(path: Path, **options):
    model = GGUFSourceReader(**options).open(path)
    return model, list(model.tensors())


def assert_tmac_error(exc: pytest.ExceptionInfo, *, file: Path, rule: str, tensor: str | None = None) -> None:
    e = exc.value
    assert type(e) is TmacError or isinstance(e, TmacError)
    assert e.file == str(file) and str(file) in str(e)
    assert e.rule == rule, (e.rule, str(e))
    if tensor is not None:
        assert e.tensor == tensor and tensor in str(e)


# ------------------------------------------------------------------------------------ fixtures


@pytest.mark.parametrize("folder", sorted(EXACT))
def test_exact_fixture_equals_gguf_dequantize(folder: str) -> None:
    """Every projection maps without re-quantisation; its dequantisation is gguf's (Q4_1: within rounding)."""
    path = FIXTURES / folder / "model.gguf"
    qtype = EXACT[folder]
    src = source_tensors(path)
    model, tensors = read_all(path)
    assert model.format == "gguf" and model.architecture == "llama" and model.gguf_arch == "llama"
    assert any("exactly" in n for n in model.notes)
    n_quant = 0
    for t in tensors:
        ref = gguf.quants.dequantize(src[t.name].data, src[t.name].tensor_type).astype(np.float64)
        if isinstance(t, QuantTensor):
            n_quant += 1
            assert is_projection(t.name) and src[t.name].tensor_type == qtype
            assert (t.bits, t.group_size) == ((4, 32) if qtype in (Q.Q4_0, Q.Q4_1) else (2, 256))
            assert (t.zeros is not None) == (qtype == Q.Q4_1)
            got = t.dequantize(np.float64)
            if qtype == Q.Q4_1:
                # gguf computes fl(fl(d*q) + m) in float32; ours is exact up to z' rounding
                d = np.repeat(t.scales.astype(np.float64), 32, axis=1)
                bound = 2 * EPS32 * (np.abs(d * t.codes) + np.abs(ref) + 8 * np.abs(d))
                assert np.all(np.abs(got - ref) <= bound)
            else:
                np.testing.assert_array_equal(got, ref)
            if qtype in (Q.TQ1_0, Q.TQ2_0):
                assert set(np.unique(t.codes)) <= {1, 2, 3}
        else:
            assert isinstance(t, FloatTensor) and not is_projection(t.name)
            np.testing.assert_array_equal(np.asarray(t.data, np.float64), ref)
    assert n_quant == 14


def test_requantisation_options_are_reported_unused_for_exact_files() -> None:
    model, tensors = read_all(FIXTURES / "gguf_q4_0" / "model.gguf", bits=2)
    assert any("option(s) bits not used" in n for n in model.notes)
    assert all(t.bits == 4 for t in tensors if isinstance(t, QuantTensor))


def _q4_1_reference(raw_row: bytes) -> np.ndarray:
    """Independent float64 Q4_1 decode of one row, block by block with struct (no numpy views)."""
    out = []
    for off in range(0, len(raw_row), 20):
        d, m = struct.unpack_from("<ee", raw_row, off)
        qs = raw_row[off + 4:off + 20]
        q = [b & 0x0F for b in qs] + [b >> 4 for b in qs]
        out += [float(d) * v + float(m) for v in q]
    return np.array(out)


def test_q4_1_zero_offsets_are_exact_against_float64_reference() -> None:
    path = FIXTURES / "gguf_q4_1" / "model.gguf"
    src = source_tensors(path)
    _, tensors = read_all(path)
    t = next(x for x in tensors if x.name == "blk.1.ffn_down.weight")
    raw = np.asarray(src[t.name].data)
    got = t.dequantize(np.float64)
    for row in (0, 7, t.shape[0] - 1):
        np.testing.assert_array_equal(got[row], _q4_1_reference(raw[row].tobytes()))


def test_metadata_is_plain_python_and_complete() -> None:
    path = FIXTURES / "gguf_tq2_0" / "model.gguf"
    reader = GGUFSourceReader()
    model = reader.open(path)
    md = model.gguf_metadata
    raw = gguf.GGUFReader(path)
    assert set(md) == {k for k in raw.fields if not k.startswith("GGUF.")}
    assert md["general.architecture"] == "llama" and md["llama.block_count"] == 2
    assert isinstance(md["llama.rope.freq_base"], float)
    toks = md["tokenizer.ggml.tokens"]
    assert isinstance(toks, list) and all(isinstance(x, str) for x in toks) and len(toks) == 512
    assert all(isinstance(x, int) for x in md["tokenizer.ggml.token_type"])
    assert md["tokenizer.ggml.model"] == "gpt2" and len(md["tokenizer.ggml.merges"]) > 0
    types = reader.metadata_types(model)
    assert types["tokenizer.ggml.tokens"] == (gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING)
    assert types["llama.block_count"] == (gguf.GGUFValueType.UINT32,)


@pytest.mark.parametrize("options,want", [
    ({}, (4, 128, True)),  # the float reader's defaults
    ({"bits": 4, "group_size": 64, "zero_point": False}, (4, 64, False)),
    ({"bits": 2, "group_size": -1, "zero_point": True}, (2, -1, True)),  # one group per row
])
def test_f16_projections_are_requantised_with_rtn(options: dict, want: tuple) -> None:
    path = FIXTURES / "gguf_f16" / "model.gguf"
    src = source_tensors(path)
    bits, gs, zp = want
    model, tensors = read_all(path, **options)
    assert any(f"re-quantised by round-to-nearest to {bits}-bit" in n for n in model.notes)
    assert (model.quantization["bits"], model.quantization["zero_point"]) == (bits, zp)
    n_quant = 0
    for t in tensors:
        ref = src[t.name].data
        if isinstance(t, QuantTensor):
            n_quant += 1
            assert (t.bits, t.group_size, t.zeros is not None) == (bits, t.shape[1] if gs == -1 else gs, zp)
            w, stats = quantize_rtn(t.name, np.asarray(ref, np.float32), bits=bits, group_size=gs, zero_point=zp)
            np.testing.assert_array_equal(t.codes, w.codes)
            np.testing.assert_array_equal(t.scales, w.scales)
            assert t.meta["source_type"] == "F16" and t.meta["quant_stats"] == stats
            assert stats["nmse"] < (0.02 if bits == 4 else 0.5)  # 2-bit min-max per row of a Gaussian: ~0.3
            assert t.meta["note"].startswith(f"{t.name}: F16 re-quantised RTN {bits}-bit, nmse")
        else:
            assert t.data.dtype == ref.dtype
            np.testing.assert_array_equal(t.data, ref)
    assert n_quant == 7


@pytest.mark.parametrize("options,rule,tensor", [
    ({"bits": 8}, "bits in 1..4", None),
    ({"bits": "x"}, "quantisation options", None),
    ({"group_size": 100}, "K % group_size == 0", "blk.0.attn_q.weight"),
])
def test_bad_requantisation_options(options: dict, rule: str, tensor: str | None) -> None:
    path = FIXTURES / "gguf_f16" / "model.gguf"
    with pytest.raises(TmacError) as exc:
        GGUFSourceReader(**options).open(path)
    assert_tmac_error(exc, file=path, rule=rule, tensor=tensor)


def test_fixtures_are_deterministic_and_committed(tmp_path: Path) -> None:
    gen_gguf.generate(tmp_path)
    for folder in gen_gguf.FIXTURES:
        assert (tmp_path / folder / "model.gguf").read_bytes() == (FIXTURES / folder / "model.gguf").read_bytes()


# ------------------------------------------------------------------------ decoders (properties)


def _rand_blocks(data: st.DataObject, rows: int, nblocks: int, type_size: int, d_offsets: tuple[int, ...],
                 field_mask: int | None = None) -> np.ndarray:
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(rows, nblocks, type_size), dtype=np.uint8)
    if field_mask is not None:  # TQ2_0: keep every 2-bit field in 0..2
        fields = np.stack([(raw >> s) & 3 for s in (0, 2, 4, 6)])
        fields = np.minimum(fields, 2)
        raw = (fields[0] | fields[1] << 2 | fields[2] << 4 | fields[3] << 6).astype(np.uint8)
    for off in d_offsets:  # finite fp16 scales
        d = rng.uniform(-2.0, 2.0, size=(rows, nblocks)).astype(np.float16)
        raw[..., off:off + 2] = d.view(np.uint8).reshape(rows, nblocks, 2)
    return raw.reshape(rows, nblocks * type_size)


@settings(max_examples=25)
@given(st.data(), st.integers(1, 5), st.integers(1, 4))
def test_q4_decoders_match_gguf(data: st.DataObject, rows: int, nblocks: int) -> None:
    raw = _rand_blocks(data, rows, nblocks, 18, (0,))
    codes, d = decode_q4_0(raw)
    want = gguf.quants.dequantize(raw, Q.Q4_0)
    np.testing.assert_array_equal((codes.astype(np.float32) - 8) * np.repeat(d, 32, axis=1), want)
    raw = _rand_blocks(data, rows, nblocks, 20, (0, 2))
    codes, d, m = decode_q4_1(raw)
    want = gguf.quants.dequantize(raw, Q.Q4_1)
    np.testing.assert_array_equal(codes.astype(np.float32) * np.repeat(d, 32, axis=1) + np.repeat(m, 32, axis=1),
                                  want)


@settings(max_examples=25)
@given(st.data(), st.integers(1, 4), st.integers(1, 3))
def test_ternary_decoders_match_gguf(data: st.DataObject, rows: int, nblocks: int) -> None:
    raw = _rand_blocks(data, rows, nblocks, 66, (64,), field_mask=3)
    t, d = decode_tq2_0(raw)
    assert t.max() <= 2
    np.testing.assert_array_equal((t.astype(np.float32) - 1) * np.repeat(d, 256, axis=1),
                                  gguf.quants.dequantize(raw, Q.TQ2_0))
    raw = _rand_blocks(data, rows, nblocks, 54, (52,))
    t, d = decode_tq1_0(raw)
    assert t.max() <= 2
    np.testing.assert_array_equal((t.astype(np.float32) - 1) * np.repeat(d, 256, axis=1),
                                  gguf.quants.dequantize(raw, Q.TQ1_0))


@settings(max_examples=20)
@given(st.lists(st.sampled_from([-1, 0, 1]), min_size=256, max_size=256))
def test_tq_quantize_round_trips_exact_trits(trits: list[int]) -> None:
    """A ternary row quantised by gguf decodes to the same trits (TQ1_0 base-3 packing included)."""
    w = np.array(trits, dtype=np.float32)[None, :] * np.float32(0.5)
    w[0, 0] = 0.5  # the block max sets d = 0.5
    for qtype, dec in ((Q.TQ1_0, decode_tq1_0), (Q.TQ2_0, decode_tq2_0)):
        t, d = dec(gguf.quants.quantize(w, qtype))
        np.testing.assert_array_equal(t[0].astype(int) - 1, np.rint(w[0] / 0.5).astype(int))
        assert d[0, 0] == np.float32(0.5)


# ------------------------------------------------------------------------------ malformed files


def small_gguf(path: Path, tensors: dict[str, tuple[np.ndarray, Q]], **kw) -> Path:
    cfg = {"max_position_embeddings": 64, "hidden_size": 256, "num_hidden_layers": 1, "intermediate_size": 512,
           "num_attention_heads": 4, "num_key_value_heads": 4, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
           "vocab_size": 8}
    return gen_gguf.write_gguf(path, cfg, tensors, tokenizer=False, **kw)


@pytest.fixture
def tiny_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    return small_gguf(tmp_path / "tiny.gguf", {
        "blk.0.attn_norm.weight": (np.ones(256, np.float32), Q.F32),
        "blk.0.attn_q.weight": (rng.standard_normal((64, 256)).astype(np.float32), Q.Q4_0),
        "blk.0.ffn_up.weight": (gen_gguf.ternarize(rng.standard_normal((32, 256)).astype(np.float32)), Q.TQ2_0),
    })


def _tensor_info_offset(data: bytes, name: str) -> int:
    """Byte offset just after ``name`` in the tensor-info section (n_dims follows)."""
    key = struct.pack("<Q", len(name)) + name.encode()
    pos = data.rindex(key)
    return pos + len(key)


def _patched(src: Path, dst: Path, edits: list[tuple[int, bytes]]) -> Path:
    data = bytearray(src.read_bytes())
    for off, b in edits:
        data[off:off + len(b)] = b
    dst.write_bytes(bytes(data))
    return dst


def test_every_truncation_fails_cleanly(tiny_file: Path, tmp_path: Path) -> None:
    data = tiny_file.read_bytes()
    header = scan_gguf_header(tiny_file)
    cuts = sorted({0, 3, 4, 8, 16, 23, 24, 30, header.data_offset - 1, header.data_offset, len(data) - 1,
                   *np.linspace(25, len(data) - 2, 40).astype(int).tolist()})
    cut_file = tmp_path / "cut.gguf"
    for n in cuts:
        cut_file.write_bytes(data[:n])
        assert GGUFSourceReader.detect(cut_file) == (n >= 4)  # claimed by magic, then refused with the reason
        with pytest.raises(TmacError) as exc:
            GGUFSourceReader().open(cut_file)
        assert exc.value.file == str(cut_file), n
        assert exc.value.rule in {"header within file", "tensor data within file", "header counts within file",
                                  "GGUF magic"}, (n, exc.value.rule, str(exc.value))
        if exc.value.rule == "tensor data within file":
            assert exc.value.tensor and "truncated" in str(exc.value)


def test_lying_counts_fail_without_hanging(tiny_file: Path, tmp_path: Path) -> None:
    for off, what in ((8, "tensor count"), (16, "kv count")):
        bad = _patched(tiny_file, tmp_path / "lie.gguf", [(off, struct.pack("<Q", 2**62))])
        with pytest.raises(TmacError) as exc:
            GGUFSourceReader().open(bad)
        assert_tmac_error(exc, file=bad, rule="header counts within file")


@pytest.mark.parametrize("edit,rule", [
    ("type=99", "supported GGML type"),
    ("dim0=100", "row length % block size == 0"),
    ("dim1=4096", "tensor data within file"),
    ("offset=32", "non-overlapping tensor data"),
    ("offset=1", "aligned tensor data"),
    ("ndims=7", "tensor dimensions"),
])
def test_lying_tensor_infos(tiny_file: Path, tmp_path: Path, edit: str, rule: str) -> None:
    data = tiny_file.read_bytes()
    name = "blk.0.ffn_up.weight"
    p = _tensor_info_offset(data, name)  # n_dims u32, ne0 u64, ne1 u64, type u32, offset u64
    field, value = edit.split("=")
    off, fmt = {"ndims": (p, "<I"), "dim0": (p + 4, "<Q"), "dim1": (p + 12, "<Q"), "type": (p + 20, "<I"),
                "offset": (p + 24, "<Q")}[field]
    bad = _patched(tiny_file, tmp_path / "lie.gguf", [(off, struct.pack(fmt, int(value)))])
    with pytest.raises(TmacError) as exc:
        GGUFSourceReader().open(bad)
    assert_tmac_error(exc, file=bad, rule=rule, tensor=name)


def test_non_ternary_tq2_0_code_is_refused(tiny_file: Path, tmp_path: Path) -> None:
    header = scan_gguf_header(tiny_file)
    rec = next(t for t in header.tensors if t.name == "blk.0.ffn_up.weight")
    start = rec.offset
    bad = _patched(tiny_file, tmp_path / "code3.gguf", [(start + 5, bytes([0xFF]))])  # four fields of 3
    model = GGUFSourceReader().open(bad)
    with pytest.raises(TmacError) as exc:
        list(model.tensors())
    assert_tmac_error(exc, file=bad, rule="ternary codes in range", tensor="blk.0.ffn_up.weight")


def test_nan_scale_is_refused_with_file_and_tensor(tiny_file: Path, tmp_path: Path) -> None:
    header = scan_gguf_header(tiny_file)
    rec = next(t for t in header.tensors if t.name == "blk.0.attn_q.weight")
    nan16 = np.array([np.nan], dtype=np.float16).tobytes()
    bad = _patched(tiny_file, tmp_path / "nan.gguf", [(rec.offset + 18 * 3, nan16)])
    model = GGUFSourceReader().open(bad)
    with pytest.raises(TmacError) as exc:
        list(model.tensors())
    assert_tmac_error(exc, file=bad, rule="finite scales", tensor="blk.0.attn_q.weight")


@pytest.mark.parametrize("qtype,rule", [(Q.Q8_1, "supported GGML type"), (Q.I32, "supported GGML type")])
def test_unsupported_types(tmp_path: Path, qtype: Q, rule: str) -> None:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    path = tmp_path / "u.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    raw = np.zeros((8, 256 // block * type_size), dtype=np.uint8)
    w.add_tensor("blk.0.attn_q.weight", raw, raw_dtype=qtype)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(TmacError) as exc:
        GGUFSourceReader().open(path)
    assert_tmac_error(exc, file=path, rule=rule, tensor="blk.0.attn_q.weight")


def test_other_quant_types_requantise(tmp_path: Path) -> None:
    """Q8_0 and a K-quant projection: gguf.quants.dequantize then RTN, stated in the notes."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((32, 256)).astype(np.float32)
    q2k_raw = rng.integers(0, 256, size=(32, gguf.GGML_QUANT_SIZES[Q.Q2_K][1]), dtype=np.uint8)
    q2k_raw[:, 80:84] = np.array([0.01, 0.001], dtype=np.float16).view(np.uint8)  # finite d, dmin
    path = tmp_path / "mixed.gguf"
    gw = gguf.GGUFWriter(str(path), "llama")
    gw.add_tensor("blk.0.attn_v.weight", gguf.quants.quantize(w, Q.Q8_0), raw_dtype=Q.Q8_0)
    gw.add_tensor("blk.0.ffn_down.weight", q2k_raw, raw_dtype=Q.Q2_K)
    gw.write_header_to_file(); gw.write_kv_data_to_file(); gw.write_tensors_to_file(); gw.close()
    model, tensors = read_all(path, bits=2, group_size=128, zero_point=True)
    assert any("Q2_K (1), Q8_0 (1) projections are dequantised with gguf.quants.dequantize" in n for n in model.notes)
    src = source_tensors(path)
    for t in tensors:
        deq = gguf.quants.dequantize(src[t.name].data, src[t.name].tensor_type)
        want, _ = quantize_rtn(t.name, deq, bits=2, group_size=128, zero_point=True)
        np.testing.assert_array_equal(t.codes, want.codes)
        np.testing.assert_array_equal(t.zeros, want.zeros)


def test_tmac_files_are_left_to_the_tmac_reader(tiny_file: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    keyed = small_gguf(tmp_path / "keyed.gguf", {"blk.0.attn_q.weight": (rng.standard_normal((8, 256)).astype(
        np.float32), Q.Q4_0)}, extra_kv={"tmac.kcfg": "[x]"})
    data = tiny_file.read_bytes()
    p = _tensor_info_offset(data, "blk.0.attn_q.weight")
    typed = _patched(tiny_file, tmp_path / "i2.gguf", [(p + 20, struct.pack("<I", 37))])  # T-MAC I2
    for path in (keyed, typed):
        assert is_tmac_gguf(path)
        assert not GGUFSourceReader.detect(path)
        with pytest.raises(TmacError) as exc:
            GGUFSourceReader().open(path)
        assert_tmac_error(exc, file=path, rule="plain GGUF input")
    assert GGUFSourceReader.detect(tiny_file) and not is_tmac_gguf(tiny_file)


def test_not_gguf_and_unparseable_files(tmp_path: Path, tiny_file: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"PK\x03\x04" + bytes(100))
    assert not GGUFSourceReader.detect(junk)
    with pytest.raises(TmacError) as exc:
        GGUFSourceReader().open(junk)
    assert_tmac_error(exc, file=junk, rule="GGUF magic")
    # a metadata key or tensor name that is not UTF-8 (GGUFReader would raise UnicodeDecodeError)
    data = tiny_file.read_bytes()
    for needle in (b"general.architecture", b"blk.0.attn_q.weight"):
        bad = _patched(tiny_file, tmp_path / "utf.gguf", [(data.rindex(needle), b"\xff")])
        with pytest.raises(TmacError) as exc:
            GGUFSourceReader().open(bad)
        assert_tmac_error(exc, file=bad, rule="UTF-8 names")


def test_a_gguf_source_is_parsed_once_by_the_core_parser(tiny_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Detection, opening and streaming share one parse of the header (the core's), and the gguf
    package's own reader is never used: the tensors still match what GGUFReader reads."""
    from tmac_convert.format import gguf_file

    want = {t.name: np.asarray(t.data).copy() for t in gguf.GGUFReader(tiny_file).tensors}
    calls = []
    real = gguf_file.parse_header_uncached
    monkeypatch.setattr(gguf_file, "parse_header_uncached", lambda p: calls.append(p) or real(p))
    monkeypatch.setattr(gguf_file, "_CACHE", type(gguf_file._CACHE)())

    def broken(*a, **k):
        raise AssertionError("GGUFReader was used")
    monkeypatch.setattr(gguf, "GGUFReader", broken)
    assert GGUFSourceReader.detect(tiny_file)
    model = GGUFSourceReader(quantize=False).open(tiny_file)
    got = {t.name: t for t in model.tensors()}
    assert len(calls) == 1
    assert set(got) == set(want)
    for name, t in got.items():
        if isinstance(t, FloatTensor) and want[name].dtype.kind == "f":
            assert np.array_equal(np.asarray(t.data), want[name]), name


@pytest.mark.parametrize("folder", sorted(EXACT))
def test_reading_is_lazy(folder: str) -> None:
    """Peak traced memory while streaming stays a few float32 copies of the largest tensor."""
    import tracemalloc

    model = GGUFSourceReader().open(FIXTURES / folder / "model.gguf")
    largest = max(int(np.prod(i.shape)) for i in model.tensor_infos())
    total = sum(int(np.prod(i.shape)) for i in model.tensor_infos())
    tracemalloc.start()
    try:
        for _ in model.tensors():
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * largest < 4 * total  # bytes; 4 * total would be the whole model in float32


@settings(max_examples=80)
@given(st.data())
def test_corrupted_header_bytes_raise_only_tmac_errors(data: st.DataObject) -> None:
    """Any byte of the header (and a few of the data) overwritten: the file reads or fails with a TmacError."""
    import tempfile

    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as tmp:
        base = small_gguf(Path(tmp) / "base.gguf", {
            "blk.0.attn_norm.weight": (np.ones(256, np.float32), Q.F32),
            "blk.0.attn_q.weight": (rng.standard_normal((32, 256)).astype(np.float32), Q.Q4_1),
            "blk.0.ffn_up.weight": (gen_gguf.ternarize(rng.standard_normal((8, 256)).astype(np.float32)), Q.TQ1_0),
        })
        raw = bytearray(base.read_bytes())
        limit = scan_gguf_header(base).data_offset + 64
        for _ in range(data.draw(st.integers(1, 4))):
            pos = data.draw(st.integers(0, limit - 1))
            raw[pos] = data.draw(st.integers(0, 255))
        bad = Path(tmp) / "bad.gguf"
        bad.write_bytes(bytes(raw))
        try:
            model = GGUFSourceReader(bits=2, group_size=64).open(bad)
            for _ in model.tensors():
                pass
        except TmacError as e:
            assert e.file == str(bad) and e.rule


@pytest.mark.parametrize("folder,options", [(f, {}) for f in sorted(EXACT)] + [
    ("gguf_f16", {}), ("gguf_f16", {"bits": 3, "group_size": -1, "zero_point": False})])
def test_tensor_infos_promise_what_is_yielded(folder: str, options: dict) -> None:
    """The plan from tensor_infos() (shape, bits, group, zero point, per-tensor scale) is what tensors() gives."""
    model = GGUFSourceReader(**options).open(FIXTURES / folder / "model.gguf")
    infos = model.tensor_infos()
    tensors = list(model.tensors())
    assert [i.name for i in infos] == [t.name for t in tensors]
    for i, t in zip(infos, tensors):
        if isinstance(t, QuantTensor):
            assert (i.shape, i.bits, i.group_size, i.zero_point, i.per_tensor_scale) == \
                (t.shape, t.bits, t.group_size, t.zeros is not None, False)
        else:
            assert i.bits is None and tuple(i.shape) == t.data.shape
