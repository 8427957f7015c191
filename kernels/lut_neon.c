/*
 * NEON path (AArch64): the LUT tile kernel with vqtbl1q_s8 lookups.
 *
 * Per chunk, 32-row block and table: one 16-byte weight vector, two table lookups (low nibbles:
 * rows 0..15, high nibbles: rows 16..31), widened into int16 row sums with vaddw (the rows stay
 * in order, so no re-interleaving is needed).  Fast aggregation uses vrhaddq_s8, the signed
 * rounding-halving add, in the same pairing tree as the reference.  The float stage repeats the
 * reference's operations in its order with separate multiplies and adds (no fused vfma).
 * The table build is the scalar one: it is a small part of the work.
 */
#include "lut_core.h"

#ifdef TMAC_HAVE_NEON

#include <arm_neon.h>
#include <string.h>

static inline void to_float(int16x8_t lo, int16x8_t hi, float32x4_t *f) {
    f[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo)));
    f[1] = vcvtq_f32_s32(vmovl_high_s16(lo));
    f[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi)));
    f[3] = vcvtq_f32_s32(vmovl_high_s16(hi));
}

/* sums of one sub-group of n tables for the 32 rows of a block: f[0..7] = rows 0-3, 4-7, ..., 28-31 */
static inline void sums_int8(const uint8_t *wv, const int8_t *tv, int64_t n, float32x4_t f[8]) {
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
    to_float(s0, s1, f);
    to_float(s2, s3, f + 4);
}

static inline void sums_fa(const uint8_t *wv, const int8_t *tv, int64_t n, float32x4_t f[8]) {
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
    to_float(vmovl_s8(vget_low_s8(la[0])), vmovl_high_s8(la[0]), f);
    to_float(vmovl_s8(vget_low_s8(lb[0])), vmovl_high_s8(lb[0]), f + 4);
}

void lut_tile_neon(const lut_problem *p, const uint8_t *w, const float *S, const lut_row *row, float *C, float *y) {
    if (p->mode != LUT_INT8) {
        lut_tile_scalar(p, w, S, row, C, y);
        return;
    }
    const int64_t bm = p->bm, kf = p->kf, KO = p->k / (4 * kf), nB = bm / 32, actk = p->actk;
    const int64_t nsub = kf / actk, P = bm / p->bits;
    const int b = p->bits, blk = p->zp ? 16 : 8;
    const int8_t *table = (const int8_t *)row->table;
    const float32x4_t two = vdupq_n_f32(2.0f);
    memset(C, 0, (size_t)bm * sizeof(float));
    for (int64_t ko = 0; ko < KO; ++ko) {
        const float *Sg = p->per_tensor ? S : S + (ko * 4 * kf / p->gs) * (P / 8) * blk;
        const float32x4_t vbsum = vdupq_n_f32(row->bsum[ko]);
        for (int64_t B = 0; B < nB; ++B) {
            const uint8_t *wb = w + (ko * nB + B) * kf * 16;
            float32x4_t acc[8];
            for (int q = 0; q < 8; ++q) acc[q] = vdupq_n_f32(0.0f);
            for (int64_t sub = 0; sub < nsub; ++sub) {
                const int64_t sg = ko * nsub + sub, j0 = sg * actk;
                const float32x4_t vs = vdupq_n_f32(row->sgscale[sg]);
                const float32x4_t vb = vdupq_n_f32(row->vbias[sg]);
                float32x4_t f[8];
                if (p->fa)
                    sums_fa(wb + sub * actk * 16, table + j0 * 16, actk, f);
                else
                    sums_int8(wb + sub * actk * 16, table + j0 * 16, actk, f);
                for (int q = 0; q < 8; ++q) {
                    float32x4_t v = vmulq_f32(f[q], vs);
                    if (lut_plane0(B * 32 + q * 4, b)) v = vaddq_f32(v, vb);
                    acc[q] = vaddq_f32(acc[q], v);
                }
            }
            for (int q = 0; q < 8; ++q) {
                const int64_t rr = B * 32 + q * 4, ib = rr / 8, e = rr % 8;
                float32x4_t c = vld1q_f32(C + rr);
                if (p->per_tensor) {
                    c = vaddq_f32(c, acc[q]);
                } else {
                    c = vaddq_f32(c, vmulq_f32(acc[q], vld1q_f32(Sg + (ib / b) * blk + e)));
                    if (p->zp && ib % b == 0)
                        c = vaddq_f32(c, vmulq_f32(two, vmulq_f32(vld1q_f32(Sg + (ib / b) * 16 + 8 + e), vbsum)));
                }
                vst1q_f32(C + rr, c);
            }
        }
    }
    for (int64_t ob = 0; ob < P / 8; ++ob)
        for (int h = 0; h < 8; h += 4) {
            float32x4_t v = vmulq_f32(vdupq_n_f32(0.5f), vld1q_f32(C + ob * 8 * b + h));
            for (int i = 1; i < b; ++i)
                v = vaddq_f32(v, vmulq_f32(vdupq_n_f32((float)(1 << (i - 1))), vld1q_f32(C + ob * 8 * b + i * 8 + h)));
            if (p->per_tensor) v = vmulq_f32(v, vdupq_n_f32(S[0]));
            vst1q_f32(y + ob * 8 + h, v);
        }
}

/* Row block: one row after another (the weight-reusing order is AVX2-only so far). */
void lut_tile_rows_neon(const lut_problem *p, const uint8_t *w, const float *S, const lut_row *rows, int64_t nrows,
                        float *C, float *y, int64_t ldy) {
    for (int64_t r = 0; r < nrows; ++r) lut_tile_neon(p, w, S, rows + r, C, y + r * ldy);
}

#endif /* TMAC_HAVE_NEON */
