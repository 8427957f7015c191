"""The format's numeric facts, each written once: supported bit widths and the size of a tensor's scales.

The tile rules themselves (M0 % 8, bm % 32, 4·kfactor | K...) are the layout engine's:
:mod:`tmac_convert.layouts.constraints`.
"""

from __future__ import annotations

from ..errors import TmacError

#: Weight bit widths T-MAC kernels (and every format here) support.
SUPPORTED_BITS: tuple[int, ...] = (1, 2, 3, 4)

#: The rule name every bit-width refusal carries.
BITS_RULE = "bits in 1..4"


def bits_supported(bits: object) -> bool:
    """True for 1, 2, 3 or 4 (an int, not a bool)."""
    return isinstance(bits, int) and not isinstance(bits, bool) and bits in SUPPORTED_BITS


def check_bits(bits: object, what: str = "bits", *, tensor: str | None = None, file: str | None = None) -> None:
    """Raise :class:`TmacError` (rule :data:`BITS_RULE`) unless ``bits`` is supported."""
    if not bits_supported(bits):
        raise TmacError(f"{what} must be 1, 2, 3 or 4 (what T-MAC kernels take), got {bits!r}", tensor=tensor,
                        file=file, rule=BITS_RULE)


def scales_size(m0: int, k: int, group_size: int, zero_point: bool, per_tensor: bool = False) -> int:
    """Float32 values after a tensor's weights in its blob: T-MAC's kcfg ``scales_size``.

    One per group of ``group_size`` weights along K for each of the ``M0`` rows, twice that with zero
    offsets (8 scales then 8 zeros per tile), and 1 for a per-tensor scale.
    """
    if per_tensor:
        return 1
    return m0 * (k // group_size) * (2 if zero_point else 1)


def zero_point_from_scales_size(size: int, m0: int, k: int, group_size: int) -> bool | None:
    """Whether a kcfg ``scales_size`` of a group-scaled ``[M0, K]`` tensor means zero offsets (None when it fits
    neither reading)."""
    for zp in (False, True):
        if size == scales_size(m0, k, group_size, zp):
            return zp
    return None
