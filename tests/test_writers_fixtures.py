"""Every committed fixture converted, parsed back, and compared byte for byte with pack(source).

The source tensors come from ``tmac_convert.read`` of the fixture (the readers' intermediate form);
the file must hold exactly ``tmac_convert.pack`` of each quantised one (with the tiles the file
records) and the float16/float32 cast of each float one, in a GGUF whose every tensor info, offset
and size is consistent, and the file must read back to the same intermediate form.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tmac_convert import pack
from tmac_convert.convert import convert
from tmac_convert.format import RUNTIMES, parse
from tmac_convert.layouts import Kcfg, blob_nbytes
from tmac_convert.readers import read
from tmac_convert.format.tensor import QuantTensor

FIX = Path(__file__).resolve().parents[1] / "fixtures"
CASES = {
    "gptq_v2_asym_2bit": {},
    "gptq_v1_sym_4bit": {},
    "gptq_3bit": {},
    "gptq_1bit": {},
    "bitnet_packed": {},
    "bitnet_float": {},
    "llama_f16": {"bits": 2, "group_size": 64, "zero_point": True, "max_error": 1.0},  # 2-bit RTN: lossy on purpose
    "gguf_q4_0/model.gguf": {},
    "gguf_q4_1/model.gguf": {},
    "gguf_tq2_0/model.gguf": {},
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("fmt", ["gguf", "npz"])
def test_fixture_converts_to_exactly_pack_of_its_tensors(tmp_path, name, fmt):
    src = FIX / name
    if not src.exists():
        pytest.skip(f"fixture {name} not generated")
    opts = CASES[name]
    out = tmp_path / f"out.{fmt}"
    report = convert(str(src), out, format=fmt, verify=False, **opts)
    back = read(out)
    stored = {pl.name: (pl, data) for pl, data in back._reader.raw_bytes(back)}
    source = read(src, **opts)
    names = []
    for t in source.tensors():
        names.append(t.name)
        pl, data = stored[t.name]
        data = np.asarray(data).reshape(-1)
        if isinstance(t, QuantTensor):
            m0, k = t.shape
            want = pack(t.codes, t.scales, t.zeros, bits=t.bits, bm=pl.tiles.bm, kfactor=pl.tiles.kfactor)
            assert want.size == blob_nbytes(m0, k, t.bits, t.group_size, t.zeros is not None, t.per_tensor_scale)
        else:
            want = np.ascontiguousarray(t.data, dtype="<f2" if t.data.ndim >= 2 else "<f4").reshape(-1).view(np.uint8)
        assert np.array_equal(data, want), t.name
    assert names == [n for n in stored if n != "rope_freqs.weight"]
    assert [x.name for x in report.tensors] == list(stored)
    if fmt == "gguf":
        _check_structure(out)


def _check_structure(out: Path) -> None:
    gf = parse(out)
    rt = RUNTIMES[gf.get("tmac.runtime")]
    kc = Kcfg.parse(gf.get("tmac.kcfg"))
    tiles = dict(zip(gf.get("tmac.tensor_names", []), gf.get("tmac.tensor_bm", []).tolist()))
    prev_end = gf.data_offset
    for rec in sorted(gf.tensors, key=lambda r: r.offset):
        assert rec.offset % gf.alignment == 0 and rec.offset >= prev_end
        bits = rt.bits_of(rec.type_id)
        if bits is not None:
            k, m0 = rec.ne
            sec = kc.lookup(m0, k, bits)
            assert sec.bm == tiles[rec.name]
            n = m0 * k * bits // 8 + 4 * sec.scales_size  # what the fork's loader computes from kcfg
        else:
            n = int(np.prod(rec.ne)) * (2 if rec.type_id == 1 else 4)
        assert rec.offset + n <= gf.file_size
        prev_end = rec.offset + n
    assert gf.get("general.file_type") == rt.file_type
