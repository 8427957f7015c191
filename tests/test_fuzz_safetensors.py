"""Fuzzing the Hugging Face folder readers (GPTQ, float, BitNet): mutated safetensors and JSON configs.

Every fixture folder in safetensors form is mutated three ways -- raw bytes (bit flips, truncation,
insertions, deletions, length fields set to interesting values, biased towards the header), structured
edits of the safetensors JSON header (dtypes, shapes, offsets, names, a lying header length) and
hostile edits of ``config.json`` / ``quantize_config.json`` / the shard index -- and read end to end
with :func:`tmac_convert.read`.  The property (``_fuzz.check_read``): a self-consistent model or a
TmacError, never another exception, a huge allocation or a hang.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from . import _fuzz as F

FILE = __name__

#: (folder, safetensors file, reader options)
SAFETENSORS = [
    ("gptq_v1_sym_4bit", "model.safetensors", {}),
    ("gptq_v2_asym_2bit", "model-00001-of-00002.safetensors", {}),
    ("gptq_v2_asym_2bit", "model-00002-of-00002.safetensors", {}),
    ("gptq_3bit", "model.safetensors", {}),
    ("gptq_1bit", "model.safetensors", {}),
    ("gptq_act_order", "model.safetensors", {"act_order": "requantize"}),
    ("autogptq_4bit", "gptq_model-4bit-128g.safetensors", {}),
    ("llama_f16", "model.safetensors", {"bits": 2, "group_size": 64}),
    ("bitnet_float", "model.safetensors", {}),
    ("bitnet_packed", "model.safetensors", {}),
]
#: (folder, JSON file, reader options); keys are names worth adding to the document.
JSONS = [(d, "config.json", o) for d, _, o in SAFETENSORS[::1] if d != "gptq_v2_asym_2bit"] + [
    ("gptq_v2_asym_2bit", "config.json", {}),
    ("gptq_v1_sym_4bit", "quantize_config.json", {}),
    ("gptq_act_order", "quantize_config.json", {"act_order": "requantize"}),
    ("autogptq_4bit", "quantize_config.json", {}),
    ("gptq_v2_asym_2bit", "model.safetensors.index.json", {}),
]
KEYS = F.CONFIG_KEYS
FOLDERS = sorted({d for d, _, _ in SAFETENSORS})
CI_EXAMPLES = {"bytes": 360, "header": 250, "json": 250}
FLOOR = 855  # mutated inputs this file runs in CI (the three tests together)


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    return F.Stage(tmp_path_factory.mktemp("fuzz-st"), FOLDERS)


def _read(stage: F.Stage, folder: str, data_file: str, opts: dict, whole_folder: bool = True) -> str:
    src = stage.path(folder) if whole_folder else stage.path(f"{folder}/{data_file}")
    F.COUNTS[FILE] += 1
    return F.check_read(src, **opts)


def _hot(raw: bytes) -> int:
    return 8 + int.from_bytes(raw[:8], "little")


@F.fuzz_settings(CI_EXAMPLES["bytes"])
@given(st.data())
def test_mutated_safetensors_bytes_give_a_model_or_a_tmac_error(stage, data):
    folder, name, opts = data.draw(st.sampled_from(SAFETENSORS))
    raw = stage.read(f"{folder}/{name}")
    mutated = data.draw(F.mutated_bytes(raw, hot=_hot(raw)))
    with stage.swap(f"{folder}/{name}", mutated.data):
        _read(stage, folder, name, opts, whole_folder=data.draw(st.integers(0, 4)) > 0)


@F.fuzz_settings(CI_EXAMPLES["header"])
@given(st.data())
def test_edited_safetensors_headers_give_a_model_or_a_tmac_error(stage, data):
    folder, name, opts = data.draw(st.sampled_from(SAFETENSORS))
    mutated = data.draw(F.edited_safetensors(stage.read(f"{folder}/{name}")))
    with stage.swap(f"{folder}/{name}", mutated.data):
        _read(stage, folder, name, opts)


@F.fuzz_settings(CI_EXAMPLES["json"])
@given(st.data())
def test_edited_json_configs_give_a_model_or_a_tmac_error(stage, data):
    folder, name, opts = data.draw(st.sampled_from(JSONS))
    raw = stage.read(f"{folder}/{name}")
    if data.draw(st.integers(0, 5)) == 0:  # broken text: truncated, flipped, not UTF-8
        mutated = data.draw(F.mutated_bytes(raw))
    else:
        mutated = data.draw(F.edited_json(json.loads(raw), keys=KEYS))
    with stage.swap(f"{folder}/{name}", mutated.data):
        _read(stage, folder, name, opts)


def test_every_fixture_reads_unmutated(stage):
    """The staged copies are valid: each fixture reads cleanly before it is mutated."""
    for folder, _, opts in SAFETENSORS:
        assert F.check_read(stage.path(folder), **opts) == "ok", folder


def test_this_file_ran_its_mutated_input_budget(request):
    """At least FLOOR mutated inputs ran (when the whole file ran without -k filtering)."""
    ran = {i.name for i in request.session.items if i.module.__name__ == FILE}
    if not all(n in ran for n in ("test_mutated_safetensors_bytes_give_a_model_or_a_tmac_error",
                                  "test_edited_safetensors_headers_give_a_model_or_a_tmac_error",
                                  "test_edited_json_configs_give_a_model_or_a_tmac_error")):
        pytest.skip("only part of this file ran")
    floor = FLOOR if not os.environ.get(F.FUZZ_ENV) else 3 * F.n_examples(1)
    print(f"\n{FILE}: {F.COUNTS[FILE]} mutated inputs (floor {floor}); registered in-progress bugs met: "
          f"{dict(F.KNOWN_SEEN) or 'none'}")
    assert F.COUNTS[FILE] >= floor, F.COUNTS
