"""parse_header(keys=...): reading only some key/values gives exactly those, the same tensor infos, and
still refuses a malformed file whose damage lies in a skipped value."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.bench_kit import write_llama3_8b_header
from tmac_convert.errors import TmacError
from tmac_convert.gguf_header import parse_header


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_llama3_8b_header(tmp_path_factory.mktemp("hdr") / "m.gguf", layers=1, vocab=300)


def _wanted(key: str) -> bool:
    return key.startswith("tmac.")


def test_only_the_accepted_keys_are_kept_and_equal_the_full_parse(model):
    full, part = parse_header(model), parse_header(model, keys=_wanted)
    assert set(part.kv) == {k for k in full.kv if _wanted(k) or k == "general.alignment"} and part.kv
    for k, v in part.kv.items():
        a, b = v.value, full.kv[k].value
        assert (np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b), k
    assert [(t.name, t.ne, t.type_id, t.offset) for t in part.tensors] == \
           [(t.name, t.ne, t.type_id, t.offset) for t in full.tensors]
    assert part.data_offset == full.data_offset


def test_a_string_array_running_past_the_end_is_refused_even_when_skipped(model, tmp_path):
    data = bytearray(model.read_bytes())
    i = data.index(b"tokenizer.ggml.tokens") + len(b"tokenizer.ggml.tokens") + 4 + 4 + 8  # first element's length
    data[i:i + 8] = (len(data) * 2).to_bytes(8, "little")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(TmacError, match="runs past the end|needs"):
        parse_header(bad, keys=_wanted)
    with pytest.raises(TmacError):
        parse_header(bad)


def test_a_key_repeated_among_skipped_keys_is_still_refused(model, tmp_path):
    dup = tmp_path / "dup.gguf"
    dup.write_bytes(model.read_bytes().replace(b"general.file_type", b"general.name_type", 1)
                    .replace(b"llama.block_count", b"general.name_type", 1))  # same lengths
    with pytest.raises(TmacError, match="appears twice"):
        parse_header(dup, keys=_wanted)


def test_the_alignment_is_always_read(tmp_path):
    m = write_llama3_8b_header(tmp_path / "m.gguf", layers=1, vocab=10)
    assert parse_header(m, keys=lambda k: False).alignment == parse_header(m).alignment == 32
    assert "general.alignment" in parse_header(m, keys=lambda k: False).kv
