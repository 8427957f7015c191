/*
 * NEON path (AArch64): the LUT tile kernel with vqtbl1q_s8 lookups.
 *
 * Per chunk, 32-row block and table: one 16-byte weight vector, two table lookups (low nibbles:
 * rows 0..15, high nibbles: rows 16..31), widened into int16 row sums with vaddw (the rows stay
 * in order, so no re-interleaving is needed).  Fast aggregation uses vrhaddq_s8, the signed
 * rounding-halving add, in the same pairing tree as the reference.  Each output's bit-planes are then
 * combined in int32 and the float stage repeats the reference's operations in its order, per output:
 * vfmaq_f32 where the reference fuses a multiply-add, separate operations nowhere else.
 * The table build (lut_build_neon) takes four tables per vector: vld4q_f32 de-interleaves their activations, so that
 * each odd entry of the four tables is a vector expression, rounded with vcvtnq (to nearest, ties to even, as rintf),
 * saturated by two narrowing moves and put in table order by one four-register lookup per table.  T-MAC's fork runs
 * the build on one thread before the tiles' threads start, so on many cores it is not a small part of a GEMV.
 */
#include "lut_core.h"

#ifdef TMAC_HAVE_NEON

#include <arm_neon.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------
 * LUT build: lut_build_passes with four tables per vector.  Every value is the scalar build's, computed with its
 * operations in its order. */

/* LUT biases of 4 consecutive bias groups at once (lut_build_passes' `biases`): lane u runs group u's chain
 * b = b - (((q0 + q1) + q2) + q3), group u's tables starting at x + u*bias_group. */
static void biases4(const float *x, int64_t bias_group, float *lbias) {
    float32x4_t b = vdupq_n_f32(0.0f);
    for (int64_t j = 0; j < bias_group / 4; ++j) {
        const float *q = x + 4 * j;
        const float32x4x2_t t01 = vtrnq_f32(vld1q_f32(q), vld1q_f32(q + bias_group));
        const float32x4x2_t t23 = vtrnq_f32(vld1q_f32(q + 2 * bias_group), vld1q_f32(q + 3 * bias_group));
        const float32x4_t q0 = vcombine_f32(vget_low_f32(t01.val[0]), vget_low_f32(t23.val[0]));
        const float32x4_t q1 = vcombine_f32(vget_low_f32(t01.val[1]), vget_low_f32(t23.val[1]));
        const float32x4_t q2 = vcombine_f32(vget_high_f32(t01.val[0]), vget_high_f32(t23.val[0]));
        const float32x4_t q3 = vcombine_f32(vget_high_f32(t01.val[1]), vget_high_f32(t23.val[1]));
        b = vsubq_f32(b, vaddq_f32(vaddq_f32(vaddq_f32(q0, q1), q2), q3));
    }
    vst1q_f32(lbias, b);
}

/* The largest |x0|+|x1|+|x2|+|x3| (summed in that order) of n tables, n a multiple of 4 (lut_build_passes'
 * `amax`).  All sums are >= +0 and not NaN for finite input, so the order of the maxima does not matter. */
static float amax_neon(const float *x, int64_t n) {
    float32x4_t vmax = vdupq_n_f32(0.0f);
    for (int64_t j = 0; j < n; j += 4) {
        const float32x4x4_t q = vld4q_f32(x + 4 * j); /* q.val[i]: activation i of tables j..j+3 */
        const float32x4_t a = vaddq_f32(vaddq_f32(vaddq_f32(vabsq_f32(q.val[0]), vabsq_f32(q.val[1])),
                                                  vabsq_f32(q.val[2])), vabsq_f32(q.val[3]));
        vmax = vmaxq_f32(vmax, a);
    }
    return vmaxvq_f32(vmax);
}

/* Four tables (x: their 16 activations, t: their 4*16 bytes) quantised with the reciprocal scale r.  The odd
 * entries c = 2c'+1 are ((x0 +- x1) +- x2) +- x3 with + where bit 0, 1, 2 of c' is set, the prefixes shared. */
static inline void tables4(const float *x, float32x4_t r, int8_t *t) {
    const float32x4x4_t q = vld4q_f32(x); /* q.val[i]: activation i of tables 0..3 */
    const float32x4_t a0 = vsubq_f32(q.val[0], q.val[1]), a1 = vaddq_f32(q.val[0], q.val[1]);
    const float32x4_t b0 = vsubq_f32(a0, q.val[2]), b1 = vsubq_f32(a1, q.val[2]);
    const float32x4_t b2 = vaddq_f32(a0, q.val[2]), b3 = vaddq_f32(a1, q.val[2]);
#define QE(v) vqmovn_s32(vcvtnq_s32_f32(vmulq_f32(v, r))) /* rint, then saturated to int16 */
    const int16x8_t e01 = vcombine_s16(QE(vsubq_f32(b0, q.val[3])), QE(vsubq_f32(b1, q.val[3])));
    const int16x8_t e23 = vcombine_s16(QE(vsubq_f32(b2, q.val[3])), QE(vsubq_f32(b3, q.val[3])));
    const int16x8_t e45 = vcombine_s16(QE(vaddq_f32(b0, q.val[3])), QE(vaddq_f32(b1, q.val[3])));
    const int16x8_t e67 = vcombine_s16(QE(vaddq_f32(b2, q.val[3])), QE(vaddq_f32(b3, q.val[3])));
#undef QE
    /* byte 4c'+i of the 32 bytes {lo, hi}: entry c' of table i, saturated to int8; then their negations (wrapping,
     * as the scalar build negates after saturating) */
    int8x16x4_t e;
    e.val[0] = vcombine_s8(vqmovn_s16(e01), vqmovn_s16(e23));
    e.val[1] = vcombine_s8(vqmovn_s16(e45), vqmovn_s16(e67));
    e.val[2] = vnegq_s8(e.val[0]);
    e.val[3] = vnegq_s8(e.val[1]);
    /* table i: entry 2c'+1 = odd[c'] (byte 4c'+i), entry 2c' = -odd[7-c'] (byte 32 + 4(7-c')+i) */
    static const uint8_t order[16] = {60, 0, 56, 4, 52, 8, 48, 12, 44, 16, 40, 20, 36, 24, 32, 28};
    const uint8x16_t idx = vld1q_u8(order);
    for (int i = 0; i < 4; ++i)
        vst1q_s8(t + 16 * i, vqtbl4q_s8(e, vaddq_u8(idx, vdupq_n_u8((uint8_t)i))));
}

/* n tables (a multiple of 4) with the reciprocal scale r (lut_build_passes' `tables`). */
static void tables_neon(const float *x, int64_t n, float r, int8_t *t) {
    const float32x4_t vr = vdupq_n_f32(r);
    for (int64_t j = 0; j < n; j += 4) tables4(x + 4 * j, vr, t + 16 * j);
}

void lut_build_neon(const float *x, int64_t k, int64_t ags, int64_t bias_group, int mode, void *table, float *lscale,
                    float *lbias) {
    lut_build_passes(x, k, ags, bias_group, mode, table, lscale, lbias, 4, biases4, amax_neon, tables_neon);
}

/* Row sums of one sub-group of n tables for the 32 rows of a block, in int16: s[q] = rows 8q..8q+7. */
static inline void sums_int8(const uint8_t *wv, const int8_t *tv, int64_t n, int16x8_t s[4]) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    int16x8_t s0 = vdupq_n_s16(0), s1 = s0, s2 = s0, s3 = s0;
    for (int64_t i = 0; i < n; ++i) {
        const uint8x16_t w = vld1q_u8(wv + 16 * i);
        const int8x16_t t = vld1q_s8(tv + 16 * i);
        const int8x16_t a = vqtbl1q_s8(t, vandq_u8(w, m4));
        const int8x16_t b = vqtbl1q_s8(t, vshrq_n_u8(w, 4));
        s0 = vaddw_s8(s0, vget_low_s8(a));
        s1 = vaddw_high_s8(s1, a);
        s2 = vaddw_s8(s2, vget_low_s8(b));
        s3 = vaddw_high_s8(s3, b);
    }
    s[0] = s0, s[1] = s1, s[2] = s2, s[3] = s3;
}

static inline void sums_fa(const uint8_t *wv, const int8_t *tv, int64_t n, int16x8_t s[4]) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    int8x16_t la[32], lb[32];
    for (int64_t i = 0; i < n; ++i) {
        const uint8x16_t w = vld1q_u8(wv + 16 * i);
        const int8x16_t t = vld1q_s8(tv + 16 * i);
        la[i] = vqtbl1q_s8(t, vandq_u8(w, m4));
        lb[i] = vqtbl1q_s8(t, vshrq_n_u8(w, 4));
    }
    for (int64_t m = n; m > 1; m /= 2)
        for (int64_t i = 0; i < m / 2; ++i) {
            la[i] = vrhaddq_s8(la[2 * i], la[2 * i + 1]);
            lb[i] = vrhaddq_s8(lb[2 * i], lb[2 * i + 1]);
        }
    s[0] = vmovl_s8(vget_low_s8(la[0]));
    s[1] = vmovl_high_s8(la[0]);
    s[2] = vmovl_s8(vget_low_s8(lb[0]));
    s[3] = vmovl_high_s8(lb[0]);
}

/* Tile rows are visited in super-blocks of lut_super_blocks(b) 32-row blocks holding whole outputs; row group
 * g8 (8 rows) of a super-block is bit-plane g8 % b of output group g8 / b.  The planes of each output are combined
 * exactly in int32 (comb = sum_i 2^i S_i) before the float stage, which then runs once per output. */
void lut_tile_neon(const lut_problem *p, const uint8_t *w, const float *S, const lut_row *row, float *C, float *y) {
    if (p->mode != LUT_INT8) {
        lut_tile_scalar(p, w, S, row, C, y);
        return;
    }
    const int64_t bm = p->bm, kf = p->kf, KO = p->k / (4 * kf), nB = bm / 32, actk = p->actk;
    const int64_t nsub = kf / actk, P = bm / p->bits, nbl = lut_super_blocks(p->bits);
    const int b = p->bits, blk = p->zp ? 16 : 8, nog = (int)(4 * nbl / b);
    const int8_t *table = (const int8_t *)row->table;
    memset(C, 0, (size_t)P * sizeof(float));
    for (int64_t ko = 0; ko < KO; ++ko) {
        const float *Sg = p->per_tensor ? S : S + (ko * 4 * kf / p->gs) * (P / 8) * blk;
        const float32x4_t vbsum2 = vdupq_n_f32(2.0f * row->bsum[ko]), vbc = vdupq_n_f32(row->vbias[ko]);
        for (int64_t B0 = 0; B0 < nB; B0 += nbl) {
            const int64_t o0 = B0 * 32 / b; /* the super-block's first output */
            float32x4_t acc[4][2];
            for (int og = 0; og < nog; ++og) acc[og][0] = acc[og][1] = vbc;
            for (int64_t sub = 0; sub < nsub; ++sub) {
                const int64_t sg = ko * nsub + sub, j0 = sg * actk;
                int32x4_t comb[4][2];
                for (int64_t bl = 0; bl < nbl; ++bl) {
                    const uint8_t *wb = w + (ko * nB + B0 + bl) * kf * 16 + sub * actk * 16;
                    int16x8_t s[4];
                    if (p->fa)
                        sums_fa(wb, table + j0 * 16, actk, s);
                    else
                        sums_int8(wb, table + j0 * 16, actk, s);
                    for (int q = 0; q < 4; ++q) {
                        const int g8 = (int)(4 * bl) + q, plane = g8 % b, og = g8 / b;
                        const int32x4_t lo = vmovl_s16(vget_low_s16(s[q])), hi = vmovl_high_s16(s[q]);
                        if (plane == 0) {
                            comb[og][0] = lo, comb[og][1] = hi;
                        } else {
                            const int32x4_t sh = vdupq_n_s32(plane);
                            comb[og][0] = vaddq_s32(comb[og][0], vshlq_s32(lo, sh));
                            comb[og][1] = vaddq_s32(comb[og][1], vshlq_s32(hi, sh));
                        }
                    }
                }
                const float32x4_t vs = vdupq_n_f32(row->sgscale[sg]);
                for (int og = 0; og < nog; ++og) /* vfmaq_f32(c, a, b) = c + a*b, rounded once */
                    for (int h = 0; h < 2; ++h) acc[og][h] = vfmaq_f32(acc[og][h], vcvtq_f32_s32(comb[og][h]), vs);
            }
            for (int og = 0; og < nog; ++og)
                for (int h = 0; h < 2; ++h) {
                    float *c = C + o0 + og * 8 + h * 4;
                    const float *sq = Sg + (o0 / 8 + og) * blk + h * 4;
                    float32x4_t cv = vld1q_f32(c);
                    if (p->per_tensor) {
                        cv = vaddq_f32(cv, acc[og][h]);
                    } else {
                        cv = vfmaq_f32(cv, acc[og][h], vld1q_f32(sq));
                        if (p->zp) cv = vfmaq_f32(cv, vld1q_f32(sq + 8), vbsum2);
                    }
                    vst1q_f32(c, cv);
                }
        }
    }
    for (int64_t o = 0; o < P; o += 4) {
        float32x4_t v = vmulq_f32(vdupq_n_f32(0.5f), vld1q_f32(C + o));
        if (p->per_tensor) v = vmulq_f32(v, vdupq_n_f32(S[0]));
        vst1q_f32(y + o, v);
    }
}

/* Row block: one row after another (the weight-reusing order is x86-only so far). */
void lut_tile_rows_neon(const lut_problem *p, const uint8_t *w, const float *S, const lut_row *rows, int64_t nrows,
                        float *C, float *y, int64_t ldy) {
    for (int64_t r = 0; r < nrows; ++r) lut_tile_neon(p, w, S, rows + r, C, y + r * ldy);
}

#endif /* TMAC_HAVE_NEON */
