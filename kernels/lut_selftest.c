/*
 * Stand-alone self-test of the SIMD LUT tile kernels against the scalar one (no Python, not part of the
 * extension).  It exists to check the NEON path on a machine without ARM hardware, under qemu:
 *
 *   aarch64-linux-gnu-gcc -O2 -std=c11 -ffp-contract=off kernels/lut_selftest.c kernels/lut_scalar.c \
 *       kernels/lut_neon.c kernels/lut_avx2.c -lm -o selftest && qemu-aarch64 -L /usr/aarch64-linux-gnu ./selftest
 *
 * and, built natively on x86, the AVX2 path; with kernels/lut_avx512.c and -DTMAC_SELFTEST_AVX512 also the
 * AVX-512 path, natively where the CPU has it, or anywhere with -DTMAC_AVX512_SIMDE -I<dir of simde/> (its
 * intrinsics emulated by SIMDe).  Random blobs (any byte is a valid layout), scales, zeros and activations
 * over bits 1-4, zero points, per-tensor scales, kfactor 8/16/32, act groups 32/64/K, then odd sub-group
 * sizes (1-6, 10, 12, 20 tables), kfactor 2/4/64 and the largest sub-group (128 tables); int8, float and
 * fast-aggregation tables, one row (lut_tile_*) and a block of 3 rows (lut_tile_rows_*); every output must
 * equal the scalar kernel's bit for bit.  First, each path's int8 table build against the scalar build (check_build).
 * Prints "OK <cases> <path>" per path and exits 0, or the first mismatch and "FAIL <path>" and exits 1.
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
        float *lsr = ls + r * (k / ags), *lbr = lb + r * nbias, *sgr = sgs + r * nbias, *vbr = vb + r * nchunk;
        float *bsr = bs + r * nchunk;
        lut_build_scalar(x + r * k, k, ags, 4 * p.actk, mode, tr, lsr, lbr);
        /* what lut.c derives per row: sub-group scales and plane-0 biases, chunk bias sums */
        for (int64_t sg = 0; sg < nbias; ++sg) {
            const float sc = lsr[sg * 4 * p.actk / ags];
            sgr[sg] = fa ? sc * (float)p.actk : sc;
        }
        lut_chunk_biases(lbr, sgr, fa, factor, nchunk, nsub, vbr, bsr);
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

typedef void (*build_fn)(const float *x, int64_t k, int64_t ags, int64_t bias_group, int mode, void *table,
                         float *lscale, float *lbias);

typedef struct {
    const char *name;
    lut_tile_fn tile;
    lut_tile_rows_fn rows;
    build_fn build;
} simd_path;

/* The path's table build against the scalar one, byte for byte (tables, scales, biases): act groups of 32, 64 and
 * 128 and the whole K, bias groups of 4 actk for kfactor 1-32 (bias-group counts that are and are not multiples of
 * the vector width), K = 100 (a whole-K group of no whole number of vectors); random activations, halfway cases of
 * the rounding (integers, scale 2) and an act group of zeros.  The number of cases, or -1 at the first mismatch. */
static int check_build(build_fn build) {
    static const int64_t ks[] = {100, 256, 1056, 2048}, kfs[] = {1, 8, 16, 32}, agss[] = {32, 64, 128, 0};
    int cases = 0;
    for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ++ki)
        for (size_t fi = 0; fi < sizeof kfs / sizeof kfs[0]; ++fi)
            for (size_t ai = 0; ai < sizeof agss / sizeof agss[0]; ++ai)
                for (int kind = 0; kind < 3; ++kind) {
                    const int64_t k = ks[ki], kf = kfs[fi], ags = agss[ai] ? agss[ai] : k;
                    if (k % (4 * kf) || k % ags || (ags != k && (4 * kf) % ags)) continue;
                    const int64_t bg = 4 * (ags / 4 < kf ? ags / 4 : kf);
                    float *x = malloc(k * sizeof(float));
                    for (int64_t i = 0; i < k; ++i)
                        x[i] = kind == 1 ? (float)((int)(rnd() % 81) - 40) : 3.0f * frand();
                    if (kind == 1) /* one table (127, 127, 0, 0) per act group: scale 2, odd sums on halves */
                        for (int64_t g = 0; g < k; g += ags) x[g] = x[g + 1] = 127.0f, x[g + 2] = x[g + 3] = 0.0f;
                    if (kind == 2) memset(x + (k / ags / 2) * ags, 0, ags * sizeof(float));
                    int8_t *t0 = malloc(k * 4), *t1 = malloc(k * 4);
                    float *s0 = malloc(k / ags * sizeof(float)), *s1 = malloc(k / ags * sizeof(float));
                    float *b0 = malloc(k / bg * sizeof(float)), *b1 = malloc(k / bg * sizeof(float));
                    lut_build_scalar(x, k, ags, bg, LUT_INT8, t0, s0, b0);
                    build(x, k, ags, bg, LUT_INT8, t1, s1, b1);
                    const int bad = memcmp(t0, t1, k * 4) || memcmp(s0, s1, k / ags * sizeof(float)) ||
                                    memcmp(b0, b1, k / bg * sizeof(float));
                    if (bad)
                        printf("MISMATCH (build) k %lld ags %lld bias group %lld kind %d\n", (long long)k,
                               (long long)ags, (long long)bg, kind);
                    free(x), free(t0), free(t1), free(s0), free(s1), free(b0), free(b1);
                    if (bad) return -1;
                    ++cases;
                }
    return cases;
}

/* Sub-group sizes besides 8/16/32 (remainders of the SIMD widths, the generic code) and chunks wider than the
 * row block's limit, up to the largest sub-group the int16 sums admit (128 tables). */
static const struct { int64_t kf, k, gs, ags; } odd_shapes[] = {
    {6, 480, 120, 4},      /* actk 1 */
    {6, 480, 120, 8},      /* actk 2 */
    {6, 480, 120, 24},     /* actk 6 */
    {12, 384, 96, 12},     /* actk 3 */
    {12, 384, 96, 48},     /* actk 12 */
    {20, 640, 160, 20},    /* actk 5 */
    {20, 640, 160, 40},    /* actk 10 */
    {20, 640, 160, 640},   /* act group K: actk 20 */
    {4, 512, 64, 16},      /* actk 4, kfactor 4 */
    {2, 512, 32, 8},       /* actk 2, kfactor 2 */
    {64, 512, 256, 64},    /* kfactor 64, actk 16 */
    {128, 512, 512, 512},  /* actk 128 */
};

/* Every case through one path; the number of cases, or -1 at the first mismatch. */
static int run_path(const simd_path *sp) {
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
                            if (run_case(sp->tile, sp->rows, bits, m0, k, bm, kf, gs, zp, per_tensor, ags, mode, fa))
                                return -1;
                            ++cases;
                        }
                    }
    for (size_t i = 0; i < sizeof odd_shapes / sizeof odd_shapes[0]; ++i)
        for (int bits = 1; bits <= 4; ++bits)
            for (int var = 0; var < 4; ++var) {
                const int64_t kf = odd_shapes[i].kf, k = odd_shapes[i].k, ags = odd_shapes[i].ags;
                const int64_t bm = bms[bits - 1][0], m0 = 2 * bm / bits, actk = ags / 4 < kf ? ags / 4 : kf;
                const int zp = var == 1, per_tensor = var == 2 && bits == 2;
                const int mode = var == 3 ? LUT_FLOAT : LUT_INT8;
                const int fa_ok = mode == LUT_INT8 && !(actk & (actk - 1)) && actk <= 32; /* lut.c's rule */
                for (int fa = 0; fa <= fa_ok; ++fa) {
                    if (run_case(sp->tile, sp->rows, bits, m0, k, bm, kf, odd_shapes[i].gs, zp, per_tensor, ags, mode, fa))
                        return -1;
                    ++cases;
                }
            }
    return cases;
}

int main(void) {
    simd_path paths[2];
    int n = 0;
#if defined(TMAC_HAVE_NEON)
    paths[n++] = (simd_path){"neon", lut_tile_neon, lut_tile_rows_neon, lut_build_neon};
#elif defined(TMAC_HAVE_AVX2)
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (avx2) paths[n++] = (simd_path){"avx2", lut_tile_avx2, lut_tile_rows_avx2, lut_build_avx2};
#endif
    /* AVX-512 when the build includes lut_avx512.c (TMAC_SELFTEST_AVX512): natively on CPUs with AVX-512 F/BW/VL,
     * or on any CPU with the intrinsics emulated by SIMDe (TMAC_AVX512_SIMDE); its fallbacks (float tables, fast
     * aggregation) are the AVX2 functions where this build has them. */
#if defined(TMAC_SELFTEST_AVX512) && defined(TMAC_HAVE_AVX512)
#if defined(TMAC_AVX512_SIMDE)
#if defined(TMAC_HAVE_AVX2)
    if (avx2)
#endif
        paths[n++] = (simd_path){"avx512 (SIMDe)", lut_tile_avx512, lut_tile_rows_avx512, lut_build_avx512};
#else
    if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
        paths[n++] = (simd_path){"avx512", lut_tile_avx512, lut_tile_rows_avx512, lut_build_avx512};
#endif
#endif
    if (n == 0) {
        printf("SKIP no SIMD path in this build\n");
        return 0;
    }
    for (int i = 0; i < n; ++i) {
        const int builds = check_build(paths[i].build), cases = builds < 0 ? -1 : run_path(&paths[i]);
        if (cases < 0) {
            printf("FAIL %s\n", paths[i].name);
            return 1;
        }
        printf("OK %d %s (and %d table builds)\n", cases, paths[i].name, builds);
        fflush(stdout);
    }
    return 0;
}
