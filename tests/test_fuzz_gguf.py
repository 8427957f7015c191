"""Fuzzing the GGUF source reader (and ``inspect`` on stock GGUF files).

The GGUF fixtures (Q4_0, Q4_1, TQ1_0, TQ2_0, F16) are mutated three ways: raw bytes (biased towards the
header), single header fields (every count, string length, value type, array length, dimension, type
id and offset, located by re-serialising the file) set to interesting integers, and semantic edits of
the metadata and tensor infos written as well-formed GGUF (other value types, missing or odd
``general.architecture`` and ``general.alignment``, ``tmac.*`` keys, other type ids, dimensions, names
and offsets).  Most inputs use a slim copy of each fixture -- layer 0 only, without the 512-token vocabulary
arrays (the ``gguf`` package parses those slowly) -- to spend the time on more inputs; one test
mutates the full files.

Property: :func:`tmac_convert.read` gives a self-consistent model whose exactly mapped tensors
(Q4_0/Q4_1/TQ1_0/TQ2_0 projections) dequantise to what ``gguf.quants.dequantize`` gives for the same
(mutated) bytes and whose other tensors equal gguf's own dequantisation -- or a TmacError; and
``describe_file`` gives a description or a TmacError.  Never another exception.
"""

from __future__ import annotations

import os
import struct

import gguf
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tmac_convert.format import KV, parse
from tmac_convert.readers.base import FloatTensor
from tmac_convert.format.tensor import QuantTensor

from . import _fuzz as F

FILE = __name__
VARIANTS = ["gguf_q4_0", "gguf_q4_1", "gguf_tq1_0", "gguf_tq2_0", "gguf_f16"]
CI_EXAMPLES = {"bytes": 250, "fields": 200, "semantic": 100, "full": 10}
FLOOR = 555
Q = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    s = F.Stage(tmp_path_factory.mktemp("fuzz-gguf"), [f"{v}/model.gguf" for v in VARIANTS])
    s.images = {}
    for v in VARIANTS:  # slim: no vocabulary arrays, layer 0 only (a valid file, a third of the decoding work)
        im = F.GGUFImage.load(s.path(f"{v}/model.gguf"))
        im.kvs = [kv for kv in im.kvs if not (kv.key.startswith("tokenizer.") and kv.vtype == 9)]
        im.tensors = [t for t in im.tensors if t.name.startswith("blk.0.") or t.name == "output_norm.weight"]
        (s.path(f"{v}/slim.gguf")).write_bytes(im.to_bytes())
        s.images[v] = im
    return s


# ---------------------------------------------------------------------------------------------
# the value oracle

def gguf_oracle():
    """Checks each streamed tensor against ``gguf.quants.dequantize`` of its own bytes in the file."""
    cache: dict = {}

    def check(path, t) -> None:
        if isinstance(t, QuantTensor) and t.meta.get("quant_stats") is not None:
            return  # re-quantised by round-to-nearest: no exact value to compare with
        if "g" not in cache:
            cache["g"] = parse(path)
            cache["raw"] = np.memmap(path, dtype=np.uint8, mode="r")
        rec = cache["g"].tensor(t.name)
        qt = Q(rec.type_id)
        if isinstance(t, FloatTensor) and qt not in (Q.F16, Q.F32):
            return  # the reader dequantises these with gguf.quants.dequantize itself: comparing would be circular
        block, size = gguf.GGML_QUANT_SIZES[qt]
        rows = rec.n_elements // rec.ne[0]
        raw = np.asarray(cache["raw"][rec.offset:rec.offset + rows * rec.ne[0] // block * size])
        want = gguf.quants.dequantize(raw.reshape(rows, -1), qt).reshape(rec.shape)
        if isinstance(t, QuantTensor) and t.meta.get("quant_stats") is None:  # mapped exactly, not re-quantised
            got = t.dequantize(np.float32)
            if qt == Q.Q4_1:  # gguf rounds d*q + m twice in float32; we round z' once (module docstring)
                d = np.abs(np.repeat(t.scales.astype(np.float64), 32, axis=1))
                tol = 8 * np.finfo(np.float32).eps * (16 * d + np.abs(got) + 1e-30)
                assert np.all(np.abs(got.astype(np.float64) - want) <= tol), t.name
            else:
                assert np.array_equal(got, want), t.name
        elif isinstance(t, FloatTensor):
            assert np.array_equal(np.asarray(t.data, dtype=np.float32), want.astype(np.float32), equal_nan=True), \
                t.name

    return check


def _both(path) -> None:
    F.COUNTS[FILE] += 1
    F.check_read(path, oracle=gguf_oracle())
    F.check_inspect(path)


# ---------------------------------------------------------------------------------------------
# semantic edits

# T-MAC-only ids (31-33, 36-38) and tmac.* keys turn a file into a T-MAC file: test_fuzz_outputs.py covers those.
_TYPE_IDS = [0, 1, 2, 3, 6, 7, 8, 9, 10, 12, 14, 16, 20, 24, 28, 30, 34, 35, 39, 40, 41, 42, 99, 2**31]
_VTYPES = list(range(13))


@st.composite
def semantic_edit(draw, image: F.GGUFImage) -> F.Blob:
    """A well-formed GGUF whose metadata or tensor infos say something odd or false."""
    im = image.copy()
    op = draw(st.sampled_from(["kv value", "kv value", "kv delete", "kv add", "architecture", "alignment",
                               "tensor type", "tensor type", "tensor dims", "tensor name",
                               "tensor offset", "tensor drop", "tensor dup"]))
    desc = op
    if op == "kv value":
        kv = draw(st.sampled_from(im.kvs))
        vtype = draw(st.one_of(st.just(kv.vtype), st.sampled_from(_VTYPES)))
        value, sub = draw(F.gguf_value(vtype))
        kv.vtype, kv.value, kv.sub_type = vtype, value, sub
        desc = f"{kv.key} = {value!r:.60} (type {vtype})"
    elif op == "kv delete":
        kv = draw(st.sampled_from(im.kvs))
        im.kvs.remove(kv)
        desc = f"delete {kv.key}"
    elif op in ("kv add", "architecture", "alignment"):
        key = {"architecture": "general.architecture", "alignment": "general.alignment"}.get(op)
        if key is None:
            key = draw(st.one_of(st.sampled_from(["general.file_type", "llama.block_count", "general.name"]),
                                 st.text(min_size=1, max_size=12).filter(lambda k: not k.startswith("tmac."))))
        vtype = draw(st.sampled_from(_VTYPES))
        if op == "alignment":
            vtype = draw(st.sampled_from([4, 4, 10, 5]))
        value, sub = draw(F.gguf_value(vtype))
        if op == "alignment" and draw(st.booleans()):
            value = draw(st.sampled_from([0, 1, 2, 3, 16, 64, 4096, 2**20, 2**31]))
        im.kvs = [k for k in im.kvs if k.key != key] + [KV(key, vtype, value, sub)]
        desc = f"{key} = {value!r:.60} (type {vtype})"
        if op == "alignment" and isinstance(value, int) and value > 0 and not value & (value - 1) and value <= 4096:
            im.alignment = value  # the serialiser pads the data section to it
    else:
        t = draw(st.sampled_from(im.tensors))
        if op == "tensor type":
            t.type_id = draw(st.sampled_from(_TYPE_IDS))
            desc = f"{t.name} type = {t.type_id}"
        elif op == "tensor dims":
            t.ne = draw(st.one_of(st.just(t.ne[::-1]), st.just(t.ne + [1]), st.just(t.ne[:1]),
                                  st.lists(st.sampled_from([1, 2, 32, 256, 512, 2**31, 2**40, 2**63]),
                                           min_size=1, max_size=4)))
            desc = f"{t.name} ne = {t.ne}"
        elif op == "tensor name":
            other = draw(st.sampled_from([x.name for x in im.tensors]))
            t.name = draw(st.one_of(st.just(other), st.sampled_from(F.HOSTILE_STRINGS[1:]),
                                    st.text(min_size=1, max_size=30), st.just("blk.0.attn_q.weight"),
                                    st.just("blk.99.ffn_up.weight")))
            desc = f"tensor name = {t.name!r:.60}"
        elif op == "tensor offset":
            t.rel_offset = draw(st.one_of(st.sampled_from([x.rel_offset for x in im.tensors]),
                                          st.sampled_from([0, 1, 32, len(im.data), 2**40, 2**64 - 32])))
            desc = f"{t.name} offset = {t.rel_offset}"
        elif op == "tensor drop":
            im.tensors.remove(t)
            desc = f"drop {t.name}"
        else:
            im.tensors.append(F.GGUFTensor(t.name, list(t.ne), t.type_id, t.rel_offset))
            desc = f"duplicate {t.name}"
    try:
        return F.Blob(im.to_bytes(), desc)
    except (struct.error, OverflowError, UnicodeEncodeError, ValueError):
        return F.Blob(image.to_bytes()[:-1], desc + " (unencodable; truncated original instead)")


# ---------------------------------------------------------------------------------------------
# tests

@F.fuzz_settings(CI_EXAMPLES["bytes"])
@given(st.data())
def test_mutated_gguf_bytes_give_exact_tensors_or_a_tmac_error(stage, data):
    v = data.draw(st.sampled_from(VARIANTS))
    raw = stage.read(f"{v}/slim.gguf")
    hot = parse(stage.path(f"{v}/slim.gguf")).data_offset
    blob = data.draw(F.mutated_bytes(raw, hot=hot))
    with stage.swap(f"{v}/slim.gguf", blob.data) as p:
        _both(p)


@F.fuzz_settings(CI_EXAMPLES["fields"])
@given(st.data())
def test_gguf_header_fields_set_to_interesting_values_give_a_tmac_error_or_a_model(stage, data):
    v = data.draw(st.sampled_from(VARIANTS))
    blob = data.draw(F.gguf_field_edit(stage.images[v]))
    with stage.swap(f"{v}/slim.gguf", blob.data) as p:
        _both(p)


@F.fuzz_settings(CI_EXAMPLES["semantic"])
@given(st.data())
def test_edited_gguf_metadata_and_tensor_infos_give_a_model_or_a_tmac_error(stage, data):
    v = data.draw(st.sampled_from(VARIANTS))
    blob = data.draw(semantic_edit(stage.images[v]))
    with stage.swap(f"{v}/slim.gguf", blob.data) as p:
        _both(p)


@F.fuzz_settings(CI_EXAMPLES["full"])
@given(st.data())
def test_mutated_full_gguf_with_vocabulary_gives_a_model_or_a_tmac_error(stage, data):
    v = data.draw(st.sampled_from(VARIANTS[:2]))
    raw = stage.read(f"{v}/model.gguf")
    hot = parse(stage.path(f"{v}/model.gguf")).data_offset
    blob = data.draw(F.mutated_bytes(raw, hot=hot))
    with stage.swap(f"{v}/model.gguf", blob.data) as p:
        _both(p)


def test_slim_fixtures_read_exactly_before_mutation(stage):
    for v in VARIANTS:
        assert F.check_read(stage.path(f"{v}/slim.gguf"), oracle=gguf_oracle()) == "ok", v
        assert F.check_inspect(stage.path(f"{v}/slim.gguf")) == "ok", v


def test_this_file_ran_its_mutated_input_budget(request):
    tests = [n for n in globals() if n.startswith("test_") and "budget" not in n and "before" not in n]
    ran = {i.name for i in request.session.items if i.module.__name__ == FILE}
    if not all(n in ran for n in tests):
        pytest.skip("only part of this file ran")
    floor = FLOOR if not os.environ.get(F.FUZZ_ENV) else len(tests) * F.n_examples(1)
    print(f"\n{FILE}: {F.COUNTS[FILE]} mutated inputs (floor {floor}); registered in-progress bugs met: "
          f"{dict(F.KNOWN_SEEN) or 'none'}")
    assert F.COUNTS[FILE] >= floor, F.COUNTS
