"""Inputs the fuzzers found, pinned down one by one.

* Bugs fixed in the readers and the layout engine: plain regression tests.
* Bugs in modules other helpers are still writing (T-MAC file reader, describe, filecheck, writers, CLI):
  strict xfails naming the module, the input and the exception, registered in ``_fuzz.KNOWN_BUGS`` so
  that the fuzz tests keep looking for *other* failures meanwhile.  When one is fixed its xfail turns
  into a failure (XPASS): delete the marker and the ``KNOWN_BUGS`` entry together.
"""

from __future__ import annotations

import json
import shutil
import struct
import zipfile
from pathlib import Path

import pytest

import tmac_convert
from tmac_convert.convert import convert
from tmac_convert.errors import TmacError
from tmac_convert.layouts import Kcfg

from . import _fuzz as F

FIX = F.FIXTURES


def _copy(tmp: Path, name: str) -> Path:
    dst = tmp / name.replace("/", "_")
    (shutil.copytree if (FIX / name).is_dir() else shutil.copy2)(FIX / name, dst)
    return dst


def _edit_json(path: Path, edit) -> None:
    obj = json.loads(path.read_text())
    new = edit(obj)
    path.write_text(new if isinstance(new, str) else json.dumps(new if new is not None else obj))


def _edit_st_header(path: Path, edit) -> None:
    header, body = F.st_split(path.read_bytes())
    edit(header)
    path.write_bytes(F.st_join(header, body))


def _consistent_read(path: Path, **opts) -> list:
    assert F.check_read(path, **opts) == "ok"
    return list(tmac_convert.read(path, **opts).tensors())


# =============================================================================================
# fixed: readers

@pytest.mark.parametrize("fixture", ["gptq_v1_sym_4bit", "autogptq_4bit"])
def test_all_zero_autogptq_biases_are_left_out_of_tensor_infos_too(tmp_path, fixture):
    """They were dropped while streaming but still announced, so every AutoGPTQ conversion failed."""
    model = tmac_convert.read(FIX / fixture)
    names = [t.name for t in model.tensors()]
    assert [i.name for i in model.tensor_infos()] == names and not any(n.endswith(".bias") for n in names)
    assert any("dropped 14 all-zero biases" in n for n in model.notes)
    convert(FIX / fixture, tmp_path / "o.gguf")


ENTRY = "model.layers.0.self_attn.q_proj.scales"


@pytest.mark.parametrize("field,value", [
    ("dtype", ["F16"]), ("dtype", {"x": 1}), ("dtype", 3), ("shape", [2.5, 256]), ("shape", [True, 256]),
    ("shape", ["2", 256]), ("shape", [-2, -256]), ("shape", 7), ("shape", [2**32, 2**32, 2]),
    ("data_offsets", [0.0, 1024.0]), ("data_offsets", ["0", "1024"]), ("data_offsets", [0, 1e400]),
    ("data_offsets", 5), ("__metadata__", [1, 2]), ("__metadata__", "abc")])
def test_malformed_safetensors_header_values_are_tmac_errors(tmp_path, field, value):
    d = _copy(tmp_path, "gptq_3bit")

    def edit(h):
        if field == "__metadata__":
            h[field] = value
        else:
            h[ENTRY][field] = value
    _edit_st_header(d / "model.safetensors", edit)
    with pytest.raises(TmacError) as e:
        tmac_convert.read(d)
    assert e.value.rule in ("safetensors header", "safetensors dtype") and e.value.file


def test_a_shape_whose_byte_count_wraps_around_int64_is_refused(tmp_path):
    """[2**32, 2**32] elements of 1 byte is 2**64 bytes: it once wrapped to 0 and passed as empty."""
    d = _copy(tmp_path, "bitnet_packed")
    name = "model.layers.0.self_attn.q_proj.weight"

    def edit(h):
        lo = h[name]["data_offsets"][0]
        h[name].update(shape=[2**32, 2**32], data_offsets=[lo, lo])
    _edit_st_header(d / "model.safetensors", edit)
    with pytest.raises(TmacError) as e:
        tmac_convert.read(d)
    assert e.value.rule == "safetensors header" and e.value.tensor == name


@pytest.mark.parametrize("weight_map", [None, [], 3, "x", {"a": None}, {"a": ["x"]}, {"a": "../gptq_3bit/model.safetensors"},
                                        {"a": "/etc/passwd"}, {"a": "sub/model.safetensors"}, {"a": ".."}, {"a": ""},
                                        {"a": "x\x00y"}])
def test_hostile_shard_indexes_are_tmac_errors(tmp_path, weight_map):
    d = _copy(tmp_path, "gptq_v2_asym_2bit")
    _edit_json(d / "model.safetensors.index.json", lambda o: {**o, "weight_map": weight_map})
    with pytest.raises(TmacError) as e:
        tmac_convert.read(d)
    assert e.value.rule == "safetensors index"


def test_shards_that_are_symlinks_into_a_blob_store_are_read(tmp_path):
    """The Hugging Face cache keeps files in blobs/ and links them from snapshots/<commit>/: a sharded hub
    model must read (the shard check once resolved links and refused every cached sharded model)."""
    snap = tmp_path / "models--o--n" / "snapshots" / ("0" * 40)
    blobs = tmp_path / "models--o--n" / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for p in (FIX / "gptq_v2_asym_2bit").iterdir():
        blob = blobs / p.name.replace(".", "_")
        shutil.copy2(p, blob)
        (snap / p.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    assert F.check_read(snap) == "ok"


@pytest.mark.parametrize("file", ["config.json", "quantize_config.json", "model.safetensors"])
def test_absurdly_deep_json_nesting_is_a_tmac_error(tmp_path, file):
    d = _copy(tmp_path, "gptq_v1_sym_4bit")
    deep = "[" * 100_000 + "]" * 100_000
    if file.endswith(".json"):
        _edit_json(d / file, lambda o: json.dumps({**o, "bits": "__DEEP__"}).replace('"__DEEP__"', deep))
    else:
        header, body = F.st_split((d / file).read_bytes())
        text = json.dumps({**header, "__metadata__": "__DEEP__"}).replace('"__DEEP__"', deep)
        (d / file).write_bytes(F.st_join(None, body, header_text=text))
    with pytest.raises(TmacError):
        tmac_convert.read(d)


@pytest.mark.parametrize("key,value", [("num_attention_heads", ""), ("num_attention_heads", [4]),
                                       ("num_attention_heads", None), ("hidden_size", 256.0), ("hidden_size", True),
                                       ("num_hidden_layers", 10**9), ("num_hidden_layers", float("inf")),
                                       ("num_key_value_heads", -2), ("intermediate_size", "512"),
                                       ("vocab_size", 2**40), ("head_dim", 0)])
def test_config_sizes_must_be_integers_in_range(tmp_path, key, value):
    d = _copy(tmp_path, "gptq_v1_sym_4bit")
    _edit_json(d / "config.json", lambda o: {k: v for k, v in o.items() if k != key} if value is None
               else {**o, key: value})
    with pytest.raises(TmacError) as e:
        tmac_convert.read(d)
    assert e.value.rule == "config values in range" and key in str(e.value)


def test_an_architectures_entry_that_is_not_a_list_is_a_tmac_error(tmp_path):
    d = _copy(tmp_path, "llama_f16")
    _edit_json(d / "config.json", lambda o: {**o, "architectures": 1})
    with pytest.raises(TmacError) as e:
        tmac_convert.read(d)
    assert e.value.rule == "architecture"


def test_sym_true_over_asymmetric_zeros_is_a_tmac_error(tmp_path):
    """Every tensor stores the same *set* of zeros; finding "the" odd tensor once raised StopIteration."""
    d = _copy(tmp_path, "gptq_v2_asym_2bit")
    _edit_json(d / "config.json", lambda o: {**o, "quantization_config": {**o["quantization_config"], "sym": 1}})
    with pytest.raises(TmacError) as e:
        tmac_convert.read(d)
    assert e.value.rule == "symmetric checkpoint has one zero value"


@pytest.mark.parametrize("text", [None, 3, ["[a]"], b"[a]"])
def test_kcfg_text_that_is_not_a_string_is_a_tmac_error(text):
    with pytest.raises(TmacError) as e:
        Kcfg.parse(text, source="x")
    assert e.value.rule == "kcfg text"


# =============================================================================================
# found by fuzzing in modules then in progress (once strict xfails registered in _fuzz.KNOWN_BUGS; now fixed)

def _npz(tmp: Path) -> Path:
    out = tmp / "m.npz"
    convert(FIX / "gptq_3bit", out, format="npz", verify=False)
    return out


def _rezip(src: Path, dst: Path, manifest=None, member=None, data=None) -> None:
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for info in a.infolist():
            body = a.read(info)
            if info.filename == "manifest.json" and manifest is not None:
                m = json.loads(body)
                manifest(m)
                body = json.dumps(m).encode()
            if info.filename == member:
                body = data
            b.writestr(info.filename, body)


def _corrupt_crc(src: Path, dst: Path, member: str) -> None:
    """``src`` with the CRC-32 of ``member`` flipped in the zip's central directory."""
    raw = bytearray(src.read_bytes())
    info = zipfile.ZipFile(src).getinfo(member)
    at = raw.find(b"PK\x01\x02")
    while at != -1:
        n = struct.unpack_from("<H", raw, at + 28)[0]
        if raw[at + 46:at + 46 + n].decode(errors="replace") == member:
            break
        at = raw.find(b"PK\x01\x02", at + 4)
    assert at != -1 and info.CRC == struct.unpack_from("<I", raw, at + 16)[0]
    struct.pack_into("<I", raw, at + 16, info.CRC ^ 0xFFFFFFFF)
    dst.write_bytes(bytes(raw))


def test_a_corrupt_npz_member_is_a_tmac_error(tmp_path):
    bad = tmp_path / "bad.npz"
    _corrupt_crc(_npz(tmp_path), bad, "blk.0.attn_q.weight.npy")
    with pytest.raises(TmacError):
        list(tmac_convert.read(bad).tensors())


def test_a_non_string_tmac_runtime_is_a_tmac_error(tmp_path):
    from tmac_convert.format import KV

    out = tmp_path / "m.gguf"
    convert(FIX / "gptq_3bit", out, verify=False)
    im = F.GGUFImage.load(out)
    im.kvs = [k for k in im.kvs if k.key != "tmac.runtime"] + [KV("tmac.runtime", 9, [1, 2], 4)]
    out.write_bytes(im.to_bytes())
    with pytest.raises(TmacError):
        tmac_convert.read(out)


def test_inspect_of_an_npz_whose_tensor_entries_are_not_objects_is_a_tmac_error_or_a_problem(tmp_path):
    from tmac_convert.inspect_file import describe_file

    bad = tmp_path / "bad.npz"
    _rezip(_npz(tmp_path), bad, manifest=lambda m: m.__setitem__("tensors", [[1, 2]]))
    try:
        d = describe_file(bad)
    except TmacError:
        return
    assert d["problems"]


def test_verify_of_an_npz_whose_tensor_name_is_not_a_string_is_a_tmac_error(tmp_path):
    from tmac_convert.verify_file import verify_file

    bad = tmp_path / "bad.npz"
    _rezip(_npz(tmp_path), bad, manifest=lambda m: m["tensors"][0].__setitem__("name", {"x": 1}))
    with pytest.raises(TmacError):
        verify_file(bad)


TOKENIZER_CASES = {
    "tokenizer_config.json is a number": ("tokenizer_config.json", lambda o: 1),
    "added_tokens is null": ("tokenizer.json", lambda o: {**o, "added_tokens": None}),
    "deeply nested tokenizer.json": ("tokenizer.json",
                                     lambda o: json.dumps(o).replace('"BPE"', "[" * 5000 + "]" * 5000, 1)),
    "a vocabulary id far out of range": ("tokenizer.json",
                                         lambda o: o["model"]["vocab"].__setitem__("ck", 2**63)),
    "a merge that is not a string": ("tokenizer.json", lambda o: o["model"]["merges"].__setitem__(6, {"a": 1})),
}


@pytest.mark.parametrize("case", list(TOKENIZER_CASES))
def test_hostile_tokenizer_files_are_tmac_errors(tmp_path, case):
    file, edit = TOKENIZER_CASES[case]
    d = _copy(tmp_path, "gptq_3bit")
    _edit_json(d / file, edit)
    with pytest.raises(TmacError):
        convert(d, tmp_path / "o.gguf", verify=False)


HPARAM_CASES = {"rms_norm_eps": [1], "rope_scaling": [1], "rope_theta": "abc", "max_position_embeddings": 1e400,
                "layer_norm_eps": {"a": 1}}


@pytest.mark.parametrize("key", list(HPARAM_CASES))
def test_hostile_hyperparameters_are_tmac_errors(tmp_path, key):
    d = _copy(tmp_path, "gptq_3bit")
    _edit_json(d / "config.json", lambda o: {**o, key: HPARAM_CASES[key]})
    with pytest.raises(TmacError):
        convert(d, tmp_path / "o.gguf", verify=False)


def test_inspect_prints_hostile_metadata_as_text(tmp_path):
    out = tmp_path / "m.gguf"
    convert(FIX / "gptq_3bit", out, verify=False)
    im = F.GGUFImage.load(out)
    im.kv("general.name").value = "[/]"
    out.write_bytes(im.to_bytes())
    code, stdout, err = F.run_cli(["inspect", str(out)])
    assert code == 0 and "[/]" in stdout, err[-500:]


def test_hostile_tensor_names_cannot_become_zip_paths_outside_the_archive(tmp_path):
    im = F.GGUFImage.load(FIX / "gguf_q4_0" / "model.gguf")
    next(t for t in im.tensors if t.name == "output_norm.weight").name = "../../../evil/output_norm.weight"
    src = tmp_path / "src.gguf"
    src.write_bytes(im.to_bytes())
    try:
        convert(src, tmp_path / "o.npz", format="npz", verify=False)
    except TmacError:
        return
    names = zipfile.ZipFile(tmp_path / "o.npz").namelist()
    assert not [n for n in names if n.startswith("/") or ".." in n.split("/")], names


def test_every_registered_known_bug_has_a_strict_xfail_reproducer():
    """_fuzz.KNOWN_BUGS lets the fuzzers pass over bugs that other helpers still have to fix; each one must be
    pinned by a strict xfail here, so that fixing it (XPASS) forces removing its registration."""
    here = globals()
    for bug in F.KNOWN_BUGS:
        test = here.get(bug.reproducer)
        assert test is not None, bug
        marks = [m for m in getattr(test, "pytestmark", []) if m.name == "xfail"]
        assert marks and marks[0].kwargs.get("strict") is True, bug
        assert any(bug.module.startswith(m) for m in F.IN_PROGRESS), bug
