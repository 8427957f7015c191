"""Fuzzing what reads tmac-convert's own outputs: the T-MAC file reader, ``inspect`` and ``verify``.

Real outputs (GGUF and npz, converted from the GPTQ, BitNet and GGUF Q4_0 fixtures) are mutated: raw
bytes, header fields, the ``tmac.*`` metadata (bits, group size, tiles, the embedded kcfg.ini, the
runtime...), T-MAC type ids, npz zip bytes and npz manifest edits.  Each input goes through
:func:`tmac_convert.read`, ``describe_file`` (``inspect``) and ``verify_file`` (``verify``), and some
through the CLI's ``main`` in this process.  Property: a result or a TmacError (CLI: exit 0/1/2 with one
line, never "unexpected"), and ``verify --source`` never passes a file whose tensor bytes were changed.
"""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tmac_convert.convert import convert
from tmac_convert.format import parse

from . import _fuzz as F

FILE = __name__
CI_EXAMPLES = {"gguf bytes": 150, "gguf fields": 80, "tmac keys": 100, "npz bytes": 60, "manifest": 80,
               "source": 20, "cli": 15}
FLOOR = 500
SOURCES = {"gptq.gguf": ("gptq_v2_asym_2bit", "gguf"), "bitnet.gguf": ("bitnet_packed", "gguf"),
           "q4.gguf": ("gguf_q4_0/model.gguf", "gguf"), "gptqz.npz": ("gptq_v2_asym_2bit", "npz"),
           "q4z.npz": ("gguf_q4_0/model.gguf", "npz")}
GGUFS = [n for n in SOURCES if n.endswith(".gguf")]
NPZS = [n for n in SOURCES if n.endswith(".npz")]
KCFG_EDITS = ["", "[x]\n", "[qgemm_lut_t1_int8_m512_k256_n1_b2]\nbm = 1\n",
              "not an ini file", "[a]\n[a]\n", "\x00" * 10, "bm = 99999999999999999999\n" * 3]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz-out")
    for name, (src, fmt) in SOURCES.items():
        convert(F.FIXTURES / src, d / name, format=fmt, verify=False)
    s = F.Stage(d, [])
    s.root = d
    s.images = {}
    for n in GGUFS:  # layer 1 left out (tensor infos and tmac.* lists): a valid file, half the work per input
        im = F.GGUFImage.load(d / n)
        keep = [t for t in im.tensors if not t.name.startswith("blk.1.")]
        names = im.kv("tmac.tensor_names").value
        kept = [i for i, x in enumerate(names) if not x.startswith("blk.1.")]
        for key in ("tmac.tensor_names", "tmac.tensor_bm", "tmac.tensor_kfactor"):
            kv = im.kv(key)
            kv.value = [list(kv.value)[i] for i in kept]
        im.tensors = keep
        (d / n).write_bytes(im.to_bytes())
        s.images[n] = im
    return s


def _all(path, *, source=None, kernel_check: bool = False) -> None:
    F.COUNTS[FILE] += 1
    F.check_read(path)
    F.check_inspect(path)
    F.check_verify(path, verify=kernel_check)


# ---------------------------------------------------------------------------------------------
# T-MAC GGUF

@F.fuzz_settings(CI_EXAMPLES["gguf bytes"])
@given(st.data())
def test_mutated_tmac_gguf_bytes(outputs, data):
    name = data.draw(st.sampled_from(GGUFS))
    raw = outputs.read(name)
    blob = data.draw(F.mutated_bytes(raw, hot=parse(outputs.path(name)).data_offset))
    with outputs.swap(name, blob.data) as p:
        _all(p, kernel_check=data.draw(st.integers(0, 3)) == 0)


@F.fuzz_settings(CI_EXAMPLES["gguf fields"])
@given(st.data())
def test_tmac_gguf_header_fields_set_to_interesting_values(outputs, data):
    name = data.draw(st.sampled_from(GGUFS))
    blob = data.draw(F.gguf_field_edit(outputs.images[name]))
    with outputs.swap(name, blob.data) as p:
        _all(p)


_TMAC_KEYS = ["tmac.format_version", "tmac.converter", "tmac.layout", "tmac.runtime", "tmac.bits",
              "tmac.group_size", "tmac.zero_point", "tmac.one_scale", "tmac.act_group_size", "tmac.tensor_names",
              "tmac.tensor_bm", "tmac.tensor_kfactor", "tmac.kcfg", "general.architecture", "general.file_type"]


@st.composite
def tmac_key_edit(draw, image: F.GGUFImage) -> F.Blob:
    """A well-formed T-MAC GGUF whose tmac.* keys, I-type ids or shapes say something false."""
    im = image.copy()
    op = draw(st.sampled_from(["value", "value", "same type", "same type", "delete", "kcfg", "list", "type id",
                               "dims"]))
    present = [k.key for k in im.kvs if k.key in _TMAC_KEYS]
    if op in ("value", "same type", "delete", "kcfg", "list"):
        key = draw(st.sampled_from(present if op != "kcfg" else ["tmac.kcfg"]))
        kv = im.kv(key)
        if op == "delete":
            im.kvs.remove(kv)
            desc = f"delete {key}"
        elif op == "kcfg":
            text = kv.value
            choice = draw(st.integers(0, 3))
            if choice == 0:
                kv.value = draw(st.sampled_from(KCFG_EDITS))
            elif choice == 1:  # one number of the real kcfg changed
                lines = text.splitlines()
                i = draw(st.sampled_from([j for j, l in enumerate(lines) if " = " in l]))
                k_, _ = lines[i].split(" = ")
                lines[i] = f"{k_} = {draw(st.sampled_from(['0', '-1', '3', '7', '1024', '2' * 30, 'x', '']))}"
                kv.value = "\n".join(lines) + "\n"
            elif choice == 2:  # a section dropped or renamed
                secs = text.split("\n\n")
                j = draw(st.integers(0, max(0, len(secs) - 2)))
                secs[j] = secs[j].replace("_b2]", "_b3]").replace("_b4]", "_b2]") if draw(st.booleans()) else ""
                kv.value = "\n\n".join(secs)
            else:
                kv.value = text * draw(st.sampled_from([2, 1000]))
            desc = f"tmac.kcfg edit {choice}: {kv.value[:60]!r}"
        elif op == "list":
            value = kv.value if not isinstance(kv.value, np.ndarray) else kv.value.tolist()
            if isinstance(value, list) and value:
                value = list(value)
                how = draw(st.sampled_from(["drop", "dup", "swap", "set"]))
                i = draw(st.integers(0, len(value) - 1))
                if how == "drop":
                    del value[i]
                elif how == "dup":
                    value.append(value[i])
                elif how == "swap":
                    value[0], value[i] = value[i], value[0]
                else:
                    value[i] = draw(st.sampled_from([0, 1, 31, 32, 96, 2**31, 2**32 - 1])) \
                        if isinstance(value[i], int) else draw(st.sampled_from(F.HOSTILE_STRINGS))
                kv.value = value
            desc = f"{key} list edit -> {str(kv.value)[:60]}"
        else:
            vtype = kv.vtype if op == "same type" else draw(st.sampled_from(range(13)))
            value, sub = draw(F.gguf_value(vtype))
            if op == "same type" and kv.vtype == 9:
                sub = kv.sub_type
                value = [] if sub != 8 else draw(st.lists(st.sampled_from(F.HOSTILE_STRINGS), max_size=3))
            kv.vtype, kv.value, kv.sub_type = vtype, value, sub
            desc = f"{key} = {value!r:.60} (type {vtype})"
    elif op == "type id":
        t = draw(st.sampled_from(im.tensors))
        t.type_id = draw(st.sampled_from([0, 1, 30, 31, 32, 33, 36, 37, 38, 39, 99]))
        desc = f"{t.name} type id = {t.type_id}"
    else:
        t = draw(st.sampled_from(im.tensors))
        t.ne = draw(st.one_of(st.just(t.ne[::-1]), st.just([t.ne[0] * 2] + t.ne[1:]), st.just(t.ne + [1]),
                              st.just([max(1, t.ne[0] // 2)] + t.ne[1:])))
        desc = f"{t.name} ne = {t.ne}"
    try:
        return F.Blob(im.to_bytes(), desc)
    except Exception:  # noqa: BLE001 - an edit the serialiser cannot encode: fall back to a truncation
        return F.Blob(image.to_bytes()[:-7], desc + " (unencodable; truncated original instead)")


@F.fuzz_settings(CI_EXAMPLES["tmac keys"])
@given(st.data())
def test_edited_tmac_metadata_gives_a_result_or_a_tmac_error(outputs, data):
    name = data.draw(st.sampled_from(GGUFS))
    blob = data.draw(tmac_key_edit(outputs.images[name]))
    with outputs.swap(name, blob.data) as p:
        _all(p, kernel_check=data.draw(st.integers(0, 3)) == 0)


# ---------------------------------------------------------------------------------------------
# npz

def _rezip(raw: bytes, manifest: bytes | None = None, drop: str | None = None, add: tuple | None = None) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as a, zipfile.ZipFile(out, "w") as b:
        for info in a.infolist():
            if info.filename == drop:
                continue
            data = a.read(info)
            if info.filename == "manifest.json" and manifest is not None:
                data = manifest
            b.writestr(info.filename, data)
        if add is not None:
            b.writestr(*add)
    return out.getvalue()


@F.fuzz_settings(CI_EXAMPLES["npz bytes"])
@given(st.data())
def test_mutated_npz_bytes(outputs, data):
    name = data.draw(st.sampled_from(NPZS))
    raw = outputs.read(name)
    hot = len(raw) - 2 * len(zipfile.ZipFile(io.BytesIO(raw)).read("manifest.json")) - 4096  # manifest + directory
    blob = data.draw(F.mutated_bytes(raw))
    if data.draw(st.booleans()):  # bias towards the manifest and the central directory at the end
        blob = data.draw(F.mutated_bytes(raw[::-1], hot=len(raw) - max(0, hot)))
        blob = F.Blob(blob.data[::-1], "from the end: " + blob.desc)
    with outputs.swap(name, blob.data) as p:
        _all(p)


_MANIFEST_KEYS = ("format", "format_version", "tmac", "tensors", "bits", "group_size", "zero_point", "bm",
                  "kfactor", "nbytes", "member", "encoding", "shape", "per_tensor_scale", "tokenizer_files",
                  "gguf_metadata", "kcfg", "act_group_size", "one_scale", "architecture", "value", "type", "bytes")


@F.fuzz_settings(CI_EXAMPLES["manifest"])
@given(st.data())
def test_edited_npz_manifest_and_members(outputs, data):
    name = data.draw(st.sampled_from(NPZS))
    raw = outputs.read(name)
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        man = json.loads(z.read("manifest.json"))
        members = z.namelist()
    how = data.draw(st.integers(0, 5))
    if how <= 3:
        edit = data.draw(F.edited_json(man, keys=_MANIFEST_KEYS))
        new, desc = _rezip(raw, manifest=edit.data), "manifest: " + edit.desc
    elif how == 4:
        m = data.draw(st.sampled_from(members))
        new, desc = _rezip(raw, drop=m), f"drop member {m}"
    else:
        m = data.draw(st.sampled_from([x for x in members if x.endswith(".npy")]))
        body = data.draw(st.sampled_from([b"", b"\x93NUMPY\x01\x00", _pickled_npy(), b"\x00" * 100]))
        new, desc = _rezip(raw, drop=m, add=(m, body)), f"member {m} = {body[:20]!r}"
    blob = F.Blob(new, desc)
    with outputs.swap(name, blob.data) as p:
        _all(p)


def _pickled_npy() -> bytes:
    """An object-array .npy (loading it needs pickle, which must stay refused)."""
    b = io.BytesIO()
    np.save(b, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return b.getvalue()


# ---------------------------------------------------------------------------------------------
# verify --source must catch every changed tensor byte

@F.fuzz_settings(CI_EXAMPLES["source"])
@given(st.data())
def test_verify_with_source_catches_any_changed_tensor_byte(outputs, data):
    name = data.draw(st.sampled_from(["gptq.gguf", "bitnet.gguf", "q4.gguf"]))
    g = parse(outputs.path(name))
    raw = bytearray(outputs.read(name))
    from tmac_convert.readers.tmac_file import TmacFileReader

    reader = TmacFileReader()
    model = reader.open(outputs.path(name))
    sizes = {pl.name: pl.nbytes for pl in reader.plans(model)}
    t = data.draw(st.sampled_from(g.tensors))
    i = t.offset + data.draw(st.integers(0, sizes[t.name] - 1))
    bit = data.draw(st.integers(0, 7))
    raw[i] ^= 1 << bit
    src = F.FIXTURES / SOURCES[name][0]
    F.COUNTS[FILE] += 1
    with outputs.swap(name, bytes(raw)) as p:
        result = F.check_verify(p, source=src, verify=False)
    assert result in ("fail", "error", "known bug"), f"bit {bit} of byte {i} ({t.name}) changed, verify said ok"


# ---------------------------------------------------------------------------------------------
# the command line itself (rendering hostile names and values included)

@F.fuzz_settings(CI_EXAMPLES["cli"])
@given(st.data())
def test_cli_inspect_and_verify_on_mutated_outputs_exit_cleanly(outputs, data):
    name = data.draw(st.sampled_from(GGUFS))
    how = data.draw(st.integers(0, 2))
    if how == 0:
        blob = data.draw(tmac_key_edit(outputs.images[name]))
    elif how == 1:
        blob = data.draw(F.mutated_bytes(outputs.read(name), hot=parse(outputs.path(name)).data_offset))
    else:  # text a terminal or a markup renderer might interpret, in a metadata value or a tensor name
        im = outputs.images[name].copy()
        text = data.draw(st.one_of(st.sampled_from(F.HOSTILE_STRINGS), st.text(max_size=30)))
        target = data.draw(st.sampled_from(["general.name", "tokenizer.ggml.pre", "tensor"]))
        if target == "tensor":
            im.tensors[-1].name = text or "x"
        elif im.kv(target) is not None:
            im.kv(target).value = text
        blob = F.Blob(im.to_bytes(), f"{target} = {text!r}")
    F.COUNTS[FILE] += 1
    with outputs.swap(name, blob.data) as p:
        for argv, allowed in ((["inspect", str(p)], (0, 2)), (["inspect", "--json", str(p)], (0, 2)),
                              (["verify", str(p)], (0, 1, 2))):
            code, out, err = F.run_cli(argv)
            if F.known_bug_in_cli(err) is None:
                F.assert_cli_clean(code, out, err, allowed)


def test_outputs_read_inspect_and_verify_cleanly_before_mutation(outputs):
    for name in SOURCES:
        p = outputs.path(name)
        assert F.check_read(p) == "ok" and F.check_inspect(p) == "ok" and F.check_verify(p) == "ok", name


def test_this_file_ran_its_mutated_input_budget(request):
    tests = [n for n in globals() if n.startswith("test_") and "budget" not in n and "before" not in n]
    ran = {i.name for i in request.session.items if i.module.__name__ == FILE}
    if not all(n in ran for n in tests):
        pytest.skip("only part of this file ran")
    floor = FLOOR if not os.environ.get(F.FUZZ_ENV) else len(tests) * F.n_examples(1)
    print(f"\n{FILE}: {F.COUNTS[FILE]} mutated inputs (floor {floor}); registered in-progress bugs met: "
          f"{dict(F.KNOWN_SEEN) or 'none'}")
    assert F.COUNTS[FILE] >= floor, F.COUNTS
