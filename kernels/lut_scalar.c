/*
 * Portable scalar paths: the LUT build, the LUT tile kernel (int8, float and fast aggregation),
 * the dequantise-then-multiply baseline and the exact code dot products.
 *
 * The scalar LUT code is the plain-C statement of reference.py; the SIMD paths must match it bit for
 * bit, so it favours clarity over speed.
 */
#include <math.h>
#include <string.h>

#include "lut_core.h"

/* Odd entry c = 2c'+1 of a table: bit t of c selects +x_t (set) or -x_t; bit 0 is always set. */
static inline float odd_entry(const float *q, int cp) {
    float v = q[0];
    v = (cp & 1) ? v + q[1] : v - q[1];
    v = (cp & 2) ? v + q[2] : v - q[2];
    v = (cp & 4) ? v + q[3] : v - q[3];
    return v;
}

static inline int8_t quantise(float v, float r) {
    float t = rintf(v * r); /* round half to even in the default rounding mode */
    if (t > 127.0f) t = 127.0f;
    if (t < -128.0f) t = -128.0f;
    return (int8_t)t;
}

void lut_build_scalar(const float *x, int64_t k, int64_t ags, int64_t bias_group, int mode, void *table,
                      float *lscale, float *lbias) {
    lut_biases(x, k, bias_group, lbias);
    for (int64_t g = 0; g < k / ags; ++g) {
        const int64_t j0 = g * ags / 4, j1 = (g + 1) * ags / 4;
        if (mode == LUT_FLOAT) {
            float *t = (float *)table;
            for (int64_t j = j0; j < j1; ++j)
                for (int cp = 0; cp < 8; ++cp) {
                    const float v = odd_entry(x + 4 * j, cp);
                    t[j * 16 + 2 * cp + 1] = v;
                    t[j * 16 + 14 - 2 * cp] = -v; /* mirror: LUT[15-c] = -LUT[c] */
                }
            lscale[g] = 1.0f;
            continue;
        }
        /* The largest |entry| of a table is |x0|+|x1|+|x2|+|x3|; one scale per act group. */
        float amax = 0.0f;
        for (int64_t j = j0; j < j1; ++j) {
            const float *q = x + 4 * j;
            const float a = ((fabsf(q[0]) + fabsf(q[1])) + fabsf(q[2])) + fabsf(q[3]);
            if (a > amax) amax = a;
        }
        const float scale = amax / 127.0f;
        const float r = lut_reciprocal(scale);
        lscale[g] = scale;
        int8_t *t = (int8_t *)table;
        for (int64_t j = j0; j < j1; ++j)
            for (int cp = 0; cp < 8; ++cp) {
                const int8_t qv = quantise(odd_entry(x + 4 * j, cp), r);
                t[j * 16 + 2 * cp + 1] = qv;
                t[j * 16 + 14 - 2 * cp] = (int8_t)-qv; /* rint is odd-symmetric: mirror after quantising */
            }
    }
}

/* Sums of one sub-group (actk tables starting at table j0) for the 32 rows of block B, exact integers for int8
 * tables (isum) or floats for float tables (fsum).  wb points at the block's first table of the chunk; ks is
 * the sub-group's first table in the chunk. */
static void sub_sums(const lut_problem *p, const uint8_t *wb, int64_t ks, int64_t j0, const void *table,
                     int32_t isum[32], float fsum[32]) {
    const int64_t actk = p->actk;
    if (p->mode == LUT_FLOAT) {
        const float *t = (const float *)table + j0 * 16;
        for (int r = 0; r < 32; ++r) fsum[r] = 0.0f;
        for (int64_t i = 0; i < actk; ++i) {
            const uint8_t *wv = wb + (ks + i) * 16;
            for (int l = 0; l < 16; ++l) {
                fsum[l] = fsum[l] + t[i * 16 + (wv[l] & 15)];
                fsum[16 + l] = fsum[16 + l] + t[i * 16 + (wv[l] >> 4)];
            }
        }
        return;
    }
    const int8_t *t = (const int8_t *)table + j0 * 16;
    if (p->fa) {
        /* Fast aggregation: a tree of rounding-halving adds, (a + b + 1) >> 1, pairs (0,1), (2,3), ...
         * (>> of a negative int is an arithmetic shift on every compiler this builds with). */
        int v[32][32];
        for (int64_t i = 0; i < actk; ++i) {
            const uint8_t *wv = wb + (ks + i) * 16;
            for (int l = 0; l < 16; ++l) {
                v[i][l] = t[i * 16 + (wv[l] & 15)];
                v[i][16 + l] = t[i * 16 + (wv[l] >> 4)];
            }
        }
        for (int64_t n = actk; n > 1; n /= 2)
            for (int64_t i = 0; i < n / 2; ++i)
                for (int r = 0; r < 32; ++r) v[i][r] = (v[2 * i][r] + v[2 * i + 1][r] + 1) >> 1;
        for (int r = 0; r < 32; ++r) isum[r] = v[0][r];
        return;
    }
    for (int r = 0; r < 32; ++r) isum[r] = 0;
    for (int64_t i = 0; i < actk; ++i) {
        const uint8_t *wv = wb + (ks + i) * 16;
        for (int l = 0; l < 16; ++l) {
            isum[l] += t[i * 16 + (wv[l] & 15)];
            isum[16 + l] += t[i * 16 + (wv[l] >> 4)];
        }
    }
}

/* Tile rows are visited in super-blocks of lut_super_blocks(b) 32-row blocks, which hold whole outputs (all
 * their bit-planes): 32*nbl rows, 32*nbl/b outputs. */
void lut_tile_scalar(const lut_problem *p, const uint8_t *w, const float *S, const lut_row *row, float *C,
                     float *y) {
    const int64_t bm = p->bm, kf = p->kf, KO = p->k / (4 * kf), nB = bm / 32, actk = p->actk;
    const int64_t nsub = kf / actk, P = bm / p->bits;
    const int b = p->bits, blk = p->zp ? 16 : 8; /* floats per 8 outputs: 8 scales (+ 8 zeros) */
    const int64_t nbl = lut_super_blocks(b);
    for (int64_t o = 0; o < P; ++o) C[o] = 0.0f;
    for (int64_t ko = 0; ko < KO; ++ko) {
        const float *Sg = p->per_tensor ? S : S + (ko * 4 * kf / p->gs) * (P / 8) * blk;
        const float bsum2 = 2.0f * row->bsum[ko], vbc = row->vbias[ko];
        for (int64_t B0 = 0; B0 < nB; B0 += nbl) {
            const int64_t nrows = 32 * (nB - B0 < nbl ? nB - B0 : nbl), nout = nrows / b, o0 = B0 * 32 / b;
            float acc[96];
            for (int64_t o = 0; o < nout; ++o) acc[o] = vbc;
            for (int64_t sub = 0; sub < nsub; ++sub) {
                const int64_t sg = ko * nsub + sub;
                const float vs = row->sgscale[sg];
                int32_t isum[96];
                float fsum[96];
                for (int64_t B = B0; B < B0 + nrows / 32; ++B)
                    sub_sums(p, w + (ko * nB + B) * kf * 16, sub * actk, sg * actk, row->table, isum + 32 * (B - B0),
                             fsum + 32 * (B - B0));
                for (int64_t o = 0; o < nout; ++o) {
                    const int64_t r0 = (o / 8) * 8 * b + o % 8; /* plane 0's row; plane i is 8*i further */
                    float comb;
                    if (p->mode == LUT_FLOAT) {
                        comb = fsum[r0];
                        for (int i = 1; i < b; ++i) comb = comb + (float)(1 << i) * fsum[r0 + 8 * i];
                    } else {
                        int32_t c = isum[r0];
                        for (int i = 1; i < b; ++i) c += isum[r0 + 8 * i] * (1 << i);
                        comb = (float)c;
                    }
                    acc[o] = fmaf(comb, vs, acc[o]);
                }
            }
            for (int64_t o = 0; o < nout; ++o) {
                float *c = C + o0 + o;
                if (p->per_tensor) {
                    *c = *c + acc[o];
                    continue;
                }
                const int64_t ob = (o0 + o) / 8, e = (o0 + o) % 8;
                *c = fmaf(acc[o], Sg[ob * blk + e], *c);
                if (p->zp) *c = fmaf(Sg[ob * blk + 8 + e], bsum2, *c);
            }
        }
    }
    /* y = C/2 (alpha_0), times a per-tensor scale last */
    for (int64_t o = 0; o < P; ++o) y[o] = p->per_tensor ? (0.5f * C[o]) * S[0] : 0.5f * C[o];
}

/* ---------------------------------------------------------------------------------------------
 * Baseline: decode 8 outputs x 4*kf activations of codes to float weights, then multiply-add.
 * Plane i of output block ob is tile row ob*8b + 8i + e: block B = row/32, nibble h = (row%32)/16,
 * byte l = row%16. */

static inline int dq_code(const uint8_t *w, const lut_problem *p, int64_t ko, int64_t ki, int64_t ob, int e,
                          int t) {
    const int64_t nB = p->bm / 32;
    int code = 0;
    for (int i = 0; i < p->bits; ++i) {
        const int64_t rr = ob * 8 * p->bits + 8 * i + e;
        const uint8_t byte = w[((ko * nB + rr / 32) * p->kf + ki) * 16 + rr % 16];
        const int nib = (rr % 32) / 16 ? byte >> 4 : byte & 15;
        code |= ((nib >> t) & 1) << i;
    }
    return code;
}

void dq_tile_scalar(const lut_problem *p, const uint8_t *w, const float *S, const float *x, int64_t n, float *y,
                    int64_t ldy, float *work) {
    const int64_t kf = p->kf, KO = p->k / (4 * kf), P = p->bm / p->bits;
    const int blk = p->zp ? 16 : 8;
    const float half = (float)(1 << (p->bits - 1));
    float *wf = work; /* [4kf][8] dequantised weights of one block and chunk */
    for (int64_t ob = 0; ob < P / 8; ++ob) {
        for (int64_t j = 0; j < n; ++j)
            for (int e = 0; e < 8; ++e) y[j * ldy + ob * 8 + e] = 0.0f;
        for (int64_t ko = 0; ko < KO; ++ko) {
            const float *Sg = p->per_tensor ? S : S + (ko * 4 * kf / p->gs) * (P / 8) * blk + ob * blk;
            for (int64_t ki = 0; ki < kf; ++ki)
                for (int t = 0; t < 4; ++t)
                    for (int e = 0; e < 8; ++e) {
                        const float s = p->per_tensor ? S[0] : Sg[e];
                        const float z = p->zp ? Sg[8 + e] : 0.0f;
                        wf[(ki * 4 + t) * 8 + e] = ((float)dq_code(w, p, ko, ki, ob, e, t) - half) * s - z;
                    }
            for (int64_t j = 0; j < n; ++j) {
                const float *xj = x + j * p->k + ko * 4 * kf;
                for (int e = 0; e < 8; ++e) {
                    float a = y[j * ldy + ob * 8 + e];
                    for (int64_t kk = 0; kk < 4 * kf; ++kk) a += wf[kk * 8 + e] * xj[kk];
                    y[j * ldy + ob * 8 + e] = a;
                }
            }
        }
    }
}

void ref_rows_scalar(const uint8_t *codes, int64_t rows, int64_t k, const int16_t *a, int64_t n, int64_t gs,
                     double h, const double *s, const double *z, const double *A, double *y, int64_t ldy) {
    const int64_t G = k / gs;
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < n; ++j) {
            double acc = 0.0;
            for (int64_t g = 0; g < G; ++g) {
                int64_t dot = 0;
                const uint8_t *c = codes + r * k + g * gs;
                const int16_t *aj = a + j * k + g * gs;
                for (int64_t i = 0; i < gs; ++i) dot += (int64_t)c[i] * aj[i];
                const double Ag = A[g * n + j];
                acc += s[r * G + g] * ((double)dot - h * Ag);
                if (z) acc -= z[r * G + g] * Ag;
            }
            y[j * ldy + r] = acc;
        }
}

/* The scalar row block is the plain statement: one row after another. */
void lut_tile_rows_scalar(const lut_problem *p, const uint8_t *w, const float *S, const lut_row *rows, int64_t nrows,
                          float *C, float *y, int64_t ldy) {
    for (int64_t r = 0; r < nrows; ++r) lut_tile_scalar(p, w, S, rows + r, C, y + r * ldy);
}
