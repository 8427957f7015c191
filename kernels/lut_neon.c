/*
 * NEON path (AArch64): the LUT tile kernel with vqtbl1q_s8 lookups.
 *
 * Per chunk, 32-row block and table: one 16-byte weight vector, two table lookups (low nibbles:
 * rows 0..15, high nibbles: rows 16..31), widened into int16 row sums with vaddw (the rows stay
 * in order, so no re-interleaving is needed).  Fast aggregation uses vrhaddq_s8, the signed
 * rounding-halving add, in the same pairing tree as the reference.  Each output's bit-planes are then
 * combined in int32 and the float stage repeats the reference's operations in its order, per output:
 * vfmaq_f32 where the reference fuses a multiply-add, separate operations nowhere else.
 * The table build is the scalar one: it is a small part of the work.
 */
#include "lut_core.h"

#ifdef TMAC_HAVE_NEON

#include <arm_neon.h>
#include <string.h>

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
