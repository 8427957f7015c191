"""The packed bytes agree with the closed form of section 1.2/1.3, computed element by element.

This is an independent oracle for shapes, bits and tiles that the golden set does not cover.
"""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import tmac_convert as tc
from tmac_convert.layouts import bm_candidates, kfactor_candidates


def closed_form_weights(w, bits, bm, kfactor):
    m0, k = w.shape
    out = np.zeros(m0 * k * bits // 8, dtype=np.uint8)
    for m in range(m0):
        for i in range(bits):
            r = (m // 8) * 8 * bits + i * 8 + (m % 8)
            tile, rr = divmod(r, bm)
            b_, h, l = rr // 32, (rr % 32) // 16, rr % 16
            for j in range(k // 4):
                code = sum(((int(w[m, 4 * j + t]) >> i) & 1) << t for t in range(4))
                ko, ki = divmod(j, kfactor)
                idx = (((tile * (k // (4 * kfactor)) + ko) * (bm // 32) + b_) * kfactor + ki) * 16 + l
                out[idx] |= code << (4 * h)
    return out


def closed_form_scales(s, z, bits, bm):
    m0, g = s.shape
    p = bm // bits
    out = np.zeros(m0 * g * (1 if z is None else 2), dtype=np.float32)
    for m in range(m0):
        tile = m // p
        for grp in range(g):
            if z is None:
                out[(tile * g + grp) * p + m % p] = s[m, grp]
            else:
                base = ((tile * g + grp) * (p // 8) + (m % p) // 8) * 16
                out[base + m % 8] = s[m, grp]
                out[base + 8 + m % 8] = z[m, grp]
    return out


@st.composite
def small_layouts(draw):
    bits = draw(st.sampled_from([1, 2, 3, 4]))
    m0 = 8 * draw(st.integers(1, 12))
    bms = bm_candidates(m0, bits)
    if not bms:
        m0 = {1: 32, 2: 16, 3: 32, 4: 8}[bits]
        bms = bm_candidates(m0, bits)
    bm = draw(st.sampled_from(bms))
    kfactor = draw(st.sampled_from([2, 4, 8, 16]))
    k = 4 * kfactor * draw(st.integers(1, 3))
    gs = draw(st.sampled_from([d for d in range(4 * kfactor, k + 1, 4 * kfactor) if k % d == 0]))
    zp = draw(st.booleans())
    return bits, m0, k, bm, kfactor, gs, zp


@given(small_layouts(), st.integers(0, 2**32 - 1))
def test_pack_matches_closed_form(layout, seed):
    bits, m0, k, bm, kfactor, gs, zp = layout
    rng = np.random.default_rng(seed)
    w = rng.integers(0, 1 << bits, (m0, k), dtype=np.uint8)
    s = rng.standard_normal((m0, k // gs)).astype(np.float16)
    z = rng.standard_normal((m0, k // gs)).astype(np.float16) if zp else None
    blob = tc.pack(w, s, z, bits=bits, bm=bm, kfactor=kfactor)
    wb = m0 * k * bits // 8
    assert np.array_equal(blob[:wb], closed_form_weights(w, bits, bm, kfactor))
    assert np.array_equal(blob[wb:].view("<f4"), closed_form_scales(s, z, bits, bm))


def test_candidates_are_exactly_the_admissible_values():
    assert bm_candidates(64, 2) == [32, 64, 128]
    assert bm_candidates(128, 3) == [96, 192, 384]
    assert bm_candidates(8, 1) == []
    assert kfactor_candidates(256, 128) == [1, 2, 4, 8, 16, 32]
    assert kfactor_candidates(96, 32) == [1, 2, 4, 8]
