"""Shared builders for the kernel and verification tests (no tests of its own): random tensors laid out with pack."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

import tmac_convert as tc
from tmac_convert.layouts import bm_candidates, kfactor_candidates

from .conftest import golden_files


@dataclass
class Case:
    """One laid-out tensor: its source form, its blob and the kernel arguments."""

    qt: tc.QuantTensor
    blob: np.ndarray
    bm: int
    kfactor: int

    @property
    def kw(self) -> dict:
        m0, k = self.qt.shape
        return dict(m=m0, k=k, bits=self.qt.bits, group_size=self.qt.group_size, zero_point=self.qt.zeros is not None,
                    bm=self.bm, kfactor=self.kfactor)

    def dense(self) -> np.ndarray:
        """float64 ``[M0, K]`` weights from the source form (no layout code)."""
        return self.qt.dequantize(np.float64)


def golden_cases() -> list[tuple[str, Case]]:
    out = []
    for f in golden_files("layout_"):
        d = np.load(f)
        zeros = d["zeros"] if "zeros" in d.files else None
        qt = tc.QuantTensor(f.stem, d["codes"], d["scales"], zeros, int(d["bits"]), int(d["group_size"]))
        out.append((f.stem, Case(qt, d["blob"], int(d["bm"]), int(d["kfactor"]))))
    return out


def admissible_ags(k: int, kfactor: int) -> list[int]:
    """Activation group sizes the tiles admit: 32, 64 and 128 where they divide 4·kfactor and K, and K itself."""
    return [a for a in (32, 64, 128) if k % a == 0 and (4 * kfactor) % a == 0 and a != k] + [k]


def make_case(rng: np.random.Generator, bits: int, m0: int, k: int, bm: int, kfactor: int, gs: int, zp: bool,
              per_tensor: bool, ternary: bool = False) -> Case:
    if ternary:
        codes = rng.integers(1, 4, (m0, k), dtype=np.uint8)   # BitNet: -1, 0, +1 -> codes 1, 2, 3
    else:
        codes = rng.integers(0, 1 << bits, (m0, k), dtype=np.uint8)
    if per_tensor:
        scales, zeros, gs = np.array([rng.uniform(0.01, 0.1)], dtype=np.float32), None, k
    else:
        scales = rng.uniform(0.002, 0.03, (m0, k // gs)).astype(np.float16)
        zeros = (rng.standard_normal((m0, k // gs)) * 0.01).astype(np.float16) if zp else None
    qt = tc.QuantTensor("blk.0.test.weight", codes, scales, zeros, bits, gs)
    blob = tc.pack(codes, scales, zeros, bits=bits, bm=bm, kfactor=kfactor)
    return Case(qt, blob, bm, kfactor)


@st.composite
def layouts(draw, max_m0: int = 256, max_k: int = 768):
    """(bits, m0, k, bm, kfactor, gs, zp, per_tensor, ags) for a layout the kernels admit."""
    bits = draw(st.sampled_from([1, 2, 3, 4]))
    m0 = 8 * draw(st.integers(1, max_m0 // 8))
    if not bm_candidates(m0, bits):
        m0 *= 12
    bm = draw(st.sampled_from(bm_candidates(m0, bits)))
    per_tensor = bits == 2 and draw(st.booleans())
    k = 32 * draw(st.integers(1, max_k // 32))
    if per_tensor:
        gs = k
    else:
        gs = draw(st.sampled_from([d for d in range(4, k + 1, 4) if k % d == 0 and kfactor_candidates(k, d)]))
    kfactor = draw(st.sampled_from(kfactor_candidates(k, None if per_tensor else gs)))
    zp = (not per_tensor) and draw(st.booleans())
    ags = draw(st.sampled_from(admissible_ags(k, kfactor)))
    return bits, m0, k, bm, kfactor, gs, zp, per_tensor, ags


def nmse(y: np.ndarray, ref: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    return float(np.sum((y.astype(np.float64) - ref) ** 2) / np.sum(ref ** 2))
