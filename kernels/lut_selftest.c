/*
 * Stand-alone self-test of the SIMD LUT tile kernels against the scalar one (no Python, not part of the
 * extension).  It exists to check the NEON path on a machine without ARM hardware, under qemu:
 *
 *   aarch64-linux-gnu-gcc -O2 -std=c11 -ffp-contract=off kernels/lut_selftest.c kernels/lut_scalar.c \
 *       kernels/lut_neon.c kernels/lut_avx2.c -lm -o selftest && qemu-aarch64 -L /usr/aarch64-linux-gnu ./selftest
 *
 * and, built natively on x86, the AVX2 path.  Random blobs (any byte is a valid layout), scales, zeros
 * and activations over bits 1-4, zero points, per-tensor scales, kfactor 8/16/32, act groups 32/64/K,
 * int8, float and fast-aggregation tables, one row (lut_tile_*) and a block of 3 rows (lut_tile_rows_*);
 * every output must equal the scalar kernel's bit for bit.
 * Prints "OK <cases> <path>" and exits 0, or the first mismatch and exits 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lut_core.h"

static uint64_t state = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return (uint32_t)(state >> 16);
}
static float frand(void) { return (float)(rnd() % 2000001) / 1000000.0f - 1.0f; }

#define NR 3 /* activation rows of the row-block check */

static int run_case(lut_tile_fn simd, lut_tile_rows_fn simd_rows, int bits, int64_t m0, int64_t k, int64_t bm, int64_t kf, int64_t gs, int zp,
                    int per_tensor, int64_t ags, int mode, int fa) {
    lut_problem p;
    memset(&p, 0, sizeof p);
    p.m0 = m0, p.k = k, p.gs = per_tensor ? k : gs, p.bm = bm, p.kf = kf, p.ags = ags;
    p.actk = ags / 4 < kf ? ags / 4 : kf;
    p.bits = bits, p.zp = zp && !per_tensor, p.per_tensor = per_tensor, p.mode = mode, p.fa = fa;
    const int64_t wbytes = m0 * k * bits / 8, P = bm / bits, ntiles = m0 * bits / bm;
    const int64_t nscales = per_tensor ? 1 : m0 * (k / p.gs) * (p.zp ? 2 : 1);
    const int64_t nbias = k / (4 * p.actk), nchunk = k / (4 * kf), nsub = kf / p.actk;
    uint8_t *w = malloc(wbytes);
    float *s = malloc(nscales * sizeof(float)), *x = malloc(NR * k * sizeof(float));
    char *table = malloc(NR * (k / 4) * 16 * sizeof(float));
    float *ls = malloc(NR * (k / ags) * sizeof(float)), *lb = malloc(NR * nbias * sizeof(float));
    float *sgs = malloc(NR * nbias * sizeof(float)), *vb = malloc(NR * nbias * sizeof(float));
    float *bs = malloc(NR * nchunk * sizeof(float));
    float *C = malloc((NR + 1) * bm * sizeof(float)), *y1 = malloc(P * sizeof(float)), *y2 = malloc(P * sizeof(float));
    float *yr = malloc(NR * P * sizeof(float));
    for (int64_t i = 0; i < wbytes; ++i) w[i] = (uint8_t)rnd();
    for (int64_t i = 0; i < nscales; ++i) s[i] = 0.01f + 0.04f * (frand() + 1.0f);
    for (int64_t i = 0; i < NR * k; ++i) x[i] = 3.0f * frand() * (float)(1 + i / k);
    lut_row rows[NR];
    const int levels = p.actk >= 32 ? 5 : p.actk >= 16 ? 4 : p.actk >= 8 ? 3 : p.actk >= 4 ? 2 : p.actk >= 2 ? 1 : 0;
    const float factor = (float)(levels / 4.0 * ((1 << bits) - 1));
    for (int r = 0; r < NR; ++r) {
        char *tr = table + r * (k / 4) * 16 * sizeof(float);
        float *lsr = ls + r * (k / ags), *lbr = lb + r * nbias, *sgr = sgs + r * nbias, *vbr = vb + r * nbias;
        float *bsr = bs + r * nchunk;
        lut_build_scalar(x + r * k, k, ags, 4 * p.actk, mode, tr, lsr, lbr);
        /* what lut.c derives per row: sub-group scales and plane-0 biases, chunk bias sums */
        for (int64_t sg = 0; sg < nbias; ++sg) {
            const float sc = lsr[sg * 4 * p.actk / ags];
            sgr[sg] = fa ? sc * (float)p.actk : sc;
            vbr[sg] = fa ? lbr[sg] - sgr[sg] * factor : lbr[sg];
        }
        for (int64_t ko = 0; ko < nchunk; ++ko) {
            float b = 0.0f;
            for (int64_t sub = 0; sub < nsub; ++sub) b = b + lbr[ko * nsub + sub];
            bsr[ko] = b;
        }
        rows[r].table = tr, rows[r].sgscale = sgr, rows[r].vbias = vbr, rows[r].bsum = bsr;
    }
    const lut_row row = rows[0];
    int bad = 0;
    const int64_t tile_scales = per_tensor ? 0 : (k / p.gs) * P * (p.zp ? 2 : 1);
    for (int64_t t = 0; t < ntiles && !bad; ++t) {
        lut_tile_scalar(&p, w + t * k * bm / 8, s + t * tile_scales, &row, C, y1);
        simd(&p, w + t * k * bm / 8, s + t * tile_scales, &row, C, y2);
        for (int64_t i = 0; i < P; ++i)
            if (y1[i] != y2[i]) {
                printf("MISMATCH bits %d m0 %lld k %lld bm %lld kf %lld gs %lld zp %d pt %d ags %lld mode %d fa %d: "
                       "tile %lld out %lld scalar %.9g simd %.9g\n",
                       bits, (long long)m0, (long long)k, (long long)bm, (long long)kf, (long long)gs, p.zp, per_tensor,
                       (long long)ags, mode, fa, (long long)t, (long long)i, y1[i], y2[i]);
                bad = 1;
                break;
            }
        /* the row block against one scalar call per row */
        simd_rows(&p, w + t * k * bm / 8, s + t * tile_scales, rows, NR, C, yr, P);
        for (int r = 0; r < NR && !bad; ++r) {
            lut_tile_scalar(&p, w + t * k * bm / 8, s + t * tile_scales, &rows[r], C, y1);
            for (int64_t i = 0; i < P; ++i)
                if (y1[i] != yr[r * P + i]) {
                    printf("MISMATCH (row block) bits %d bm %lld kf %lld zp %d pt %d ags %lld mode %d fa %d: tile %lld "
                           "row %d out %lld scalar %.9g simd %.9g\n", bits, (long long)bm, (long long)kf, p.zp,
                           per_tensor, (long long)ags, mode, fa, (long long)t, r, (long long)i, y1[i], yr[r * P + i]);
                    bad = 1;
                    break;
                }
        }
    }
    free(w), free(s), free(x), free(table), free(ls), free(lb), free(sgs), free(vb), free(bs), free(C), free(y1), free(y2);
    free(yr);
    return bad;
}

int main(void) {
    lut_tile_fn simd = NULL;
    lut_tile_rows_fn simd_rows = NULL;
    const char *name = "none";
#if defined(TMAC_HAVE_NEON)
    simd = lut_tile_neon, simd_rows = lut_tile_rows_neon, name = "neon";
#elif defined(TMAC_HAVE_AVX2)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        simd = lut_tile_avx2, simd_rows = lut_tile_rows_avx2, name = "avx2";
#endif
    if (!simd) {
        printf("SKIP no SIMD path in this build\n");
        return 0;
    }
    int cases = 0;
    const int bms[4][2] = {{256, 512}, {128, 256}, {192, 384}, {256, 512}};
    for (int bits = 1; bits <= 4; ++bits)
        for (int bi = 0; bi < 2; ++bi)
            for (int kfi = 0; kfi < 3; ++kfi)
                for (int ai = 0; ai < 3; ++ai)
                    for (int var = 0; var < 4; ++var) {
                        const int64_t kf = 8 << kfi, k = 512, bm = bms[bits - 1][bi];
                        const int64_t m0 = 2 * bm / bits, gs = 128;
                        const int64_t ags = ai == 0 ? 32 : ai == 1 ? 64 : k;
                        if (ags != k && (4 * kf) % ags) continue;
                        const int zp = var == 1, per_tensor = var == 2 && bits == 2;
                        const int mode = var == 3 ? LUT_FLOAT : LUT_INT8;
                        for (int fa = 0; fa <= (mode == LUT_INT8); ++fa) {
                            if (run_case(simd, simd_rows, bits, m0, k, bm, kf, gs, zp, per_tensor, ags, mode, fa)) return 1;
                            ++cases;
                        }
                    }
    printf("OK %d %s\n", cases, name);
    return 0;
}
