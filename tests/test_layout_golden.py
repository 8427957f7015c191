"""pack reproduces T-MAC's own preprocess_weights bytes, and unpack inverts them."""

import numpy as np
import pytest

import tmac_convert as tc
from tmac_convert.layouts import format_a

from .conftest import golden_files


def _case(path):
    d = np.load(path)
    zeros = d["zeros"] if "zeros" in d else None
    kw = dict(bits=int(d["bits"]), bm=int(d["bm"]), kfactor=int(d["kfactor"]))
    return d, zeros, kw


@pytest.fixture(params=[False, True], ids=["native", "numpy"])
def layout_path(request, monkeypatch):
    """Run a test once on the native module and once on the numpy fallback."""
    if request.param:
        monkeypatch.setattr(format_a, "native", None)
    else:
        assert format_a.native is not None, "the native layout module was not built"
    return request.param


@pytest.mark.parametrize("path", golden_files("layout_"), ids=lambda p: p.stem)
def test_pack_is_byte_exact_against_golden(path, layout_path):
    d, zeros, kw = _case(path)
    blob = tc.pack(d["codes"], d["scales"], zeros, **kw)
    assert blob.dtype == np.uint8
    assert blob.size == d["blob"].size
    assert np.array_equal(blob, d["blob"])


@pytest.mark.parametrize("path", golden_files("layout_"), ids=lambda p: p.stem)
def test_pack_with_threads_is_byte_exact(path):
    d, zeros, kw = _case(path)
    for threads in (1, 2, 3):
        # force the parallel split even on these small tensors
        blob = tc.pack(d["codes"], d["scales"], zeros, threads=threads, **kw)
        assert np.array_equal(blob, d["blob"])


@pytest.mark.parametrize("path", golden_files("layout_"), ids=lambda p: p.stem)
def test_unpack_recovers_golden_inputs(path, layout_path):
    d, zeros, kw = _case(path)
    m, k = d["codes"].shape
    codes, scales, z = tc.unpack(d["blob"], m=m, k=k, group_size=int(d["group_size"]),
                                 zero_point=zeros is not None, **kw)
    assert np.array_equal(codes, d["codes"])
    assert scales.dtype == np.float32 and np.array_equal(scales, d["scales"].astype(np.float32))
    if zeros is None:
        assert z is None
    else:
        assert np.array_equal(z, zeros.astype(np.float32))


def test_weight_part_length_matches_golden_weight_bytes():
    for path in golden_files("layout_"):
        d, zeros, kw = _case(path)
        m, k = d["codes"].shape
        assert format_a.weight_nbytes(m, k, kw["bits"]) == int(d["weight_bytes"])
