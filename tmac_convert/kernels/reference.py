"""Numpy reference of T-MAC's LUT GEMM, working on the Format A blob itself (section 4 of the format notes).

It reads the permuted bytes exactly as the runtime does, so agreeing with float math proves the layout,
and it fixes the order of every float32 operation, which the native kernels repeat: the native result
equals this one bit for bit (the tests assert equality).

Algebra (4.1): each weight bit is read as ``sigma = 2·beta − 1``; ``w − 2^(b−1) = sum_i alpha_i sigma_i − 1/2``
with ``alpha = [1/2, 1, 2, 4]``.  For one activation row, per LUT group ``j`` of 4 activations,
``LUT_j[c] = sum_t (2·bit_t(c) − 1)·x[4j+t]``; the kernel sums ``LUT_j[code]`` over the bit-row's codes
and ``y[m0] = sum_i alpha_i·(that sum for bit-row (m0, i))``.

Order of operations (float32 throughout unless said otherwise):

1. LUT (4.2): the 8 odd entries ``c = 2c'+1`` are ``((x0 ± x1) ± x2) ± x3`` (sign + where bit ``t`` of
   ``c`` is set); the even ones mirror them, ``LUT[c] = −LUT[15 − c]``.  Per act group: ``amax`` = max of
   ``((|x0|+|x1|)+|x2|)+|x3|``, ``scale = amax/127``, ``q = clip(rint(LUT·(1/scale)), −128, 127)``
   (reciprocal 0 when it is not finite; rint rounds half to even), ``bias = sum_j LUT_j[0]`` added in
   table order starting from 0 (``= −sum x``).  ``lut="float"`` keeps the float entries, scale 1.
2. Per kfactor chunk and act sub-group of ``actk`` tables: an exact integer sum of the int8 entries per
   bit-row (int16 in the kernels) — or a float sum in table order for the float LUT, or the rounding-halving
   tree of fast aggregation.  The bit-planes of each output are then combined before any float operation:
   ``comb = sum_i 2^i·S_i`` exactly in integers (for the float LUT in float32, ``c = S_0``, then
   ``c = c + 2^i·S_i`` for i = 1..b−1).  Per chunk, ``vbsum`` adds the sub-groups' biases in order (``bsum``
   their raw biases, which differ only with fast aggregation); ``acc`` starts at ``vbsum`` and takes
   ``acc = fma(float(comb), scale, acc)`` per sub-group in order.
3. ``C = fma(acc, s, C)`` with the output's group scale (``C = C + acc`` for a per-tensor scale), then with
   zero points ``C = fma(z', 2·bsum, C)``; chunks in K order, C starting at 0.
4. ``y = 0.5·C`` (the ``1/2`` of ``alpha``), then a per-tensor scale multiplies last.

``fma(a, b, c)`` is a fused multiply-add: ``a·b + c`` rounded once to float32 (C's ``fmaf``, one FMA
instruction in the SIMD kernels; :func:`fma32` here).

Combining the planes in integers is what makes the float stage per output rather than per bit-row: it runs
``b`` times less often than it would per plane, and ``comb`` stays exact (|comb| <= (2^b − 1)·128·actk).
Fused multiply-adds, with the biases summed once per chunk, leave one float operation per output and
sub-group (after the conversion) and two per chunk.
"""

from __future__ import annotations

import numpy as np

from .spec import Problem, fast_aggregation_bias_factor

F32 = np.float32
_ROWS_PER_PASS = 16      # activation rows handled together
_PASS_VALUES = 1 << 21   # lookups per pass (rows x chunks x kfactor x bm): bounds the reference's memory


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Fused multiply-add of float32 arrays (broadcast): ``a·b + c`` rounded once to float32, as C's ``fmaf``.

    ``a·b`` is exact in float64 (24 + 24 bits); the sum is rounded to float64 *to odd* (the exact sum's
    truncation with its last bit set when inexact, from a TwoSum error term), and 53 >= 24 + 2 bits make
    the final rounding to float32 the single correct rounding.  Non-finite sums are returned as they come.
    """
    a64, b64, c64 = (np.asarray(v, dtype=F32).astype(np.float64) for v in (a, b, c))
    p = a64 * b64
    s = p + c64
    with np.errstate(invalid="ignore"):
        bb = s - p
        err = (p - (s - bb)) + (c64 - bb)                  # exact: p + c = s + err
        inexact = (err != 0) & np.isfinite(s)
    bits = s.view(np.int64)
    # truncation toward zero: one step down in magnitude where s was rounded away from zero
    bits = np.where(inexact & (np.signbit(err) != np.signbit(s)), bits - 1, bits)
    bits = np.where(inexact, bits | 1, bits)
    return bits.view(np.float64).astype(F32)


def build_lut(x: np.ndarray, ags: int, bias_group: int, lut: str = "int8") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tables of one or more activation rows.

    Args:
        x: float32 ``[N, K]``.
        ags: activations per LUT scale (divides K, multiple of 4).
        bias_group: activations per bias, ``4·actk`` (= ``ags`` unless ``ags > 4·kfactor``): the bias is
            added once per act sub-group, so it must sum exactly that sub-group's activations.
        lut: ``"int8"`` (quantised tables) or ``"float"``.

    Returns:
        ``(tables, scales, biases)``: int8 (or float32) ``[N, K/4, 16]`` in natural code order, float32
        ``[N, K/ags]`` LUT scales (1 for float tables) and float32 ``[N, K/bias_group]`` biases ``−sum x``.
    """
    x = np.ascontiguousarray(x, dtype=F32)
    n, k = x.shape
    x4 = x.reshape(n, k // 4, 4)
    x0, x1, x2, x3 = (x4[:, :, t:t + 1] for t in range(4))
    c = np.arange(8)  # odd code 2c'+1: bits 1..3 of the code are bits 0..2 of c'
    odd = np.where(c & 1, x0 + x1, x0 - x1)
    odd = np.where(c & 2, odd + x2, odd - x2)
    odd = np.where(c & 4, odd + x3, odd - x3)  # [N, K/4, 8] float32, each step rounded like the C code

    per = ags // 4
    groups = k // ags
    lut0 = -odd[:, :, 7]  # LUT[0] = -LUT[15]
    bias = np.add.accumulate(lut0.reshape(n, k // bias_group, bias_group // 4), axis=2)[:, :, -1]
    if lut == "float":
        table = np.empty((n, k // 4, 16), dtype=F32)
        table[:, :, 1::2] = odd
        table[:, :, 0::2] = -odd[:, :, ::-1]
        return table, np.ones((n, groups), dtype=F32), bias

    a = np.abs(x4)
    absum = ((a[:, :, 0] + a[:, :, 1]) + a[:, :, 2]) + a[:, :, 3]
    scale = absum.reshape(n, groups, per).max(axis=2) / F32(127)
    with np.errstate(over="ignore"):
        rscale = np.divide(F32(1), scale, out=np.zeros_like(scale), where=scale != 0)
    rscale[~np.isfinite(rscale)] = 0  # a scale so small that 1/scale overflows: entries quantise to 0
    r = np.repeat(rscale, per, axis=1)[:, :, None]
    q = np.clip(np.rint(odd * r), -128, 127).astype(np.int8)
    table = np.empty((n, k // 4, 16), dtype=np.int8)
    table[:, :, 1::2] = q
    table[:, :, 0::2] = -q[:, :, ::-1]  # position 2i holds LUT[2i] = -LUT[15-2i] = -q[7-i]
    return table, scale, bias


def _sub_group_values(vals: np.ndarray, p: Problem, lut: str, fast_aggregation: bool) -> np.ndarray:
    """Lookups ``[n, KO, kfactor, bm]`` -> sub-group sums ``[n, KO, nsub, bm]`` per bit-row, before scaling.

    int64 for int8 tables (exact sums, or the fast-aggregation tree's values), float32 for float tables.
    """
    n, ko, kf, bm = vals.shape
    v = vals.reshape(n, ko, kf // p.actk, p.actk, bm)
    if lut == "float":
        return np.add.accumulate(v, axis=3)[:, :, :, -1]
    if fast_aggregation:
        t = v.astype(np.int16)
        while t.shape[3] > 1:  # one level of the tree per pass: log2(actk) passes
            t = (t[:, :, :, 0::2] + t[:, :, :, 1::2] + 1) >> 1
        return t[:, :, :, 0].astype(np.int64)
    return v.sum(axis=3, dtype=np.int64)  # exact; |sum| <= actk·128 fits int16


def _combine_planes(sums: np.ndarray, bits: int) -> np.ndarray:
    """Bit-row sums ``[..., bm]`` -> per-output ``comb = sum_i 2^i·S_i`` as float32 ``[..., bm/bits]``.

    Tile row ``ob·8b + 8i + e`` is plane ``i`` of output ``ob·8 + e``.  Integer sums are combined exactly and
    converted once; float sums are combined in float32 in plane order.
    """
    lead, bm = sums.shape[:-1], sums.shape[-1]
    planes = sums.reshape(*lead, bm // (8 * bits), bits, 8)
    if sums.dtype == np.int64:
        comb = planes[..., 0, :].copy()
        for i in range(1, bits):
            comb += planes[..., i, :] << i
        return comb.reshape(*lead, bm // bits).astype(F32)
    comb = planes[..., 0, :]
    for i in range(1, bits):
        comb = comb + F32(1 << i) * planes[..., i, :]
    return comb.reshape(*lead, bm // bits)


def gemm(weights: np.ndarray, scales: np.ndarray, x: np.ndarray, p: Problem, *, lut: str = "int8",
         fast_aggregation: bool = False) -> np.ndarray:
    """``y = x @ W.T`` computed from the blob's two parts.

    Args:
        weights: uint8 ``[M0·K·bits/8]``, the permuted weight bytes.
        scales: float32 ``[scales_size]``, the permuted scales (and zeros) that follow them.
        x: float32 ``[N, K]``.
        p: the checked problem (:func:`tmac_convert.kernels.spec.resolve`).

    Returns:
        float32 ``[N, M0]``.
    """
    n = x.shape[0]
    y = np.empty((n, p.m0), dtype=F32)
    for r0 in range(0, n, _ROWS_PER_PASS):
        xs = x[r0:r0 + _ROWS_PER_PASS]
        table, lscale, lbias = build_lut(xs, p.ags, 4 * p.actk, lut)
        vscale, vbias = lscale, lbias
        if fast_aggregation and lut == "int8":
            vscale = lscale * F32(p.actk)  # the tree returns about sum/actk
            per = p.ags // (4 * p.actk)  # bias sub-groups per act group
            vbias = lbias - np.repeat(vscale, per, axis=1) * F32(fast_aggregation_bias_factor(p.actk, p.bits))
        y[r0:r0 + len(xs)] = _gemm_rows(weights, scales, table, vscale, vbias, lbias, p, lut, fast_aggregation)
    return y


def _gemm_rows(weights, scales, table, vscale, vbias, zbias, p: Problem, lut: str, fast_aggregation: bool):
    n = table.shape[0]
    kf, bm, b = p.kfactor, p.bm, p.bits
    ko_n, nb, pt = p.k // (4 * kf), bm // 32, p.outputs_per_tile
    nsub = kf // p.actk
    tile_bytes = p.k * bm // 8
    flat_table = table.reshape(n, -1)

    # Per chunk and sub-group: the act group of its first table.
    first_table = np.arange(ko_n)[:, None] * kf + np.arange(nsub)[None, :] * p.actk
    ag = first_table * 4 // p.ags                                                   # [KO, nsub] scale index
    sg = first_table // p.actk                                                      # [KO, nsub] bias index
    vs, vb, zb = vscale[:, ag][..., None], vbias[:, sg], zbias[:, sg]               # [n, KO, nsub(, 1)]
    bsum, vbsum = zb[:, :, 0], vb[:, :, 0]
    for s in range(1, nsub):
        bsum = bsum + zb[:, :, s]                                                   # [n, KO]
        vbsum = vbsum + vb[:, :, s]
    bsum2 = F32(2) * bsum                                                           # exact

    # Table index of every (chunk, ki): the flat table offset j·16 that a code is added to.
    j16 = (np.arange(ko_n)[:, None, None] * kf + np.arange(kf)[None, :, None]) * 16   # [KO, kf, 1]
    grp = np.arange(ko_n) * 4 * kf // p.group_size                                  # [KO]
    per_tile_scales = 1 if p.per_tensor else p.groups * pt * (2 if p.zero_point else 1)

    # chunks per pass: bounds the lookup arrays (~_PASS_VALUES per pass) whatever K and bm are
    ko_step = max(1, _PASS_VALUES // (n * kf * bm))
    y = np.empty((n, p.m0), dtype=F32)
    for t in range(p.tiles):
        st = scales[t * per_tile_scales:(t + 1) * per_tile_scales]
        if p.per_tensor:
            s_g = z_g = None
        elif p.zero_point:
            both = st.reshape(p.groups, pt // 8, 2, 8)
            s_g, z_g = both[:, :, 0].reshape(p.groups, pt), both[:, :, 1].reshape(p.groups, pt)
        else:
            s_g, z_g = st.reshape(p.groups, pt), None
        w_tile = weights[t * tile_bytes:(t + 1) * tile_bytes].reshape(ko_n, nb, kf, 16)
        c = np.zeros((n, pt), dtype=F32)
        for k0 in range(0, ko_n, ko_step):
            k1 = min(ko_n, k0 + ko_step)
            w = w_tile[k0:k1]
            code = np.stack([w & 15, w >> 4], axis=3).transpose(0, 2, 1, 3, 4).reshape(k1 - k0, kf, bm)  # 32B+16h+l
            vals = flat_table[:, j16[k0:k1] + code]                                 # [n, chunks, kf, bm]
            comb = _combine_planes(_sub_group_values(vals, p, lut, fast_aggregation), b)  # [n, chunks, nsub, pt]
            acc = np.broadcast_to(vbsum[:, k0:k1, None], comb[:, :, 0].shape)
            for s in range(nsub):
                acc = fma32(comb[:, :, s], vs[:, k0:k1, s], acc)                    # [n, chunks, pt]
            if p.per_tensor:  # chunks in K order, continuing from the previous pass's C
                c = np.add.accumulate(np.concatenate([c[:, None], acc], axis=1), axis=1)[:, -1]
                continue
            for i, g in enumerate(grp[k0:k1]):  # chunks in K order: each fma rounds once, so no prefix sum
                c = fma32(acc[:, i], s_g[g], c)
                if z_g is not None:
                    c = fma32(z_g[g], bsum2[:, k0 + i, None], c)
        yt = F32(0.5) * c
        if p.per_tensor:
            yt = yt * scales[0]
        y[:, t * pt:(t + 1) * pt] = yt
    return y
