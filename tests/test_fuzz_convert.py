"""Fuzzing whole conversions: a mutated source either converts to a file that verifies, or fails with a
TmacError and leaves nothing behind.

Sources are the fixture folders and GGUF files with one mutation each (safetensors bytes or header
fields, ``config.json`` / ``quantize_config.json`` values, the tokenizer files the GGUF writer reads,
GGUF header fields and metadata).  After a failure the output folder must be empty: no output, no
``.kcfg.ini``, no temporary ``.part`` file.  After a success the output must pass ``verify``.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tmac_convert.convert import convert
from tmac_convert.errors import TmacError
from tmac_convert.format import parse

from . import _fuzz as F

FILE = __name__
CI_EXAMPLES = 100
FLOOR = 100
HF = ["gptq_v2_asym_2bit", "gptq_1bit", "bitnet_packed", "bitnet_float", "llama_f16"]
GGUF = ["gguf_q4_0", "gguf_tq2_0"]
TOKENIZER_KEYS = ("model", "vocab", "merges", "pre_tokenizer", "added_tokens", "type", "byte_fallback",
                  "bos_token", "eos_token", "add_bos_token", "added_tokens_decoder", "chat_template", "id",
                  "special", "content", "pretokenizers", "pattern", "Regex")


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    s = F.Stage(tmp_path_factory.mktemp("fuzz-conv"), HF + [f"{g}/model.gguf" for g in GGUF])
    s.out = tmp_path_factory.mktemp("fuzz-conv-out")
    s.images = {g: F.GGUFImage.load(s.path(f"{g}/model.gguf")) for g in GGUF}
    return s


@st.composite
def mutated_source(draw, stage: F.Stage):
    """``(source path, relative file, Blob)``: one fixture file mutated one way."""
    kind = draw(st.sampled_from(["st bytes", "st header", "config", "config", "tokenizer", "tokenizer",
                                 "gguf field", "gguf bytes"]))
    if kind.startswith("gguf"):
        g = draw(st.sampled_from(GGUF))
        rel = f"{g}/model.gguf"
        if kind == "gguf field":
            blob = draw(F.gguf_field_edit(stage.images[g]))
        else:
            raw = stage.read(rel)
            blob = draw(F.mutated_bytes(raw, hot=parse(stage.path(rel)).data_offset))
        return stage.path(rel), rel, blob
    folder = draw(st.sampled_from(HF))
    files = sorted(p.name for p in stage.path(folder).iterdir())
    if kind.startswith("st"):
        rel = f"{folder}/{draw(st.sampled_from([f for f in files if f.endswith('.safetensors')]))}"
        raw = stage.read(rel)
        blob = draw(F.mutated_bytes(raw, hot=8 + int.from_bytes(raw[:8], "little")) if kind == "st bytes"
                    else F.edited_safetensors(raw))
    else:
        names = ["config.json", "quantize_config.json"] if kind == "config" else \
            ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
        rel = f"{folder}/{draw(st.sampled_from([f for f in files if f in names]))}"
        blob = draw(F.edited_json(json.loads(stage.read(rel)), keys=F.CONFIG_KEYS + TOKENIZER_KEYS))
    return stage.path(folder), rel, blob


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@F.fuzz_settings(CI_EXAMPLES)
@given(st.data())
def test_a_mutated_source_converts_and_verifies_or_fails_leaving_nothing(stage, data):
    src, rel, blob = data.draw(mutated_source(stage))
    fmt = data.draw(st.sampled_from(["gguf", "gguf", "npz"]))
    verify = data.draw(st.integers(0, 3)) == 0
    out = stage.out / f"model.{fmt}"
    assert not _leftovers(stage.out)
    F.COUNTS[FILE] += 1
    with stage.swap(rel, blob.data):
        try:
            try:
                with F.bounded(seconds=60):
                    report = convert(src, out, format=fmt, verify=verify)
            except TmacError as e:
                assert str(e).strip()
                assert not _leftovers(stage.out), f"a failed conversion left {_leftovers(stage.out)}"
                return
            except Exception as e:  # noqa: BLE001
                left = _leftovers(stage.out)
                F.unexpected(e, src)  # registered or collected: it still must leave nothing behind
                assert not left, f"a failed conversion ({type(e).__name__}) left {left}"
                return
            expected = {out.name} | ({out.stem + ".kcfg.ini"} if report.kcfg_out else set())
            assert set(_leftovers(stage.out)) == expected, _leftovers(stage.out)
            assert F.check_verify(out, verify=False) in ("ok", "known bug")
        finally:
            for p in stage.out.iterdir():
                shutil.rmtree(p) if p.is_dir() else p.unlink()


def test_every_source_converts_before_mutation(stage, tmp_path):
    for s in [stage.path(f) for f in HF] + [stage.path(f"{g}/model.gguf") for g in GGUF]:
        out = tmp_path / (s.parent.name if s.is_file() else s.name)
        convert(s, out.with_suffix(".gguf"), verify=False)
        assert F.check_verify(out.with_suffix(".gguf"), verify=False) == "ok"


def test_this_file_ran_its_mutated_input_budget(request):
    ran = {i.name for i in request.session.items if i.module.__name__ == FILE}
    if "test_a_mutated_source_converts_and_verifies_or_fails_leaving_nothing" not in ran:
        pytest.skip("only part of this file ran")
    floor = FLOOR if not os.environ.get(F.FUZZ_ENV) else F.n_examples(1)
    print(f"\n{FILE}: {F.COUNTS[FILE]} mutated inputs (floor {floor}); registered in-progress bugs met: "
          f"{dict(F.KNOWN_SEEN) or 'none'}")
    assert F.COUNTS[FILE] >= floor, F.COUNTS
