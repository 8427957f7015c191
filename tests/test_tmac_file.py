"""Reading our own outputs (and T-MAC's GGUF files) back into the intermediate form; hostile files."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tmac_convert import pack
from tmac_convert.convert import convert
from tmac_convert.errors import TmacError
from tmac_convert.format import parse, type_name, RUNTIMES
from tmac_convert.layouts import Kcfg, KernelConfig, TileConfig
from tmac_convert.readers import detect, read
from tmac_convert.format.tensor import QuantTensor

from . import _tmac_synth as S


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    d = tmp_path_factory.mktemp("tmacfile")
    src = S.write_synth(d / "src", layers=2)
    convert(str(src), d / "m.gguf", verify=False)
    convert(str(src), d / "n.npz", format="npz", verify=False)
    return src, d / "m.gguf", d / "n.npz"


def _assert_same_as_source(model, src: Path) -> None:
    got = list(model.tensors())
    want = list(S.expected_tensors(src))
    assert [t.name for t in got] == [t.name for t in want]
    infos = model.tensor_infos()
    assert [i.name for i in infos] == [t.name for t in want]
    for g, w, info in zip(got, want, infos):
        if isinstance(w, QuantTensor):
            assert isinstance(g, QuantTensor) and info.bits == w.bits
            assert np.array_equal(g.codes, w.codes)
            assert np.array_equal(g.scales, w.scales.astype(np.float32))
            assert (g.zeros is None) == (w.zeros is None)
            if w.zeros is not None:
                assert np.array_equal(g.zeros, w.zeros.astype(np.float32))
            assert info.group_size == w.group_size and info.zero_point == (w.zeros is not None)
        else:
            assert np.array_equal(g.data, w.data.astype(np.float16 if w.data.ndim == 2 else np.float32))


@pytest.mark.parametrize("which", ["gguf", "npz"])
def test_read_back_gives_the_source_tensors(written, which):
    src, g, n = written
    path = g if which == "gguf" else n
    assert detect(path).name == "tmac"
    model = read(path)
    assert model.format == f"tmac-{which}" and model.gguf_arch == "llama"
    assert model.quantization["bits"] == 2 and model.quantization["zero_point"] is True
    _assert_same_as_source(model, src)


def test_npz_keeps_config_and_tokenizer(written):
    src, _, n = written
    model = read(n)
    assert model.config["hidden_size"] == 64
    assert model.tokenizer_files["tokenizer.json"].read_bytes() == (src / "tokenizer.json").read_bytes()


def test_gguf_source_metadata_carries_over_through_our_files(written, tmp_path):
    """GGUF -> npz -> GGUF keeps every key/value with its type."""
    _, g, _ = written
    convert(str(g), tmp_path / "a.npz", format="npz", verify=False)
    convert(str(tmp_path / "a.npz"), tmp_path / "b.gguf", verify=False)
    a, b = parse(g), parse(tmp_path / "b.gguf")
    assert list(a.kv) == list(b.kv)
    for k in a.kv:
        assert a.kv[k].vtype == b.kv[k].vtype and a.kv[k].sub_type == b.kv[k].sub_type, k
        va, vb = a.kv[k].value, b.kv[k].value
        assert (np.array_equal(va, vb) if isinstance(va, np.ndarray) else va == vb), k
    assert g.read_bytes() == (tmp_path / "b.gguf").read_bytes()


# -- files written by T-MAC's own converter (no tmac.* keys) -------------------------------------

def _tmac_style_gguf(path: Path, runtime: str, bits: int = 2):
    """A GGUF as T-MAC's converter writes it: I-type blobs, file type, no tmac.* keys."""
    rng = np.random.default_rng(5)
    m0, k, gs = 64, 128, 32
    codes = rng.integers(0, 1 << bits, (m0, k), dtype=np.uint8)
    scales = rng.uniform(0.01, 0.1, (m0, k // gs)).astype(np.float32)
    zeros = rng.uniform(-0.1, 0.1, (m0, k // gs)).astype(np.float32)
    tiles = TileConfig(64, 8)
    blob = pack(codes, scales, zeros, bits=bits, bm=tiles.bm, kfactor=tiles.kfactor)
    rt = RUNTIMES[runtime]
    w = gguf.GGUFWriter(path, "llama")
    w.add_file_type(rt.file_type)
    w.add_tensor_info("blk.0.attn_q.weight", (m0, k), np.dtype(np.float32), blob.nbytes, raw_dtype=rt.type_ids[bits])
    norm = np.ones(k, np.float32)
    w.add_tensor_info("blk.0.attn_norm.weight", (k,), norm.dtype, norm.nbytes)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.write_tensor_data(blob)
    w.write_tensor_data(norm)
    w.close()
    kc = Kcfg([KernelConfig.for_tensor(m0, k, bits, group_size=gs, zero_point=True, per_tensor=False, tiles=tiles,
                                       act_group_size=32)])
    return QuantTensor("blk.0.attn_q.weight", codes, scales, zeros, bits=bits, group_size=gs), kc


@pytest.mark.parametrize("runtime,bits", [("tmac", 2), ("aug2024", 4)])
def test_tmac_converter_files_need_their_kcfg(tmp_path, runtime, bits):
    path = tmp_path / "t.gguf"
    want, kc = _tmac_style_gguf(path, runtime, bits)
    assert detect(path).name == "tmac"
    with pytest.raises(TmacError, match="pass that kcfg"):
        read(path)
    model = read(path, kcfg=kc)
    qt = next(iter(model.tensors()))
    assert np.array_equal(qt.codes, want.codes) and np.array_equal(qt.zeros, want.zeros)
    assert model.quantization["runtime"] == runtime


def test_kcfg_of_other_group_size_is_refused_for_such_files(tmp_path):
    path = tmp_path / "t.gguf"
    _, kc = _tmac_style_gguf(path, "tmac")
    e = kc.entries[0]
    bad = Kcfg([KernelConfig(**{**e.__dict__, "scales_size": e.scales_size + 8})])
    with pytest.raises(TmacError, match="fits neither"):
        read(path, kcfg=bad)


# -- inconsistent or truncated files --------------------------------------------------------------

def test_truncated_gguf_is_refused(written, tmp_path):
    _, g, _ = written
    raw = g.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(TmacError, match="needs 5120 bytes but only 5020"):
        list(read(cut).tensors())


def _rewrite_kv(src: Path, dst: Path, edit) -> None:
    """Re-emit a GGUF with its key/values changed by ``edit(dict)`` (tensors copied byte for byte)."""
    from tmac_convert.format.kv import add_kv

    gf = parse(src)
    kvs = dict(gf.kv)
    edit(kvs)
    w = gguf.GGUFWriter(dst, gf.get("general.architecture"))
    for k, kv in kvs.items():
        if k != "general.architecture":
            add_kv(w, kv)
    raw = src.read_bytes()
    blobs = []
    order = sorted(gf.tensors, key=lambda t: t.offset)
    for i, t in enumerate(gf.tensors):
        j = order.index(t)
        end = order[j + 1].offset if j + 1 < len(order) else len(raw)
        n = t.span if j + 1 == len(order) else end - t.offset
        blob = np.frombuffer(raw[t.offset:t.offset + n], np.uint8)
        w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), blob.nbytes, raw_dtype=t.type_id)
        blobs.append(blob)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for b in blobs:
        w.write_tensor_data(b)
    w.close()


def test_inconsistent_tmac_keys_are_refused(written, tmp_path):
    from tmac_convert.format import KV

    _, g, _ = written

    def short_bm(kv):
        v = kv["tmac.tensor_bm"]
        kv["tmac.tensor_bm"] = KV(v.key, v.vtype, v.value[:-1], v.sub_type)

    _rewrite_kv(g, tmp_path / "a.gguf", short_bm)
    with pytest.raises(TmacError, match="differ in length"):
        read(tmp_path / "a.gguf")

    def wrong_bits(kv):
        kv["tmac.bits"] = KV("tmac.bits", gguf.GGUFValueType.UINT32, 4)

    _rewrite_kv(g, tmp_path / "b.gguf", wrong_bits)
    with pytest.raises(TmacError, match="tmac.bits = 4"):
        read(tmp_path / "b.gguf")

    def future(kv):
        kv["tmac.format_version"] = KV("tmac.format_version", gguf.GGUFValueType.UINT32, 99)

    _rewrite_kv(g, tmp_path / "c.gguf", future)
    with pytest.raises(TmacError, match="newer than this tool"):
        read(tmp_path / "c.gguf")


def _edit_npz(src: Path, dst: Path, edit_manifest=None, drop: str | None = None) -> None:
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for info in a.infolist():
            if info.filename == drop:
                continue
            data = a.read(info)
            if info.filename == "manifest.json" and edit_manifest is not None:
                m = json.loads(data)
                edit_manifest(m)
                data = json.dumps(m).encode()
            b.writestr(info.filename, data)


def test_inconsistent_npz_is_refused(written, tmp_path):
    _, _, n = written

    def wrong_size(m):
        m["tensors"][1]["nbytes"] += 4

    _edit_npz(n, tmp_path / "a.npz", wrong_size)
    with pytest.raises(TmacError, match="manifest says"):
        read(tmp_path / "a.npz")
    _edit_npz(n, tmp_path / "b.npz", drop="blk.0.attn_q.weight.npy")
    with pytest.raises(TmacError, match="is missing"):
        read(tmp_path / "b.npz")

    def bad_tok(m):
        m["tokenizer_files"] = ["../evil"]

    _edit_npz(n, tmp_path / "c.npz", bad_tok)
    with pytest.raises(TmacError, match="plain file name"):
        read(tmp_path / "c.npz")

    def future(m):
        m["format_version"] = 7

    _edit_npz(n, tmp_path / "d.npz", future)
    with pytest.raises(TmacError, match="newer"):
        read(tmp_path / "d.npz")


# -- the low-level GGUF parser against hostile headers ----------------------------------------------

def _s(x: str) -> bytes:
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def _header(n_tensors: int, n_kv: int, body: bytes, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + body


def _tensor_info(name: str, dims, type_id: int, offset: int) -> bytes:
    return _s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + \
        struct.pack("<IQ", type_id, offset)


GOOD_KV = _s("general.architecture") + struct.pack("<I", 8) + _s("llama")


@pytest.mark.parametrize("data,match", [
    (b"GGUF" + b"\0" * 4, "too short"),
    (b"GGML" + b"\0" * 40, "no GGUF magic"),
    (_header(0, 0, b"", version=1) + b"\0" * 8, "version 1"),
    (_header(2**60, 0, b"") + b"\0" * 8, "cannot fit"),
    (_header(0, 2**50, b"") + b"\0" * 8, "cannot fit"),
    (_header(0, 1, struct.pack("<Q", 2**62) + b"x" * 16), "needs"),
    (_header(0, 1, _s("k") + struct.pack("<I", 99) + b"\0" * 8), "unknown value type"),
    (_header(0, 1, _s("k") + struct.pack("<IIQ", 9, 4, 2**40) + b"\0" * 8), "cannot fit"),
    (_header(0, 2, GOOD_KV + GOOD_KV), "appears twice"),
    (_header(1, 1, GOOD_KV + _s("t") + struct.pack("<I", 5) + b"\0" * 60), "dimensions"),
    (_header(1, 1, GOOD_KV + _tensor_info("t", [0], 0, 0)) + b"\0" * 64, "dimensions"),
    (_header(1, 1, GOOD_KV + _tensor_info("t", [4], 0, 3)) + b"\0" * 64, "not a multiple of the alignment"),
    (_header(1, 1, GOOD_KV + _tensor_info("t", [4], 0, 2**40)) + b"\0" * 64, "past the end"),
    (_header(2, 1, GOOD_KV + _tensor_info("t", [4], 0, 0) + _tensor_info("t", [4], 0, 32)) + b"\0" * 64,
     "appears twice"),
    (_header(0, 1, _s("general.alignment") + struct.pack("<II", 4, 3)) + b"\0" * 8, "power of two"),
])
def test_hostile_headers_raise_tmac_errors(tmp_path, data, match):
    p = tmp_path / "h.gguf"
    p.write_bytes(data)
    with pytest.raises(TmacError, match=match):
        parse(p)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_corrupted_headers_never_crash_the_parser(written, data):
    """Any corruption of a real header gives a parse or a TmacError, never another exception."""
    _, g, _ = written
    raw = bytearray(g.read_bytes()[:4096])
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(4, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
        f.write(bytes(raw))
        f.flush()
        try:
            parse(f.name)
        except TmacError:
            pass


def test_type_names_depend_on_the_runtime():
    assert type_name(37, RUNTIMES["tmac"]) == "I2" and type_name(30, RUNTIMES["aug2024"]) == "I2"
    assert type_name(30, RUNTIMES["tmac"]) == "BF16" and type_name(39, None) == "MXFP4"
    assert type_name(37, None) == "unknown(37)"
