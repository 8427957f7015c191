"""The rules of section 1.5 of the format notes, checked before any byte is laid out."""

from __future__ import annotations

from ..errors import LayoutError
from ..format.rules import SUPPORTED_BITS, bits_supported

MGROUP = 32  # 2 * simd_n_in: rows paired into one byte (low and high nibble)
SIMD_N_IN = 16
SIMD_N_OUT = 8
G = 4  # activations per LUT


def bm_candidates(m0: int, bits: int) -> list[int]:
    """Every bm the layout admits for ``M0`` outputs at ``bits``: multiples of 32 and of 8·bits dividing M0·bits."""
    m = m0 * bits
    step = _lcm(MGROUP, 8 * bits)
    return [bm for bm in range(step, m + 1, step) if m % bm == 0]


def kfactor_candidates(k: int, group_size: int | None) -> list[int]:
    """Every kfactor (power of two up to 32) with ``K % (4·kfactor) == 0`` and, for group scales,
    ``group_size % (4·kfactor) == 0``."""
    out = []
    for kf in (1, 2, 4, 8, 16, 32):
        if k % (G * kf) == 0 and (group_size is None or group_size % (G * kf) == 0):
            out.append(kf)
    return out


def _lcm(a: int, b: int) -> int:
    from math import gcd

    return a * b // gcd(a, b)


def check_layout(m0: int, k: int, bits: int, bm: int, kfactor: int, group_size: int | None,
                 *, tensor: str | None = None) -> None:
    """Raise :class:`LayoutError` naming the first broken rule and what would satisfy it.

    ``group_size`` is None for a per-tensor scale (no rule ties it to kfactor then).
    """

    def fail(rule: str, fix: str) -> None:
        raise LayoutError(f"rule {rule} fails for M0={m0}, K={k}, bits={bits}, bm={bm}, kfactor={kfactor}"
                          f"{'' if group_size is None else f', group_size={group_size}'}; {fix}",
                          tensor=tensor, rule=rule)

    if not bits_supported(bits):
        fail("bits in {1,2,3,4}", f"T-MAC kernels support {SUPPORTED_BITS} bits")
    if m0 <= 0 or k <= 0:
        fail("M0 > 0 and K > 0", "give a non-empty matrix")
    if m0 % 8:
        fail("M0 % 8 == 0", "outputs are interleaved in blocks of 8; pad or keep this tensor unquantised")
    if bm <= 0 or bm % MGROUP:
        fail("bm % 32 == 0", f"bm must be a multiple of 32; admissible: {bm_candidates(m0, bits) or 'none'}")
    if bm % (8 * bits):
        fail(f"bm % (8*bits) == 0", f"admissible bm for this shape: {bm_candidates(m0, bits) or 'none'}")
    if (m0 * bits) % bm:
        fail("(M0*bits) % bm == 0", f"bm must divide M0*bits = {m0 * bits}; admissible: "
             f"{bm_candidates(m0, bits) or 'none'}")
    if kfactor <= 0 or k % (G * kfactor):
        fail("K % (4*kfactor) == 0", f"admissible kfactor: {kfactor_candidates(k, group_size) or 'none'}")
    if group_size is not None:
        if group_size <= 0 or k % group_size:
            fail("K % group_size == 0", "the group size must divide K")
        if group_size % (G * kfactor):
            fail("group_size % (4*kfactor) == 0", "one scale must cover a whole kfactor chunk; admissible "
                 f"kfactor: {kfactor_candidates(k, group_size) or 'none'}")


def check_act_group(k: int, kfactor: int, act_group_size: int, *, tensor: str | None = None) -> None:
    """Kernel-side rule: ``K % ags == 0``, ``ags % 32 == 0`` and ``(4·kfactor) % ags == 0`` unless ``ags == K``."""
    ags = act_group_size
    if ags == k:
        return
    if ags <= 0 or k % ags or ags % 32 or (G * kfactor) % ags:
        ok = [a for a in (32, 64, 128) if k % a == 0 and (G * kfactor) % a == 0]
        raise LayoutError(f"activation group size {ags} is not admitted for K={k}, kfactor={kfactor}: it must "
                          f"divide K and 4*kfactor={G * kfactor} and be a multiple of 32, or equal K; admissible: "
                          f"{ok + [k]}", tensor=tensor, rule="(4*kfactor) % act_group_size == 0")
