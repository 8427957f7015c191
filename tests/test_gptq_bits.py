"""GPTQ integer packing: one little-endian bit stream per packed axis, for 1-4 bits and 8-64-bit words.

The reference here is independent of the implementation: it writes every value's bits into a flat
bit array (``np.unpackbits`` order, little-endian) and reads the words back from those bits.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import golden_files
from tmac_convert.errors import TmacError
from tmac_convert.readers.gptq_bits import (pack_fields, pack_qweight, pack_qzeros, period, unpack_fields,
                                            unpack_qweight, unpack_qzeros, word_dtype)

WORDS = ("int8", "int16", "int32", "int64")


def reference_pack_1d(values: np.ndarray, bits: int, word: str) -> np.ndarray:
    """Bit i*b + j of the stream is bit j of values[i]; word w holds stream bits [w*W, (w+1)*W)."""
    stream = ((values[:, None].astype(np.uint64) >> np.arange(bits, dtype=np.uint64)) & 1).astype(np.uint8).ravel()
    return np.packbits(stream, bitorder="little").view(np.dtype(word).newbyteorder("<")).astype(word)


@given(bits=st.sampled_from([1, 2, 3, 4]), word=st.sampled_from(WORDS), runs=st.integers(1, 4),
       seed=st.integers(0, 2**32 - 1))
def test_pack_matches_the_bit_stream_definition(bits: int, word: str, runs: int, seed: int) -> None:
    wb = np.dtype(word).itemsize * 8
    _, vp = period(bits, wb)
    v = np.random.default_rng(seed).integers(0, 1 << bits, runs * vp).astype(np.uint8)
    assert np.array_equal(pack_fields(v, bits, axis=0, dtype=word), reference_pack_1d(v, bits, word))


@given(bits=st.sampled_from([1, 2, 3, 4]), word=st.sampled_from(WORDS), runs=st.integers(1, 3),
       cols=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_qweight_round_trip(bits: int, word: str, runs: int, cols: int, seed: int) -> None:
    wb = np.dtype(word).itemsize * 8
    _, vp = period(bits, wb)
    codes = np.random.default_rng(seed).integers(0, 1 << bits, (cols, runs * vp)).astype(np.uint8)
    qw = pack_qweight(codes, bits, word)
    assert qw.dtype == np.dtype(word) and qw.shape == (runs * vp * bits // wb, cols)
    assert np.array_equal(unpack_qweight(qw, bits), codes)
    # column m of qweight is the bit stream of row m of codes
    assert np.array_equal(qw[:, 0], reference_pack_1d(codes[0], bits, word))


@given(bits=st.sampled_from([1, 2, 3, 4]), word=st.sampled_from(WORDS), groups=st.integers(1, 4),
       seed=st.integers(0, 2**32 - 1))
def test_qzeros_round_trip(bits: int, word: str, groups: int, seed: int) -> None:
    wb = np.dtype(word).itemsize * 8
    _, vp = period(bits, wb)
    z = np.random.default_rng(seed).integers(0, 1 << bits, (groups, 2 * vp)).astype(np.uint8)
    qz = pack_qzeros(z, bits, word)
    assert qz.shape == (groups, 2 * vp * bits // wb)
    assert np.array_equal(unpack_qzeros(qz, bits), z)
    assert np.array_equal(qz[groups - 1], reference_pack_1d(z[groups - 1], bits, word))


@given(bits=st.sampled_from([1, 2, 3, 4]), word=st.sampled_from(WORDS), seed=st.integers(0, 2**32 - 1))
def test_unpack_any_words_then_repack_is_identity(bits: int, word: str, seed: int) -> None:
    """Every bit pattern of whole runs is a valid packing: unpack then pack restores the words exactly."""
    wb = np.dtype(word).itemsize * 8
    wp, _ = period(bits, wb)
    info = np.iinfo(word)
    words = np.random.default_rng(seed).integers(info.min, info.max, (3 * wp, 2), dtype=word, endpoint=True)
    assert np.array_equal(pack_fields(unpack_fields(words, bits, axis=0), bits, axis=0, dtype=word), words)


def test_three_bit_values_straddle_int32_words() -> None:
    """32 three-bit values fill three int32 words; value 10 spans words 0 and 1, value 21 words 1 and 2."""
    v = np.zeros(32, np.uint8)
    v[10] = 0b111
    w = pack_fields(v, 3, dtype=np.int32).view(np.uint32)
    assert w.tolist() == [0b11 << 30, 0b1, 0]
    v[:] = 0
    v[21] = 0b101
    w = pack_fields(v, 3, dtype=np.int32).view(np.uint32)
    assert w.tolist() == [0, 1 << 31, 0b10]


def test_golden_qweight_and_qzeros_unpack_exactly() -> None:
    for f in golden_files("gptq_"):
        d = np.load(f)
        bits = int(d["bits"])
        assert np.array_equal(unpack_qweight(d["qweight"], bits), d["expect_codes"]), f.name
        assert np.array_equal(pack_qweight(d["expect_codes"], bits), d["qweight"]), f.name
        assert np.array_equal(pack_qzeros(unpack_qzeros(d["qzeros"], bits), bits), d["qzeros"]), f.name


@pytest.mark.parametrize("call, rule", [
    (lambda: unpack_fields(np.zeros((4, 2), np.int32), 3), "packed length"),
    (lambda: pack_fields(np.zeros(30, np.uint8), 3), "packed length"),
    (lambda: pack_fields(np.full(32, 8, np.uint8), 3), "code range"),
    (lambda: unpack_fields(np.zeros(3, np.int32), 8), "bits in 1..4"),
    (lambda: unpack_fields(np.zeros(3, np.float32), 2), "pack_dtype"),
    (lambda: word_dtype("int12"), "pack_dtype"),
])
def test_bad_packing_requests_raise(call, rule: str) -> None:
    with pytest.raises(TmacError) as e:
        call()
    assert e.value.rule == rule


@given(bits=st.sampled_from([1, 2, 3, 4]), word=st.sampled_from(WORDS), runs=st.integers(1, 3),
       cols=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_native_qweight_unpack_equals_the_numpy_bit_stream(bits: int, word: str, runs: int, cols: int,
                                                           seed: int) -> None:
    """The C unpack-and-transpose (used for speed) gives exactly the numpy path's codes, any words."""
    from tmac_convert.readers import gptq_bits

    assert gptq_bits._native is not None, "the native GPTQ module was not built"
    wdt = np.dtype(word)
    rows = period(bits, wdt.itemsize * 8)[0] * runs
    rng = np.random.default_rng(seed)
    words = rng.integers(np.iinfo(wdt).min, np.iinfo(wdt).max, (rows, cols), dtype=wdt, endpoint=True)
    assert np.array_equal(unpack_qweight(words, bits), unpack_fields(words.T, bits, axis=1))
